"""Image-domain triage report: a PET image (with the μ-map or CT it was corrected with, and the raw data
where there is some) → ``{alarm, artifacts, lesions, ...}`` (schema in the README).

Three sources of artifact findings, each listed with ``type``, ``probability``, ``slice_range``, ``alarm``,
``source`` and a ``message`` that says what to do:

* the learned slice classifier (:mod:`nmai.triage.classifier`, model ``triage-artifacts``): motion,
  respiratory, misregistration, truncation, failed_blocks, metal, low_counts, listed at score ≥ 0.5 (the
  network probability mapped so that the model card's calibrated threshold lands on 0.5);
  ``repeat`` at ≥ 0.8 for what only a new acquisition fixes (motion, failed blocks, low counts), ``check``
  otherwise (attenuation problems are fixed by correcting the μ-map and reconstructing again);
* μ-map rules (below) and raw-data findings (:mod:`nmai.triage.raw`), when the μ-map / acquisition is given;
* lesion candidates (:mod:`nmai.triage.lesions`, model ``triage-lesions``).

Rules (each gives a score = 0.5 × evidence / threshold, capped at 1, in the ``probability`` field; an
artifact is listed at ≥ 0.5 — scores, not calibrated probabilities; every rule's score, listed or not, is
in ``evidence["rule_scores"]``):

* **low counts** (PET alone): the median local coefficient of variation (3 × 3 × 3 neighbourhoods) of the
  PET averaged into blocks of about 6 mm, over body voxels at 0.5–2 × the typical body uptake; threshold
  0.31, set between the clean (0.16–0.24) and 10 %-count (0.39–0.52) simulated scans of seeds 36000–36007
  (never used for evaluation). Measured on real data: the GE Discovery ST whole body 0.22, the two NEMA
  reconstructions 0.12 and 0.11. ``repeat`` from a score of 0.8 (CoV ≥ 0.50).
* **truncation** (needs the μ-map): PET tissue (> 0.3 × the median body uptake) ≥ 12 mm (in-plane)
  outside the convex hull of the μ-map's body in that slice (μ > 0.05 cm⁻¹; the hull, because PET spill
  from both sides fills the gaps between arms and trunk); threshold 25 ml.
* **μ-map void** (μ-map; metal in MR-based μ-maps): the largest connected region with μ < 0.01 cm⁻¹ inside
  the μ-map's body, or the PET's (8 mm in from its outline) within the convex hull of one connected part
  of the μ-map's body in that slice (a void can open onto the skin; the gaps between arms and trunk and arms
  cut off are not voids), wide enough for a 30 mm disc in some slice (a void around an implant is 40–60
  mm across; the slivers between arms and trunk, the airways and small gas pockets are narrower), whose mean
  PET is > 0.05 × the body uptake (under a void the PET reads only 0.09–0.16 × the body uptake, because
  the missing attenuation is not corrected); threshold 100 ml. On seeds 36000–36007: clean scans 0 ml, a
  20 mm void 320–385 ml. In a patient's CT-based μ-map a large bowel-gas pocket could exceed the threshold.
* **PET/μ-map offset** (μ-map; motion or misregistration): the shift that best moves the μ-map's body
  outline (μ > 0.01 cm⁻¹, blurred by 5 mm) onto the PET's (PET smoothed by 3 mm, ÷ 0.2 × the body uptake,
  clipped to 1), by three Gauss–Newton (Lucas–Kanade) steps, leaving out the first and last slice (the body
  is cut there, not outlined) and the surroundings of hot organs (> 3 × the body uptake: their spill widens
  the PET outline). In-plane the fit also estimates how far the PET outline lies outside the μ-map's all
  round; along z it runs only where ≥ 5 % of the outline signal faces up or down (head, shoulders; a slab
  of trunk has too little to tell a shift from the body's change of width). Threshold 1.7 mm. On seeds
  36000–36007: clean scans 0.1–1.0 mm, a patient who moved 10 mm half-way 2.4–4.9 mm, a μ-map shifted
  10 mm 5.7–8.0 mm (the PET's own outline partly follows the μ-map: the uncovered rim is under-corrected). The rule cannot tell motion from
  misregistration; the classifier's probabilities and the raw data can.
* **diaphragm band** (μ-map; breathing against a μ-map taken in deeper inspiration): the PET in the lowest
  ``BAND_MM`` (0–10 mm) of the μ-map's lung, above its base, on a scale where the lung 20–30 mm higher is
  0 and the tissue 20–30 mm below the base is 1 (median over every column whose lung base lies on
  ≥ 25 mm of tissue, see :func:`diaphragm_band`). Where the μ-map puts lung over tissue that the PET saw
  there for most of the breathing cycle, that tissue is corrected with lung attenuation and reads as cold
  as the lung or colder (the photopenic "banana" over the liver dome); without the artifact, spill from
  the tissue below keeps it above the lung. Threshold 0 (as cold as the lung), score
  0.5 × (0.2 − band) / 0.2. On seeds 36000–36027 (4.5–6.5 mm voxels): clean scans 0.070–0.175, 15 mm
  breathing with the end-inspiration μ-map −0.204 to 0.131 (14 of 28 below 0, AUC 0.96); at 3 mm voxels
  (seeds 36030–36032) clean 0.047–0.094, breathing −0.130 to −0.071. Needs axial slices and a lung base
  in the field of view.
* **raw data** (acquisition folder): every frame through :func:`nmai.triage.raw.watch_frames`; failed
  blocks, count-rate changes and motion are listed with the frames they were found in.
"""

