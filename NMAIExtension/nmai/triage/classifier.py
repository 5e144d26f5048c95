"""Image-domain artifact triage: a small CNN slice classifier on PET (+ μ-map) → per-artifact probabilities.

The PET (and the μ-map used for its attenuation correction, when given) are resampled to a 6 mm grid
(:data:`GRID_MM`), centred in-plane on a 112 × 112 field (672 mm, wider than any whole-body transaxial field
of view). Each axial position gets a 2.5-D input — five neighbouring slices of the PET divided by its body
mean and five of the μ-map (cm⁻¹ / 0.1; all zero when none is given) — and a small CNN
(:class:`nmai.models.layers.SmallCNNClassifier`) gives one probability per artifact type for that slice
(multi-label, sigmoid). Per artifact the scan's probability is the mean of its three highest slice
probabilities, and the affected slice range is the run of slices whose probability exceeds 0.5 around the
most probable one (reported on the input's own slice indices).

**Calibration.** The training set is seven eighths artifacts and a scan's probability is a maximum over
slices, so a clean scan can read 0.5–0.6. A model card may carry ``calibration.thresholds`` (per input mode,
``with_mumap`` or ``pet_only``, per artifact): the network probability at which the artifact is listed,
set after training on simulated scans of seeds the training and the evaluation never use
(:func:`nmai.triage.training.calibrate_artifact_model`). Each artifact's reported ``probability`` is the
network's probability mapped piecewise linearly so that its threshold lands on 0.5 (0 → 0, 1 → 1): a
score on the same scale as the rules', monotone, so rankings and AUCs are those of the network. Without
calibration the threshold is 0.5 and the score is the probability.

Alarm: ``repeat`` when any artifact's score ≥ 0.8, ``check`` when any is ≥ 0.5, otherwise ``ok``.
"""

from __future__ import annotations

import numpy as np

from ..errors import NMAIError
from ..volume import Volume

ARTIFACTS = ("motion", "respiratory", "misregistration", "truncation", "failed_blocks", "metal", "low_counts")
GRID_MM = 6.0
FIELD = 112
CONTEXT = 2
MU_SCALE = 0.1
IN_CHANNELS = 2 * (2 * CONTEXT + 1)
CHECK, REPEAT = 0.5, 0.8


def to_grid(volume: Volume) -> Volume:
    from ..inference import resample_to_spacing

    return resample_to_spacing(volume, (GRID_MM,) * 3)


