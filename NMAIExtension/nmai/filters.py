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


def richardson_lucy(volume: Volume, fwhm_mm, iterations: int) -> Volume:
    """Richardson–Lucy deconvolution of a Gaussian blur of ``fwhm_mm`` (anisotropic voxels honoured).

    Image-space resolution recovery: ``x ← x · Gᵀ(y / G x)``, started from ``y``. It keeps the image
    non-negative and its total activity (borders reflect, as in :func:`gaussian_filter`), and sharpens with
    every iteration while amplifying noise, so it is run on a denoised image and stopped early. Separable
    scipy filters: SimpleITK's FFT ``RichardsonLucyDeconvolution`` gave the same image (3·10⁻⁵ mean relative
    difference, 192 × 192 × 300 voxels, 20 iterations) in 53 s against 13 s.
    """
    from scipy.ndimage import gaussian_filter as _gf

    if int(iterations) < 1:
        raise NMAIError(f"Richardson-Lucy needs at least 1 iteration, got {iterations}")
    sigma = gaussian_sigma_voxels(fwhm_mm, volume.spacing)
    y = np.maximum(volume.array.astype(np.float32), 0.0)
    floor = np.float32(1e-6 * float(y.max()) if y.max() > 0 else 1.0)
    x = y.copy()
    for _ in range(int(iterations)):
        blurred = _gf(x, sigma=sigma, mode="reflect", truncate=4.0)
        x *= _gf(y / np.maximum(blurred, floor), sigma=sigma, mode="reflect", truncate=4.0)
    return volume.derive(x, method="richardson_lucy",
                         parameters={"fwhm_mm": float(np.mean(fwhm_mm)), "iterations": int(iterations)})