from __future__ import annotations

import numpy as np

from .. import __version__
from ..errors import NMAIError
from ..progress import as_progress
from ..sim.artifacts import slice_span
from ..volume import Volume
from .raw import worst

FORMAT = "nmai-triage-report/1"
TRUNCATION_MM, TRUNCATION_ML = 12.0, 25.0
VOID_ML, VOID_WIDTH_MM = 100.0, 30.0
NOISE_COV, NOISE_BLOCK_MM = 0.31, 6.0
OFFSET_MM, Z_OUTLINE_SHARE = 1.7, 0.05
BAND_MM, BAND_BELOW_MM, BAND_MIN_COLUMNS = (0.0, 10.0), 25.0, 30
BAND_CLEAN, BAND_THRESHOLD = 0.20, 0.0
_IN_PLANE = np.zeros((3, 3, 3), bool)
_IN_PLANE[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]


def _score(evidence: float, threshold: float) -> float:
    return round(float(min(1.0, 0.5 * evidence / threshold)), 3)


def convex_hull(mask: np.ndarray) -> np.ndarray:
    """Filled convex hull of a 2-D mask (pixel centres)."""
    from scipy.spatial import ConvexHull, QhullError

    pts = np.argwhere(mask)
    if len(pts) < 3:
        return mask
    try:
        eq = ConvexHull(pts).equations          # facets: normal · p + offset <= 0 inside
    except QhullError:                          # all on a line
        return mask
    grid = np.indices(mask.shape).reshape(2, -1).T
    inside = (grid @ eq[:, :2].T + eq[:, 2] <= 1e-6).all(axis=1)
    return inside.reshape(mask.shape) | mask


def body_reference(a: np.ndarray) -> tuple[np.ndarray, float, float]:
    """(lightly smoothed PET, its 99.5th percentile, the typical body uptake: median above 5 % of it)."""
    from scipy import ndimage

    s = ndimage.gaussian_filter(a.astype(np.float32), 0.5)
    top = float(np.percentile(s, 99.5))
    if top <= 0:
        raise NMAIError("the PET has no positive voxels; check that the right series was loaded")
    return s, top, float(np.median(s[s > 0.05 * top]))


