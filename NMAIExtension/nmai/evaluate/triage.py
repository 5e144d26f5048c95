"""Triage on simulated phantoms never used in training (``nmai evaluate triage``).

1. **Image-domain artifacts.** For every case seed ``seed_start + i`` (the training uses seeds ≥ 30000)
   a whole-body phantom (voxels 4.5–6.5 mm, arms in every other case) is simulated clean and with each
   artifact at the issue's *moderate* severity (:data:`MODERATE`), reconstructed with the μ-map a site
   would have, and run through :func:`nmai.triage.image.triage_image` (classifier + rules). The score
   of artifact A is the classifier's score for A; for truncation, metal, low counts, motion and
   misregistration, the larger of it and the score of the rule that finds it (truncation, μ-map void,
   noise, PET/μ-map offset for both motion and misregistration). Truncation cuts the arms with a 450 mm
   μ-map field, narrowed in 30 mm steps until at least 1 % of the body (about a forearm) lies outside it:
   a 450 mm field that clips a few finger voxels is not the moderate case. Breathing is reconstructed with
   the end-inspiration μ-map (the photopenic band over the liver dome); the same breathing with the
   end-expiration μ-map is scored too and reported under ``secondary`` (no target: attenuation correction
   pulls the PET's edge onto such a μ-map and leaves almost nothing to see). Per artifact, the ROC AUC
   separates its cases from the clean ones (second number: from every other case; third: the classifier
   alone against the clean ones); the alarms on clean scans are reported too.
2. **Lesion candidates.** Whole-body phantoms (4 mm, 8 lesions of 5–30 mm at contrast 2–6, seeds
   ``seed_start + 500 + i``), one 180 s acquisition each, OSEM 3 × 14 with PSF, then
   :func:`nmai.triage.lesions.detect_lesions` with every candidate scored. A candidate hits a lesion when a
   lesion voxel lies within one voxel of its maximum. Lesions of ≥ 10 mm at contrast ≥ 3 are the ones to
   find; a candidate on a smaller or fainter lesion is neither a true nor a false positive. The FROC curve
   (sensitivity vs false positives per scan over the score threshold) and the sensitivity at ≤ 1 false
   positive per scan and at the default threshold 0.5 are reported.
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import NMAIError
from ..progress import as_progress

TRAINING_SEEDS_FROM = 30_000
MODERATE = {"motion": 10.0, "respiratory": 15.0, "misregistration": 10.0, "truncation": 450.0,
            "failed_blocks": 1, "metal": 20.0, "low_counts": 0.1}
MODERATE_TEXT = {"motion": "10 mm rigid shift half-way through the scan",
                 "respiratory": "15 mm breathing, μ-map at end-inspiration",
                 "misregistration": "μ-map shifted 10 mm",
                 "truncation": "arms cut by a 450 mm μ-map field (narrower until ≥ 1 % of the body is cut)",
                 "failed_blocks": "one dead block", "metal": "hip implant with a 20 mm μ-map void",
                 "low_counts": "10 % of the counts"}
RULE_TYPES = {"truncation": "truncation", "metal": "mumap_void", "low_counts": "low_counts",
              "motion": "pet_mumap_offset", "misregistration": "pet_mumap_offset", "respiratory": "diaphragm_band"}
MIN_TRUNCATED_PERCENT = 1.0


def _moderate_truncation(ph):
    from ..sim import artifacts as art

    fov = MODERATE["truncation"]
    while True:
        case = art.truncation(ph, fov)     # raises when nothing of the body lies outside
        if case.truth["severity"] >= MIN_TRUNCATED_PERCENT or fov <= 300:
            return case
        fov -= 30.0


def roc_auc(positive, negative) -> float | None:
    """Mann–Whitney AUC (ties count half)."""
    p, n = np.asarray(positive, float), np.asarray(negative, float)
    if not p.size or not n.size:
        return None
    return float(((p[:, None] > n[None]).sum() + 0.5 * (p[:, None] == n[None]).sum()) / (p.size * n.size))


def froc(scores: list[np.ndarray], hits: list[np.ndarray], n_lesions: int, n_scans: int) -> list[dict]:
    """FROC points over thresholds: per scan, candidates' scores and the eligible lesion each hits
    (-1: a false positive, -2: ignored)."""
    thresholds = np.unique(np.concatenate([s for s in scores] + [np.array([0.0, 1.0])]))
    points = []
    for t in thresholds:
        found, fp = 0, 0
        for s, h in zip(scores, hits):
            keep = s >= t
            found += len(set(h[keep & (h >= 0)].tolist()))
            fp += int((keep & (h == -1)).sum())
        points.append({"threshold": float(t), "sensitivity": found / max(n_lesions, 1), "fp_per_scan": fp / n_scans})
    return points


def artifact_scans(seed: int, quick: bool = False, progress=None, extra: bool = False):
    """For one phantom seed: ``(kind, case, recon, voxel_mm)`` for the clean scan and each artifact at its
    moderate severity (``case`` is the NMAIError text and ``recon`` None when the phantom cannot have it,
    e.g. no arms to truncate). Shared by the evaluation and the classifier's calibration. ``extra`` adds
    ``respiratory_expiration``: the same breathing with the end-expiration μ-map, which is reported but
    is not a target (see the README)."""
    from ..sim import make_phantom
    from ..sim import artifacts as art

    progress = as_progress(progress)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 51]))
    voxel = 8.0 if quick else float(rng.uniform(4.5, 6.5))
    ph = make_phantom("wholebody", seed=seed, voxel_mm=voxel, arms=(seed % 2 == 0) or quick, mr=False,
                      supersample=1 if quick else 2)
    direction = np.eye(3)[int(rng.integers(3))] * rng.choice([-1.0, 1.0])
    makers = {"none": lambda: art.clean(ph),
              "motion": lambda: art.patient_motion(ph, MODERATE["motion"], direction),
              "respiratory": lambda: art.respiratory(ph, MODERATE["respiratory"], mumap_phase=0.5),
              "misregistration": lambda: art.misregistration(ph, MODERATE["misregistration"], direction),
              "truncation": lambda: _moderate_truncation(ph),
              "failed_blocks": lambda: art.failed_blocks(ph, (int(rng.integers(0, 56)),)),
              "metal": lambda: art.metal(ph, MODERATE["metal"]),
              "low_counts": lambda: art.low_counts(ph, MODERATE["low_counts"])}
    if extra:
        makers["respiratory_expiration"] = lambda: art.respiratory(ph, MODERATE["respiratory"], mumap_phase=0.0)
    for n, (kind, make) in enumerate(makers.items()):
        progress(n / len(makers), f"seed {seed}: {kind}")
        try:
            case = make()
        except NMAIError as exc:      # e.g. no arms to truncate
            yield kind, str(exc), None, voxel
            continue
        _, recon = art.simulate_case(case, seed=seed, iterations=2 if quick else 3, subsets=14)
        yield kind, case, recon, voxel


def _artifact_cases(seed: int, quick: bool, classifier, progress) -> list[dict]:
    from ..triage.image import triage_image

    out = []
    for kind, case, recon, voxel in artifact_scans(seed, quick, progress, extra=True):
        if recon is None:
            out.append({"seed": seed, "kind": kind, "skipped": case})
            continue
        rep = triage_image(recon, mumap=case.mumap_recon, classifier=classifier, lesion_model=None)
        learned = dict(rep["classifier"]["probabilities"]) if rep["classifier"] else {}
        probs = dict(learned)
        rule_scores = rep["evidence"].get("rule_scores", {})
        for a_type, rule in RULE_TYPES.items():
            probs[a_type] = max(probs.get(a_type, 0.0), rule_scores.get(rule, 0.0))
        out.append({"seed": seed, "kind": kind, "voxel_mm": round(voxel, 2),
                    "severity": case.truth.get("severity"), "severity_unit": case.truth.get("severity_unit"),
                    "alarm": rep["alarm"],
                    "scores": {k: round(float(v), 4) for k, v in probs.items()},
                    "classifier_scores": {k: round(float(v), 4) for k, v in learned.items()},
                    "found": [a["type"] for a in rep["artifacts"]]})
    return out


def _lesion_case(seed: int, quick: bool, lesion_model) -> dict:
    from ..sim import make_phantom, simulate
    from ..sim.tissues import LESION_LABEL_BASE
    from ..triage.lesions import detect_lesions

    ph = make_phantom("wholebody", seed=seed, voxel_mm=8.0 if quick else 4.0, lesions=8, mr=False,
                      arms=(seed % 3 == 0), supersample=1 if quick else 2)
    sim = simulate(ph, seed=seed, iterations=2 if quick else 3)
    res = detect_lesions(sim.recon, lesion_model, threshold=0.0)
    labels = ph.labels.array
    eligible = {le["label"] for le in ph.info["lesions"] if le["diameter_mm"] >= 10.0 and le["contrast"] >= 3.0}
    scores, hits = [], []
    for c in res["lesions"]:
        box = tuple(slice(max(0, i - 1), i + 2) for i in c["index_kji"])
        near = {int(v) for v in np.unique(labels[box]) if v >= LESION_LABEL_BASE}
        hit = sorted(near & eligible)
        scores.append(c["probability"] if c["probability"] is not None else 1.0)
        hits.append(hit[0] if hit else (-2 if near else -1))
    return {"seed": seed, "eligible": sorted(eligible), "lesions": ph.info["lesions"],
            "scores": np.asarray(scores, float), "hits": np.asarray(hits, int),
            "candidates": res["candidates_considered"]}


def _auc_entry(pos: list[dict], clean: list[dict], others: list[dict], a: str) -> dict:
    score = lambda cases, key="scores": [c[key].get(a, 0.0) for c in cases]  # noqa: E731
    return {"cases": len(pos), "auc_vs_clean": roc_auc(score(pos), score(clean)),
            "auc_vs_all_others": roc_auc(score(pos), score(others)),
            "auc_vs_clean_classifier_only": roc_auc(score(pos, "classifier_scores"), score(clean, "classifier_scores")),
            "flagged": sum(1 for c in pos if {a, RULE_TYPES.get(a)} & set(c["found"])),
            "mean_score": float(np.mean(score(pos))) if pos else None}


def summarise_artifacts(art_cases: list[dict]) -> tuple[dict, dict, dict]:
    """Per artifact: AUC of its scores against the clean scans, against every other scan of the target set
    (clean + the seven artifacts), and of the classifier alone; the end-expiration breathing scans are
    summarised apart (``secondary``) and are in no one's "others"."""
    from ..triage.classifier import ARTIFACTS

    done = [c for c in art_cases if "scores" in c]
    target_set = [c for c in done if c["kind"] in ("none",) + tuple(ARTIFACTS)]
    clean = [c for c in done if c["kind"] == "none"]
    artifacts = {}
    for a in ARTIFACTS:
        pos = [c for c in target_set if c["kind"] == a]
        artifacts[a] = {"severity": MODERATE_TEXT[a],
                        **_auc_entry(pos, clean, [c for c in target_set if c["kind"] != a], a)}
    expiration = [c for c in done if c["kind"] == "respiratory_expiration"]
    entry = _auc_entry(expiration, clean, [c for c in target_set if c["kind"] != "respiratory"], "respiratory")
    secondary = {"respiratory_expiration": {
        "severity": "15 mm breathing, μ-map at end-expiration (not a target)", **entry}}
    alarms_clean = {lvl: sum(c["alarm"] == lvl for c in clean) for lvl in ("ok", "check", "repeat")}
    return artifacts, secondary, alarms_clean


