"""Skeleton of the whole-body phantom: spine, ribs, sternum, shoulder girdle, pelvis, femora, humeri.

Bones are cortical shells (2–3 mm, HU 900–1400) around trabecular cores (HU 180–350); posterior vertebral
elements, ribs' shells, the skull and the femoral shafts are cortical, the femoral shaft holds yellow
(fatty) marrow. At 4 mm voxels this gives the mixture of cortical and trabecular bone that makes
tissue-class (Dixon) attenuation correction underestimate bone uptake.
"""

from __future__ import annotations

import numpy as np

from .body import BodyFrame
from .shapes import Canvas, capsule, cylinder_z, ellipsoid, ellipsoid_shell, intersect, rotation
from .tissues import L

CORT, TRAB = L("bone_cortical"), L("bone_trabecular")


def bone(cv: Canvas, outer, inner, keep=None) -> None:
    cv.paint(CORT, outer, keep=keep)
    if inner is not None:
        cv.paint(TRAB, inner, where=[CORT])


def bone_capsule(cv: Canvas, p0, p1, r, shell=2.5, keep=None, core=TRAB) -> None:
    cv.paint(CORT, capsule(p0, p1, r), keep=keep)
    if r > shell + 0.5:
        cv.paint(core, capsule(p0, p1, r - shell), where=[CORT])


def _vertebrae(f: BodyFrame):
    """(depth centre, body height, body radius, AP position, region) of C1..L5."""
    out = []
    for region, d0, d1, n, r0, r1 in (("C", 170, 290, 7, 8.0, 10.0), ("T", 290, 600, 12, 12.0, 17.0),
                                      ("L", 600, 790, 5, 19.0, 23.0)):
        step = (d1 - d0) / n
        for i in range(n):
            dc = d0 + (i + 0.5) * step
            r = (r0 + (r1 - r0) * i / max(n - 1, 1)) * f.width_scale ** 0.5
            if region == "C":
                y = 25.0 * f.width_scale
            elif region == "T":
                y = 0.6 * f.b(dc) + f.yc(dc)
            else:
                y = 0.42 * f.b(dc) + f.yc(dc)
            out.append((dc, step * 0.78, r, y, region))
    return out


def paint_spine(cv: Canvas, f: BodyFrame) -> dict:
    canal_pts = []
    keep = None
    for dc, h, r, y, region in _vertebrae(f):
        zc = float(f.z(dc))
        hz = h * f.height_scale / 2.0
        cv.paint(L("muscle"), cylinder_z(0.0, y, r, 0.8 * r, zc - hz * 1.25, zc + hz * 1.25),
                 where=[L("lung"), L("air_internal"), L("fat_visceral"), L("gut")])   # discs & ligaments
        bone(cv, cylinder_z(0.0, y, r, 0.8 * r, zc - hz, zc + hz),
             cylinder_z(0.0, y, r - 2.5, 0.8 * r - 2.5, zc - hz + 2.0, zc + hz - 2.0), keep)
        canal_r = 8.0 if region == "L" else 6.5
        yc = y + 0.8 * r + canal_r + 2.0
        ring = cylinder_z(0.0, yc, canal_r + 5.0, canal_r + 5.0, zc - hz, zc + hz)
        cv.paint(CORT, ring, keep=keep)
        canal_pts.append(np.array([0.0, yc, zc]))
        tip = {"C": 14.0, "T": 24.0, "L": 28.0}[region]
        cv.paint(CORT, capsule([0, yc + canal_r + 4, zc], [0, yc + canal_r + tip, zc - 8], 4.0))
        tlen = {"C": 16.0, "T": 24.0, "L": 30.0}[region]
        for s in (-1, 1):
            cv.paint(CORT, capsule([s * (canal_r + 2), yc - 2, zc], [s * (canal_r + tlen), yc + 6, zc + 2], 4.0))
    for p0, p1 in zip(canal_pts[:-1], canal_pts[1:]):
        cv.paint(L("csf_spinal"), capsule(p0, p1, 5.5 if p0[2] < f.z(600) else 4.5))
    # sacrum
    sac_c = f.p(0.0, 0.62 * f.b(840) + f.yc(840), 840)
    rot = rotation(0, 0, -30)
    bone(cv, ellipsoid(sac_c, (48 * f.width_scale, 22, 55 * f.height_scale), rot),
         ellipsoid(sac_c, (45 * f.width_scale, 19, 52 * f.height_scale), rot))
    return {"vertebrae": [(float(f.z(v[0])), v[4]) for v in _vertebrae(f)], "sacrum_centre": sac_c.tolist()}


def paint_ribs(cv: Canvas, f: BodyFrame) -> None:
    verts = [v for v in _vertebrae(f) if v[4] == "T"]
    a_ref = f.a(420)
    ends = [2.4, 2.75, 2.75, 2.75, 2.75, 2.75, 2.75, 2.4, 2.4, 2.3, 1.7, 1.3]
    for i, (dc, h, r, y, _) in enumerate(verts):
        rib_r = 4.5 * f.width_scale ** 0.5
        for s in (-1, 1):
            pts = []
            for th in np.linspace(0.22, ends[i], 28):
                d = dc + 70.0 * th / np.pi * (0.6 if i >= 10 else 1.0)
                frac = 0.72 + 0.28 * min(1.0, (d - 290.0) / 130.0)
                ar = min(f.a(d), a_ref) * frac - 12.0
                br = f.b(d) - 12.0
                pts.append(f.p(s * ar * np.sin(th), f.yc(d) + br * np.cos(th), d))
            for p0, p1 in zip(pts[:-1], pts[1:]):
                bone_capsule(cv, p0, p1, rib_r, shell=2.0, keep=[L("fat_subcutaneous")])


