"""Benchmark of MR -> μ-map with the Dixon U-Net: a whole-body Dixon MR of 128×128×200 voxels.

The MR is a simulated whole-body phantom (seed 0, arms beside the body) resampled onto a 128×128×200 grid
(about 4.1 × 4.1 × 4.9 mm, a typical whole-body Dixon), so the timed call does everything a user's call
does: checks, resampling to the model's 4 mm LPS grid, normalisation, 2.5-D sliding-window inference,
resampling back. The shipped model ``attenuation-dixon-unet`` is used when installed; otherwise a network
of the same architecture with random weights is saved to a temporary folder and loaded the same way (the
time is the same; the JSON says which was used).

Goals (2-core CPU): model load + μ-map <= 20 s; peak resident memory of the process during that call
<= 4 GB (sampled every 20 ms by a thread; the process's lifetime maximum from ``getrusage`` is reported too).
Run it on an otherwise idle machine: with another process busy on the same cores, torch's 2 threads wait on
each other and a convolution takes 10-100 times longer (the 1-minute load average is recorded).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from . import PeakRSS, machine

GOAL_S = 20.0
GOAL_PEAK_GB = 4.0
SHAPE_IJK = (128, 128, 200)


def bench_mr(shape_ijk=SHAPE_IJK, seed: int = 0, z_mm: float | None = None, voxel_mm: float = 4.0):
    """(water, fat) Volumes of a whole-body phantom resampled onto a grid of ``shape_ijk`` voxels covering
    the phantom (``z_mm``: only that many mm around the middle of the body)."""
    from ..resample import resample_like
    from ..sim import make_phantom
    from ..volume import Volume

    ph = make_phantom("wholebody", seed=seed, voxel_mm=voxel_mm, arms=True, supersample=2 if voxel_mm <= 4 else 1)
    water = ph.volumes["mr_water"]
    n = np.asarray(water.shape[::-1], float)
    extent = n * np.asarray(water.spacing)
    if z_mm is not None:
        extent[2] = min(extent[2], float(z_mm))
    size = np.asarray(shape_ijk, float)
    spacing = extent / size
    centre = np.asarray(water.origin) + (n - 1) * np.asarray(water.spacing) / 2
    origin = centre - (size - 1) * spacing / 2
    grid = Volume(np.zeros(tuple(int(s) for s in shape_ijk[::-1]), np.uint8), tuple(spacing), tuple(origin))
    return resample_like(water, grid), resample_like(ph.volumes["mr_fat"], grid)


def _model(folder: str):
    """The shipped Dixon model if installed, else a same-architecture random model saved in ``folder``."""
    from ..attenuation.training import NAMES, PRESETS, data_format, network_spec
    from ..attenuation.unet import model_installed
    from ..models import build_network, new_card, save_model

    if model_installed("dixon"):
        return NAMES["dixon"], {"name": NAMES["dixon"], "trained": True}
    import torch

    torch.manual_seed(0)
    spec = network_spec("dixon", PRESETS["shipped"])
    card = new_card(name="bench-random-dixon-unet", task="attenuation", network=spec,
                    network_data_format=data_format("dixon"),
                    training={"command": "none (random weights for timing)", "seed": 0, "steps": 0,
                              "duration_s": 0, "device": "cpu"})
    path = os.path.join(folder, "bench-random-dixon-unet")
    save_model(build_network(spec), path, card)
    return path, {"name": "bench-random-dixon-unet", "trained": False,
                  "note": f"{NAMES['dixon']} is not installed: random weights, same architecture "
                          f"(channels {list(PRESETS['shipped'].channels)}); the timing is the same"}


def run(progress, quick: bool = False) -> dict:
    import resource

    t = time.perf_counter()
    import monai  # noqa: F401  (imported here so its import time is reported, not hidden in the timed call)
    import torch  # noqa: F401  (timed with monai)

    import_s = time.perf_counter() - t
    load_before = os.getloadavg()[0]  # other work on the machine slows torch's threads badly: say so
    from ..attenuation.unet import unet_mumap
    from ..models import load_model

    shape = (64, 64, 50) if quick else SHAPE_IJK
    progress(0.0, f"MR of {shape[0]}x{shape[1]}x{shape[2]} voxels")
    water, fat = bench_mr(shape, z_mm=200.0, voxel_mm=8.0) if quick else bench_mr(shape)
    with tempfile.TemporaryDirectory(prefix="nmai-bench-") as folder:
        name, model_info = _model(folder)
        progress(0.2, "timing model load + μ-map")
        with PeakRSS() as mem:
            t = time.perf_counter()
            model = load_model(name)
            load_s = time.perf_counter() - t
            t = time.perf_counter()
            mu = unet_mumap({"water": water, "fat": fat}, model=model, progress=progress.sub(0.2, 0.98))
            predict_s = time.perf_counter() - t
    total_s = load_s + predict_s
    peak_gb = mem.peak / 2**30
    ru_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: kB
    result = {
        "target": "attenuation",
        "machine": machine(load_average_1min_at_start=round(load_before, 2), device=model.device),
        "problem": {"mr_shape_ijk": list(shape), "mr_spacing_mm": [round(s, 3) for s in water.spacing],
                    "model_grid_kji": mu.metadata["model_grid"]["shape_kji"], "inputs": "Dixon water + fat",
                    "quick": bool(quick)},
        "model": model_info,
        "import_torch_monai_s": round(import_s, 2),
        "model_load_s": round(load_s, 3),
        "mumap_s": round(predict_s, 2),
        "total_s": round(total_s, 2),
        "peak_rss_gb": round(peak_gb, 3),
        "rss_before_gb": round(mem.start / 2**30, 3),
        "process_max_rss_gb": round(ru_gb, 3),
        "goals": {"total_s_max": GOAL_S, "peak_rss_gb_max": GOAL_PEAK_GB,
                  "time_met": total_s <= GOAL_S, "memory_met": peak_gb <= GOAL_PEAK_GB},
    }
    trained = "" if model_info["trained"] else " (random same-architecture model: shipped model not installed)"
    result["summary"] = (f"MR {shape[0]}x{shape[1]}x{shape[2]} -> μ-map: {total_s:.1f} s (goal <= {GOAL_S:g}), "
                         f"peak RSS {peak_gb:.2f} GB (goal <= {GOAL_PEAK_GB:g}){trained}")
    progress(1.0, "bench done")
    return result