def evaluate_triage(*, cases: int = 8, seed_start: int = 200, model=None, lesion_model=None, quick: bool = False,
                    figure=None, progress=None) -> dict:
    from ..models import load_model
    from ..triage.classifier import ARTIFACTS

    progress = as_progress(progress)
    if cases < 1:
        raise NMAIError("--cases must be at least 1")
    if seed_start + cases + 500 > TRAINING_SEEDS_FROM:
        raise NMAIError(f"seeds from {TRAINING_SEEDS_FROM} are training phantoms; use --seed-start below "
                        f"{TRAINING_SEEDS_FROM - 500 - cases}")
    t0 = time.time()
    classifier = load_model(model or "triage-artifacts", device="cpu")
    scorer = load_model(lesion_model or "triage-lesions", device="cpu")
    art_cases = []
    for i in range(cases):
        art_cases += _artifact_cases(seed_start + i, quick, classifier, progress.sub(0.6 * i / cases,
                                                                                      0.6 * (i + 1) / cases))
    artifacts, secondary, alarms_clean = summarise_artifacts(art_cases)
    les = []
    for i in range(cases):
        progress(0.6 + 0.38 * i / cases, f"lesion phantom {i + 1}/{cases}")
        les.append(_lesion_case(seed_start + 500 + i, quick, scorer))
    n_lesions = sum(len(c["eligible"]) for c in les)
    curve = froc([c["scores"] for c in les], [c["hits"] for c in les], n_lesions, len(les))
    at1 = max((p["sensitivity"] for p in curve if p["fp_per_scan"] <= 1.0), default=0.0)
    default = min((p for p in curve if p["threshold"] >= 0.5), key=lambda p: p["threshold"])
    targets = {f"{a}:auc": {"criterion": f"AUC >= 0.95 at moderate severity ({MODERATE_TEXT[a]})",
                            "value": artifacts[a]["auc_vs_clean"],
                            "pass": None if artifacts[a]["auc_vs_clean"] is None else artifacts[a]["auc_vs_clean"] >= 0.95}
               for a in ARTIFACTS}
    targets["lesions:sensitivity_at_1fp"] = {"criterion": "sensitivity >= 0.85 at <= 1 false positive per scan "
                                                          "(lesions >= 10 mm, contrast >= 3)",
                                             "value": at1, "pass": at1 >= 0.85}
    result = {
        "quick": quick, "note": "quick mode: 8 mm phantoms, not the evaluation's numbers" if quick else None,
        "cases": cases, "seed_start": seed_start,
        "models": {"artifacts": {"name": classifier.name, "sha256": classifier.sha256},
                   "lesions": {"name": scorer.name, "sha256": scorer.sha256}},
        "artifacts": artifacts, "secondary": secondary, "clean_alarms": alarms_clean,
        "artifact_cases": art_cases,
        "lesions": {"scans": len(les), "eligible_lesions": n_lesions,
                    "sensitivity_at_1fp_per_scan": at1,
                    "at_threshold_0.5": default, "froc": curve,
                    "per_scan": [{"seed": c["seed"], "eligible": c["eligible"], "candidates": c["candidates"],
                                  "scored": int(c["scores"].size)} for c in les]},
        "targets": targets,
        "published": {"misregistration_auc": "0.90-0.93 (Phys Med Biol 2024)",
                      "lesion_sensitivity": "nnU-Net lesion-wise ~72 % (autoPET)"},
        "duration_s": round(time.time() - t0, 1),
    }
    if figure:
        write_figure(figure, curve, artifacts)
    progress(1.0, "triage evaluated")
    return result


def write_figure(path, curve: list[dict], artifacts: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    pts = sorted(curve, key=lambda p: (p["fp_per_scan"], p["sensitivity"]))
    a.step([p["fp_per_scan"] for p in pts], [p["sensitivity"] for p in pts], where="post")
    a.axvline(1.0, ls=":", c="grey")
    a.axhline(0.85, ls=":", c="grey")
    a.set(xlabel="false positives per scan", ylabel="sensitivity (lesions ≥ 10 mm, ≥ 3:1)", title="lesion FROC",
          xlim=(0, max(5.0, min(20.0, pts[-1]["fp_per_scan"]))), ylim=(0, 1.02))
    names = list(artifacts)
    b.bar(range(len(names)), [artifacts[n]["auc_vs_clean"] or 0 for n in names])
    b.axhline(0.95, ls=":", c="grey")
    b.set_xticks(range(len(names)), names, rotation=40, ha="right")
    b.set(ylabel="AUC vs clean scans", ylim=(0, 1.02), title="image triage (classifier + rules), moderate severity")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
