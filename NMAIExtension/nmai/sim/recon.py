"""Reconstruct a stored acquisition (OSEM), optionally attenuation-corrected with another μ-map.

The acquisition was simulated with the true μ-map; reconstructing with a different one (a Dixon μ-map, a
deep-learning pseudo-CT, ...) gives exactly the PET error that μ-map causes. A μ-map on another grid is
resampled (linear, SimpleITK) to the acquisition grid; outside its field of view μ is taken as 0.
"""

from __future__ import annotations

import numpy as np

from ..errors import NMAIError
from ..progress import as_progress
from ..volume import Volume
from .acquisition import Acquisition
from .model import EmissionModel, GaussianPSF, columns_to_volume, sino_to_rows, volume_to_columns
from .osem import osem
from .projector import system_matrix

DEFAULT_ITERATIONS = 3
DEFAULT_SUBSETS = 14   # 224 views → 16 views per subset


def resample_to(volume: Volume, reference: Volume, *, interpolator: str = "linear",
                default: float = 0.0) -> Volume:
    """``volume`` on ``reference``'s grid (SimpleITK, LPS physical space)."""
    if volume.same_grid(reference, tol=1e-3):
        return volume
    import SimpleITK as sitk

    from ..io import to_sitk

    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor}[interpolator]
    out = sitk.Resample(to_sitk(volume.derive(volume.array.astype(np.float32))), to_sitk(reference),
                        sitk.Transform(), interp, float(default), sitk.sitkFloat32)
    return reference.derive(sitk.GetArrayFromImage(out), units=volume.units, modality=volume.modality,
                            resampled_from=volume.metadata.get("source", "memory"))


def prepare_mumap(mumap: Volume, acq: Acquisition) -> Volume:
    if mumap.units not in ("cm-1", "1"):
        raise NMAIError(f"the μ-map must be in cm-1 (μ at 511 keV), got {mumap.units}; convert a CT with "
                        "nmai.mu.hu_to_mu first")
    a = mumap.array
    if not np.all(np.isfinite(a)):
        raise NMAIError("the μ-map contains NaN/infinite voxels; replace them before reconstructing")
    if a.min() < 0:
        raise NMAIError(f"the μ-map has negative values (min {float(a.min()):.4g} cm-1); clip it to >= 0")
    if float(a.max()) > 1.0:
        raise NMAIError(f"μ-map maximum {float(a.max()):.3g} cm-1 is not a 511 keV μ-map (bone ≈ 0.17); "
                        "check its units")
    ref = acq.image_volume(np.zeros((acq.n_slices, acq.grid.ny, acq.grid.nx), np.float32), units="cm-1")
    return resample_to(mumap, ref)


def reconstruct(acq: Acquisition, mumap: Volume, *, iterations: int = DEFAULT_ITERATIONS,
                subsets: int = DEFAULT_SUBSETS, frame: int | None = None, psf: bool = True,
                postfilter_mm: float = 0.0, progress=None, return_model: bool = False):
    """OSEM image (Volume, Bq/ml at scan start, modality PT) of ``acq`` attenuation-corrected with ``mumap``.

    ``frame`` None sums all frames; ``psf`` models the scanner resolution in the system matrix (as clinical
    'PSF'/'TrueX' reconstructions do); ``postfilter_mm`` applies a Gaussian of that FWHM afterwards.
    """
    import torch

    progress = as_progress(progress)
    if iterations < 1 or subsets < 1:
        raise NMAIError("iterations and subsets must be >= 1")
    if subsets > acq.scanner.n_views:
        raise NMAIError(f"at most {acq.scanner.n_views} subsets for this scanner, got {subsets}")
    n_frames = acq.prompts.shape[0]
    if frame is not None and not 0 <= frame < n_frames:
        raise NMAIError(f"frame {frame} does not exist; the acquisition has frames 0..{n_frames - 1}")
    mu = prepare_mumap(mumap, acq)
    sm = system_matrix(acq.scanner, acq.grid)
    progress(0.02, "attenuation factors")
    att = torch.exp(-0.1 * sm.forward(volume_to_columns(mu.array)))
    t_eff = acq.frame_weight(frame)
    share = t_eff / acq.frame_weight(None)
    kappa = acq.scanner.lor_weight(acq.grid.pixel_area_mm2)
    norm_rows = torch.from_numpy(np.ascontiguousarray(acq.norm, dtype=np.float32).reshape(-1, 1))
    mult = att * (norm_rows * float(kappa * t_eff * acq.voxel_ml * acq.count_fraction))
    background = sino_to_rows(acq.background) * float(share * acq.count_fraction)
    fwhm = acq.scanner.resolution_fwhm_mm if psf else 0.0
    model = EmissionModel(sm, GaussianPSF(acq.grid, acq.slice_mm, fwhm),
                          acq.grid.fov_mask(acq.scanner.transaxial_fov_mm), mult, background)
    y = acq.prompts.sum(axis=0) if frame is None else acq.prompts[frame]
    y = sino_to_rows(y)
    x = osem(y, model, iterations, subsets, progress=progress.sub(0.05, 0.97))
    image = columns_to_volume(x, acq.grid)
    if postfilter_mm > 0:
        image = GaussianPSF(acq.grid, acq.slice_mm, postfilter_mm).to_numpy_volume(image)
    vol = acq.image_volume(image.astype(np.float32), modality="PT", units="Bq/ml")
    vol.metadata.update({
        "reconstruction": {"algorithm": "OSEM", "iterations": iterations, "subsets": subsets,
                           "psf_fwhm_mm": fwhm, "postfilter_fwhm_mm": postfilter_mm,
                           "frame": frame, "count_fraction": acq.count_fraction,
                           "attenuation_map": mumap.metadata.get("source", "given μ-map")},
        "decay_corrected_to": "scan start",
    })
    for key in ("suv_bw_factor", "weight_kg", "injected_dose_bq", "dose_at_scan_start_bq", "radiopharmaceutical"):
        if key in acq.info:
            vol.metadata[key] = acq.info[key]
    progress(1.0, "reconstruction done")
    return (vol, model, y) if return_model else vol
