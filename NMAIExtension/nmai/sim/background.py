"""Additive backgrounds: scatter and randoms, at the scanner's documented fractions.

Scatter (model, not Monte Carlo). A photon pair on LOR i is lost from the trues with probability
1 − exp(−∫μ); to first order the pairs in which one photon Compton-scatters once and both still escape
are proportional to  (unattenuated emission) × exp(−∫μ) × ∫μ.  That source term — which is how the
μ-map feeds the scatter — is spread over the sinogram by a broad Gaussian (σ 60 mm radially, 0.25 rad
in angle, 20 mm axially: the low-frequency shape of single-scatter sinograms, with tails outside the
body), multiplied by the detector normalisation, and scaled so that scatter / (trues + scatter) equals
the scanner's scatter fraction (default 0.37) over the whole acquisition. Larger, denser bodies get
relatively more scatter in their slices, but the global fraction is fixed.

Randoms. The delayed-window estimate 2τ S_a S_b is modelled with uniform singles per crystal within a
slice, so randoms_i ∝ ε_a ε_b on every LOR inside the transaxial FOV (including those outside the body).
The axial profile follows the square of the singles, which come from activity within ±60 mm (σ) of the
slice. The total is scaled so that randoms / prompts equals the scanner's randoms fraction (default 0.25,
FDG whole body at clinical count rates).

Both are returned as expectations (noise-free); the reconstruction uses them as the known additive term
(perfect scatter and randoms estimates), so differences between reconstructions with different μ-maps
come from attenuation correction alone.
"""

from __future__ import annotations

import numpy as np

from .scanner import Scanner


def _gauss_fft(a: np.ndarray, sigma: float, axis: int, mode: str) -> np.ndarray:
    """Gaussian blur along one axis by FFT (fast for the wide kernels used here).

    mode: "zero" (zero padding), "wrap" (periodic) or "edge" (edge values repeated)."""
    import scipy.fft as sfft

    n = a.shape[axis]
    if sigma <= 0 or n < 2:
        return a
    if mode == "edge":
        pad = int(np.ceil(3 * sigma))
        widths = [(0, 0)] * a.ndim
        widths[axis] = (pad, pad)
        out = _gauss_fft(np.pad(a, widths, mode="edge"), sigma, axis, "zero")
        return np.take(out, np.arange(pad, pad + n), axis=axis)
    m = n if mode == "wrap" else sfft.next_fast_len(n + 2 * int(np.ceil(3 * sigma)))
    f = sfft.rfftfreq(m)
    transfer = np.exp(-2.0 * (np.pi * f * sigma) ** 2).astype(np.float32)
    shape = [1] * a.ndim
    shape[axis] = transfer.size
    spec = sfft.rfft(a, n=m, axis=axis, workers=-1)
    spec *= transfer.reshape(shape)
    out = sfft.irfft(spec, n=m, axis=axis, workers=-1)
    return np.take(out, np.arange(n), axis=axis).astype(np.float32)


def _blur_sino(src: np.ndarray, scanner: Scanner, slice_mm: float, sigma_s_mm: float = 60.0,
               sigma_phi_rad: float = 0.25, sigma_z_mm: float = 20.0) -> np.ndarray:
    """Gaussian blur of (slices, views, bins) in radial (bins), angular (views, periodic with the
    t → −t flip at 180°) and axial directions."""
    n_views = scanner.n_views
    bin_mm = scanner.radius_mm * np.pi / scanner.n_crystals
    out = _gauss_fft(src, sigma_s_mm / bin_mm, axis=2, mode="zero")
    # views: extend to 360° (view v + V is view v with the radial axis flipped), blur circularly
    ext = np.concatenate([out, out[:, :, ::-1]], axis=1)
    out = _gauss_fft(ext, sigma_phi_rad / (np.pi / n_views), axis=1, mode="wrap")[:, :n_views]
    out = _gauss_fft(out, sigma_z_mm / slice_mm, axis=0, mode="edge")
    return np.ascontiguousarray(out, dtype=np.float32)


def scatter_shape(emission_unatt: np.ndarray, line_mu: np.ndarray, norm: np.ndarray, scanner: Scanner,
                  slice_mm: float) -> np.ndarray:
    """Unscaled scatter sinogram (slices, views, bins).

    ``emission_unatt``: κ·T·V·A·G x without attenuation or normalisation; ``line_mu``: ∫μ (dimensionless);
    ``norm``: (views, bins) normalisation.
    """
    source = emission_unatt * np.exp(-line_mu) * line_mu
    blurred = _blur_sino(source, scanner, slice_mm)
    blurred *= norm[None] * scanner.lor_in_fov()[None, None, :]
    return blurred


def randoms_shape(activity_per_slice: np.ndarray, scanner: Scanner, slice_mm: float,
                  efficiencies: np.ndarray | None = None) -> np.ndarray:
    """Unscaled randoms sinogram (slices, views, bins)."""
    from scipy.ndimage import gaussian_filter1d

    singles = np.asarray(activity_per_slice, dtype=np.float64)
    if singles.size > 1:
        singles = gaussian_filter1d(singles, 60.0 / slice_mm, mode="constant", truncate=3.0)
    eff = scanner.crystal_efficiencies() if efficiencies is None else efficiencies
    a, b = scanner.lor_crystals()
    pattern = (eff[a] * eff[b] * scanner.lor_in_fov()[None, :]).astype(np.float32)
    return (singles ** 2).astype(np.float32)[:, None, None] * pattern[None]


def scale_backgrounds(trues_total: float, scatter: np.ndarray, randoms: np.ndarray, scanner: Scanner,
                      scatter_fraction: float | None = None, randoms_fraction: float | None = None):
    """Scale the shapes in place so that S/(T+S) and R/(T+S+R) are the requested fractions.

    Returns (scatter_total, randoms_total)."""
    sf = scanner.scatter_fraction if scatter_fraction is None else scatter_fraction
    rf = scanner.randoms_fraction if randoms_fraction is None else randoms_fraction
    if not (0 <= sf < 1 and 0 <= rf < 1):
        raise ValueError("scatter and randoms fractions must be in [0, 1)")
    s_sum = float(scatter.sum(dtype=np.float64))
    s_total = trues_total * sf / (1.0 - sf) if s_sum > 0 else 0.0
    scatter *= np.float32(s_total / s_sum) if s_sum > 0 else np.float32(0.0)
    r_sum = float(randoms.sum(dtype=np.float64))
    r_total = (trues_total + s_total) * rf / (1.0 - rf) if r_sum > 0 else 0.0
    randoms *= np.float32(r_total / r_sum) if r_sum > 0 else np.float32(0.0)
    return s_total, r_total
