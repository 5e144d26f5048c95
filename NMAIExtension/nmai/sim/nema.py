"""NEMA NU 2 / IEC 61675-1 body phantom (image-quality phantom).

Interior cross-section (mm): a half-circle of radius 147 (anterior) on a 140 mm wide, 77 mm deep base
whose corners are quarter circles of radius 77 — 294 mm wide, 224 mm high — with 3 mm PMMA walls;
interior length 180 mm with 10 mm end plates. Six spheres of inner diameter 10, 13, 17, 22, 28 and
37 mm (1 mm PMMA wall) have their centres on a 114.4 mm diameter circle around the lung insert, all in
one transverse plane (z = 0, 70 mm from the lid). The lung insert is a PMMA cylinder (outer diameter
50 mm, 4 mm wall) filled with low-density material (~0.3 g/ml, no activity) over the whole length.
The phantom lies on its flat side (posterior, +y); the lung insert is at x = y = 0.

Activity (NEMA NU 2-2012): background 5.3 kBq/ml at scan start, spheres at ``sphere_ratio`` × background
(4:1 by default; 8:1 is the other standard ratio), no activity in the lung insert and walls.
"""

from __future__ import annotations

import numpy as np

from .shapes import Canvas, cylinder_z, ellipsoid
from .tissues import SPHERE_LABEL_BASE, L

SPHERE_DIAMETERS_MM = (10.0, 13.0, 17.0, 22.0, 28.0, 37.0)
SPHERE_ANGLES_DEG = {37.0: 180.0, 28.0: 240.0, 22.0: 300.0, 17.0: 0.0, 13.0: 60.0, 10.0: 120.0}
SPHERE_CIRCLE_RADIUS_MM = 57.2
BACKGROUND_BQ_ML = 5300.0
Z_LID, LENGTH, END_WALL, WALL = 70.0, 180.0, 10.0, 3.0
HALF_WIDTH, HALF_HEIGHT = 150.0 + 2.0, 115.0 + 2.0     # outer extent (with a little margin)


def _body(margin: float):
    """Cross-section of the phantom interior grown by ``margin`` (mm), any z."""
    r_top, r_corner = 147.0 + margin, 77.0 + margin
    yc = 35.0        # centre of the half-circle (posterior of the lung insert)

    def fn(X, Y, Z):
        top = (Y <= yc) & (X ** 2 + (Y - yc) ** 2 <= r_top ** 2)
        base = (Y > yc) & (Y <= yc + r_corner) & (np.abs(X) <= 70.0)
        corner = (Y > yc) & ((np.abs(X) - 70.0) ** 2 + (Y - yc) ** 2 <= r_corner ** 2)
        return top | base | corner
    return fn


def sphere_centres() -> dict[float, np.ndarray]:
    out = {}
    for d in SPHERE_DIAMETERS_MM:
        a = np.radians(SPHERE_ANGLES_DEG[d])
        out[d] = np.array([SPHERE_CIRCLE_RADIUS_MM * np.cos(a), -SPHERE_CIRCLE_RADIUS_MM * np.sin(a), 0.0])
    return out


def paint_nema(cv: Canvas) -> dict:
    z_in0, z_in1 = Z_LID - LENGTH, Z_LID
    big = (np.array([-160.0, -160.0, z_in0 - END_WALL]), np.array([160.0, 160.0, z_in1 + END_WALL]))
    outer = _body(WALL)
    inner = _body(0.0)
    cv.paint(L("pmma"), (lambda X, Y, Z: outer(X, Y, Z) & (Z >= z_in0 - END_WALL) & (Z <= z_in1 + END_WALL), big))
    cv.paint(L("water"), (lambda X, Y, Z: inner(X, Y, Z) & (Z >= z_in0) & (Z <= z_in1), big))
    cv.paint(L("pmma"), cylinder_z(0.0, 0.0, 25.0, 25.0, z_in0, z_in1))
    cv.paint(L("lung_insert"), cylinder_z(0.0, 0.0, 21.0, 21.0, z_in0, z_in1))
    info = {}
    for i, (d, c) in enumerate(sphere_centres().items()):
        r = d / 2.0
        cv.paint(L("pmma"), ellipsoid(c, (r + 1.0,) * 3))
        cv.paint(SPHERE_LABEL_BASE + i, ellipsoid(c, (r,) * 3))
        info[f"sphere_{int(d)}mm"] = {"label": SPHERE_LABEL_BASE + i, "centre_lps_mm": c.tolist(),
                                      "inner_diameter_mm": d, "volume_ml": 4 / 3 * np.pi * r ** 3 / 1000}
    return info