def centre(a: np.ndarray) -> np.ndarray:
    """[k, j, i] → [k, FIELD, FIELD], centred (crop or zero-pad)."""
    nz, ny, nx = a.shape
    out = np.zeros((nz, FIELD, FIELD), np.float32)
    sy, sx = max(0, (ny - FIELD) // 2), max(0, (nx - FIELD) // 2)
    dy, dx = max(0, (FIELD - ny) // 2), max(0, (FIELD - nx) // 2)
    h, w = min(ny, FIELD), min(nx, FIELD)
    out[:, dy:dy + h, dx:dx + w] = a[:, sy:sy + h, sx:sx + w]
    return out


def normalise_pet(pet: np.ndarray) -> np.ndarray:
    """PET ÷ its body mean (voxels above 5 % of the 99.5th percentile), negatives clipped: the network's PET
    channel."""
    pet = np.maximum(pet, 0)
    body = pet > 0.05 * float(np.percentile(pet, 99.5))
    return pet / max(float(pet[body].mean()) if body.any() else 1.0, 1e-12)


def prepare(pet: np.ndarray, mumap: np.ndarray | None) -> np.ndarray:
    """(Z, C, FIELD, FIELD) network inputs of a PET (and μ-map) already centred on the 6 mm grid."""
    pet = normalise_pet(pet)
    mu = np.zeros_like(pet) if mumap is None else mumap / MU_SCALE
    nz = pet.shape[0]
    ks = np.clip(np.arange(nz)[:, None] + np.arange(-CONTEXT, CONTEXT + 1)[None], 0, nz - 1)
    return np.concatenate([pet[ks], mu[ks]], axis=1).astype(np.float32)


def scan_probabilities(slice_probs: np.ndarray) -> np.ndarray:
    """(Z, A) slice probabilities → (A,) scan probabilities: mean of the three highest slices."""
    return np.sort(slice_probs, axis=0)[-3:].mean(axis=0)


def calibrated(p: float, threshold: float) -> float:
    """Network probability → score with ``threshold`` at 0.5 (piecewise linear, 0 → 0, 1 → 1)."""
    t = min(max(float(threshold), 1e-3), 1 - 1e-3)
    return 0.5 * p / t if p < t else 0.5 + 0.5 * (p - t) / (1.0 - t)


def thresholds_of(card: dict, with_mumap: bool) -> dict:
    mode = "with_mumap" if with_mumap else "pet_only"
    return dict(card.get("calibration", {}).get("thresholds", {}).get(mode, {}))


def slice_range(p: np.ndarray) -> list[int]:
    """The run of slices with p > 0.5 around the most probable slice ([k, k] when none exceeds 0.5)."""
    k = int(np.argmax(p))
    lo = hi = k
    while lo > 0 and p[lo - 1] > 0.5:
        lo -= 1
    while hi < len(p) - 1 and p[hi + 1] > 0.5:
        hi += 1
    return [lo, hi]


def alarm_level(probabilities) -> str:
    top = max(probabilities, default=0.0)
    return "repeat" if top >= REPEAT else "check" if top >= CHECK else "ok"


def classify_artifacts(pet: Volume, mumap: Volume | None, model, progress=None) -> dict:
    """{"alarm", "artifacts": [{type, probability, slice_range (input slice indices)}], "with_mumap",
    "model"} for a PET Volume (and the μ-map or CT-derived μ-map it was corrected with)."""
    import torch

    from ..inference import resample_to_reference
    from ..models import load_model
    from ..models.loading import LoadedModel
    from ..progress import as_progress
    from ..validate import check_pet

    progress = as_progress(progress)
    check_pet(pet, "PET")
    loaded = model if isinstance(model, LoadedModel) else load_model(model, device="cpu")
    if loaded.task != "triage" or loaded.card["network"]["kwargs"]["out_channels"] != len(ARTIFACTS):
        raise NMAIError(f"model '{loaded.name}' is not an artifact triage model (triage-artifacts)")
    progress(0.05, "resampling to the classifier grid")
    grid = to_grid(pet)
    mu_arr = None
    if mumap is not None:
        if mumap.units not in ("cm-1", "1"):
            raise NMAIError(f"the μ-map must be in cm-1, got {mumap.units}; convert a CT with nmai.mu.hu_to_mu")
        mu_arr = resample_to_reference(mumap, grid).array
        if not ((mu_arr > 0.05) & (grid.array > 0)).any():
            raise NMAIError("the μ-map/CT does not overlap the PET; select the μ-map or CT of this study")
        mu_arr = centre(mu_arr)
    x = prepare(centre(grid.array), mu_arr)
    progress(0.3, "classifying slices")
    with torch.no_grad():
        probs = torch.sigmoid(loaded.module(torch.from_numpy(x))).numpy()
    scan = scan_probabilities(probs)
    thresholds = thresholds_of(loaded.card, mumap is not None)
    # slice k of the 6 mm grid -> the input's slice index (through the physical position of its centre)
    to_input = np.linalg.inv(pet.index_to_lps()) @ grid.index_to_lps()
    cj, ci = (grid.shape[1] - 1) / 2.0, (grid.shape[2] - 1) / 2.0
    k_of = lambda k: int(np.clip(np.round((to_input @ [ci, cj, k, 1.0])[2]), 0, pet.shape[0] - 1))  # noqa: E731
    artifacts = []
    for a, name in enumerate(ARTIFACTS):
        t = float(thresholds.get(name, CHECK))
        lo, hi = slice_range(0.5 * probs[:, a] / t)      # > 0.5: above the artifact's threshold
        artifacts.append({"type": name, "probability": round(calibrated(float(scan[a]), t), 4),
                          "network_probability": round(float(scan[a]), 4), "threshold": round(t, 4),
                          "slice_range": sorted((k_of(lo), k_of(hi)))})
    artifacts.sort(key=lambda d: -d["probability"])
    progress(1.0, "artifact triage done")
    return {"alarm": alarm_level([a["probability"] for a in artifacts]), "artifacts": artifacts,
            "with_mumap": mumap is not None, "calibrated": bool(thresholds),
            "model": {"name": loaded.name, "sha256": loaded.sha256}}
