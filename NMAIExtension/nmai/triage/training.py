"""Training the triage models on simulated phantoms (``nmai train triage --model artifacts|lesions``).

* ``artifacts`` (``triage-artifacts``): whole-body phantoms (seeds 30000+, voxels 4.5–6.5 mm, scan 90–300
  s, OSEM 2–4 iterations), one eighth clean and the rest with one artifact from :mod:`nmai.sim.artifacts`
  (each type equally often) at a random severity from just visible to severe (misregistration and motion
  5–25 mm in a random direction, breathing 10–30 mm with the μ-map a snapshot at 35–65 % of the cycle
  (near end-inspiration, as a deep-inspiration CT: the photopenic band over the liver dome; an
  end-expiration μ-map lies next to the breathing-averaged PET's diaphragm and leaves only a faint hot rim,
  which v0.2 did not learn — see the README), arms truncated by a 380–520 mm μ-map field, 1–3 dead
  blocks anywhere on the ring that failed after the last normalisation, metal voids of 8–30 mm, 3–15 % of
  the counts). Slices are labelled from the exact ground truth (the slices
  an artifact touches). Every other training case drops the μ-map, so the classifier also works on PET
  alone. Loss: binary cross-entropy per artifact (multi-label), batches half slices with an artifact.
* ``lesions`` (``triage-lesions``): whole-body phantoms (seeds 40000+, voxels 3–5 mm, 4–11 lesions of
  5–30 mm at contrast 2–6, scan 90–300 s, OSEM 2–4 iterations with or without PSF) run through
  :func:`nmai.triage.lesions.find_candidates`; a candidate is a lesion when a lesion label lies within one
  voxel of its maximum, otherwise it is physiological uptake or noise. Loss: binary cross-entropy with the
  positives weighted by the class ratio; random flips of the patches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import NMAIError
from ..progress import as_progress
from . import classifier as img_mod
from . import lesions as les_mod

SEEDS = {"artifacts": 30_000, "lesions": 40_000}
CALIBRATION_SEEDS_FROM = 36_000      # artifact classifier thresholds; never trained or evaluated on
NAMES = {"artifacts": "triage-artifacts", "lesions": "triage-lesions"}
# artifacts 0.2: 320 balanced phantoms, calibrated; 0.3: breathing with an inspiration μ-map
VERSIONS = {"artifacts": "0.3.0", "lesions": "0.1.0"}


@dataclass(frozen=True)
class Preset:
    cases: dict
    steps: dict
    batch: int
    calibration_phantoms: int
    features: tuple
    voxel_mm: dict


PRESETS = {
    "shipped": Preset(cases={"artifacts": 320, "lesions": 30}, steps={"artifacts": 10000, "lesions": 2000}, batch=32, calibration_phantoms=8,
                      features=(16, 32, 64, 128), voxel_mm={"artifacts": (4.5, 6.5), "lesions": (3.0, 5.0)}),
    "quick": Preset(cases={"artifacts": 2, "lesions": 1}, steps={"artifacts": 3, "lesions": 3}, batch=4, calibration_phantoms=1,
                    features=(4, 8), voxel_mm={"artifacts": (8.0, 9.0), "lesions": (7.0, 8.0)}),
}


# ------------------------------------------------------------------------------------------ artifacts
def draw_artifact(rng: np.random.Generator, ph):
    """A random artifact case for phantom ``ph`` (see the module docstring for the ranges)."""
    from ..sim import artifacts as art

    kinds = ("none",) + art.ARTIFACTS
    kind = kinds[int(rng.integers(len(kinds)))]
    direction = np.eye(3)[int(rng.integers(3))] * rng.choice([-1.0, 1.0])
    if kind == "motion":
        return art.patient_motion(ph, float(rng.uniform(5, 25)), direction)
    if kind == "respiratory":
        # μ-map snapshot near end-inspiration (a deep-inspiration CT): see the module docstring
        return art.respiratory(ph, float(rng.uniform(10, 30)), mumap_phase=float(rng.uniform(0.35, 0.65)))
    if kind == "misregistration":
        return art.misregistration(ph, float(rng.uniform(5, 25)), direction)
    if kind == "truncation":
        for fov in (float(rng.uniform(380, 520)), 380.0, 330.0):
            try:
                return art.truncation(ph, fov)
            except NMAIError:
                continue
        return art.clean(ph)
    if kind == "failed_blocks":
        n, first = int(rng.integers(1, 4)), int(rng.integers(0, 53))
        return art.failed_blocks(ph, tuple(range(first, first + n)))
    if kind == "metal":
        return art.metal(ph, float(rng.uniform(8, 30)))
    if kind == "low_counts":
        return art.low_counts(ph, float(rng.uniform(0.03, 0.15)))
    return art.clean(ph)


def slice_labels(truth: dict, source, grid) -> np.ndarray:
    """(Z_grid, A) 0/1 labels: the artifact's type on the grid slices inside its true slice range."""
    y = np.zeros((grid.shape[0], len(img_mod.ARTIFACTS)), np.float32)
    if truth.get("type", "none") == "none" or not truth.get("slices"):
        return y
    k0, k1 = truth["slices"]
    z = lambda vol, k: float((vol.index_to_lps() @ [0, 0, k, 1.0])[2])  # noqa: E731
    lo, hi = sorted((z(source, k0), z(source, k1)))
    zg = np.array([z(grid, k) for k in range(grid.shape[0])])
    y[(zg >= lo - img_mod.GRID_MM / 2) & (zg <= hi + img_mod.GRID_MM / 2), img_mod.ARTIFACTS.index(truth["type"])] = 1
    return y


