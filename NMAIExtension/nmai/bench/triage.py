"""Benchmark of whole-body image triage (``nmai triage PET --mumap MU``): one report, every part switched on.

A simulated whole-body FDG scan (seed 0, arms beside the body, 4 mm voxels, 180 s, OSEM 3 × 14 with PSF;
``--quick``: 8 mm) and its μ-map go through :func:`nmai.triage.image.triage_image` with the shipped artifact
classifier and lesion scorer: the noise, μ-map and offset rules, the slice classifier and the lesion
candidates, as a user's call does. Simulating the scan is not timed; loading the models is.

Goal (2-core CPU): whole-body triage <= 30 s. Peak resident memory of the process during the call is
sampled every 20 ms. Run it on an otherwise idle machine (the 1-minute load average is recorded).
"""

from __future__ import annotations

import os
import time

from . import PeakRSS, machine

GOAL_S = 30.0


def run(progress, quick: bool = False) -> dict:
    from ..errors import NMAIError
    from ..models.registry import list_models
    from ..sim import make_phantom, simulate
    from ..triage.image import triage_image

    installed = {m["name"] for m in list_models()}
    missing = {"triage-artifacts", "triage-lesions"} - installed
    if missing:
        raise NMAIError(f"bench triage times the shipped models; {', '.join(sorted(missing))} not installed")
    load_before = os.getloadavg()[0]
    voxel = 8.0 if quick else 4.0
    progress(0.0, f"simulating a whole-body scan at {voxel:g} mm (not timed)")
    ph = make_phantom("wholebody", seed=0, voxel_mm=voxel, arms=True, lesions=6, mr=False,
                      supersample=1 if quick else 2)
    sim = simulate(ph, seed=0, iterations=2 if quick else 3, progress=progress.sub(0.0, 0.6))
    pet, mu = sim.recon, ph.mumap
    progress(0.6, "timing triage")
    with PeakRSS() as mem:
        t = time.perf_counter()
        report = triage_image(pet, mumap=mu, progress=progress.sub(0.6, 0.98))
        total_s = time.perf_counter() - t
    peak_gb = mem.peak / 2**30
    result = {
        "target": "triage",
        "machine": machine(load_average_1min_at_start=round(load_before, 2)),
        "problem": {"pet_shape_kji": list(pet.shape), "spacing_mm": [round(s, 3) for s in pet.spacing],
                    "with_mumap": True, "quick": bool(quick)},
        "models": {"artifacts": report["classifier"]["model"], "lesions": report["lesion_model"]},
        "report": {"alarm": report["alarm"], "artifacts": [a["type"] for a in report["artifacts"]],
                   "lesion_candidates": len(report["lesions"])},
        "triage_s": round(total_s, 2),
        "peak_rss_gb": round(peak_gb, 3),
        "rss_before_gb": round(mem.start / 2**30, 3),
        "goals": {"triage_s_max": GOAL_S, "time_met": total_s <= GOAL_S},
    }
    result["summary"] = (f"whole-body triage of {pet.shape[2]}x{pet.shape[1]}x{pet.shape[0]} voxels with μ-map: "
                         f"{total_s:.1f} s (goal <= {GOAL_S:g}), peak RSS {peak_gb:.2f} GB, alarm {report['alarm']}")
    progress(1.0, "bench done")
    return result
