"""Benchmark of PET denoising with the cnn: a whole-body PET of 192×192×300 voxels (3.65 mm).

The PET is synthetic (no simulation needed, so the bench starts at once): a smooth body-like activity image —
an elliptical trunk, head, arms, liver, kidneys, bladder, heart and a few hot lesions, in Bq/ml at FDG
levels — plus signal-dependent (Poisson-like) noise smoothed to an OSEM-like texture. The timed call is what a
user's call does: model load, checks, normalisation, 2.5-D sliding-window inference, output. The shipped
model ``denoise-cnn`` is used when registered; otherwise a network of the shipped architecture with random
weights is saved to a temporary folder and loaded the same way (the time is the same; the JSON says which).

Besides seconds and peak resident memory (sampled every 20 ms, as ``nmai bench attenuation``), it reports the
network's achieved FLOP/s: convolution FLOPs of one window counted with ``torch.utils.flop_counter`` times
the number of windows, over the time of the call (``achieved_gflops``) and over a network-only run of the same
windows (``network_gflops``), against the machine's float32 matrix-multiply rate measured in the same run
(2048×2048 ``torch.matmul``, best of 5, same thread count).

Goals (2-core CPU): model load + denoising <= 30 s; peak resident memory <= 4 GB. The same PET through the
shipped ``sr`` (network, local fit, Richardson–Lucy) is timed too (``sr``; null in quick mode or when
``denoise-sr`` is not registered).
"""

from __future__ import annotations

import os
import tempfile
import time

import numpy as np

from . import PeakRSS, machine

GOAL_S = 30.0
GOAL_PEAK_GB = 4.0
SHAPE_IJK = (192, 192, 300)
VOXEL_MM = 3.65
QUICK_SHAPE_IJK = (64, 64, 16)


def synthetic_pet(shape_ijk=SHAPE_IJK, voxel_mm: float = VOXEL_MM, seed: int = 0):
    """A whole-body-like PET Volume (Bq/ml, SUV factor set) of ``shape_ijk`` voxels of ``voxel_mm``."""
    from scipy.ndimage import gaussian_filter

    from ..volume import Volume

    nx, ny, nz = (int(s) for s in shape_ijk)
    rng = np.random.default_rng(seed)
    x = (np.arange(nx) - (nx - 1) / 2) * voxel_mm
    y = (np.arange(ny) - (ny - 1) / 2) * voxel_mm
    z = np.arange(nz) * voxel_mm                       # 0 = head top
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij", sparse=True)
    L = nz * voxel_mm
    suv = np.zeros((nz, ny, nx), np.float32)

    def ell(cx, cy, cz, ax, ay, az):
        return ((X - cx) / ax) ** 2 + ((Y - cy) / ay) ** 2 + ((Z - cz) / az) ** 2 <= 1.0

    trunk = (((X / 165.0) ** 2 + (Y / 105.0) ** 2) <= 1.0) & (Z > 0.2 * L)
    suv[np.broadcast_to(trunk, suv.shape)] = 0.9
    suv[np.broadcast_to(ell(0, 0, 0.1 * L, 80, 95, 0.1 * L), suv.shape)] = 1.2          # head
    suv[np.broadcast_to(ell(0, -10, 0.1 * L, 65, 80, 0.08 * L), suv.shape)] = 7.0       # brain
    for side in (-1, 1):                                                                 # arms
        arm = (((X - side * 215.0) / 40.0) ** 2 + (Y / 45.0) ** 2 <= 1.0) & (Z > 0.22 * L) & (Z < 0.75 * L)
        suv[np.broadcast_to(arm, suv.shape)] = 0.6
        suv[np.broadcast_to(ell(side * 60, 40, 0.55 * L, 35, 30, 50), suv.shape)] = 3.5  # kidneys
        suv[np.broadcast_to(ell(side * 75, 0, 0.35 * L, 55, 70, 0.08 * L), suv.shape)] = 0.4  # lungs
    suv[np.broadcast_to(ell(-60, -10, 0.48 * L, 90, 70, 0.06 * L), suv.shape)] = 2.4    # liver
    suv[np.broadcast_to(ell(25, -30, 0.36 * L, 45, 40, 45), suv.shape)] = 3.0           # heart
    suv[np.broadcast_to(ell(0, -30, 0.88 * L, 45, 35, 35), suv.shape)] = 12.0           # bladder
    for _ in range(6):                                                                   # lesions
        c = (rng.uniform(-100, 100), rng.uniform(-60, 60), rng.uniform(0.3, 0.8) * L)
        suv[np.broadcast_to(ell(*c, *(rng.uniform(5, 12, 3))), suv.shape)] = rng.uniform(5, 15)
    suv = gaussian_filter(suv, 4.5 / 2.355 / voxel_mm)                                   # scanner resolution
    bq_per_suv = 5300.0
    noise = gaussian_filter(rng.standard_normal(suv.shape).astype(np.float32), 0.8)
    act = suv * bq_per_suv * (1.0 + 0.35 * noise / np.sqrt(np.maximum(suv, 0.05)))
    act = np.maximum(act, 0.0).astype(np.float32)
    spacing = (voxel_mm,) * 3
    origin = (float(x[0]), float(y[0]), -float(z[-1]))
    return Volume(act, spacing, origin, modality="PT", units="Bq/ml",
                  metadata={"suv_bw_factor": 1.0 / bq_per_suv, "synthetic": True})