def make_artifact_case(seed: int, preset: Preset) -> dict:
    from ..inference import resample_to_reference
    from ..sim import make_phantom
    from ..sim.artifacts import simulate_case

    rng = np.random.default_rng(np.random.SeedSequence([seed, 21]))
    voxel = float(rng.uniform(*preset.voxel_mm["artifacts"]))
    ph = make_phantom("wholebody", seed=seed, voxel_mm=voxel, arms=bool(rng.random() < 0.6), mr=False)
    case = draw_artifact(rng, ph)
    _, recon = simulate_case(case, seed=seed, duration_s=float(rng.uniform(90, 300)),
                             iterations=int(rng.integers(2, 5)))
    grid = img_mod.to_grid(recon)
    mu = resample_to_reference(case.mumap_recon, grid).array
    pet = img_mod.centre(grid.array)
    pet /= max(float(np.median(pet[pet > 0.05 * np.percentile(pet, 99.5)])), 1e-12)  # float16 holds it (Bq/ml overflows)
    return {"pet": pet.astype(np.float16), "mu": img_mod.centre(mu).astype(np.float16),
            "y": slice_labels(case.truth, recon, grid), "seed": seed, "type": case.truth["type"]}


class SliceBatches:
    """Random 2.5-D slices of the artifact cases, half of them with an artifact label; μ-map dropped for
    every other case (fixed per case and step), random left-right flips. Cases are kept as float16 volumes
    and the context slices are cut per batch (the stacked inputs of 300 cases would not fit in memory)."""

    def __init__(self, cases, batch: int):
        self.batch = batch
        self.vol = [np.stack([img_mod.normalise_pet(c["pet"].astype(np.float32)),
                              c["mu"].astype(np.float32) / img_mod.MU_SCALE]).astype(np.float16) for c in cases]
        self.y = [c["y"] for c in cases]
        self.pos = [(i, k) for i, y in enumerate(self.y) for k in np.flatnonzero(y.any(axis=1))]
        self.all = [(i, k) for i, y in enumerate(self.y) for k in range(len(y))]

    def input(self, i: int, k: int) -> np.ndarray:
        """The (C, FIELD, FIELD) input of slice k of case i, as :func:`nmai.triage.classifier.prepare` makes it."""
        v = self.vol[i]
        ks = np.clip(np.arange(k - img_mod.CONTEXT, k + img_mod.CONTEXT + 1), 0, v.shape[1] - 1)
        return v[:, ks].reshape(-1, *v.shape[2:]).astype(np.float32)

    def __call__(self, step, rng):
        import torch

        xs, ys = [], []
        for b in range(self.batch):
            pool = self.pos if (b % 2 == 0 and self.pos) else self.all
            i, k = pool[int(rng.integers(len(pool)))]
            x = self.input(i, k)
            if rng.random() < 0.5:  # PET alone: no μ-map
                x[2 * img_mod.CONTEXT + 1:] = 0.0
            if rng.random() < 0.5:
                x = x[:, :, ::-1]
            xs.append(np.ascontiguousarray(x))
            ys.append(self.y[i][k])
        return torch.from_numpy(np.stack(xs)), torch.from_numpy(np.stack(ys))