def noise_cov(pet: Volume) -> float:
    """Median local coefficient of variation (3 × 3 × 3 neighbourhoods) of the PET averaged into blocks of
    about NOISE_BLOCK_MM, over body voxels at 0.5–2 × the typical body uptake; for blocks larger than that
    (voxels above 6 mm) scaled by √(block volume / 6³) to the noise of a 6 mm block."""
    from scipy import ndimage

    f = [max(1, int(round(NOISE_BLOCK_MM / sp))) for sp in pet.spacing[::-1]]       # k, j, i
    n = [pet.shape[i] // f[i] for i in range(3)]
    if min(n) < 3:
        raise NMAIError(f"the PET ({pet.shape}) is too small to measure its noise; give a 3-D volume")
    a = pet.array[:n[0] * f[0], :n[1] * f[1], :n[2] * f[2]].astype(np.float32)
    b = a.reshape(n[0], f[0], n[1], f[1], n[2], f[2]).mean(axis=(1, 3, 5))
    s, top, ref = body_reference(b)
    body = ndimage.binary_erosion(s > 0.05 * top, iterations=2)
    m = ndimage.uniform_filter(b, 3)
    sd = np.sqrt(np.clip(ndimage.uniform_filter(b * b, 3) - m * m, 0, None))
    sel = body & (m > 0.5 * ref) & (m < 2 * ref)
    # blocks larger than 6 mm (voxels above 6 mm) average more: scale to the noise of a 6 mm block
    larger = max(1.0, float(np.prod(np.asarray(pet.spacing) * f[::-1])) / NOISE_BLOCK_MM ** 3)
    return float(np.median(sd[sel] / m[sel]) * np.sqrt(larger)) if sel.any() else 0.0


def noise_rule(pet: Volume) -> tuple[list, dict]:
    cov = noise_cov(pet)
    score = _score(cov, NOISE_COV)
    found = []
    if score >= 0.5:
        found.append({"type": "low_counts", "probability": score, "slice_range": [0, pet.shape[0] - 1],
                      "alarm": "repeat" if score >= 0.8 else "check", "source": "image rules",
                      "noise_cov": round(cov, 3),
                      "message": f"image noise {100 * cov:.0f} % (local CoV at ~{NOISE_BLOCK_MM:g} mm; "
                                 f"threshold {100 * NOISE_COV:.0f} %): too few counts for a reliable read; "
                                 "extend or repeat the acquisition"})
    return found, {"noise_cov_6mm": round(cov, 4), "rule_scores": {"low_counts": score}}


def component_hulls(mask: np.ndarray) -> np.ndarray:
    """Union of the filled convex hulls of each connected part of a 2-D mask: a concavity of the trunk is
    inside, the gap between an arm and the trunk is not."""
    from scipy import ndimage

    lab, n = ndimage.label(mask)
    out = mask.copy()
    for i in range(1, n + 1):
        out |= convex_hull(lab == i)
    return out


def mumap_rules(pet: Volume, mu: Volume) -> tuple[list, dict]:
    from scipy import ndimage

    sx, sy, _ = pet.spacing
    ml = float(np.prod(pet.spacing)) / 1000.0
    s, top, ref = body_reference(pet.array)
    mu_body = ndimage.binary_fill_holes(mu.array > 0.05, _IN_PLANE)
    # distance from the convex hull of each slice's body: gaps between arms and trunk, which PET spill
    # from both sides fills, do not count
    hull = np.stack([convex_hull(m) for m in mu_body])
    artifacts = []
    # truncation: PET tissue well outside the μ-map's body (in-plane distance, mm)
    dist = np.stack([ndimage.distance_transform_edt(~m, sampling=(sy, sx)) for m in hull])
    outside = (s > 0.3 * ref) & (dist >= TRUNCATION_MM)
    per_slice = outside.sum(axis=(1, 2)) * ml
    trunc_ml = float(per_slice.sum())
    trunc_score = _score(trunc_ml, TRUNCATION_ML)
    if trunc_score >= 0.5:
        artifacts.append({"type": "truncation", "probability": trunc_score,
                          "slice_range": slice_span(per_slice > 0), "alarm": "check", "source": "μ-map rules", "volume_ml": round(trunc_ml, 1),
                          "message": f"{trunc_ml:.0f} ml of tissue seen by PET lies outside the μ-map (arms cut "
                                     "off?): complete the μ-map (MLAA or outline completion) and reconstruct"})
    # void: the largest μ ≈ 0 region inside the body (the μ-map's, or the PET's 8 mm in from its outline
    # and within the hull of one part of the μ-map's body, since a void can open onto the skin) where PET
    # sees tissue
    pet_body = ndimage.binary_erosion(ndimage.binary_fill_holes(s > 0.05 * top, _IN_PLANE), _IN_PLANE,
                                      iterations=max(1, int(round(8.0 / min(sx, sy)))))
    own_hull = np.stack([component_hulls(m) for m in mu_body])
    lab, n = ndimage.label((mu.array < 0.01) & (mu_body | (pet_body & own_hull)))
    void_ml = 0.0
    if n:
        idx = np.arange(1, n + 1)
        sizes = np.bincount(lab.ravel())[1:] * ml
        means = ndimage.mean(s, lab, idx)
        # a void is wide: a disc of VOID_WIDTH_MM fits inside it in some slice; the slivers between arms and
        # trunk, the airways and small gas pockets are narrower
        ry, rx = (max(1, int(round(VOID_WIDTH_MM / 2 / d))) for d in (sy, sx))
        yy, xx = np.ogrid[-ry:ry + 1, -rx:rx + 1]
        disc = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0
        core = np.stack([ndimage.binary_opening(m, disc) for m in lab > 0])
        wide = np.zeros(n + 1, bool)
        wide[np.unique(lab[core])] = True
        sizes = np.where((means > 0.05 * ref) & wide[1:], sizes, 0.0)
        big = int(np.argmax(sizes)) + 1
        void_ml = float(sizes[big - 1])
    void_score = _score(void_ml, VOID_ML)
    if void_score >= 0.5:
        artifacts.append({"type": "mumap_void", "probability": void_score,
                          "slice_range": slice_span((lab == big).any(axis=(1, 2))), "alarm": "check", "source": "μ-map rules",
                          "volume_ml": round(void_ml, 1),
                          "message": f"a {void_ml:.0f} ml void (μ 0) inside the body where PET sees tissue "
                                     "(metal in an MR-based μ-map?): fill it with soft tissue or use CT/MLAA; "
                                     "uptake near it is underestimated"})
    evidence = {"pet_tissue_outside_mumap_ml": round(trunc_ml, 1), "largest_mumap_void_ml": round(void_ml, 1),
                "body_uptake_reference": ref, "rule_scores": {"truncation": trunc_score, "mumap_void": void_score}}
    return artifacts, evidence


def outline_offset(pet: Volume, mu: Volume) -> np.ndarray:
    """(x, y, z) mm, in the volume's own axes, by which the μ-map's body outline must move to lie on the
    PET's (see the module docstring)."""
    from scipy import ndimage

    sp = np.asarray(pet.spacing, float)[::-1]                       # k, j, i
    s = ndimage.gaussian_filter(pet.array.astype(np.float32), 3.0 / sp)
    _, _, ref = body_reference(pet.array)
    target = np.clip(s / (0.2 * ref), 0.0, 1.0)
    outline = ndimage.gaussian_filter((mu.array > 0.01).astype(np.float32), 5.0 / sp)
    use = ~ndimage.binary_dilation(s > 3.0 * ref, iterations=3)
    use[0] = use[-1] = False
    d = np.zeros(3)                                                  # k, j, i (mm)
    for _ in range(3):
        moved = ndimage.shift(outline, d / sp, order=1)
        g = np.stack(np.gradient(moved, *sp))
        r = (target - moved)[use]
        # in-plane: shift and how far the PET outline lies outside the μ-map's all round (its blur and
        # spill), from the in-plane gradients of every slice
        gp = np.concatenate([g[1:], np.sqrt(g[1] ** 2 + g[2] ** 2)[None]])[:, use]
        gg = gp @ gp.T
        if np.linalg.cond(gg) > 1e8:           # no outline to match
            return np.zeros(3)
        d[1:] -= np.linalg.solve(gg, gp @ r)[:2]
        # along z only where the body has outlines facing up or down (head, shoulders); a slab of trunk
        # has too few to tell a shift from the change of the body's width
        gz = g[0][use]
        if gz @ gz >= Z_OUTLINE_SHARE * float((gp[:2] ** 2).sum()):
            d[0] -= float(gz @ r) / float(gz @ gz)
    return d[::-1]


def offset_rule(pet: Volume, mu: Volume) -> tuple[list, dict]:
    d = outline_offset(pet, mu)
    lps = np.asarray(pet.direction, float) @ d
    size = float(np.linalg.norm(d))
    score = _score(size, OFFSET_MM)
    found = []
    if score >= 0.5:
        found.append({"type": "pet_mumap_offset", "probability": score, "slice_range": [0, pet.shape[0] - 1],
                      "alarm": "check", "source": "μ-map rules", "offset_mm": round(size, 2),
                      "offset_lps_mm": [round(float(v), 2) for v in lps],
                      "message": f"the PET's body outline sits {size:.1f} mm off the μ-map's: the patient moved "
                                 "during the scan, or the μ-map/CT is misregistered. If the raw data or the "
                                 "frames show motion, repeat the affected bed positions; otherwise register the "
                                 "μ-map to the PET and reconstruct again"})
    return found, {"pet_mumap_offset_lps_mm": [round(float(v), 2) for v in lps],
                   "rule_scores": {"pet_mumap_offset": score}}


def diaphragm_band(pet: Volume, mu: Volume) -> dict | None:
    """``{band, columns, slice_range}``: the PET just above the μ-map's lung base, on a scale where the lung
    20–30 mm higher is 0 and the tissue 20–30 mm below the base is 1 (see the module docstring), the number
    of columns it was measured in and the slices of the band (PET slice indices); or None where it cannot
    be measured: slices not axial, a PET that is not finite there, or fewer than ``BAND_MIN_COLUMNS``
    columns that qualify with 30 mm of profile inside the field of view on both sides.

    A column (j, i) qualifies where the μ-map's lowest lung voxel (0.003 < μ < 0.065 cm⁻¹ inside the body,
    in a large connected region) lies on a voxel of μ ≥ 0.065 (a blurred μ-map's edge may be partial
    volume) with tissue (μ > 0.085) from the next voxel down over ``BAND_BELOW_MM``, and where the PET's
    tissue below is at least 1.25 × its lung above. The base lies where μ crosses 0.065 between the two
    voxels; the PET is sampled every mm from 30 mm below to 30 mm above it, and the median over columns of
    the normalised profiles is averaged over ``BAND_MM``."""
    from scipy import ndimage

    k_axis = np.asarray(pet.direction, float)[:, 2]            # LPS direction of the slice axis
    if abs(k_axis[2]) < 0.9:
        return None
    p, m = (pet.array, mu.array) if k_axis[2] > 0 else (pet.array[::-1], mu.array[::-1])   # k to the head
    nz, dz = p.shape[0], float(pet.spacing[2])
    body = ndimage.binary_fill_holes(m > 0.05, _IN_PLANE)
    lab, n = ndimage.label((m > 0.003) & (m < 0.065) & ndimage.binary_erosion(body, _IN_PLANE, iterations=2))
    if not n:
        return None
    sizes = np.bincount(lab.ravel())[1:]
    lung = np.isin(lab, np.flatnonzero(sizes >= 0.2 * sizes.max()) + 1)
    kb = np.argmax(lung, axis=0)                                # lowest lung voxel of each column
    below = int(np.ceil(BAND_BELOW_MM / dz))
    jj, ii = np.nonzero(lung.any(axis=0) & (kb > below + 1))
    kb = kb[jj, ii]
    a, b = m[kb - 1, jj, ii], m[kb, jj, ii]
    tissue = (a >= 0.065) & np.stack([m[kb - t, jj, ii] > 0.085 for t in range(2, below + 2)]).all(axis=0)
    jj, ii, kb, a, b = jj[tissue], ii[tissue], kb[tissue], a[tissue], b[tissue]
    base = kb - 1 + (a - 0.065) / (a - b)                       # slices
    offsets = np.arange(-30.0, 31.0)                            # mm, + towards the head
    kk = base[:, None] + offsets[None, :] / dz
    inside = (kk >= 0).all(axis=1) & (kk <= nz - 1).all(axis=1)
    kk, jj, ii, base = kk[inside], jj[inside], ii[inside], base[inside]
    prof = ndimage.map_coordinates(p, [kk, np.broadcast_to(jj[:, None], kk.shape),
                                       np.broadcast_to(ii[:, None], kk.shape)], order=1, output=np.float32)
    if not np.isfinite(prof).all():
        return None
    tissue_level = prof[:, (offsets >= -30) & (offsets <= -20)].mean(axis=1)
    lung_level = prof[:, (offsets >= 20) & (offsets <= 30)].mean(axis=1)
    keep = tissue_level > lung_level
    if keep.sum() < BAND_MIN_COLUMNS:
        return None
    prof, tissue_level, lung_level, base = prof[keep], tissue_level[keep], lung_level[keep], base[keep]
    q = np.median((prof - lung_level[:, None]) / (tissue_level - lung_level)[:, None], axis=0)
    band = (offsets >= BAND_MM[0]) & (offsets <= BAND_MM[1])
    k0 = int(np.floor(base.min() + BAND_MM[0] / dz))
    k1 = min(nz - 1, int(np.ceil(base.max() + BAND_MM[1] / dz)))
    span = [k0, k1] if k_axis[2] > 0 else [nz - 1 - k1, nz - 1 - k0]
    return {"band": float(q[band].mean()), "columns": int(keep.sum()), "slice_range": span}


def breathing_rule(pet: Volume, mu: Volume) -> tuple[list, dict]:
    res = diaphragm_band(pet, mu)
    if res is None:
        return [], {"diaphragm_band": None, "rule_scores": {"diaphragm_band": 0.0}}
    score = _score(max(0.0, BAND_CLEAN - res["band"]), BAND_CLEAN - BAND_THRESHOLD)
    found = []
    if score >= 0.5:
        found.append({"type": "diaphragm_band", "probability": score, "slice_range": res["slice_range"],
                      "alarm": "check", "source": "μ-map rules", "band": round(res["band"], 3),
                      "message": "the PET just above the μ-map's lung base is as cold as the lung or colder (a "
                                 "photopenic band over the liver dome): the μ-map/CT was taken in deeper "
                                 "inspiration than the PET's breathing. Uptake at the liver dome and lung bases "
                                 "is under-read; register the μ-map at the diaphragm, or use a CT at "
                                 "mid-expiration, and reconstruct again"})
    return found, {"diaphragm_band": {**res, "band": round(res["band"], 4)},
                   "rule_scores": {"diaphragm_band": score}}


def raw_rules(acq) -> tuple[list, list]:
    from .raw import acquisition_frames, watch_frames

    lines = list(watch_frames(acquisition_frames(acq), acq.scanner, acq.slice_mm, acq.n_slices))
    every = [0, acq.n_slices - 1]
    found: dict = {}
    for r in lines:
        for f in r["findings"]:
            found.setdefault(f["type"], []).append((r["frame"], f))
    artifacts = []
    for kind, hits in found.items():
        frames = [fr for fr, _ in hits]
        alarm = "repeat" if any(f["alarm"] == "repeat" for _, f in hits) else "check"
        item = {"type": kind, "probability": 1.0, "slice_range": every, "alarm": alarm,
                "frames": frames, "source": "raw data", "message": hits[0][1]["message"]}
        if kind == "motion":
            item["probability"] = _score(max(f["magnitude_mm"] for _, f in hits), 4.0)
        if kind == "failed_blocks":
            item["blocks"] = sorted({b["block"] for _, f in hits for b in f["blocks"]})
        artifacts.append(item)
    return artifacts, lines


CLASSIFIER_ADVICE = {
    "motion": ("repeat", "patient motion: repeat the affected bed positions (or reconstruct the frames before "
                         "the move)"),
    "respiratory": ("check", "breathing blur at the diaphragm: lesions near the liver dome and lung bases are "
                             "under-read; consider a respiratory-gated acquisition"),
    "misregistration": ("check", "PET and μ-map/CT do not line up: register the μ-map to the PET and "
                                 "reconstruct again (no need to repeat the scan)"),
    "truncation": ("check", "the μ-map misses part of the body (arms): complete it and reconstruct again"),
    "failed_blocks": ("repeat", "detector blocks look dead: call service; the image has streaks"),
    "metal": ("check", "a metal implant leaves a μ-map void: uptake near it is underestimated; fill the void or "
                       "use CT-based attenuation correction"),
    "low_counts": ("repeat", "too few counts for a reliable read: extend or repeat the acquisition"),
}


def _registered(name: str):
    from ..models.registry import list_models

    return name if any(m["name"] == name for m in list_models()) else None


def classifier_findings(pet: Volume, mu: Volume | None, model) -> tuple[list, dict]:
    """The learned classifier's artifacts (score ≥ 0.5) and every score and network probability."""
    from .classifier import REPEAT, classify_artifacts

    res = classify_artifacts(pet, mu, model)
    found = []
    for a in res["artifacts"]:
        if a["probability"] < 0.5:
            continue
        alarm, message = CLASSIFIER_ADVICE[a["type"]]
        found.append({**a, "alarm": alarm if a["probability"] >= REPEAT else "check", "source": "image classifier",
                      "message": message})
    return found, {"probabilities": {a["type"]: a["probability"] for a in res["artifacts"]},
                   "network_probabilities": {a["type"]: a["network_probability"] for a in res["artifacts"]},
                   "thresholds": {a["type"]: a["threshold"] for a in res["artifacts"]},
                   "calibrated": res["calibrated"], "with_mumap": res["with_mumap"], "model": res["model"]}


def triage_image(pet, *, mumap=None, ct=None, acquisition=None, classifier="auto", lesion_model="auto",
                 lesion_threshold: float = 0.5, progress=None) -> dict:
    """Report for a PET (Volume or path), optionally with its μ-map or CT (Volume or path) and the raw data
    (an Acquisition or a simulation folder).

    ``classifier`` / ``lesion_model``: a model folder or name, ``"auto"`` (the shipped ``triage-artifacts`` /
    ``triage-lesions`` when installed) or None (rules only / no lesion candidates).
    """
    from ..io import read_volume
    from ..mu import hu_to_mu
    from ..sim.acquisition import Acquisition
    from ..sim.recon import resample_to
    from ..validate import check_pet
    from .lesions import detect_lesions

    progress = as_progress(progress)
    if mumap is not None and ct is not None:
        raise NMAIError("give either the μ-map or the CT, not both")
    source = str(pet) if not isinstance(pet, Volume) else pet.metadata.get("source", "memory")
    pet = read_volume(pet, modality="PT", units="Bq/ml") if not isinstance(pet, Volume) else pet
    check_pet(pet)
    mu = None
    if ct is not None:
        ct = read_volume(ct, modality="CT", units="HU") if not isinstance(ct, Volume) else ct
        if ct.units != "HU":
            raise NMAIError(f"the CT is in {ct.units}, not HU; select the CT series")
        mu = ct.derive(hu_to_mu(ct.array), units="cm-1", modality="OT")
    elif mumap is not None:
        mu = read_volume(mumap, units="cm-1") if not isinstance(mumap, Volume) else mumap
        if mu.units not in ("cm-1", "1"):
            raise NMAIError(f"the μ-map is in {mu.units}; give μ at 511 keV in cm-1 (or the CT with --ct)")
        if not np.isfinite(mu.array).all() or float(mu.array.max()) > 1.0:
            raise NMAIError(f"the μ-map's maximum is {float(np.nanmax(mu.array)):.3g}: not μ at 511 keV in cm-1 "
                            "(bone ≈ 0.17; some vendors store cm-1 x 10000): rescale it, or give the CT with --ct")
    classifier = _registered("triage-artifacts") if classifier == "auto" else classifier
    lesion_model = _registered("triage-lesions") if lesion_model == "auto" else lesion_model
    artifacts, evidence = noise_rule(pet)
    raw, learned = None, None
    if mu is not None:
        progress(0.05, "μ-map rules")
        mu_on_pet = resample_to(mu, pet)
        if not ((mu_on_pet.array > 0.05) & (pet.array > 0)).any():
            raise NMAIError("the μ-map/CT does not overlap the PET; select the μ-map or CT of this study")
        for rule in (mumap_rules, offset_rule, breathing_rule):
            found, more = rule(pet, mu_on_pet)
            artifacts += found
            evidence = {**evidence, **more, "rule_scores": {**evidence["rule_scores"], **more["rule_scores"]}}
    if classifier:
        progress(0.2, "artifact classifier")
        found, learned = classifier_findings(pet, mu, classifier)
        artifacts += found
    if acquisition is not None:
        progress(0.4, "raw data, frame by frame")
        acq = acquisition if isinstance(acquisition, Acquisition) else Acquisition.load(acquisition)
        found, raw = raw_rules(acq)
        artifacts += found
    lesions = None
    if lesion_model is not None:
        progress(0.7, "lesion candidates")
        lesions = detect_lesions(pet, lesion_model, threshold=lesion_threshold)
    artifacts.sort(key=lambda a: -a["probability"])
    alarm = worst(a["alarm"] for a in artifacts)
    progress(1.0, "report ready")
    return {"format": FORMAT, "nmai_version": __version__, "input": source,
            "method": "rules + image classifier" if classifier else "rules",
            "alarm": alarm, "artifacts": artifacts,
            "lesions": lesions["lesions"] if lesions else [],
            "lesions_units": lesions["units"] if lesions else None,
            "lesions_note": (None if lesions else "no lesion model installed or selected: no candidates were searched"),
            "lesion_model": lesions["model"] if lesions else None,
            "checked": {"image_rules": True, "mumap_rules": mu is not None, "image_classifier": bool(classifier),
                        "raw_data": acquisition is not None, "lesions": lesions is not None},
            "classifier": learned, "evidence": evidence, "raw": raw}
