"""Head: scalp, skull (cortical shell 6–9 mm and skull base), air sinuses, CSF, grey and white matter
(cortical ribbon of varying thickness, deep grey nuclei, ventricles, cerebellum, brainstem), face, eyes,
mandible and neck. Used by the whole-body phantom and, at finer voxels, as the ``brain`` phantom.

Coordinates: LPS mm, vertex at z = 0 (see :mod:`nmai.sim.body`).
"""

from __future__ import annotations

import numpy as np

from .body import BodyFrame
from .shapes import Canvas, capsule, cylinder_z, ellipsoid, ellipsoid_shell, intersect
from .skeleton import CORT, TRAB, bone_capsule
from .tissues import L


def _waves(rng: np.random.Generator, n: int, wavelength: tuple[float, float]):
    return [(rng.normal(size=3) / np.linalg.norm(rng.normal(size=3) + 1e-9) * 2 * np.pi
             / rng.uniform(*wavelength), rng.uniform(0, 2 * np.pi)) for _ in range(n)]


def _field(waves, X, Y, Z):
    v = 0.0
    for k, ph in waves:
        v = v + np.sin(k[0] * X + k[1] * Y + k[2] * Z + ph)
    return v / np.sqrt(len(waves) / 2.0)


def paint_head(cv: Canvas, f: BodyFrame, rng: np.random.Generator, neck_depth: float = 300.0) -> dict:
    hs = f.head_scale
    t_skull = float(rng.uniform(6.0, 9.0))
    c = f.p(0.0, 5.0, 95.0)
    r_out = np.array([72.0, 92.0, 88.0]) * hs
    z_of = f.z

    # skull base: an inclined surface, ~88 mm below the vertex in front, ~180 mm at the back
    def base_depth(Y):
        return (134.0 + 0.51 * (Y - 5.0)) * hs

    def above_base(offset):
        return (lambda X, Y, Z: Z > -(base_depth(Y) + offset) * f.height_scale,
                (np.array([-300.0, -300.0, -1e4]), np.array([300.0, 300.0, 1e4])))

    scalp, mus, fat = L("scalp"), L("muscle"), L("fat_subcutaneous")
    # neck (fat layer, muscle), face, scalp
    nf = 0.4 * f.fat_mm
    zn0, zn1 = float(z_of(neck_depth)), float(z_of(150))
    cv.paint(fat, cylinder_z(0.0, 12.0, 55.0 * hs + nf, 58.0 * hs + nf, zn0, zn1))
    cv.paint(mus, cylinder_z(0.0, 12.0, 55.0 * hs, 58.0 * hs, zn0, zn1))
    cv.paint(scalp, ellipsoid(c, r_out + 6.0))
    cv.paint(mus, ellipsoid(f.p(0.0, -42.0 * hs, 160.0 * hs), np.array([60.0, 58.0, 64.0]) * hs))
    # skull vault and CSF space, only above the skull base
    cv.paint(CORT, intersect(ellipsoid_shell(c, r_out, t_skull), above_base(9.0)))
    cv.paint(L("csf"), intersect(ellipsoid(c, r_out - t_skull), above_base(0.0)))
    # skull base plate (cortical faces, trabecular core)
    plate = intersect(ellipsoid(c, r_out), (lambda X, Y, Z: (Z <= -base_depth(Y) * f.height_scale)
                                            & (Z > -(base_depth(Y) + 9.0) * f.height_scale), (c - r_out, c + r_out)))
    cv.paint(CORT, plate)
    core = intersect(ellipsoid(c, r_out - 2.5),
                     (lambda X, Y, Z: (Z <= -(base_depth(Y) + 2.5) * f.height_scale)
                      & (Z > -(base_depth(Y) + 6.5) * f.height_scale), (c - r_out, c + r_out)))
    cv.paint(TRAB, core, where=[CORT])
    # brain: grey matter, white matter with a smooth random boundary (cortical ribbon 2-8 mm)
    r_brain = r_out - t_skull - 3.0
    gm, wm, csf = L("brain_grey_matter"), L("brain_white_matter"), L("csf")
    cv.paint(gm, intersect(ellipsoid(c, r_brain), above_base(3.0)), where=[csf])
    wv = _waves(rng, 10, (25.0, 60.0))
    r_wm = r_brain * 0.86

    def wm_fn(X, Y, Z):
        q = ((X - c[0]) / r_wm[0]) ** 2 + ((Y - c[1]) / r_wm[1]) ** 2 + ((Z - c[2]) / r_wm[2]) ** 2
        return q <= (1.0 + 0.05 * _field(wv, X, Y, Z)) ** 2
    cv.paint(wm, intersect((wm_fn, (c - r_brain, c + r_brain)), above_base(12.0)), where=[gm])
    sulci = _waves(rng, 14, (10.0, 22.0))
    cv.paint(csf, ((lambda X, Y, Z: _field(sulci, X, Y, Z) > 1.6), (c - r_brain, c + r_brain)), where=[gm])
    for s in (-1, 1):
        cv.paint(gm, ellipsoid(c + np.array([s * 12.0, 4.0, -2.0]) * hs, np.array([9.0, 14.0, 9.0]) * hs))   # thalamus
        cv.paint(gm, ellipsoid(c + np.array([s * 22.0, -14.0, 8.0]) * hs, np.array([7.0, 15.0, 11.0]) * hs))  # striatum
        cv.paint(csf, ellipsoid(c + np.array([s * 11.0, -2.0, 22.0]) * hs,
                                np.array([5.0, 28.0, 8.0]) * hs))  # lateral ventricles
    cb = c + np.array([0.0, 50.0, -48.0]) * hs
    cv.paint(gm, intersect(ellipsoid(cb, np.array([46.0, 28.0, 20.0]) * hs), ellipsoid(c, r_out - t_skull - 1.0)),
             where=[csf, wm, gm])
    cv.paint(wm, ellipsoid(cb + [0, -4, 2], np.array([20.0, 12.0, 9.0]) * hs), where=[gm])
    cv.paint(wm, capsule(c + np.array([0.0, 14.0, -20.0]) * hs, f.p(0.0, 22.0, 185.0 * hs), 10.0 * hs))
    cv.paint(L("csf_spinal"), capsule(f.p(0.0, 22.0, 185.0 * hs), f.p(0.0, 30.0, neck_depth), 5.0))
    # air sinuses and nasal cavity, with a thin bony wall around the maxillary sinuses
    air = L("air_internal")
    fs = c + np.array([0.0, -82.0, 30.0]) * hs
    cv.paint(CORT, ellipsoid(fs, np.array([18.0, 11.0, 14.0]) * hs), where=[scalp, csf, gm, CORT])
    cv.paint(air, ellipsoid(fs, np.array([14.0, 6.0, 10.0]) * hs), where=[CORT])  # frontal sinus
    for s in (-1, 1):
        ms = f.p(s * 27.0 * hs, -48.0 * hs, 150.0 * hs)
        cv.paint(CORT, ellipsoid_shell(ms, np.array([16.0, 20.0, 20.0]) * hs, 3.0))
        cv.paint(air, ellipsoid(ms, np.array([13.0, 17.0, 17.0]) * hs))
        cv.paint(air, ellipsoid(f.p(s * 58.0 * hs, 32.0 * hs, 152.0 * hs), (8.0, 9.0, 8.0)),
                 where=[CORT, TRAB, mus, scalp])  # mastoid air cells
        cv.paint(mus, ellipsoid(f.p(s * 32.0 * hs, -66.0 * hs, 108.0 * hs), (12.0, 12.0, 12.0)))  # eye
    cv.paint(air, ellipsoid(f.p(0.0, -60.0 * hs, 150.0 * hs), np.array([7.0, 24.0, 20.0]) * hs))  # nasal cavity
    cv.paint(air, ellipsoid(f.p(0.0, -8.0 * hs, 128.0 * hs), np.array([10.0, 10.0, 9.0]) * hs),
             where=[CORT, TRAB, mus])   # sphenoid sinus
    # mandible (U-shaped body and rami) and upper alveolar arch
    th = np.linspace(-1.75, 1.75, 15)
    jaw = [f.p(48.0 * hs * np.sin(t), -5.0 - 60.0 * hs * np.cos(t), 205.0 * hs) for t in th]
    for p0, p1 in zip(jaw[:-1], jaw[1:]):
        bone_capsule(cv, p0, p1, 6.5, shell=2.5, keep=[L("air")])
    for s in (-1, 1):
        bone_capsule(cv, f.p(s * 48.0 * hs, 5.0, 205.0 * hs), f.p(s * 50.0 * hs, 8.0, 150.0 * hs), 6.0,
                     keep=[L("air")])
    arch = [f.p(38.0 * hs * np.sin(t), -8.0 - 52.0 * hs * np.cos(t), 178.0 * hs) for t in np.linspace(-1.6, 1.6, 13)]
    for p0, p1 in zip(arch[:-1], arch[1:]):
        cv.paint(CORT, capsule(p0, p1, 6.0), keep=[L("air")])
    return {"head_centre": c.tolist(), "skull_thickness_mm": t_skull}
