"""Classical image filters. The Gaussian post-filter is the baseline every denoising method must beat."""

from __future__ import annotations

import math

import numpy as np

from .errors import NMAIError
from .volume import Volume

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def gaussian_sigma_voxels(fwhm_mm, spacing) -> tuple[float, float, float]:
    """Per-axis σ in voxels, array order (k, j, i), for an isotropic FWHM in mm (or one per i, j, k axis)."""
    fwhm = np.broadcast_to(np.asarray(fwhm_mm, dtype=float), (3,))
    if np.any(fwhm < 0) or not np.all(np.isfinite(fwhm)):
        raise NMAIError(f"FWHM must be a finite number ≥ 0 mm, got {fwhm_mm}")
    sigma_ijk = fwhm * FWHM_TO_SIGMA / np.asarray(spacing, dtype=float)
    return tuple(float(s) for s in sigma_ijk[::-1])


def gaussian_filter(volume: Volume, fwhm_mm, progress=None) -> Volume:
    """Gaussian post-filter with FWHM in millimetres, honouring anisotropic voxel spacing.

    Borders reflect, so the total activity is conserved and uniform regions stay unbiased at the edge.
    """
    from scipy.ndimage import gaussian_filter as _gf

    sigma = gaussian_sigma_voxels(fwhm_mm, volume.spacing)
    if progress:
        progress(0.0, f"Gaussian filter, FWHM {fwhm_mm} mm")
    data = volume.array.astype(np.float32, copy=False)
    out = data.copy() if not any(sigma) else _gf(data, sigma=sigma, mode="reflect", truncate=4.0)
    if progress:
        progress(1.0, "filtered")
    return volume.derive(out.astype(np.float32), method="gaussian",
                         parameters={"fwhm_mm": float(np.mean(fwhm_mm))})
