"""Image-quality and quantitation metrics for PET denoising (engine; used by the CLI, evaluation and panel).

All functions take arrays ``[k, j, i]`` in the same units (SUV for the published comparisons) and boolean
masks on the same grid.

* ``psnr_db``: 20 log10(peak / RMSE) inside ``mask``, peak = the reference's maximum inside the mask.
* ``nrmse``: RMSE / mean of the reference inside ``mask``.
* ``ssim``: structural similarity (Wang et al. 2004; Gaussian window σ = 1.5 voxels, K1 0.01, K2 0.03, data
  range = the reference's range in the mask), averaged over ``mask``.
* ``region_stats``: mean, SD, CoV, max, peak (the highest mean in a 1 ml sphere whose centre lies in the
  region — the PERCIST SUVpeak), voxel count and volume.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import NMAIError

PEAK_ML = 1.0


def _masked(test, reference, mask):
    test, reference = np.asarray(test, np.float64), np.asarray(reference, np.float64)
    mask = np.asarray(mask, bool)
    if test.shape != reference.shape or mask.shape != reference.shape:
        raise NMAIError(f"images and mask must share one grid: {test.shape}, {reference.shape}, {mask.shape}")
    if not mask.any():
        raise NMAIError("the mask is empty")
    return test, reference, mask


def psnr_db(test, reference, mask) -> float:
    t, r, m = _masked(test, reference, mask)
    mse = float(np.mean((t[m] - r[m]) ** 2))
    peak = float(r[m].max())
    return math.inf if mse == 0 else 10.0 * math.log10(peak * peak / mse)


def nrmse(test, reference, mask) -> float:
    t, r, m = _masked(test, reference, mask)
    return float(np.sqrt(np.mean((t[m] - r[m]) ** 2)) / abs(np.mean(r[m])))


def ssim(test, reference, mask, sigma: float = 1.5) -> float:
    from scipy.ndimage import gaussian_filter

    t, r, m = _masked(test, reference, mask)
    rng = float(r[m].max() - r[m].min()) or 1.0
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    g = lambda a: gaussian_filter(a, sigma, truncate=3.5)  # noqa: E731
    mt, mr = g(t), g(r)
    vt, vr, cov = g(t * t) - mt * mt, g(r * r) - mr * mr, g(t * r) - mt * mr
    s = ((2 * mt * mr + c1) * (2 * cov + c2)) / ((mt * mt + mr * mr + c1) * (vt + vr + c2))
    return float(s[m].mean())


def sphere_kernel(spacing, volume_ml: float = PEAK_ML) -> np.ndarray:
    """Normalised [k, j, i] kernel of a sphere of ``volume_ml`` (voxels whose centre lies inside)."""
    radius = (3.0 * volume_ml * 1000.0 / (4.0 * math.pi)) ** (1.0 / 3.0)  # mm: 6.2 mm for 1 ml
    half = [max(int(math.floor(radius / s)), 0) for s in (spacing[2], spacing[1], spacing[0])]
    zz, yy, xx = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, (spacing[2], spacing[1], spacing[0]))],
                             indexing="ij")
    k = ((xx ** 2 + yy ** 2 + zz ** 2) <= radius ** 2).astype(np.float64)
    return k / k.sum()


def region_stats(image, mask, spacing) -> dict:
    """Statistics of ``image`` in ``mask`` (spacing (i, j, k) mm); ``peak``: 1 ml sphere mean, centre in mask."""
    from scipy.ndimage import convolve

    img, mask = np.asarray(image, np.float64), np.asarray(mask, bool)
    if img.shape != mask.shape:
        raise NMAIError(f"image {img.shape} and region {mask.shape} are on different grids")
    if not mask.any():
        raise NMAIError("the region is empty")
    vals = img[mask]
    # the sphere mean only where the region is: convolve a bounding box around it
    idx = np.argwhere(mask)
    kernel = sphere_kernel(spacing)
    pad = np.array(kernel.shape) // 2
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, img.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    smooth = convolve(img[box], kernel, mode="nearest")
    peak = float(smooth[mask[box]].max())
    mean, sd = float(vals.mean()), float(vals.std(ddof=1)) if vals.size > 1 else 0.0
    return {"mean": mean, "sd": sd, "cov": sd / mean if mean else None, "max": float(vals.max()), "peak": peak,
            "voxels": int(vals.size), "volume_ml": float(vals.size * np.prod(spacing) / 1000.0)}


def body_mask(reference, fraction: float = 0.05) -> np.ndarray:
    """Voxels above ``fraction`` × the reference's 99.5th percentile (the body on a PET image)."""
    r = np.asarray(reference, np.float64)
    return r > fraction * float(np.percentile(r, 99.5))