# ------------------------------------------------------------------------------------------ lesions
def make_lesion_case(seed: int, preset: Preset) -> dict:
    from ..sim import DEFAULT_SCANNER, make_phantom, reconstruct, simulate_acquisition

    rng = np.random.default_rng(np.random.SeedSequence([seed, 31]))
    voxel = float(rng.uniform(*preset.voxel_mm["lesions"]))
    ph = make_phantom("wholebody", seed=seed, voxel_mm=voxel, lesions=int(rng.integers(4, 12)),
                      arms=bool(rng.random() < 0.4), mr=False)
    acq = simulate_acquisition(ph.activity, ph.mumap, DEFAULT_SCANNER, duration_s=float(rng.uniform(90, 300)),
                               seed=seed)
    recon = reconstruct(acq, ph.mumap, iterations=int(rng.integers(2, 5)), psf=bool(rng.random() < 0.7))
    x, y = candidate_patches(recon.array, recon.spacing, ph.labels.array)
    return {"x": x, "y": y, "seed": seed}


def candidate_patches(image: np.ndarray, spacing, labels: np.ndarray | None = None):
    """(N, 2, P, P, P) float16 patches of the candidates of ``image`` and (N,) lesion labels (or None)."""
    cands = les_mod.find_candidates(image, spacing)
    body = image > 0.05 * float(np.percentile(image, 99.5))
    body_mean = float(image[body].mean())
    x = [les_mod.patch(image, spacing, c["max_index"], body_mean, float(image[c["max_index"]])) for c in cands]
    x = np.stack(x).astype(np.float16) if x else np.zeros((0, 2) + (les_mod.PATCH,) * 3, np.float16)
    if labels is None:
        return x, None
    return x, np.array([is_lesion(labels, c["max_index"]) for c in cands], np.float32)


def is_lesion(labels: np.ndarray, index) -> bool:
    from ..sim.tissues import LESION_LABEL_BASE

    box = tuple(slice(max(0, c - 1), c + 2) for c in index)
    return bool((labels[box] >= LESION_LABEL_BASE).any())


class PatchBatches:
    def __init__(self, cases, batch: int):
        self.x = np.concatenate([c["x"] for c in cases])
        self.y = np.concatenate([c["y"] for c in cases])
        self.pos, self.neg = np.flatnonzero(self.y > 0), np.flatnonzero(self.y == 0)
        self.batch = batch

    def __call__(self, step, rng):
        import torch

        n_pos = self.batch // 4 if self.pos.size else 0  # a quarter lesions, three quarters the rest
        idx = np.concatenate([rng.choice(self.pos, n_pos), rng.choice(self.neg, self.batch - n_pos)])
        x = self.x[idx].astype(np.float32)
        for axis in (2, 3, 4):
            if rng.random() < 0.5:
                x = x[:, :, ::-1] if axis == 2 else (x[:, :, :, ::-1] if axis == 3 else x[..., ::-1])
        return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(self.y[idx])


# ------------------------------------------------------------------------------------------ common
def _build(fn, seeds, preset, cache: Path | None, prefix: str, progress) -> list[dict]:
    cases = []
    for n, s in enumerate(seeds):
        f = cache / f"{prefix}-{s}.npz" if cache else None
        if f is not None and f.exists():
            with np.load(f, allow_pickle=False) as z:
                case = {k: z[k] for k in z.files}
        else:
            case = {k: v for k, v in fn(s, preset).items() if isinstance(v, np.ndarray)}
            if f is not None:
                from ..io import atomic_path

                with atomic_path(f) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, **case)
        cases.append(case)
        progress((n + 1) / len(seeds), f"phantom {n + 1}/{len(seeds)}")
    return cases


def network_spec(model: str, preset: Preset) -> dict:
    if model == "artifacts":
        kw = {"spatial_dims": 2, "in_channels": img_mod.IN_CHANNELS, "out_channels": len(img_mod.ARTIFACTS)}
    else:
        kw = {"spatial_dims": 3, "in_channels": 2, "out_channels": 1}
    return {"name": "small_cnn_classifier", "kwargs": {**kw, "features": list(preset.features), "dropout": 0.1}}


