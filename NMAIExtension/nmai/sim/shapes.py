"""Painting procedural anatomy: a label canvas and geometric primitives (mm, LPS).

A primitive is ``(fn, (lo, hi))``: ``fn(X, Y, Z)`` → bool for broadcastable coordinate arrays, and a
bounding box that contains it. :meth:`Canvas.paint` evaluates it only inside its bounding box, so painting
is cheap however large the canvas. Later paints overwrite earlier ones unless restricted by ``where``
(labels that may be overwritten) or ``keep`` (labels that must not be).
"""

from __future__ import annotations

import numpy as np


def rotation(z_deg: float = 0.0, y_deg: float = 0.0, x_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix R = Rz · Ry · Rx (columns: the rotated local axes in LPS)."""
    a, b, c = np.radians([z_deg, y_deg, x_deg])
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    return rz @ ry @ rx


def _box(c, r):
    c, r = np.asarray(c, float), np.asarray(r, float)
    return c - r, c + r


def ellipsoid(c, r, rot=None):
    c, r = np.asarray(c, float), np.asarray(r, float)
    if rot is None:
        def fn(X, Y, Z):
            return ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1.0
        return fn, _box(c, r)
    rot = np.asarray(rot, float)

    def fn(X, Y, Z):
        dx, dy, dz = X - c[0], Y - c[1], Z - c[2]
        s = 0.0
        for i in range(3):
            u = rot[0, i] * dx + rot[1, i] * dy + rot[2, i] * dz
            s = s + (u / r[i]) ** 2
        return s <= 1.0
    return fn, _box(c, np.full(3, r.max()))


def ellipsoid_shell(c, r, thickness, rot=None):
    outer, box = ellipsoid(c, r, rot)
    inner, _ = ellipsoid(c, np.maximum(np.asarray(r, float) - thickness, 1e-3), rot)
    return (lambda X, Y, Z: outer(X, Y, Z) & ~inner(X, Y, Z)), box


def cylinder_z(cx, cy, a, b, z0, z1):
    """Elliptic cylinder along z; ``a``/``b`` constants or (z_knots, values) tapered radii."""
    def radius(v, Z):
        if isinstance(v, tuple):
            return np.interp(Z, v[0], v[1])
        return v

    amax = max(a[1]) if isinstance(a, tuple) else a
    bmax = max(b[1]) if isinstance(b, tuple) else b

    def fn(X, Y, Z):
        return (((X - cx) / radius(a, Z)) ** 2 + ((Y - cy) / radius(b, Z)) ** 2 <= 1.0) & (Z >= z0) & (Z <= z1)
    return fn, (np.array([cx - amax, cy - bmax, z0]), np.array([cx + amax, cy + bmax, z1]))


def capsule(p0, p1, r):
    """All points within ``r`` of the segment p0–p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    dd = max(float(d @ d), 1e-12)

    def fn(X, Y, Z):
        t = ((X - p0[0]) * d[0] + (Y - p0[1]) * d[1] + (Z - p0[2]) * d[2]) / dd
        t = np.clip(t, 0.0, 1.0)
        return (X - p0[0] - t * d[0]) ** 2 + (Y - p0[1] - t * d[1]) ** 2 + (Z - p0[2] - t * d[2]) ** 2 <= r * r
    return fn, (np.minimum(p0, p1) - r, np.maximum(p0, p1) + r)


def box(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    def fn(X, Y, Z):
        return (X >= lo[0]) & (X <= hi[0]) & (Y >= lo[1]) & (Y <= hi[1]) & (Z >= lo[2]) & (Z <= hi[2])
    return fn, (lo, hi)


def intersect(a, b):
    (fa, ba), (fb, bb) = a, b
    return (lambda X, Y, Z: fa(X, Y, Z) & fb(X, Y, Z)), (np.maximum(ba[0], bb[0]), np.minimum(ba[1], bb[1]))


def subtract(a, b):
    (fa, ba), (fb, _) = a, b
    return (lambda X, Y, Z: fa(X, Y, Z) & ~fb(X, Y, Z)), ba


def halfspace(normal, point, box_of):
    """Points p with (p − point)·normal ≥ 0, restricted to the bounding box of ``box_of``."""
    n, p = np.asarray(normal, float), np.asarray(point, float)
    return (lambda X, Y, Z: (X - p[0]) * n[0] + (Y - p[1]) * n[1] + (Z - p[2]) * n[2] >= 0), box_of[1]


class Canvas:
    """A uint8 label volume ``labels[k, j, i]`` with voxel centres at origin + index · spacing (mm)."""

    def __init__(self, shape, spacing, origin):
        self.labels = np.zeros(shape, dtype=np.uint8)
        self.spacing = tuple(float(s) for s in spacing)
        self.origin = tuple(float(o) for o in origin)
        nz, ny, nx = shape
        self.x = self.origin[0] + self.spacing[0] * np.arange(nx)
        self.y = self.origin[1] + self.spacing[1] * np.arange(ny)
        self.z = self.origin[2] + self.spacing[2] * np.arange(nz)

    def _index(self, axis_coords, lo, hi, step):
        i0 = int(np.searchsorted(axis_coords, lo - 1e-6 * step))
        i1 = int(np.searchsorted(axis_coords, hi + 1e-6 * step, side="right"))
        return slice(i0, i1) if i1 > i0 else None

    def region(self, bbox):
        lo, hi = bbox
        sx = self._index(self.x, lo[0], hi[0], self.spacing[0])
        sy = self._index(self.y, lo[1], hi[1], self.spacing[1])
        sz = self._index(self.z, lo[2], hi[2], self.spacing[2])
        if sx is None or sy is None or sz is None:
            return None
        return sz, sy, sx

    def coords(self, reg):
        sz, sy, sx = reg
        return self.x[sx][None, None, :], self.y[sy][None, :, None], self.z[sz][:, None, None]

    def paint(self, label: int, shape, where=None, keep=None) -> int:
        """Set ``label`` inside ``shape``; returns the number of voxels painted."""
        fn, bbox = shape
        reg = self.region(bbox)
        if reg is None:
            return 0
        sub = self.labels[reg]
        m = np.broadcast_to(fn(*self.coords(reg)), sub.shape).copy()
        if where is not None:
            m &= np.isin(sub, np.asarray(where, dtype=np.uint8))
        if keep is not None:
            m &= ~np.isin(sub, np.asarray(keep, dtype=np.uint8))
        sub[m] = label
        return int(m.sum())

    def inside(self, shape) -> np.ndarray:
        """Full-size boolean mask of a shape."""
        out = np.zeros(self.labels.shape, dtype=bool)
        fn, bbox = shape
        reg = self.region(bbox)
        if reg is not None:
            out[reg] = np.broadcast_to(fn(*self.coords(reg)), out[reg].shape)
        return out

    def label_at(self, point) -> int:
        i = int(round((point[0] - self.origin[0]) / self.spacing[0]))
        j = int(round((point[1] - self.origin[1]) / self.spacing[1]))
        k = int(round((point[2] - self.origin[2]) / self.spacing[2]))
        nz, ny, nx = self.labels.shape
        if 0 <= i < nx and 0 <= j < ny and 0 <= k < nz:
            return int(self.labels[k, j, i])
        return -1
