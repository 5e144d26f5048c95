"""Sparse system matrix of a ring scanner for one transaxial image grid, applied to all slices at once.

Each row of the matrix is one LOR (view-major: row = view · bins + bin), each column one pixel
(column = j · nx + i, matching ``Volume.array[k, j, i]``). Elements are Joseph line integrals (Joseph,
IEEE TMI 1:192, 1982): the LOR is sampled once per pixel column (or row, whichever axis it runs along
more), the image linearly interpolated between the two nearest pixels, and each sample weighted by the
path length per step (mm). ``A @ μ`` (μ in cm⁻¹, × 0.1) is therefore the attenuation line integral and
``A @ x`` the emission line integral.

The matrix is built once per (scanner geometry, grid) and cached in memory. Projection multiplies the
sparse (LORs × pixels) matrix with the dense (pixels × slices) image, so all slices go through one sparse
matrix product (torch CSR, multithreaded through MKL); the back-projector multiplies with the stored
transpose, so it is the exact adjoint.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from .scanner import Scanner


@dataclass(frozen=True)
class Grid2D:
    """Transaxial pixel grid in the scanner frame (mm; scanner axis at x = y = 0).

    Pixel (i, j) has its centre at (x0 + i·dx, y0 + j·dy); x is LPS x (patient left), y LPS y (posterior).
    """

    nx: int
    ny: int
    dx: float
    dy: float
    x0: float
    y0: float

    @classmethod
    def centred(cls, nx: int, ny: int, dx: float, dy: float | None = None) -> "Grid2D":
        dy = dx if dy is None else dy
        return cls(int(nx), int(ny), float(dx), float(dy), -(nx - 1) * dx / 2.0, -(ny - 1) * dy / 2.0)

    @property
    def n_pixels(self) -> int:
        return self.nx * self.ny

    @property
    def pixel_area_mm2(self) -> float:
        return self.dx * self.dy

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(ny, nx) arrays of pixel-centre x and y (mm)."""
        x = self.x0 + self.dx * np.arange(self.nx)
        y = self.y0 + self.dy * np.arange(self.ny)
        return np.meshgrid(x, y)

    def fov_mask(self, fov_mm: float) -> np.ndarray:
        """(ny, nx) True for pixels whose centre lies inside the transaxial FOV circle."""
        x, y = self.centres()
        return x * x + y * y <= (fov_mm / 2.0) ** 2

    def key(self) -> tuple:
        return (self.nx, self.ny, round(self.dx, 6), round(self.dy, 6), round(self.x0, 4), round(self.y0, 4))

    def to_dict(self) -> dict:
        return {"nx": self.nx, "ny": self.ny, "dx": self.dx, "dy": self.dy, "x0": self.x0, "y0": self.y0}

    @classmethod
    def from_dict(cls, d: dict) -> "Grid2D":
        return cls(int(d["nx"]), int(d["ny"]), float(d["dx"]), float(d["dy"]), float(d["x0"]), float(d["y0"]))


def _joseph_block(p1, p2, grid: Grid2D, along_x: bool):
    """COO entries (local row, column, weight) for LORs p1→p2 ((L, 2) arrays) sampled along one axis."""
    if along_x:
        a1, a2, b1, b2 = p1[:, 0], p2[:, 0], p1[:, 1], p2[:, 1]
        na, nb, da, db, a0, b0 = grid.nx, grid.ny, grid.dx, grid.dy, grid.x0, grid.y0
    else:
        a1, a2, b1, b2 = p1[:, 1], p2[:, 1], p1[:, 0], p2[:, 0]
        na, nb, da, db, a0, b0 = grid.ny, grid.nx, grid.dy, grid.dx, grid.y0, grid.x0
    length = np.hypot(a2 - a1, b2 - b1)
    slope = (b2 - b1) / (a2 - a1)                        # |slope| <= (db/da) by the choice of axis
    step = da * length / np.abs(a2 - a1)                 # path length per pixel step (mm)
    a = a0 + da * np.arange(na)                          # (na,)
    b = b1[:, None] + (a[None, :] - a1[:, None]) * slope[:, None]
    fb = (b - b0) / db
    j0 = np.floor(fb)
    f = fb - j0
    j0 = j0.astype(np.int64)
    inside = (a[None, :] >= np.minimum(a1, a2)[:, None]) & (a[None, :] <= np.maximum(a1, a2)[:, None])
    rows = np.broadcast_to(np.arange(len(a1))[:, None], fb.shape)
    ia = np.broadcast_to(np.arange(na)[None, :], fb.shape)
    out_r, out_c, out_w = [], [], []
    for jj, w in ((j0, 1.0 - f), (j0 + 1, f)):
        ok = (jj >= 0) & (jj < nb) & (w > 1e-7) & inside
        r = rows[ok]
        if along_x:
            col = jj[ok] * grid.nx + ia[ok]
        else:
            col = ia[ok] * grid.nx + jj[ok]
        out_r.append(r)
        out_c.append(col)
        out_w.append((w[ok] * step[r]).astype(np.float32))
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_w)