def data_format(model: str) -> dict:
    if model == "artifacts":
        return {"dims": 2, "context_slices": img_mod.CONTEXT, "roi_size": [img_mod.FIELD, img_mod.FIELD],
                "spacing_mm": [img_mod.GRID_MM] * 3,
                "inputs": {"pet": {"channels": 1, "modality": "PT", "units": "Bq/ml",
                                   "normalisation": {"method": "robust_scale", "statistic": "mean_in_body"}},
                           "mumap": {"channels": 1, "modality": "OT", "units": "cm-1",
                                     "normalisation": {"method": "linear", "offset": 0.0, "scale": img_mod.MU_SCALE}}},
                "outputs": {name: {"channels": 1, "modality": "OT", "units": "1", "activation": "sigmoid",
                                   "normalisation": {"method": "none"}} for name in img_mod.ARTIFACTS}}
    return {"dims": 3, "context_slices": 0, "roi_size": [les_mod.PATCH] * 3, "spacing_mm": [les_mod.PATCH_MM] * 3,
            # channel 1: patch / the hot spot's maximum (shape); channel 2: patch / the body's mean (level)
            "inputs": {"pet": {"channels": 2, "modality": "PT", "units": "Bq/ml",
                               "normalisation": {"method": "robust_scale", "statistic": "mean_in_body"}}},
            "outputs": {"lesion": {"channels": 1, "modality": "OT", "units": "1", "activation": "sigmoid",
                                   "normalisation": {"method": "none"}}}}


