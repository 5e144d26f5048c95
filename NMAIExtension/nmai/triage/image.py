"""Image-domain triage report: a PET image (with the μ-map or CT it was corrected with, and the raw data
where there is some) → ``{alarm, artifacts, lesions, ...}`` (schema in the README).

Three sources of artifact findings, each listed with ``type``, ``probability``, ``slice_range``, ``alarm``,
``source`` and a ``message`` that says what to do:

* the learned slice classifier (:mod:`nmai.triage.classifier`, model ``triage-artifacts``): motion,
  respiratory, misregistration, truncation, failed_blocks, metal, low_counts, listed at probability ≥ 0.5;
  ``repeat`` at ≥ 0.8 for what only a new acquisition fixes (motion, failed blocks, low counts), ``check``
  otherwise (attenuation problems are fixed by correcting the μ-map and reconstructing again);
* μ-map rules (below) and raw-data findings (:mod:`nmai.triage.raw`), when the μ-map / acquisition is given;
* lesion candidates (:mod:`nmai.triage.lesions`, model ``triage-lesions``).

Rules (each gives a score = 0.5 × evidence / threshold, capped at 1, in the ``probability`` field; an
artifact is listed at ≥ 0.5 — scores, not calibrated probabilities):

* **truncation** (needs the μ-map): PET tissue (> 0.3 × the median body uptake) ≥ 12 mm (in-plane)
  outside the convex hull of the μ-map's body in that slice (μ > 0.05 cm⁻¹; the hull, because PET spill
  from both sides fills the gaps between arms and trunk); threshold 25 ml.
* **μ-map void** (μ-map; metal in MR-based μ-maps): the largest connected region with μ < 0.01 cm⁻¹
  enclosed by the μ-map's body whose mean PET is > 0.1 × the body uptake; threshold 100 ml. Airways and
  bowel gas are such regions too: on the simulated phantoms they stay below 70 ml, in a patient's CT-based
  μ-map bowel gas can exceed the threshold.
* no misregistration rule: under a misregistered μ-map the PET's own outline follows the μ-map (the
  uncovered rim is under-corrected along tangential lines), so outline matching finds only ~40 % of the
  shift; the learned classifier handles it.
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
VOID_ML = 100.0
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


def mumap_rules(pet: Volume, mu: Volume) -> tuple[list, dict]:
    from scipy import ndimage

    sx, sy, _ = pet.spacing
    ml = float(np.prod(pet.spacing)) / 1000.0
    s = ndimage.gaussian_filter(pet.array.astype(np.float32), 0.5)
    top = float(np.percentile(s, 99.5))
    if top <= 0:
        raise NMAIError("the PET has no positive voxels; check that the right series was loaded")
    ref = float(np.median(s[s > 0.05 * top]))             # typical body uptake
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
    if _score(trunc_ml, TRUNCATION_ML) >= 0.5:
        artifacts.append({"type": "truncation", "probability": _score(trunc_ml, TRUNCATION_ML),
                          "slice_range": slice_span(per_slice > 0), "alarm": "check", "source": "μ-map rules", "volume_ml": round(trunc_ml, 1),
                          "message": f"{trunc_ml:.0f} ml of tissue seen by PET lies outside the μ-map (arms cut "
                                     "off?): complete the μ-map (MLAA or outline completion) and reconstruct"})
    # void: the largest μ ≈ 0 region enclosed by the body, where PET sees tissue
    lab, n = ndimage.label((mu.array < 0.01) & mu_body)
    void_ml = 0.0
    if n:
        sizes = np.bincount(lab.ravel())[1:] * ml
        means = ndimage.mean(s, lab, np.arange(1, n + 1))
        sizes = np.where(means > 0.1 * ref, sizes, 0.0)
        big = int(np.argmax(sizes)) + 1
        void_ml = float(sizes[big - 1])
        if _score(void_ml, VOID_ML) >= 0.5:
            artifacts.append({"type": "mumap_void", "probability": _score(void_ml, VOID_ML),
                              "slice_range": slice_span((lab == big).any(axis=(1, 2))), "alarm": "check", "source": "μ-map rules",
                              "volume_ml": round(void_ml, 1),
                              "message": f"a {void_ml:.0f} ml void (μ 0) inside the body where PET sees tissue "
                                         "(metal in an MR-based μ-map?): fill it with soft tissue or use CT/MLAA; "
                                         "uptake near it is underestimated"})
    evidence = {"pet_tissue_outside_mumap_ml": round(trunc_ml, 1), "largest_mumap_void_ml": round(void_ml, 1),
                "body_uptake_reference": ref}
    return artifacts, evidence


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
    """The learned classifier's artifacts (probability ≥ 0.5) and every probability."""
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
                   "with_mumap": res["with_mumap"], "model": res["model"]}


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
    artifacts, evidence, raw, learned = [], {}, None, None
    if mu is not None:
        progress(0.05, "μ-map rules")
        mu_on_pet = resample_to(mu, pet)
        if not ((mu_on_pet.array > 0.05) & (pet.array > 0)).any():
            raise NMAIError("the μ-map/CT does not overlap the PET; select the μ-map or CT of this study")
        found, evidence = mumap_rules(pet, mu_on_pet)
        artifacts += found
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
            "checked": {"mumap_rules": mu is not None, "image_classifier": bool(classifier),
                        "raw_data": acquisition is not None, "lesions": lesions is not None},
            "classifier": learned, "evidence": evidence, "raw": raw}