def build_system_matrix(scanner: Scanner, grid: Grid2D):
    """scipy CSR matrix (views·bins × ny·nx), float32, Joseph line-integral weights in mm."""
    import scipy.sparse as sp

    p1, p2 = scanner.lor_endpoints()
    n_views, n_bins = scanner.n_views, scanner.n_bins
    in_fov = scanner.lor_in_fov()
    rows, cols, vals = [], [], []
    chunk = max(1, 400_000 // max(1, n_bins * max(grid.nx, grid.ny)) + 1)
    for v0 in range(0, n_views, chunk):
        v1 = min(n_views, v0 + chunk)
        q1 = p1[v0:v1].reshape(-1, 2)
        q2 = p2[v0:v1].reshape(-1, 2)
        row_ids = (np.arange(v0, v1)[:, None] * n_bins + np.arange(n_bins)[None, :]).reshape(-1)
        keep = np.broadcast_to(in_fov[None, :], (v1 - v0, n_bins)).reshape(-1)
        d = np.abs(q2 - q1)
        along_x = d[:, 0] / grid.dx >= d[:, 1] / grid.dy
        for sel, flag in ((keep & along_x, True), (keep & ~along_x, False)):
            if not sel.any():
                continue
            r, c, w = _joseph_block(q1[sel], q2[sel], grid, along_x=flag)
            rows.append(row_ids[sel][r])
            cols.append(c)
            vals.append(w)
    m = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n_views * n_bins, grid.n_pixels), dtype=np.float32)
    return m.tocsr()


def _to_torch_csr(m):
    import warnings

    import torch

    m = m.tocsr()
    m.sort_indices()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(torch.from_numpy(m.indptr.astype(np.int64)),
                                       torch.from_numpy(m.indices.astype(np.int64)),
                                       torch.from_numpy(m.data.astype(np.float32)),
                                       size=m.shape, check_invariants=False)


class SystemMatrix:
    """The projector of one (scanner, grid): forward ``A @ x`` and exact adjoint ``Aᵀ @ y``.

    Images are (pixels, slices) float32 torch tensors, sinograms (LORs, slices); ``subset(k, K)`` gives
    the operator restricted to views v ≡ k (mod K) (ordered subsets).
    """

    def __init__(self, scanner: Scanner, grid: Grid2D):
        self.scanner, self.grid = scanner, grid
        self.csr = build_system_matrix(scanner, grid)
        self.n_rows, self.n_pixels = self.csr.shape
        self._ops: dict = {}

    @property
    def nnz(self) -> int:
        return int(self.csr.nnz)

    def rows_of_subset(self, k: int, n_subsets: int) -> np.ndarray:
        views = np.arange(k, self.scanner.n_views, n_subsets)
        return (views[:, None] * self.scanner.n_bins + np.arange(self.scanner.n_bins)[None, :]).reshape(-1)

    def _op(self, k: int, n_subsets: int):
        key = (k, n_subsets)
        if key not in self._ops:
            m = self.csr if n_subsets == 1 else self.csr[self.rows_of_subset(k, n_subsets)]
            self._ops[key] = (_to_torch_csr(m), _to_torch_csr(m.T.tocsr()))
        return self._ops[key]

    def forward(self, x, k: int = 0, n_subsets: int = 1):
        """(pixels, slices) → (LORs of the subset, slices)."""
        a, _ = self._op(k, n_subsets)
        return a @ x

    def back(self, y, k: int = 0, n_subsets: int = 1):
        """(LORs of the subset, slices) → (pixels, slices); the exact transpose of :meth:`forward`."""
        _, at = self._op(k, n_subsets)
        return at @ y


_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()
_CACHE_MAX = 4


def system_matrix(scanner: Scanner, grid: Grid2D) -> SystemMatrix:
    """Cached :class:`SystemMatrix` (at most a few kept, least recently used dropped)."""
    key = (scanner.key(), grid.key())
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE[key] = _CACHE.pop(key)
            return _CACHE[key]
    sm = SystemMatrix(scanner, grid)
    with _CACHE_LOCK:
        _CACHE[key] = sm
        while len(_CACHE) > _CACHE_MAX:
            _CACHE.pop(next(iter(_CACHE)))
    return sm


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()