def paint_shoulder_girdle(cv: Canvas, f: BodyFrame, arms: bool) -> None:
    # sternum
    for d0, d1 in ((385, 430), (432, 560)):
        dm = 0.5 * (d0 + d1)
        y = f.yc(dm) - f.b(dm) + 14.0
        zlo, zhi = float(f.z(d1)), float(f.z(d0))
        bone(cv, cylinder_z(0.0, y, 16.0, 7.0, zlo, zhi), cylinder_z(0.0, y, 13.0, 4.0, zlo + 2, zhi - 2))
    for s in (-1, 1):
        # clavicle
        bone_capsule(cv, f.p(s * 20, f.yc(385) - f.b(385) + 14, 385), f.p(s * 0.85 * f.a(320), -5, 325), 7.0,
                     keep=[L("fat_subcutaneous")])
        # scapula: a thin plate on the posterior chest wall
        c = f.p(s * 0.55 * f.a(420), 0.72 * f.b(420), 420)
        cv.paint(CORT, ellipsoid(c, (48 * f.width_scale, 5.0, 70 * f.height_scale), rotation(-s * 25, 0, 0)),
                 keep=[L("lung"), L("fat_subcutaneous"), L("air")])
        if arms:
            x = s * f.arm_x()
            head = f.p(x - s * 16, 8.0, 340)
            bone(cv, ellipsoid(head, (22, 22, 22)), ellipsoid(head, (19, 19, 19)))
            bone_capsule(cv, head, f.p(x, 12.0, 595), 11.0, shell=4.0, core=L("marrow_yellow"))
            for dy in (-9.0, 9.0):
                bone_capsule(cv, f.p(x, 12.0 + dy, 610), f.p(x, 8.0 + dy, 845), 6.5, shell=2.5,
                             core=L("marrow_yellow"))


def paint_pelvis(cv: Canvas, f: BodyFrame) -> dict:
    ah, bh, yh = f.a(860), f.b(860), f.yc(860)
    info = {}
    for s in (-1, 1):
        # iliac wing: a curved plate (portion of an ellipsoid shell), cortical-trabecular-cortical
        c = f.p(s * 0.12 * ah, yh + 0.1 * bh, 845)
        radii = np.array([0.72 * ah, 0.78 * bh, 70.0 * f.height_scale])
        wing_box = (lambda X, Y, Z, s=s: (s * X > 0.22 * ah) & (Y > yh - 0.45 * bh),
                    (np.array([-400, -400, float(f.z(890))]), np.array([400, 400, float(f.z(775))])))
        bone(cv, intersect(ellipsoid_shell(c, radii, 12.0), wing_box),
             intersect(ellipsoid_shell(c, radii - 3.0, 6.0), wing_box))
        # acetabulum and femoral head
        hc = f.p(s * 0.58 * ah, yh - 0.05 * bh, 905)
        upper = (lambda X, Y, Z, hc=hc: Z > hc[2] - 6.0, (hc - 40, hc + 40))
        bone(cv, intersect(ellipsoid_shell(hc, (36, 36, 36), 10.0), upper),
             intersect(ellipsoid_shell(hc, (33, 33, 33), 4.0), upper))
        bone_capsule(cv, f.p(s * 0.45 * ah, yh + 0.1 * bh, 880), f.p(s * 0.55 * ah, yh + 0.15 * bh, 850), 14.0)
        bone(cv, ellipsoid(hc, (24, 24, 24)), ellipsoid(hc, (21.5, 21.5, 21.5)))
        # pubic and ischial rami
        sym = f.p(s * 6.0, yh - 0.62 * bh, 925)
        bone_capsule(cv, f.p(s * 0.5 * ah, yh - 0.25 * bh, 915), sym, 9.0)
        tub = f.p(s * 0.4 * ah, yh + 0.35 * bh, 965)
        bone_capsule(cv, f.p(s * 0.5 * ah, yh + 0.15 * bh, 920), tub, 12.0)
        bone_capsule(cv, tub, f.p(s * 8.0, yh - 0.45 * bh, 950), 7.0)
        # femur: neck, trochanter, shaft (cortical tube around yellow marrow)
        troch = f.p(s * 0.8 * ah, yh + 0.05 * bh, 930)
        bone_capsule(cv, hc, troch, 15.0)
        bone(cv, ellipsoid(troch, (18, 18, 22)), ellipsoid(troch, (15, 15, 19)))
        knee = f.p(s * 0.6 * f.a(920), 5.0, f.end_depth + 80)
        bone_capsule(cv, troch + [-s * 6, 0, -10], knee, 14.0, shell=6.0, core=L("marrow_yellow"))
        info[f"femoral_head_{'left' if s > 0 else 'right'}"] = hc.tolist()
    return info
