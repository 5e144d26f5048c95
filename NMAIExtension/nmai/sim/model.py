"""The emission forward model shared by the simulator and the reconstruction.

Expected prompts in LOR i of slice s::

    ȳ_is = c_is · [A · G(m ⊙ x)]_is + b_is,      c_is = κ · n_i · a_is · T_eff · V_vox · f

* x: activity concentration (Bq/ml) at scan start, image layout (pixels, slices);
* m: transaxial FOV mask; G: Gaussian PSF (image space, 3-D, integrated over the voxel, self-adjoint);
* A: Joseph line integrals (mm), :mod:`nmai.sim.projector`;
* κ: detection probability per unit path (:meth:`Scanner.lor_weight`), n_i: normalisation
  (crystal efficiencies × geometric efficiency), a_is = exp(−∫μ) the attenuation factor;
* T_eff = ∫ exp(−λt) dt over the frame (s), V_vox the voxel volume (ml), f the count fraction;
* b: expected scatter + randoms (counts).

So a reconstruction whose model uses the same κ, T_eff and V_vox returns Bq/ml: the calibration goes
through the sensitivity image Gᵀ Aᵀ c, not through a fitted factor.
"""

from __future__ import annotations

import math

import numpy as np

from .projector import Grid2D, SystemMatrix


def gaussian_taps(fwhm_mm: float, spacing_mm: float) -> np.ndarray:
    """Symmetric 1-D kernel: a Gaussian of the given FWHM integrated over each voxel, normalised."""
    sigma = fwhm_mm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / spacing_mm
    if sigma <= 1e-3:
        return np.ones(1)
    radius = max(1, int(math.ceil(3.0 * sigma + 0.5)))
    edges = (np.arange(-radius, radius + 2) - 0.5) / (sigma * math.sqrt(2.0))
    from scipy.special import erf

    w = np.diff(0.5 * (1.0 + erf(edges)))
    return w / w.sum()


class GaussianPSF:
    """Separable 3-D Gaussian blur on (ny, nx, slices) images stored as (pixels, slices) tensors.

    Zero padding and symmetric taps make it a symmetric matrix, so it is its own adjoint.
    """

    def __init__(self, grid: Grid2D, slice_mm: float, fwhm_mm: float, axial_fwhm_mm: float | None = None):
        self.grid = grid
        self.fwhm_mm = float(fwhm_mm)
        axial = self.fwhm_mm if axial_fwhm_mm is None else float(axial_fwhm_mm)
        self.taps = (gaussian_taps(fwhm_mm, grid.dy), gaussian_taps(fwhm_mm, grid.dx),
                     gaussian_taps(axial, slice_mm))

    @property
    def identity(self) -> bool:
        return all(len(t) == 1 for t in self.taps)

    def __call__(self, x):
        if self.identity:
            return x
        n_slices = x.shape[1]
        v = x.reshape(self.grid.ny, self.grid.nx, n_slices)
        for axis, taps in enumerate(self.taps):
            r = len(taps) // 2
            if r == 0:
                continue
            out = v * float(taps[r])
            n = v.shape[axis]
            for k in range(1, min(r, n - 1) + 1):
                w = float(taps[r + k])
                # out[i] += w * (v[i-k] + v[i+k]) with zeros outside
                out.narrow(axis, k, n - k).add_(v.narrow(axis, 0, n - k), alpha=w)
                out.narrow(axis, 0, n - k).add_(v.narrow(axis, k, n - k), alpha=w)
            v = out
        return v.reshape(-1, n_slices)

    def to_numpy_volume(self, array: np.ndarray) -> np.ndarray:
        """Blur a [k, j, i] numpy volume (used to make blurred 'truth' for comparisons)."""
        import torch

        s = array.shape[0]
        x = torch.from_numpy(np.ascontiguousarray(array.reshape(s, -1).T, dtype=np.float32))
        return self(x).numpy().T.reshape(array.shape)


def volume_to_columns(array: np.ndarray):
    """[k, j, i] numpy → (pixels, slices) float32 torch tensor."""
    import torch

    s = array.shape[0]
    return torch.from_numpy(np.ascontiguousarray(np.asarray(array, dtype=np.float32).reshape(s, -1).T))


def columns_to_volume(x, grid: Grid2D) -> np.ndarray:
    """(pixels, slices) tensor → [k, j, i] float32 numpy."""
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    return np.ascontiguousarray(a.T.reshape(a.shape[1], grid.ny, grid.nx), dtype=np.float32)


def sino_to_rows(sino: np.ndarray):
    """(slices, views, bins) numpy → (LORs, slices) float32 tensor."""
    import torch

    s = sino.shape[0]
    return torch.from_numpy(np.ascontiguousarray(np.asarray(sino, dtype=np.float32).reshape(s, -1).T))


def rows_to_sino(y, n_views: int, n_bins: int) -> np.ndarray:
    a = y.detach().cpu().numpy() if hasattr(y, "detach") else np.asarray(y)
    return np.ascontiguousarray(a.T.reshape(a.shape[1], n_views, n_bins))


class EmissionModel:
    """ȳ = c ⊙ A G(m x) + b for one acquisition, with ordered-subset views of it."""

    def __init__(self, sm: SystemMatrix, psf: GaussianPSF, fov_mask: np.ndarray, mult, background=None):
        import torch

        self.sm, self.psf = sm, psf
        self.mask = torch.from_numpy(np.asarray(fov_mask, dtype=np.float32).reshape(-1, 1))
        self.mult = mult                                        # (LORs, slices)
        self.background = background if background is not None else torch.zeros_like(mult)
        self._subset_cache: dict = {}

    @property
    def n_slices(self) -> int:
        return int(self.mult.shape[1])

    def _rows(self, k: int, n_subsets: int):
        import torch

        key = (k, n_subsets)
        if key not in self._subset_cache:
            if n_subsets == 1:
                self._subset_cache[key] = (self.mult, self.background)
            else:
                idx = torch.from_numpy(self.sm.rows_of_subset(k, n_subsets))
                self._subset_cache[key] = (self.mult.index_select(0, idx), self.background.index_select(0, idx))
        return self._subset_cache[key]

    def subset_rows(self, y, k: int, n_subsets: int):
        import torch

        if n_subsets == 1:
            return y
        return y.index_select(0, torch.from_numpy(self.sm.rows_of_subset(k, n_subsets)))

    def project(self, x, k: int = 0, n_subsets: int = 1):
        """Linear part c ⊙ A G(m x)."""
        c, _ = self._rows(k, n_subsets)
        return c * self.sm.forward(self.psf(x * self.mask), k, n_subsets)

    def backproject(self, y, k: int = 0, n_subsets: int = 1):
        """Adjoint of :meth:`project`: m Gᵀ Aᵀ (c ⊙ y)."""
        c, _ = self._rows(k, n_subsets)
        return self.psf(self.sm.back(c * y, k, n_subsets)) * self.mask

    def expected(self, x, k: int = 0, n_subsets: int = 1):
        _, b = self._rows(k, n_subsets)
        return self.project(x, k, n_subsets) + b

    def sensitivity(self, k: int = 0, n_subsets: int = 1):
        import torch

        c, _ = self._rows(k, n_subsets)
        return self.backproject(torch.ones_like(c), k, n_subsets)
