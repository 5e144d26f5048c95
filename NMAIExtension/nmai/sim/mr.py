"""MR images of a phantom: two-point Dixon (water, fat, in-phase, opposed-phase) and T1-weighted.

From per-voxel proton density PD, fat fraction FF and relative T1w signal (partial-volume averages of the
tissue values in :mod:`nmai.sim.tissues`):

* water = PD·(1−FF), fat = PD·FF, in-phase = water + fat, opposed-phase = |water − fat|;
* T1-weighted = T1w signal (fat and fatty marrow bright, cortical bone, air and lung dark);

each multiplied by one smooth receive-coil bias field (exp of a low-frequency random field, about ±25 %,
shared by all images of the phantom, as in one exam) and magnitude (Rician) noise, then scaled to
arbitrary units (1000 ≈ pure fat, no bias). Cortical bone and air are both dark, as in real MR, which is
what makes MR-based attenuation correction hard.
"""

from __future__ import annotations

import numpy as np

SCALE = 1000.0


def bias_field(shape, spacing, origin, rng: np.random.Generator, strength: float = 0.25) -> np.ndarray:
    """exp(strength · f), f a smooth random field (wavelengths 250–700 mm, unit variance)."""
    nz, ny, nx = shape
    x = origin[0] + spacing[0] * np.arange(nx)
    y = origin[1] + spacing[1] * np.arange(ny)
    z = origin[2] + spacing[2] * np.arange(nz)
    field = np.zeros(shape, np.float32)
    n = 6
    for _ in range(n):
        k = rng.normal(size=3)
        k = k / np.linalg.norm(k) * 2 * np.pi / rng.uniform(250.0, 700.0)
        ph = rng.uniform(0, 2 * np.pi)
        phase = k[0] * x[None, None, :] + k[1] * y[None, :, None] + k[2] * z[:, None, None] + ph
        field += np.sin(phase).astype(np.float32)
    field /= np.sqrt(n / 2.0)
    return np.exp(strength * field).astype(np.float32)


def _rician(signal: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    re = signal + rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    im = rng.normal(0.0, sigma, signal.shape).astype(np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)


def mr_images(pd: np.ndarray, ff: np.ndarray, t1w: np.ndarray, spacing, origin, rng: np.random.Generator,
              noise: float = 0.015, bias: float = 0.25) -> dict[str, np.ndarray]:
    """Arrays (same shape as the inputs) for mr_water, mr_fat, mr_in_phase, mr_opposed_phase, mr_t1."""
    b = bias_field(pd.shape, spacing, origin, rng, bias)
    water = pd * (1.0 - ff) * b
    fat = pd * ff * b
    out = {
        "mr_water": _rician(water, noise, rng),
        "mr_fat": _rician(fat, noise, rng),
        "mr_in_phase": _rician(water + fat, noise, rng),
        "mr_opposed_phase": _rician(np.abs(water - fat), noise, rng),
        "mr_t1": _rician(t1w * b, noise, rng),
    }
    return {k: (v * SCALE).astype(np.float32) for k, v in out.items()}
