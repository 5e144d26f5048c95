"""Whole-body anatomy: body outline, fat layers, thoracic and abdominal organs, arms.

Coordinates are LPS mm: x to the patient's left, y posterior, z superior; the vertex of the head is at
z = 0 and the body extends to negative z. Anatomy is described by depth d below the vertex at reference
size and mapped to z = −d · height_scale; transverse sizes follow a tapered elliptic torso (muscle-wall
radii keyframes × width scale) plus a subcutaneous fat layer whose thickness varies along the body.
Everything random (sizes, positions, fat, organ sizes, bladder filling) comes from the seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .shapes import Canvas, capsule, cylinder_z, ellipsoid, ellipsoid_shell, intersect, rotation, subtract
from .tissues import L

# depth (mm below vertex), muscle-wall half-width a, half-depth b, AP centre yc, fat-thickness multiplier
_KEY_D = np.array([265, 290, 320, 360, 420, 500, 580, 640, 720, 800, 860, 920, 965], float)
_KEY_A = np.array([55, 110, 170, 150, 142, 140, 137, 133, 130, 145, 155, 158, 150], float)
_KEY_B = np.array([55, 75, 85, 92, 98, 100, 98, 95, 92, 92, 96, 98, 95], float)
_KEY_Y = np.array([15, 10, 5, 0, 0, 0, 0, 0, 0, 0, 2, 5, 5], float)
_KEY_F = np.array([0.4, 0.5, 0.6, 0.7, 0.8, 0.8, 0.9, 1.2, 1.4, 1.3, 1.2, 1.1, 1.0], float)


@dataclass
class BodyFrame:
    """Random body-size parameters and the landmark functions derived from them."""

    height_scale: float = 1.0
    width_scale: float = 1.0
    fat_mm: float = 18.0
    visceral: float = 0.3          # fraction of the abdominal cavity that is visceral fat
    head_scale: float = 1.0
    organ_scale: dict = field(default_factory=dict)
    jitter: dict = field(default_factory=dict)
    bladder_fill: float = 1.0
    end_depth: float = 990.0       # lowest depth simulated (upper thighs)

    @classmethod
    def random(cls, rng: np.random.Generator, end_depth: float = 990.0) -> "BodyFrame":
        ws = float(rng.uniform(0.88, 1.12))
        f = cls(height_scale=float(rng.uniform(0.93, 1.07)), width_scale=ws,
                fat_mm=float(rng.uniform(6.0, 30.0) * ws ** 2), visceral=float(rng.uniform(0.15, 0.6)),
                head_scale=float(rng.uniform(0.95, 1.05)), bladder_fill=float(rng.uniform(0.4, 1.6)),
                end_depth=end_depth)
        for organ in ("liver", "spleen", "kidney", "heart", "lung", "stomach"):
            f.organ_scale[organ] = float(rng.uniform(0.88, 1.12))
            f.jitter[organ] = rng.uniform(-8.0, 8.0, 3)
        return f

    # ------------------------------------------------------------------ landmarks
    def z(self, d):
        return -np.asarray(d, float) * self.height_scale

    def a(self, d):
        return float(np.interp(d, _KEY_D, _KEY_A)) * self.width_scale

    def b(self, d):
        return float(np.interp(d, _KEY_D, _KEY_B)) * self.width_scale

    def yc(self, d):
        return float(np.interp(d, _KEY_D, _KEY_Y)) * self.width_scale

    def fat(self, d):
        return float(np.interp(d, _KEY_D, _KEY_F)) * self.fat_mm

    def p(self, x, y, d):
        """Point from (x, y) in mm and a depth."""
        return np.array([x, y, float(self.z(d))])

    def knots(self, extra_a=0.0, extra_b=0.0, fat=0.0, d0=None, d1=None):
        """Tapered radii along z for cylinder_z (z ascending)."""
        sel = np.ones_like(_KEY_D, bool)
        if d0 is not None:
            sel &= _KEY_D >= d0
        if d1 is not None:
            sel &= _KEY_D <= d1
        d = _KEY_D[sel]
        zs = self.z(d)
        a = _KEY_A[sel] * self.width_scale + extra_a + fat * _KEY_F[sel] * self.fat_mm
        b = _KEY_B[sel] * self.width_scale + extra_b + fat * _KEY_F[sel] * self.fat_mm * 1.1
        order = np.argsort(zs)
        return (zs[order], a[order]), (zs[order], b[order])

    def max_half_width(self, arms: bool) -> float:
        w = max(self.a(d) + self.fat(d) for d in _KEY_D)
        if arms:
            w = self.arm_x() + self.arm_radius(400) + 0.6 * self.fat_mm
        return w

    def arm_radius(self, d):
        return (38.0 if d < 600 else 31.0) * self.width_scale

    def arm_x(self):
        return self.a(500) + self.fat(500) + self.arm_radius(400) + 0.6 * self.fat_mm + 6.0

    def torso(self, extra=0.0, fat=0.0, d0=265.0, d1=965.0):
        ka, kb = self.knots(extra, extra, fat)
        yk = (self.z(_KEY_D)[::-1], _KEY_Y[::-1] * self.width_scale)

        z0, z1 = float(self.z(d1)), float(self.z(d0))

        def fn(X, Y, Z, ka=ka, kb=kb, yk=yk):
            a = np.interp(Z, *ka)
            b = np.interp(Z, *kb)
            y0 = np.interp(Z, *yk)
            return ((X / a) ** 2 + ((Y - y0) / b) ** 2 <= 1.0) & (Z >= z0) & (Z <= z1)
        amax, bmax = float(ka[1].max()), float(kb[1].max())
        return fn, (np.array([-amax, -bmax - 20, z0]), np.array([amax, bmax + 20, z1]))


def paint_trunk(cv: Canvas, f: BodyFrame, arms: bool) -> None:
    """Body outline (subcutaneous fat + muscle wall), thighs and, optionally, arms."""
    fat, mus = L("fat_subcutaneous"), L("muscle")
    end = f.end_depth + 40
    cv.paint(fat, f.torso(fat=1.0))
    cv.paint(mus, f.torso())
    for s in (-1, 1):
        cx = s * 0.6 * f.a(920)
        r = 72.0 * f.width_scale
        cv.paint(fat, cylinder_z(cx, 5.0, r + 0.9 * f.fat_mm, r + 0.9 * f.fat_mm, float(f.z(end)), float(f.z(900))))
        cv.paint(mus, cylinder_z(cx, 5.0, r, r, float(f.z(end)), float(f.z(900))))
    if arms:
        for s in (-1, 1):
            x = s * f.arm_x()
            sh = f.p(x - s * 12, 8.0, 335)
            elbow = f.p(x, 12.0, 600)
            wrist = f.p(x, 8.0, 850)
            for p0, p1, d in ((sh, elbow, 400), (elbow, wrist, 700)):
                r = f.arm_radius(d)
                cv.paint(fat, capsule(p0, p1, r + 0.6 * f.fat_mm), keep=[mus])
                cv.paint(mus, capsule(p0, p1, r))
            cv.paint(mus, ellipsoid(f.p(x, 0.0, 900), (18.0, 42.0, 55.0)))


def cavity(f: BodyFrame, d0: float, d1: float, wall: float = 12.0):
    """Inside of the muscle wall (thoracic/abdominal cavity) between two depths."""
    return f.torso(extra=-wall, d0=d0, d1=d1)


def paint_thorax(cv: Canvas, f: BodyFrame) -> dict:
    a, b = f.a(500), f.b(500)
    ls, hs = f.organ_scale.get("lung", 1.0), f.organ_scale.get("heart", 1.0)
    jl, jh = f.jitter.get("lung", np.zeros(3)), f.jitter.get("heart", np.zeros(3))
    dome_r = ellipsoid(f.p(-0.45 * a, 0, 545 + 80), (0.62 * a, 1.15 * b, 80 * f.height_scale))
    dome_l = ellipsoid(f.p(0.45 * a, 0, 560 + 80), (0.62 * a, 1.15 * b, 80 * f.height_scale))
    chest = cavity(f, 300, 640, wall=10.0)
    for s in (-1, 1):
        lung = ellipsoid(f.p(s * 0.5 * a, 0.05 * b, 455) + jl * [0.3, 0.3, 1],
                         (0.42 * a * ls, 0.86 * b, 128 * f.height_scale * ls))
        lung = subtract(subtract(intersect(lung, chest), dome_r), dome_l)
        cv.paint(L("lung"), lung, where=[L("muscle")])
    # airways
    carina = f.p(0, 0.1 * b, 430)
    cv.paint(L("air_internal"), capsule(f.p(0, -0.05 * b, 200), carina, 9.0))
    for s in (-1, 1):
        cv.paint(L("air_internal"), capsule(carina, f.p(s * 40, 0.12 * b, 470), 6.0))
    # heart: chambers (blood), left-ventricular myocardium
    rot = rotation(30, -20, 0)
    hc = f.p(0.15 * a, -0.35 * b, 510) + jh
    blood, myo = L("blood_pool"), L("myocardium")
    cv.paint(blood, ellipsoid(hc, (0.38 * a * hs, 0.42 * b * hs, 60 * hs), rot))
    lv = hc + np.array([0.1 * a, 0.05 * b, -10])
    cv.paint(myo, ellipsoid_shell(lv, (33 * hs, 30 * hs, 46 * hs), 10.0, rot))
    cv.paint(blood, ellipsoid(lv, (23 * hs, 20 * hs, 36 * hs), rot))
    # great vessels
    arch = f.p(0.1 * a, 0.35 * b, 400)
    path = [hc + [0, 10, 40], f.p(0.03 * a, -0.2 * b, 410), arch, f.p(0.18 * a, 0.5 * b, 470),
            f.p(0.12 * a, 0.3 * b, 620), f.p(0.1 * a, 0.05 * f.b(780), 780)]
    for p0, p1 in zip(path[:-1], path[1:]):
        cv.paint(blood, capsule(p0, p1, 12.0 * f.width_scale ** 0.5), keep=[myo])
    for s in (-1, 1):
        cv.paint(blood, capsule(path[-1], f.p(s * 0.3 * f.a(860), 0.1 * f.b(860), 870), 7.0))
    ivc = [f.p(-0.15 * f.a(800), 0.15 * f.b(800), 800), f.p(-0.15 * a, 0.1 * b, 600), hc + [-25, 10, -20]]
    for p0, p1 in zip(ivc[:-1], ivc[1:]):
        cv.paint(blood, capsule(p0, p1, 11.0), keep=[myo])
    return {"dome_right": dome_r, "dome_left": dome_l, "heart_centre": hc.tolist(), "carina": carina.tolist()}


def paint_abdomen(cv: Canvas, f: BodyFrame, rng: np.random.Generator) -> dict:
    a, b = f.a(620), f.b(620)
    bh = f.b(880)
    protect = [L("lung"), L("myocardium"), L("blood_pool"), L("fat_subcutaneous")]
    abd = cavity(f, 540, 960, wall=12.0)
    # bowel and visceral fat (mixture set by a smooth random field)
    gut_region = intersect(cavity(f, 640, 945, wall=14.0),
                           (lambda X, Y, Z: Y < 0.4 * b, (np.array([-400, -400, -1e4]), np.array([400, 400, 1e4]))))
    cv.paint(L("gut"), gut_region, where=[L("muscle")])
    waves = [(rng.normal(size=3) / rng.uniform(15, 40), rng.uniform(0, 2 * np.pi)) for _ in range(8)]

    def field_fn(X, Y, Z):
        v = 0.0
        for k, ph in waves:
            v = v + np.sin(k[0] * X + k[1] * Y + k[2] * Z + ph)
        return v / np.sqrt(len(waves) / 2.0)
    from scipy.stats import norm as _norm

    thr = float(_norm.ppf(1.0 - f.visceral))
    cv.paint(L("fat_visceral"), intersect(gut_region, (lambda X, Y, Z: field_fn(X, Y, Z) > thr, gut_region[1])),
             where=[L("gut")])
    for _ in range(int(rng.integers(4, 9))):      # bowel gas
        c = f.p(rng.uniform(-0.6, 0.6) * a, rng.uniform(-0.7, 0.1) * b, rng.uniform(680, 880))
        cv.paint(L("air_internal"), ellipsoid(c, rng.uniform(6, 16, 3)), where=[L("gut")])
    # perirenal fat, then solid organs
    kid = []
    for s, dd in ((-1, 705.0), (1, 690.0)):
        ks = f.organ_scale.get("kidney", 1.0)
        c = f.p(s * 0.42 * a, 0.5 * b, dd) + f.jitter.get("kidney", np.zeros(3)) * [0.5, 0.3, 1]
        rot = rotation(-s * 20, s * 10, 0)
        perirenal = ellipsoid(c, (28 * ks + 8 * f.visceral + 4, 25 * ks + 8, 60 * ks), rot)
        cv.paint(L("fat_visceral"), intersect(perirenal, abd), keep=protect)
        cv.paint(L("kidney"), intersect(ellipsoid(c, (28 * ks, 25 * ks, 55 * ks), rot), abd), keep=protect)
        kid.append(c.tolist())
    lsc = f.organ_scale.get("liver", 1.0)
    liver_c = f.p(-0.35 * a, -0.05 * b, 620) + f.jitter.get("liver", np.zeros(3))
    cv.paint(L("liver"), intersect(ellipsoid(liver_c, (0.62 * a * lsc, 0.82 * b * lsc, 85 * lsc * f.height_scale),
                                             rotation(-10, 0, 0)), abd),
             keep=protect + [L("kidney")])
    ssc = f.organ_scale.get("stomach", 1.0)
    st_c = f.p(0.35 * a, -0.35 * b, 610) + f.jitter.get("stomach", np.zeros(3)) * [0.5, 0.5, 1]
    st = intersect(ellipsoid(st_c, (40 * ssc, 32 * ssc, 50 * ssc), rotation(20, 0, 0)), abd)
    cv.paint(L("gut"), st, keep=protect + [L("liver"), L("kidney")])
    cv.paint(L("air_internal"), intersect(ellipsoid(st_c + [0, -12, 30], (22, 14, 14)), st), where=[L("gut")])
    spc = f.organ_scale.get("spleen", 1.0)
    sp_c = f.p(0.62 * a, 0.4 * b, 600) + f.jitter.get("spleen", np.zeros(3)) * [0.4, 0.4, 1]
    cv.paint(L("spleen"), intersect(ellipsoid(sp_c, (26 * spc, 45 * spc, 55 * spc), rotation(-30, 0, 0)), abd),
             keep=protect + [L("liver"), L("kidney")])
    bf = f.bladder_fill ** (1.0 / 3.0)
    bl_c = f.p(0.0, -0.45 * bh, 905) + [0, 0, 10 * (bf - 1)]
    cv.paint(L("bladder"), ellipsoid(bl_c, (42 * bf, 35 * bf, 38 * bf)), keep=[L("fat_subcutaneous")])
    return {"liver_centre": liver_c.tolist(), "spleen_centre": sp_c.tolist(), "kidney_centres": kid,
            "bladder_centre": bl_c.tolist(), "stomach_centre": st_c.tolist()}


def lymph_stations(f: BodyFrame) -> dict:
    """Nominal centres of lymph-node stations (mm, LPS)."""
    a, b = f.a(420), f.b(420)
    ah, bh = f.a(880), f.b(880)
    st = {}
    for s, side in ((-1, "right"), (1, "left")):
        st[f"cervical_{side}"] = f.p(s * 35, 5, 235)
        st[f"supraclavicular_{side}"] = f.p(s * 55, 0, 300)
        st[f"axillary_{side}"] = f.p(s * 0.8 * a, 0.15 * b, 375)
        st[f"hilar_{side}"] = f.p(s * 0.3 * a, 0.15 * b, 455)
        st[f"iliac_{side}"] = f.p(s * 0.38 * ah, 0.05 * bh, 860)
        st[f"inguinal_{side}"] = f.p(s * 0.55 * ah, -0.8 * bh, 950)
    st["paratracheal"] = f.p(12, -0.05 * b, 395)
    st["subcarinal"] = f.p(0, 0.25 * b, 445)
    st["para_aortic"] = f.p(0.3 * f.a(720), 0.1 * f.b(720), 720)
    return {k: v.tolist() for k, v in st.items()}
