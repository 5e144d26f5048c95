"""Lesions: spheres/ellipsoids (5–30 mm) with a chosen contrast in organs, lymph-node stations and bone.

Contrast is the ratio of lesion to reference uptake: the host tissue for solid organs, brain and bone,
the mediastinal blood pool for lymph nodes and lung nodules (the usual clinical references). A lesion
keeps its host's CT number and MR properties in bone (so bone lesions keep bone attenuation) and has
soft-tissue properties elsewhere (a lung nodule is soft tissue, not lung). Each lesion has its own label
(100, 101, ...), so its true mean activity is known exactly.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..errors import NMAIError
from .shapes import Canvas, ellipsoid, rotation
from .tissues import LESION_LABEL_BASE, LESION_TISSUE, SOFT_TISSUE, L, Properties

ORGAN_SITES = {"liver": ["liver"], "lung": ["lung"], "spleen": ["spleen"], "kidney": ["kidney"],
               "brain": ["brain_grey_matter", "brain_white_matter"], "bone": ["bone_trabecular"]}
SITES = tuple(ORGAN_SITES) + ("node",)


def _fits(cv: Canvas, c, r, host: set) -> bool:
    for axis in range(3):
        for sgn in (-1, 1):
            p = np.array(c, float)
            p[axis] += sgn * 0.6 * r
            if cv.label_at(p) not in host:
                return False
    return True


def add_lesions(cv: Canvas, rng: np.random.Generator, props: dict, n: int, sites, stations: dict | None = None,
                diameter_mm=(5.0, 30.0), contrast=None) -> list[dict]:
    """Paint ``n`` lesions on the canvas, add their properties to ``props``; returns their descriptions."""
    if n <= 0:
        return []
    if n > 100:
        raise NMAIError("at most 100 lesions per phantom")
    sites = list(sites)
    for s in sites:
        if s not in SITES:
            raise NMAIError(f"unknown lesion site {s!r}; use {', '.join(SITES)}")
    if "node" in sites and not stations:
        sites.remove("node")
    out = []
    soft = [L(t) for t in SOFT_TISSUE]
    candidates: dict = {}
    for i in range(n):
        label = LESION_LABEL_BASE + i
        site = sites[int(rng.integers(len(sites)))]
        for _attempt in range(80):
            lo, hi = diameter_mm
            if site == "bone":
                hi = min(hi, 16.0)
            d = float(rng.uniform(lo, max(lo, hi)))
            k = float(rng.uniform(2.0, 6.0)) if contrast is None else float(contrast)
            radii = d / 2.0 * rng.uniform(0.8, 1.2, 3)
            rot = rotation(*rng.uniform(0, 180, 3))
            if site == "node":
                name = sorted(stations)[int(rng.integers(len(stations)))]
                c = np.asarray(stations[name], float) + rng.uniform(-6, 6, 3)
                where, host_label, host = soft, L("muscle"), "node:" + name
            else:
                hosts = {L(t) for t in ORGAN_SITES[site]}
                if site not in candidates:
                    candidates[site] = np.flatnonzero(np.isin(cv.labels, list(hosts)).ravel())
                idx = candidates[site]
                if idx.size == 0:
                    continue
                k_, j_, i_ = np.unravel_index(idx[int(rng.integers(idx.size))], cv.labels.shape)
                c = np.array([cv.x[i_], cv.y[j_], cv.z[k_]])
                fit_hosts = hosts | ({L("bone_cortical")} if site == "bone" else set())
                if int(cv.labels[k_, j_, i_]) not in hosts or not _fits(cv, c, d / 2.0, fit_hosts):
                    continue
                host_label = int(cv.labels[k_, j_, i_])
                where = list(hosts) + ([L("bone_cortical")] if site == "bone" else [])
                host = site
            count = cv.paint(label, ellipsoid(c, radii, rot), where=where)
            if count == 0:
                continue
            if site in ("node", "lung"):
                ref = props[L("blood_pool")].suv
                p = dataclasses.replace(LESION_TISSUE, suv=k * ref)
            else:
                hp = props[host_label]
                p = Properties(k * hp.suv, hp.hu, hp.pd, hp.ff, hp.t1w)
            props[label] = p
            out.append({"label": label, "name": f"lesion_{i + 1:02d}", "site": host,
                        "centre_lps_mm": [round(float(v), 2) for v in c], "diameter_mm": round(d, 2),
                        "contrast": round(k, 3), "suv": round(p.suv, 3),
                        "reference": "blood_pool" if site in ("node", "lung") else "host tissue"})
            break
    return out