def train_triage(model: str, out_dir, *, preset: str = "shipped", cache_dir=None, checkpoint_dir=None,
                 device=None, progress=None, command: str = "") -> dict:
    """Train ``model`` ("artifacts" or "lesions") and save it as an NMAI model folder in ``out_dir``."""
    import torch

    from ..models import build_network, new_card, save_model
    from ..training import card_training, seed_everything, train

    if model not in NAMES:
        raise NMAIError(f"unknown triage model {model!r}; use artifacts or lesions")
    if preset not in PRESETS:
        raise NMAIError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    p, progress = PRESETS[preset], as_progress(progress)
    t0 = time.time()
    seed = {"artifacts": 21, "lesions": 31}[model]
    seed_everything(seed)
    n = p.cases[model]
    seeds = range(SEEDS[model], SEEDS[model] + n)
    cache = Path(cache_dir) if cache_dir else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    fn = make_artifact_case if model == "artifacts" else make_lesion_case
    # the cache name carries the model version: a version whose training data changed (v0.3's breathing
    # cases) must not reuse an older version's cached phantoms
    cases = _build(fn, seeds, p, cache, f"{model}-{VERSIONS[model]}", progress.sub(0.0, 0.5))
    data_s = time.time() - t0
    network = network_spec(model, p)
    module = build_network(network)
    if model == "artifacts":
        batches = SliceBatches(cases, p.batch)
        loss = torch.nn.BCEWithLogitsLoss()
        summary = {"slices": len(batches.all), "slices_with_artifact": len(batches.pos),
                   "cases_by_type": {t: sum(1 for c in cases if c["y"][:, img_mod.ARTIFACTS.index(t)].any())
                                     for t in img_mod.ARTIFACTS}}
    else:
        batches = PatchBatches(cases, p.batch)
        loss = torch.nn.BCEWithLogitsLoss()
        summary = {"candidates": int(batches.y.size), "lesion_candidates": int(batches.pos.size)}
    steps = p.steps[model]
    result = train(module, batches, lambda out, y: loss(out.reshape(y.shape), y), steps=steps, lr=1e-3, seed=seed,
                   checkpoint_dir=checkpoint_dir, progress=progress.sub(0.5, 0.98), device=device,
                   log_every=max(1, steps // 20), checkpoint_every=max(1, steps // 10), warmup_steps=steps // 30)
    module.eval().cpu()
    training = card_training(result, command or f"nmai train triage --model {model} --preset {preset}", preset)
    training.update({"batch_size": p.batch, "loss": "binary cross-entropy",
                     "data": {"phantoms": n, "seeds": [seeds.start, seeds.stop - 1],
                              "voxel_mm_range": list(p.voxel_mm[model]), "build_s": round(data_s, 1), **summary}})
    training["total_s"] = round(time.time() - t0, 1)
    folder = Path(out_dir) / NAMES[model]
    description = ("2-D slice classifier (PET + optional μ-map, 6 mm grid): per-slice probability of each PET "
                   "artifact (" + ", ".join(img_mod.ARTIFACTS) + ")" if model == "artifacts" else
                   "3-D patch classifier (24³ voxels at 4 mm around a hot spot): probability that a PET hot spot "
                   "is a lesion rather than physiological uptake or noise")
    card = new_card(name=NAMES[model], task="triage", network=network, network_data_format=data_format(model),
                    training=training, version=VERSIONS[model], description=description,
                    intended_use="research only; a second look, never a diagnosis — trained on simulated phantoms; "
                                 "retrain with `nmai train triage` on your scanner's data",
                    data_source=f"NMAI simulator whole-body phantoms, seeds {seeds.start}-{seeds.stop - 1}")
    save_model(module, folder, card)
    calibration = None
    if model == "artifacts":
        calibration = calibrate_artifact_model(folder, phantoms=p.calibration_phantoms, quick=preset == "quick",
                                               progress=progress.sub(0.98, 1.0))
    progress(1.0, f"saved {folder}")
    return {"folder": str(folder), "training": training, "calibration": calibration}


def threshold_between(negative, positive) -> float:
    """Listing threshold from validation scores: midway between the highest clean score and the lowest
    artifact score when they separate, else just above the highest clean score; never below 0.5."""
    hi_neg = max(negative, default=0.0)
    lo_pos = min(positive, default=1.0)
    t = 0.5 * (hi_neg + lo_pos) if lo_pos > hi_neg else hi_neg + 0.02
    return round(float(min(max(t, 0.5), 0.99)), 4)


def calibrate_artifact_model(folder, *, phantoms: int = 8, quick: bool = False, progress=None) -> dict:
    """Set the artifact classifier's per-artifact listing thresholds (``calibration`` in its card) from
    simulated scans of seeds 36000+ (clean and each artifact at the evaluation's moderate severity), with
    and without the μ-map. The weights, and so the sha256, do not change; the card is rewritten atomically."""
    from ..evaluate.triage import artifact_scans
    from ..io import write_json
    from ..models import load_model
    from ..models.card import card_path, read_card
    from .classifier import classify_artifacts

    progress = as_progress(progress)
    loaded = load_model(folder, device="cpu")
    seeds = list(range(CALIBRATION_SEEDS_FROM, CALIBRATION_SEEDS_FROM + phantoms))
    scores = {"with_mumap": {}, "pet_only": {}}          # mode -> kind -> [{artifact: p}]
    for n, seed in enumerate(seeds):
        for kind, case, recon, _ in artifact_scans(seed, quick, progress.sub(n / len(seeds), (n + 1) / len(seeds))):
            if recon is None:
                continue
            for mode, mu in (("with_mumap", case.mumap_recon), ("pet_only", None)):
                res = classify_artifacts(recon, mu, loaded)
                scores[mode].setdefault(kind, []).append({a["type"]: a["network_probability"] for a in res["artifacts"]})

    def clean_and_artifact(by, a):
        return [c[a] for c in by.get("none", [])], [c[a] for c in by.get(a, [])]

    thresholds = {mode: {a: threshold_between(*clean_and_artifact(by, a)) for a in img_mod.ARTIFACTS}
                  for mode, by in scores.items()}
    ranges = {mode: {a: [round(max(neg, default=0.0), 4), round(min(pos, default=1.0), 4)]
                     for a in img_mod.ARTIFACTS for neg, pos in [clean_and_artifact(by, a)]}
              for mode, by in scores.items()}
    calibration = {"method": "per-artifact listing threshold: midway between the highest clean and the lowest "
                             "artifact network probability (else just above the highest clean), at least 0.5",
                   "seeds": [seeds[0], seeds[-1]], "phantoms": phantoms, "quick": quick,
                   "cases": {k: len(v) for k, v in scores["with_mumap"].items()}, "thresholds": thresholds,
                   "highest_clean_lowest_artifact": ranges}
    card = read_card(folder)
    card["calibration"] = calibration
    write_json(card_path(folder), card)
    read_card(folder)          # still a valid card
    return calibration