def _model(folder: str, quick: bool):
    """The registered denoise-cnn if there is one, else a random-weight network of the shipped (quick: the
    quick preset's) architecture saved in ``folder``."""
    from ..denoise.training import NAMES, PRESETS, data_format, network_spec
    from ..errors import NMAIError
    from ..models import build_network, new_card, resolve_model, save_model

    if not quick:
        try:
            resolve_model(NAMES["cnn"])
            return NAMES["cnn"], {"name": NAMES["cnn"], "trained": True}
        except NMAIError:
            pass
    import torch

    preset = "quick" if quick else "shipped"
    torch.manual_seed(0)
    spec = network_spec(PRESETS[preset])
    card = new_card(name="bench-random-denoise-cnn", task="denoise", network=spec, network_data_format=data_format(),
                    training={"command": "none (random weights for timing)", "seed": 0, "steps": 0, "duration_s": 0,
                              "device": "cpu", "preset": preset})
    path = os.path.join(folder, "bench-random-denoise-cnn")
    save_model(build_network(spec), path, card)
    why = "quick bench" if quick else f"{NAMES['cnn']} is not registered"
    return path, {"name": "bench-random-denoise-cnn", "trained": False, "preset": preset,
                  "note": f"{why}: random weights, the {preset} architecture (channels "
                          f"{list(PRESETS[preset].channels)}); the timing is that of a trained model of it"}


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    """float32 n x n matrix multiply rate (GFLOP/s), best of ``repeats``."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t)
    return 2.0 * n ** 3 / best / 1e9


def window_flops(module, in_channels: int, roi) -> float:
    """Forward FLOPs of one (1, C, *roi) window (convolutions and matmuls, as torch's FlopCounterMode)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, in_channels, *roi)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        module(x)
    return float(counter.get_total_flops())


def _time_sr(pet, threads: int, progress) -> dict | None:
    """Model load + ``sr`` (network, local fit, resolution recovery) of ``pet`` with the shipped model, or None
    when ``denoise-sr`` is not registered."""
    from ..denoise.apply import denoise_volume
    from ..denoise.training import NAMES
    from ..errors import NMAIError
    from ..models import load_model, resolve_model

    try:
        resolve_model(NAMES["sr"])
    except NMAIError:
        return None
    progress(0.0, "timing model load + sr")
    with PeakRSS() as mem:
        t = time.perf_counter()
        _, info = denoise_volume(pet, "sr", model=load_model(NAMES["sr"], device="cpu"), progress=progress,
                                 num_threads=threads)
        total_s = time.perf_counter() - t
    return {"model": NAMES["sr"], "resolution_recovery": info["resolution_recovery"], "total_s": round(total_s, 2),
            "peak_rss_gb": round(mem.peak / 2**30, 3), "time_met": total_s <= GOAL_S,
            "memory_met": mem.peak / 2**30 <= GOAL_PEAK_GB}


def run(progress, quick: bool = False) -> dict:
    import resource

    t = time.perf_counter()
    import monai  # noqa: F401  (imported here so its import time is reported, not hidden in the timed call)
    import torch

    import_s = time.perf_counter() - t
    load_before = os.getloadavg()[0]
    from ..denoise.apply import denoise_volume
    from ..models import load_model
    from ..models.sliding import default_threads, torch_threads, window_starts

    shape = QUICK_SHAPE_IJK if quick else SHAPE_IJK
    threads = torch.get_num_threads()   # all cores unless `nmai --threads N` set fewer
    progress(0.0, f"synthetic PET of {shape[0]}x{shape[1]}x{shape[2]} voxels")
    pet = synthetic_pet(shape)
    with tempfile.TemporaryDirectory(prefix="nmai-bench-") as folder:
        name, model_info = _model(folder, quick)
        progress(0.1, "timing model load + cnn denoising")
        with PeakRSS() as mem:
            t = time.perf_counter()
            model = load_model(name, device="cpu")
            load_s = time.perf_counter() - t
            t = time.perf_counter()
            out, info = denoise_volume(pet, "cnn", model=model, progress=progress.sub(0.1, 0.8),
                                       num_threads=threads)
            predict_s = time.perf_counter() - t
    total_s = load_s + predict_s
    peak_gb = mem.peak / 2**30
    sr = None if quick else _time_sr(pet, threads, progress.sub(0.8, 0.85))
    ru_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30  # Linux: kB
    fmt = model.data_format
    roi = [int(r) for r in fmt["roi_size"]]
    c_in = fmt["inputs"]["pet"]["channels"] * (2 * fmt["context_slices"] + 1)
    nx, ny, nz = shape
    windows = nz * len(window_starts(ny, roi[0], 0.25)) * len(window_starts(nx, roi[1], 0.25))
    progress(0.85, "counting FLOPs, timing the network alone and a matrix multiply")
    flops = window_flops(model.module, c_in, roi)
    with torch_threads(threads):
        n_net = min(windows, 16)
        x = torch.randn(1, c_in, *roi)
        with torch.inference_mode():
            model.module(x)
            t = time.perf_counter()
            for _ in range(n_net):
                model.module(x)
            net_s = (time.perf_counter() - t) / n_net
        gemm = matmul_gflops()
    achieved = flops * windows / predict_s / 1e9
    network = flops / net_s / 1e9
    result = {
        "target": "denoise",
        "machine": machine(torch_threads=threads, default_threads=default_threads(),
                           load_average_1min_at_start=round(load_before, 2), device=model.device),
        "problem": {"pet_shape_ijk": list(shape), "pet_spacing_mm": list(pet.spacing), "pet": "synthetic whole-body "
                    "activity + Poisson-like noise (nmai.bench.denoise.synthetic_pet)", "method": "cnn",
                    "network_note": info.get("note"), "quick": bool(quick)},
        "model": model_info,
        "import_torch_monai_s": round(import_s, 2),
        "model_load_s": round(load_s, 3),
        "denoise_s": round(predict_s, 2),
        "total_s": round(total_s, 2),
        "peak_rss_gb": round(peak_gb, 3),
        "rss_before_gb": round(mem.start / 2**30, 3),
        "process_max_rss_gb": round(ru_gb, 3),
        "flops": {"per_window_gflop": round(flops / 1e9, 4), "window": [c_in, *roi], "windows": windows,
                  "counted_with": "torch.utils.flop_counter.FlopCounterMode (conv + matmul; 2 FLOPs per MAC)",
                  "achieved_gflops": round(achieved, 2),
                  "network_only_s_per_window": round(net_s, 4), "network_gflops": round(network, 2),
                  "matmul_2048_gflops": round(gemm, 2),
                  "achieved_fraction_of_matmul": round(achieved / gemm, 4),
                  "network_fraction_of_matmul": round(network / gemm, 4)},
        "goals": {"total_s_max": GOAL_S, "peak_rss_gb_max": GOAL_PEAK_GB,
                  "time_met": total_s <= GOAL_S, "memory_met": peak_gb <= GOAL_PEAK_GB},
        "sr": sr,
    }
    if model_info["trained"]:
        trained = ""
    elif quick:
        trained = " (quick: random-weight quick architecture)"
    else:
        trained = " (random weights, shipped architecture: denoise-cnn not registered)"
    result["summary"] = (f"PET {shape[0]}x{shape[1]}x{shape[2]} -> cnn: {total_s:.1f} s (goal <= {GOAL_S:g}), "
                         f"peak RSS {peak_gb:.2f} GB (goal <= {GOAL_PEAK_GB:g}), {achieved:.1f} GFLOP/s = "
                         f"{100 * achieved / gemm:.0f} % of matmul ({gemm:.0f} GFLOP/s){trained}"
                         + (f"; sr: {sr['total_s']:.1f} s, peak RSS {sr['peak_rss_gb']:.2f} GB" if sr else ""))
    progress(1.0, "bench done")
    return result
