"""End-to-end: phantom (or user activity + μ-map) → acquisition → OSEM image, and the files that hold them.

A simulation folder holds: ``activity.nii.gz`` (truth, Bq/ml at scan start), ``mumap.nii.gz`` (cm⁻¹, the
μ-map the acquisition was simulated with), for phantoms ``ct.nii.gz`` (HU), ``labels.nii.gz`` (label,
SEG, with the label table in its sidecar) and the MR images (``mr_water``, ``mr_fat``, ``mr_in_phase``,
``mr_opposed_phase``, ``mr_t1``), the acquisition (``acquisition.npz`` + ``acquisition.json``),
``recon.nii.gz`` (OSEM, Bq/ml, PT, with ``suv_bw_factor``) and ``simulation.json`` (every parameter,
counts, SUV factor, the label table and the true mean activity per label).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import NMAIError
from ..io import atomic_folder, write_json, write_volume
from ..progress import as_progress
from ..volume import Volume
from .acquisition import Acquisition, check_inputs, grid_of, simulate_acquisition
from .phantoms import DEFAULT_DURATION_S, Phantom
from .recon import DEFAULT_ITERATIONS, DEFAULT_SUBSETS, reconstruct
from .scanner import DEFAULT_SCANNER, DEFAULT_UPTAKE_S, FDG_DOSE_MBQ_PER_KG, Scanner, decay_factor

MAX_INPLANE = 320


@dataclass
class Simulation:
    acquisition: Acquisition
    recon: Volume | None
    volumes: dict                   # truth volumes written beside the acquisition (activity, mumap, ...)
    label_table: dict = field(default_factory=dict)
    summary: dict = field(default_factory=dict)


def to_axial(volume: Volume) -> Volume:
    """Reorient an axis-aligned volume to identity direction (no interpolation); refuse oblique ones."""
    if np.allclose(volume.direction, np.eye(3), atol=1e-4):
        return volume
    d = volume.direction
    if not np.allclose(np.abs(d), np.round(np.abs(d)), atol=1e-4):
        raise NMAIError("the volume is oblique (rotated relative to the patient axes); resample it to an "
                        "axial grid before simulating")
    import SimpleITK as sitk

    from ..io import from_sitk, to_sitk

    img = sitk.DICOMOrient(to_sitk(volume), "LPS")
    out = from_sitk(img, modality=volume.modality, units=volume.units, metadata=dict(volume.metadata))
    out.array = out.array.astype(volume.array.dtype, copy=False)
    return out


def label_means(labels: np.ndarray, values: np.ndarray, table: dict) -> dict:
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=256)
    sums = np.bincount(labels.ravel().astype(np.int64), weights=values.ravel().astype(np.float64), minlength=256)
    return {name: float(sums[v] / counts[v]) for name, v in table.items() if v < len(counts) and counts[v] > 0}


def simulate(phantom: Phantom | None = None, *, activity: Volume | None = None, mumap: Volume | None = None,
             scanner: Scanner = DEFAULT_SCANNER, duration_s: float | None = None, count_fraction: float = 1.0,
             seed: int = 0, frames: int = 1, motion=None, iterations: int = DEFAULT_ITERATIONS,
             subsets: int = DEFAULT_SUBSETS, psf: bool = True, reconstruct_image: bool = True,
             weight_kg: float | None = None, dose_mbq: float | None = None, uptake_s: float = DEFAULT_UPTAKE_S,
             noise: bool = True, progress=None) -> Simulation:
    """Simulate a phantom, or a user activity (Bq/ml) + μ-map (cm⁻¹) pair, and reconstruct it.

    ``seed`` drives the Poisson noise (and, for phantoms, was already used to build the phantom); the
    low-count version of an acquisition is the same call with ``count_fraction`` < 1.
    """
    progress = as_progress(progress)
    t0 = time.time()
    if (phantom is None) == (activity is None):
        raise NMAIError("give either a phantom or an activity volume (with a μ-map)")
    if phantom is not None:
        volumes = dict(phantom.volumes)
        label_table = dict(phantom.label_table)
        info = {k: v for k, v in phantom.info.items()}
        duration = float(duration_s or DEFAULT_DURATION_S[phantom.name])
    else:
        if mumap is None:
            raise NMAIError("an activity volume needs a μ-map (--mumap, cm-1 at 511 keV)")
        activity, mumap = to_axial(activity), to_axial(mumap)
        activity = activity.derive(activity.array.astype(np.float32), units="Bq/ml", modality="PT")
        mumap = mumap.derive(mumap.array.astype(np.float32), units="cm-1", modality="OT")
        volumes = {"activity": activity, "mumap": mumap}
        label_table = {}
        w = float(weight_kg or 75.0)
        dose = (dose_mbq if dose_mbq is not None else FDG_DOSE_MBQ_PER_KG * w) * 1e6
        if w <= 0 or dose <= 0:
            raise NMAIError("weight and dose must be > 0")
        decayed = dose * decay_factor(uptake_s)
        info = {"phantom": None, "source": {"activity": activity.metadata.get("source", "memory"),
                                            "mumap": mumap.metadata.get("source", "memory")},
                "weight_kg": w, "injected_dose_bq": dose, "uptake_s": float(uptake_s),
                "dose_at_scan_start_bq": decayed, "suv_bw_factor": w * 1000.0 / decayed,
                "radiopharmaceutical": "FDG (F-18)",
                "note": "activity taken as given (Bq/ml at scan start); dose/weight only set the SUV factor"}
        duration = float(duration_s or 180.0)
    act, mu = volumes["activity"], volumes["mumap"]
    nz, ny, nx = act.shape
    if max(nx, ny) > MAX_INPLANE:
        raise NMAIError(f"in-plane grid {nx}×{ny} is too large for the simulator (max {MAX_INPLANE}); "
                        "resample to larger voxels (e.g. 4 mm)")
    check_inputs(act, mu)
    fov = grid_of(act).fov_mask(scanner.transaxial_fov_mm)
    total = float(act.array.sum(dtype=np.float64))
    out_fov = float(act.array[:, ~fov].sum(dtype=np.float64))
    if total > 0 and out_fov > 0.01 * total:
        raise NMAIError(f"{100 * out_fov / total:.1f}% of the activity lies outside the scanner's "
                        f"{scanner.transaxial_fov_mm:g} mm transaxial field of view (the scanner axis is the "
                        "centre of the grid); crop or centre the volume")
    progress(0.0, "simulating the acquisition")
    acq = simulate_acquisition(act, mu, scanner, duration_s=duration, frames=frames, count_fraction=count_fraction,
                               seed=seed, motion=motion, noise=noise, progress=progress.sub(0.0, 0.5))
    for key in ("suv_bw_factor", "weight_kg", "injected_dose_bq", "dose_at_scan_start_bq", "radiopharmaceutical",
                "uptake_s"):
        if info.get(key) is not None:
            acq.info[key] = info[key]
    recon = None
    if reconstruct_image:
        recon = reconstruct(acq, mu, iterations=iterations, subsets=subsets, psf=psf,
                            progress=progress.sub(0.5, 0.98))
    truth = {}
    if label_table:
        labels = volumes["labels"].array
        truth = label_means(labels, act.array, label_table)
    summary = {
        "nmai_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "seed": int(seed),
        "phantom": info,
        "scanner": scanner.to_dict(),
        "acquisition": {"duration_s": duration, "frames": frames, "count_fraction": count_fraction,
                        "noise": "poisson" if noise else "none", "motion": motion, **acq.info},
        "reconstruction": (recon.metadata.get("reconstruction") if recon is not None else None),
        "suv_bw_factor": info.get("suv_bw_factor"),
        "labels": label_table,
        "truth_mean_bq_ml": truth,
        "grid": {"shape_kji": [int(s) for s in act.shape], "spacing_mm": list(act.spacing),
                 "origin_lps_mm": list(act.origin)},
        "seconds": round(time.time() - t0, 2),
    }
    progress(1.0, "simulation done")
    return Simulation(acq, recon, volumes, label_table, summary)


def write_simulation(sim: Simulation, out_dir, progress=None) -> dict:
    """Write every file of a simulation folder; returns {name: path}."""
    progress = as_progress(progress)
    final = Path(out_dir)
    files = {}
    # all or nothing: an interrupted run leaves no partial folder, a rerun no stale files
    with atomic_folder(final, replaceable=lambda f: (f / "simulation.json").exists()) as out:
        names = list(sim.volumes)
        for i, name in enumerate(names):
            progress(i / (len(names) + 2), f"writing {name}")
            vol = sim.volumes[name]
            dtype = np.uint8 if name == "labels" and vol.array.max(initial=0) < 256 else None
            files[name] = write_volume(vol, out / f"{name}.nii.gz", dtype=dtype).name
        sim.acquisition.save(out)
        files["acquisition"] = "acquisition.npz"
        if sim.recon is not None:
            files["recon"] = write_volume(sim.recon, out / "recon.nii.gz").name
        write_json(out / "simulation.json", dict(sim.summary, files=dict(files)))
        files["simulation"] = "simulation.json"
    progress(1.0, "written")
    return {k: str(final / v) for k, v in files.items()}


def write_phantom(phantom: Phantom, out_dir) -> dict:
    final = Path(out_dir)
    files = {}
    with atomic_folder(final, replaceable=lambda f: (f / "phantom.json").exists()) as out:
        for name, vol in phantom.volumes.items():
            dtype = np.uint8 if name == "labels" else None
            files[name] = write_volume(vol, out / f"{name}.nii.gz", dtype=dtype).name
        truth = {k: v["mean_bq_ml"] for k, v in phantom.truth_means().items()}
        write_json(out / "phantom.json", {"nmai_version": __version__, "phantom": phantom.info,
                                          "labels": phantom.label_table, "truth_mean_bq_ml": truth,
                                          "files": dict(files)})
        files["phantom"] = "phantom.json"
    return {k: str(final / v) for k, v in files.items()}


def reconstruct_folder(sim_dir, out, *, mumap_path=None, iterations: int = DEFAULT_ITERATIONS,
                       subsets: int = DEFAULT_SUBSETS, psf: bool = True, frame: int | None = None,
                       postfilter_mm: float = 0.0, prior: dict | None = None, progress=None) -> dict:
    """Reconstruct the acquisition stored in ``sim_dir`` (optionally with another μ-map) into ``out``
    (an image path, or a folder that gets ``recon.nii.gz``). Returns a summary with, where the folder has
    labels, the mean reconstructed vs true activity per label."""
    import json

    from ..io import image_suffix, read_volume

    progress = as_progress(progress)
    sim_dir = Path(sim_dir)
    if not sim_dir.is_dir():
        raise NMAIError(f"{sim_dir}: not a folder; give a folder written by 'nmai simulate'")
    acq = Acquisition.load(sim_dir)
    if mumap_path is None:
        mumap_path = sim_dir / "mumap.nii.gz"
        if not mumap_path.exists():
            raise NMAIError(f"{sim_dir}: no mumap.nii.gz; give the μ-map with --mumap")
    mu = read_volume(mumap_path, units="cm-1")
    if prior is not None:
        from ..denoise.prior import reconstruct_with_prior

        recon = reconstruct_with_prior(acq, mu, prior["model"], outer=iterations, subsets=subsets,
                                       weight=prior["weight"], psf=psf, frame=frame, progress=progress.sub(0.0, 0.95))
    else:
        recon = reconstruct(acq, mu, iterations=iterations, subsets=subsets, psf=psf, frame=frame,
                            postfilter_mm=postfilter_mm, progress=progress.sub(0.0, 0.95))
    recon.metadata["reconstruction"]["attenuation_map"] = str(mumap_path)
    recon.metadata["simulation_folder"] = str(sim_dir)
    out = Path(out)
    path = out if image_suffix(out) else out / "recon.nii.gz"
    write_volume(recon, path)
    result = {"recon": str(path), "mumap": str(mumap_path), "iterations": iterations, "subsets": subsets,
              "frame": frame, "count_fraction": acq.count_fraction,
              "algorithm": recon.metadata["reconstruction"]["algorithm"]}
    labels_path, activity_path = sim_dir / "labels.nii.gz", sim_dir / "activity.nii.gz"
    summary_path = sim_dir / "simulation.json"
    if labels_path.exists() and activity_path.exists() and summary_path.exists():
        table = json.loads(summary_path.read_text()).get("labels", {})
        labels = read_volume(labels_path).array
        if labels.shape == recon.array.shape and table:
            truth = label_means(labels, read_volume(activity_path).array, table)
            rec = label_means(labels, recon.array, table)
            result["per_label"] = {
                name: {"recon_mean_bq_ml": round(rec[name], 3), "truth_mean_bq_ml": round(truth[name], 3),
                       "relative_error": (round(rec[name] / truth[name] - 1.0, 5) if truth[name] > 0 else None)}
                for name in truth}
    progress(1.0, "reconstruction written")
    return result
