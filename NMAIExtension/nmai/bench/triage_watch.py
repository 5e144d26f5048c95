"""Benchmark of raw-data triage in watch mode: seconds per whole-body frame, from a frame file landing in
the watched folder to its JSON alarm.

A whole-body phantom (4 mm voxels, arms; ``quick``: 8 mm) is simulated as 4 frames of 45 s, the patient
moving 6 mm in x before frame 2; a writer thread puts the frame files into a temporary folder (write, then
rename) 1.5 s apart while :func:`nmai.triage.watch_folder` watches it. Reported: the checks alone on
in-memory frames, reading a compressed frame file, the latency from each file's rename to its alarm, and
two sweeps over count levels (frames thinned binomially): a dead block (found / false alarms on the clean
frames, several seeds) and the motion estimates (true shifts 0, 0, 6, 6 mm).
"""

from __future__ import annotations

import os
import tempfile
import threading
import time

import numpy as np

from . import machine


def block_sweep(acq, seeds: int = 5, fractions=(1.0, 1e-3, 1e-4)) -> dict:
    """Frames thinned to each count fraction (binomial thinning of Poisson counts is Poisson), once clean
    and once with block 10 dead (its LORs zeroed, as the simulator does): detections and false alarms."""
    from ..sim import DEFAULT_SCANNER
    from ..triage import RawTriage

    alive = DEFAULT_SCANNER.with_(failed_blocks=(10,)).normalisation() > 0
    out = {}
    for fraction in fractions:
        found = false_alarms = n = 0
        for seed in range(seeds):
            rng = np.random.default_rng(seed)
            triage = RawTriage(acq.scanner, acq.slice_mm, acq.n_slices, motion_min_counts_per_cm=float("inf"))
            for f in range(acq.prompts.shape[0]):
                p = rng.binomial(acq.prompts[f], fraction) if fraction < 1 else acq.prompts[f]
                clean = triage.check(p)
                dead = triage.check(p * alive)
                false_alarms += clean["alarm"] != "ok"
                found += dead["failed_blocks"] == [10]
                n += 1
        out[str(fraction)] = {"prompts_per_frame": float(acq.prompts[0].sum()) * fraction, "frames": n,
                              "dead_block_found": found, "false_alarms_on_clean": false_alarms}
    return out


def motion_sweep(acq, fractions=(1.0, 0.1, 0.01)) -> dict:
    """Shift estimates (mm, vs frame 0) of the 4 frames thinned to each count fraction."""
    from ..triage import RawTriage

    out = {}
    for fraction in fractions:
        rng = np.random.default_rng(0)
        triage = RawTriage(acq.scanner, acq.slice_mm, acq.n_slices)
        shifts = []
        for f in range(acq.prompts.shape[0]):
            p = rng.binomial(acq.prompts[f], fraction) if fraction < 1 else acq.prompts[f]
            shifts.append(triage.check(p).get("shift_mm"))
        out[str(fraction)] = {"prompts_per_frame": float(acq.prompts[0].sum()) * fraction, "shift_mm": shifts}
    return out


def run(progress, quick: bool = False) -> dict:
    from ..sim import DEFAULT_SCANNER, make_phantom, simulate_acquisition
    from ..triage import RawTriage, watch_folder, write_frames
    from ..triage.frames import read_frame

    voxel = 8.0 if quick else 4.0
    progress(0.0, "phantom")
    ph = make_phantom("wholebody", seed=0, voxel_mm=voxel, arms=True, supersample=1, mr=False)
    progress(0.1, "acquisition (4 frames)")
    motion = [{"translation_mm": t} for t in [(0, 0, 0), (0, 0, 0), (6, 0, 0), (6, 0, 0)]]
    acq = simulate_acquisition(ph.activity, ph.mumap, DEFAULT_SCANNER, duration_s=180.0, frames=4,
                               motion=motion, seed=0)
    shape = list(acq.prompts.shape[1:])
    progress(0.5, "checks in memory")
    triage = RawTriage(acq.scanner, acq.slice_mm, acq.n_slices)
    check_s = []
    for f, (start, dur) in enumerate(acq.frames):
        t = time.perf_counter()
        triage.check(acq.prompts[f], frame=f, start_s=start, duration_s=dur)
        check_s.append(time.perf_counter() - t)
    progress(0.6, "watching a folder")
    with tempfile.TemporaryDirectory(prefix="nmai-bench-triage-") as tmp:
        os.rmdir(tmp)
        writer = threading.Thread(target=write_frames, args=(acq, tmp), kwargs={"delay_s": 1.5})
        writer.start()
        while not os.path.isdir(tmp):
            time.sleep(0.01)
        lines = list(watch_folder(tmp, timeout_s=60.0, poll_s=0.2))
        writer.join()
        size = os.path.getsize(os.path.join(tmp, "frame_0000.npz"))
        t = time.perf_counter()
        read_frame(os.path.join(tmp, "frame_0000.npz"))
        read_s = time.perf_counter() - t
    progress(0.9, "failed-block sweep")
    sweep = block_sweep(acq, seeds=3 if quick else 5)
    motions = motion_sweep(acq)
    latency = [r["latency_s"] for r in lines]
    result = {
        "target": "triage_watch",
        "machine": machine(),
        "problem": {"phantom": "wholebody seed 0 with arms", "voxel_mm": voxel, "frame_slices_views_bins": shape,
                    "frames": len(acq.frames), "prompts_per_frame": float(acq.prompts[0].sum()),
                    "frame_file_mb": round(size / 1e6, 2), "motion": "6 mm in x from frame 2"},
        "check_s_per_frame": [round(s, 3) for s in check_s],
        "read_compressed_frame_s": round(read_s, 3),
        "watch_latency_s": latency,
        "watch_poll_s": 0.2,
        "alarms": [r["alarm"] for r in lines],
        "shift_mm": [r.get("shift_mm") for r in lines],
        "failed_block_sweep": sweep,
        "motion_sweep": motions,
    }
    found, frames, false = (sum(v[k] for v in sweep.values())
                            for k in ("dead_block_found", "frames", "false_alarms_on_clean"))
    result["summary"] = (f"{shape[0]}x{shape[1]}x{shape[2]} frame: checks {np.median(check_s):.2f} s, "
                         f"alarm {max(latency):.2f} s (max) after the frame file landed; "
                         f"alarms {', '.join(result['alarms'])}; dead block found in {found}/{frames} frames, "
                         f"{false} false alarms")
    progress(1.0, "bench done")
    return result
