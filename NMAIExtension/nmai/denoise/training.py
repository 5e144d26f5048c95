"""Training the PET denoising networks on simulated phantoms (``nmai train denoise --method cnn|gan|sr``).

Data (one case per whole-body phantom, seeds 20000+; evaluation uses seeds below 10000). Every case draws
its own voxel size (3–5 mm), scanner resolution (PSF FWHM 3.5–5.5 mm), scan duration (120–300 s), OSEM
iterations (2–4 × 14 subsets), with or without PSF modelling, lesions (6–14 for cnn/gan, 3–8 for sr) and
arms, so the network does not learn one scanner's noise texture. For cnn/gan, 30 % of the training windows
contain a lesion centre (:class:`PairSampler`).

* ``cnn`` / ``gan``: the input is the OSEM of a *thinned* acquisition (a list-mode subsample, count
  fraction log-uniform in 5–50 %, three per phantom); the target is the full-count OSEM of an
  *independent* Poisson realisation of the same phantom and scan. Independent noise matters: a thinned scan
  shares its counts with its own full-count parent, and a network trained towards that parent learns to
  keep part of the input's noise (Noise2Noise: with independent noise the network learns the mean).
* ``sr``: input the full-count OSEM of a large-crystal scanner (8 mm crystals, 2 × the default, no PSF
  modelling, as Hong et al.), count fraction 30–100 %; target the small-crystal (4 mm) full-count OSEM with
  PSF modelling of an independent realisation, on the same image grid. Hot points and 2³-voxel blobs are
  added to these phantoms (:func:`with_hot_points`), so the network learns that sharp peaks are real. The
  card records the Richardson–Lucy resolution recovery that follows the network at inference
  (:func:`sr_resolution_recovery`).

Normalisation (exactly as at inference): both images are divided by the input's mean in the body
(``robust_scale`` / ``mean_in_body``), so the model is unit-invariant (k × input → k × output).

Loss: L1, with the truth's hot voxels (:func:`truth_hot_mask`: over 3 × its body mean, and lesions; the mask
is stored with each case) weighted × 5 for cnn and gan (lesions are a tiny fraction of the voxels, and a
network trained toward the mean smooths them away); plain L1 for sr. The cnn then fine-tunes with
:func:`hot_sum_loss` (each window's sum over the truth's hot voxels kept: lesion means), which is also the
gan's content loss. Whether inference fits the output to its input is the card's ``local_fit``
(:data:`LOCAL_FIT`), how strictly its ``local_fit_significance`` (:data:`FIT_SIGNIFICANCE`), and whether hot
spots take the plain fit its ``hot_spot_fit`` (:data:`HOT_SPOT_FIT`).

Network: a 2.5-D MONAI U-Net with residual units and a global skip (``residual_unet``): five neighbouring
slices in, the centre slice's correction out. No normalisation layers, so a tile's output does not depend
on the other voxels in its window (no seams between sliding-window tiles or slabs).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import NMAIError
from ..progress import as_progress

CONTEXT = 2
ROI = 64
TRAIN_SEED_BASE = 20_000
VAL_SEED_BASE = 25_000
METHODS = ("cnn", "gan", "sr")
NAMES = {"cnn": "denoise-cnn", "gan": "denoise-gan", "sr": "denoise-sr"}
NORMALISATION = {"method": "robust_scale", "statistic": "mean_in_body", "body_fraction": 0.05}
LARGE_CRYSTAL_GROUP = 2  # 8 mm crystals, 2x the default scanner's
SR_LESIONS = (3, 9)      # lesions per sr phantom: integers in [lo, hi) (cnn/gan: the preset's)
SR_RECOVERY_ITERATIONS = 20  # Richardson-Lucy after sr (chosen on validation point sources and NEMA, see README)


def sr_resolution_recovery() -> dict:
    """The card's ``resolution_recovery`` for sr: deconvolve the large-crystal scanner's resolution, which its
    OSEM (no PSF modelling) leaves in the image."""
    from ..sim import DEFAULT_SCANNER

    fwhm = DEFAULT_SCANNER.with_(crystal_group=LARGE_CRYSTAL_GROUP).resolution_fwhm_mm
    return {"psf_fwhm_mm": round(float(fwhm), 2), "iterations": SR_RECOVERY_ITERATIONS,
            "why": "resolution of the large-crystal input scanner (its OSEM has no PSF modelling)"}


@dataclass(frozen=True)
class Preset:
    cases: dict            # phantoms per method
    steps: dict            # per method
    batch: int
    channels: tuple
    val_cases: int
    fractions: tuple = (0.05, 0.5)   # cnn/gan training count fractions (log-uniform)
    per_case: int = 3                # low-count versions per phantom
    voxel_mm: tuple = (3.0, 5.0)
    lr: float = 1e-3
    adversarial_weight: float = 0.02
    lesions: tuple = (3, 9)          # lesions per cnn/gan phantom: integers in [lo, hi) (sr: SR_LESIONS)
    lesion_windows: float = 0.0      # share of training windows that contain a lesion centre (cnn, gan)
    fine_tune: dict = field(default_factory=dict)  # method -> steps of the hot-sum fine-tuning (cnn)
    fine_tune_lr: float = 2e-4


PRESETS = {
    "shipped": Preset(cases={"cnn": 20, "gan": 20, "sr": 12}, steps={"cnn": 8000, "gan": 1200, "sr": 4000},
                      batch=16, channels=(24, 48, 96, 192), val_cases=3, lesions=(6, 15), lesion_windows=0.3,
                      fine_tune={"cnn": 1500}),
    "quick": Preset(cases={"cnn": 1, "gan": 1, "sr": 1}, steps={"cnn": 4, "gan": 4, "sr": 4}, batch=2,
                    channels=(4, 8, 16, 32), val_cases=1, per_case=1, voxel_mm=(6.0, 7.0), lesion_windows=0.5,
                    fine_tune={"cnn": 2}),  # tests and CI: proves the code runs, trains nothing
}
VERSIONS = {"cnn": "0.5.0", "gan": "0.5.0", "sr": "0.2.0"}
# whether inference fits the network output to its input by default (card field ``local_fit``). On phantoms
# the raw network meets some lesion targets at less noise; on real PET (another scanner's noise) the raw v0.3
# network read small hot spots 17-21 % low where the fitted output read 5-7 % low (README), so it stays on
LOCAL_FIT = {"cnn": True, "gan": True, "sr": True}
# z of the fit's corrections by default (card ``local_fit_significance``; nmai.denoise.prior.local_linear_fit)
# and where hot spots take the plain fit instead (card ``hot_spot_fit``; nmai.denoise.prior.hot_spot_fit).
# cnn: chosen on validation phantoms 25010-25015 (README, "How v0.5 was chosen"): of z 3/4/6 with hot-spot
# ratios 1.3-1.8/1.5-2.5/2-3, the largest 10 % PSNR gain whose lesion SUVmean bias stays within -2 % at 10 % and
# 2.5 % counts (the evaluation has read 2-3 points lower than validation); of the two best (2.43 and 2.45 dB)
# the one with the lower liver bias at 2.5 % counts (+5.2 % against +7.2 %). Without the hot-spot fit, z 2
# kept lesions as well at 1.5 dB. gan: the same rule gives the same (z 4, hot spots), but on the real GE scan the
# gan's output at z 4 read 222 of 267 slices more than 3 % above the input (up to 8.5 %; cnn: 3 slices), a level
# bias of its own that the plain fit removes, so it keeps 0 (its hot-spot fit applies when z > 0 is asked for).
# sr: 0 (z = 3 cut its 10 mm sphere recovery from 0.19 to 0.13)
FIT_SIGNIFICANCE = {"cnn": 4.0, "gan": 0.0, "sr": 0.0}
HOT_SPOTS = {"ratio": [1.5, 2.5], "window": 9,
             "why": "where the network output is a hot spot (a lesion), the plain fit keeps the data's level"}
HOT_SPOT_FIT = {"cnn": HOT_SPOTS, "gan": HOT_SPOTS, "sr": None}
FINE_TUNE_SEED = 21


def network_spec(preset: Preset) -> dict:
    return {"name": "residual_unet", "kwargs": {
        "spatial_dims": 2, "in_channels": 2 * CONTEXT + 1, "out_channels": 1, "channels": list(preset.channels),
        "strides": [2] * (len(preset.channels) - 1), "num_res_units": 2, "act": "PRELU", "norm": None}}


def discriminator_spec() -> dict:
    # conditional: it sees the low-count centre slice and a (real or generated) full-count slice
    return {"name": "patch_discriminator", "kwargs": {"spatial_dims": 2, "in_channels": 2, "out_channels": 1,
                                                      "channels": 32, "num_layers_d": 3, "norm": "INSTANCE"}}


def data_format() -> dict:
    return {"dims": 2, "context_slices": CONTEXT, "roi_size": [128, 128], "spacing_mm": None,
            "inputs": {"pet": {"channels": 1, "modality": "PT", "units": "Bq/ml", "normalisation": dict(NORMALISATION)}},
            "outputs": {"pet": {"channels": 1, "modality": "PT", "units": "Bq/ml", "activation": "none",
                                "normalisation": {"method": "same_as_input", "input": "pet"}}}}


# ------------------------------------------------------------------------------------------- data
def scan_params(rng: np.random.Generator) -> dict:
    return {"duration_s": float(rng.uniform(120, 300)), "iterations": int(rng.integers(2, 5)),
            "psf": bool(rng.random() < 0.75), "psf_fwhm_mm": float(rng.uniform(3.5, 5.5))}


def body_scale(array: np.ndarray) -> float:
    from ..models.normalisation import compute_stats

    return compute_stats(array, NORMALISATION, "PET")["scale"]


def with_hot_points(activity, rng: np.random.Generator):
    """4–11 hot voxels and 2³-voxel blobs (10–60 × the body median) at random body positions: the phantoms'
    lesions are ≥ 5 mm at ≤ 6:1, and a resolution network that never saw a sharp peak smooths it as noise."""
    a = activity.array.copy()
    body = np.argwhere(a > 0)
    level = float(np.median(a[a > 0]))
    for k, j, i in body[rng.choice(len(body), int(rng.integers(4, 12)))]:
        w = int(rng.integers(1, 3))
        a[k:k + w, j:j + w, i:i + w] += float(rng.uniform(10, 60)) * level
    return activity.derive(a)


def draw_phantom(seed: int, method: str, preset: Preset):
    """The case's random draws, in order: (rng, voxel size, scan parameters, phantom); ``rng`` goes on to draw
    the count fractions. :func:`make_case` and :func:`truth_hot_mask` share it, so a cached case gets the mask
    of the very phantom it was simulated from."""
    from ..sim import make_phantom

    rng = np.random.default_rng(np.random.SeedSequence([seed, 11]))
    voxel = float(rng.uniform(*preset.voxel_mm))
    p = scan_params(rng)
    phantom = make_phantom("wholebody", seed=seed, voxel_mm=voxel, arms=bool(rng.random() < 0.4),
                           lesions=int(rng.integers(*(SR_LESIONS if method == "sr" else preset.lesions))), mr=False)
    return rng, voxel, p, phantom


def truth_hot_mask(phantom) -> np.ndarray:
    """Where the phantom is truly hot: activity > ``HOT`` × its body mean, or a lesion (uint8, Z, Y, X). The
    hot-sum loss sums over these voxels; chosen on the noisy target instead, the chosen voxels are those
    whose noise came out high, and a network trained to keep their sum reads hot-ish organs high."""
    from ..sim.tissues import LESION_LABEL_BASE

    a = phantom.activity.array
    return ((a / body_scale(a) > HOT) | (phantom.labels.array >= LESION_LABEL_BASE)).astype(np.uint8)


def make_case(seed: int, method: str, preset: Preset) -> dict:
    """One phantom's (input, target) pairs, each normalised by its input's body mean: float16
    ``x`` (N, Z, Y, X) and ``y`` (N, Z, Y, X), for cnn/gan the truth's ``hot`` mask (Z, Y, X), plus what
    was drawn."""
    from ..sim import DEFAULT_SCANNER, reconstruct, simulate_acquisition, thinned

    rng, voxel, p, phantom = draw_phantom(seed, method, preset)
    act, mu = phantom.activity, phantom.mumap
    if method == "sr":
        act = with_hot_points(act, rng)
    small = DEFAULT_SCANNER.with_(psf_fwhm_mm=p["psf_fwhm_mm"])
    target_acq = simulate_acquisition(act, mu, small, duration_s=p["duration_s"], seed=seed + 500_000)
    if method == "sr":
        source = DEFAULT_SCANNER.with_(crystal_group=LARGE_CRYSTAL_GROUP)
        source_acq = simulate_acquisition(act, mu, source, duration_s=p["duration_s"], seed=seed)
        fractions = [1.0] + [float(rng.uniform(0.3, 1.0)) for _ in range(preset.per_case - 1)]
        recon_in = {"iterations": p["iterations"], "psf": False}
        recon_target = {"iterations": 3, "psf": True}
    else:
        source_acq = simulate_acquisition(act, mu, small, duration_s=p["duration_s"], seed=seed)
        lo, hi = np.log(preset.fractions[0]), np.log(preset.fractions[1])
        fractions = [float(np.exp(rng.uniform(lo, hi))) for _ in range(preset.per_case)]
        recon_in = recon_target = {"iterations": p["iterations"], "psf": p["psf"]}
    target = reconstruct(target_acq, mu, **recon_target).array
    xs, ys = [], []
    for f in fractions:
        x = reconstruct(thinned(source_acq, f), mu, **recon_in).array
        s = body_scale(x)
        xs.append((x / s).astype(np.float16))
        ys.append((target / s).astype(np.float16))
    extra = {} if method == "sr" else {"hot": truth_hot_mask(phantom)}
    return {"x": np.stack(xs), "y": np.stack(ys), "centres": lesion_centres(phantom), "seed": seed,
            "voxel_mm": voxel, "fractions": fractions, **extra, **p}


def lesion_centres(phantom) -> np.ndarray:
    """The phantom's lesion centres as (k, j, i) voxel indices, an (N, 3) int array."""
    to_index = np.linalg.inv(phantom.activity.index_to_lps())
    shape = np.array(phantom.activity.shape)
    out = []
    for lesion in phantom.info.get("lesions", []):
        i, j, k = (to_index @ np.r_[lesion["centre_lps_mm"], 1.0])[:3]
        kji = np.rint([k, j, i]).astype(int)
        if np.all(kji >= 0) and np.all(kji < shape):
            out.append(kji)
    return np.array(out, dtype=np.int32).reshape(-1, 3)


def _pad(case: dict) -> dict:
    *_, ny, nx = case["x"].shape
    py, px = max(0, ROI - ny), max(0, ROI - nx)
    if py or px:
        pads = ((0, 0), (0, 0), (py // 2, py - py // 2), (px // 2, px - px // 2))
        case["x"], case["y"] = np.pad(case["x"], pads), np.pad(case["y"], pads)
        if "hot" in case:
            case["hot"] = np.pad(case["hot"], pads[1:])
        if "centres" in case:
            case["centres"] = case["centres"] + np.array([0, py // 2, px // 2], np.int32)
    return case


CACHED = ("x", "y", "centres", "hot")   # what a training case keeps in the cache (hot: cnn/gan only)


def build_cases(seeds, method: str, preset: Preset, workers: int = 1, cache_dir=None, progress=None) -> list[dict]:
    """Build (or load from ``cache_dir``: ``<kind>-<seed>.npz``, no pickle) the training cases. A cached
    cnn/gan case from before the truth masks (NMAI ≤ 0.3 models) gets its mask from its re-made phantom."""
    progress = as_progress(progress)
    # the lesion count changes the phantoms, so it is in the cache name (other preset fields are not)
    kind = "sr-points" if method == "sr" else "lowcount-lesions{}-{}".format(*preset.lesions)
    seeds = list(seeds)
    cache = Path(cache_dir) if cache_dir else None
    cases: dict[int, dict] = {}

    def store(case):
        from ..io import atomic_path

        with atomic_path(cache / f"{kind}-{case['seed']}.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **{k: case[k] for k in CACHED if k in case})

    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        for s in seeds:
            f = cache / f"{kind}-{s}.npz"
            if f.exists():
                with np.load(f, allow_pickle=False) as z:
                    cases[s] = {k: z[k] for k in CACHED if k in z}
                cases[s]["seed"] = s
                cases[s].setdefault("centres", np.zeros((0, 3), np.int32))
                if method != "sr" and "hot" not in cases[s]:
                    progress(0.0, f"phantom {s}: adding its truth mask to the cache")
                    hot = truth_hot_mask(draw_phantom(s, method, preset)[3])
                    if hot.shape != cases[s]["x"].shape[1:]:
                        raise NMAIError(f"{f}: made with other phantom settings than preset {preset}; delete "
                                        "the cache folder (or use another) and train again")
                    cases[s]["hot"] = hot
                    store(cases[s])
    todo = [s for s in seeds if s not in cases]
    pool = None
    if workers > 1 and len(todo) > 1:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers)
        made = pool.map(make_case, todo, [method] * len(todo), [preset] * len(todo))
    else:
        made = (make_case(s, method, preset) for s in todo)
    try:
        for i, case in enumerate(made):
            cases[case["seed"]] = case
            if cache is not None:
                store(case)
            progress((len(seeds) - len(todo) + i + 1) / len(seeds), f"phantom {len(seeds) - len(todo) + i + 1}/{len(seeds)}")
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return [_pad(cases[s]) for s in seeds]


class PairSampler:
    """Random 2.5-D windows: (B, 2k+1, ROI, ROI) inputs, (B, 1, ROI, ROI) targets, random flips; with
    ``with_hot`` also the targets' truth hot masks (B, 1, ROI, ROI), for :func:`hot_sum_loss`. The windows
    drawn do not depend on ``with_hot``.

    A share ``lesion_windows`` of the windows contains one of the case's lesion centres (the window's
    centre slice within ±1 slice of it, in-plane at least 4 voxels from the window's edge). Drawn uniformly,
    about 8 % of the windows have a lesion centre within a slice (6-14 lesions per phantom), and a denoiser
    that rarely sees one learns to read a small hot spot as noise and flattens it.
    """

    def __init__(self, cases: list[dict], batch: int, lesion_windows: float = 0.0, with_hot: bool = False):
        if with_hot and not all("hot" in c for c in cases):
            raise NMAIError("the hot-sum loss needs each case's truth hot mask; rebuild the training cases")
        self.batch, self.cases, self.lesion_windows, self.with_hot = batch, cases, float(lesion_windows), with_hot

    def __call__(self, step: int, rng: np.random.Generator):
        import torch

        out = ([], [], []) if self.with_hot else ([], [])
        for _ in range(self.batch):
            c = self.cases[int(rng.integers(len(self.cases)))]
            n, nz, ny, nx = c["x"].shape
            m, k = int(rng.integers(n)), int(rng.integers(nz))
            j0, i0 = int(rng.integers(ny - ROI + 1)), int(rng.integers(nx - ROI + 1))
            centres = c.get("centres")
            if self.lesion_windows > 0 and centres is not None and len(centres) and rng.random() < self.lesion_windows:
                ck, cj, ci = centres[int(rng.integers(len(centres)))]
                k = int(np.clip(ck + rng.integers(-1, 2), 0, nz - 1))
                j0 = int(np.clip(cj - rng.integers(4, ROI - 4), 0, ny - ROI))
                i0 = int(np.clip(ci - rng.integers(4, ROI - 4), 0, nx - ROI))
            ks = [min(max(k + d, 0), nz - 1) for d in range(-CONTEXT, CONTEXT + 1)]
            j, i = slice(j0, j0 + ROI), slice(i0, i0 + ROI)
            arrays = [c["x"][m, ks, j, i], c["y"][m, k:k + 1, j, i]]
            if self.with_hot:
                arrays.append(c["hot"][k:k + 1, j, i])
            flip = rng.random() < 0.5
            for a, kept in zip(arrays, out):
                kept.append(np.ascontiguousarray(a[:, :, ::-1] if flip else a, dtype=np.float32))
        return tuple(torch.from_numpy(np.stack(o)) for o in out)


HOT = 3.0        # × the input's body mean: lesions and hot organs
HOT_WEIGHT = 5.0


def l1_loss(pred, target):
    return (pred - target).abs().mean()


def hot_weighted_l1(pred, target, hot=None):
    """L1 with hot voxels weighted × 5: a network trained toward the mean smooths small lesions away (they are
    a tiny fraction of the voxels); this is what keeps their SUVs. Hot: the truth's hot mask ``hot``
    (:func:`truth_hot_mask`) where given, else the target's voxels above 3 × the body mean."""
    weight = 1.0 + (HOT_WEIGHT - 1.0) * ((target > HOT) if hot is None else (hot > 0)).float()
    return (weight * (pred - target).abs()).mean()


HOT_SUM_WEIGHT = 3.0


def hot_sum_loss(pred, target, hot):
    """:func:`hot_weighted_l1` plus ``HOT_SUM_WEIGHT`` × the relative error of each window's sum over its hot
    voxels (``hot``: the truth's hot mask, :func:`truth_hot_mask`; windows without any are left out of that
    term). A voxel loss toward a noisy target shrinks a small lesion toward its background (the network cannot
    tell it from noise); the sum over the lesion is a mean, and lesion SUVmean is a mean. The hot voxels come
    from the truth, not from the noisy target: chosen on the target, they are the voxels whose noise came out
    high, their sum is biased high, and the v0.3 cnn trained that way read the liver 11-30 % high (README,
    "The liver and the hot-sum loss")."""
    sums = (target * hot).sum(dim=(1, 2, 3))
    has = (hot.sum(dim=(1, 2, 3)) > 0).float()
    rel = ((pred - target) * hot).sum(dim=(1, 2, 3)).abs() / sums.clamp_min(1e-6)
    return hot_weighted_l1(pred, target, hot) + HOT_SUM_WEIGHT * (rel * has).sum() / has.sum().clamp_min(1.0)


def gan_step(adversarial_weight: float):
    """Least-squares GAN with the cnn's content loss (:func:`hot_sum_loss`); the discriminator is conditioned
    on the input slice."""
    import torch

    def step_fn(batch, step, state):  # noqa: ARG001
        x, y, hot = batch
        g, d = state.modules["generator"], state.modules["discriminator"]
        og, od = state.optimizers["generator"], state.optimizers["discriminator"]
        centre = x[:, CONTEXT:CONTEXT + 1]
        fake = g(x)
        od.zero_grad(set_to_none=True)
        real_logit = d(torch.cat([centre, y], 1))[-1]
        fake_logit = d(torch.cat([centre, fake.detach()], 1))[-1]
        loss_d = 0.5 * ((real_logit - 1) ** 2).mean() + 0.5 * (fake_logit ** 2).mean()
        loss_d.backward()
        od.step()
        og.zero_grad(set_to_none=True)
        adv = ((d(torch.cat([centre, fake], 1))[-1] - 1) ** 2).mean()
        content = hot_sum_loss(fake, y, hot)
        (content + adversarial_weight * adv).backward()
        content, adv, loss_d = content.detach(), adv.detach(), loss_d.detach()
        og.step()
        return {"l1": content.item(), "adv": adv.item(), "d": loss_d.item()}

    return step_fn


# ------------------------------------------------------------------------------------------- training
def train_denoise(method: str, out_dir, *, preset: str = "shipped", init=None, device=None, workers: int = 1,
                  checkpoint_dir=None, cache_dir=None, progress=None, command: str = "") -> dict:
    """Train ``method`` (cnn, gan, sr) and save it as an NMAI model folder in ``out_dir``.

    ``gan`` starts its generator from a trained cnn (``init``: a model folder or registry name; default
    ``denoise-cnn``), so its adversarial phase only has to restore texture and contrast.
    """
    from ..models import build_network, load_model, new_card, save_model
    from ..models.loading import pick_device
    from ..training import card_training, seed_everything, train

    if method not in METHODS:
        raise NMAIError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    if preset not in PRESETS:
        raise NMAIError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
    p, progress = PRESETS[preset], as_progress(progress)
    steps = p.steps[method]
    t0 = time.time()
    seed = {"cnn": 11, "gan": 12, "sr": 13}[method]
    seed_everything(seed)
    seeds = range(TRAIN_SEED_BASE, TRAIN_SEED_BASE + p.cases[method])
    cases = build_cases(seeds, method, p, workers, cache_dir, progress.sub(0.0, 0.4))
    data_s = time.time() - t0
    network = network_spec(p)
    module = build_network(network)
    dev = pick_device(device)
    lesions, lesion_windows = (SR_LESIONS, 0.0) if method == "sr" else (p.lesions, p.lesion_windows)
    sampler = PairSampler(cases, p.batch, lesion_windows, with_hot=method != "sr")   # the same windows either way
    fine_steps = p.fine_tune.get(method, 0)
    base_end = 0.85 if fine_steps else 0.9  # the fine-tuning reports 0.85-0.9
    common = dict(steps=steps, seed=seed, checkpoint_dir=checkpoint_dir, progress=progress.sub(0.4, base_end),
                  device=dev, log_every=max(1, steps // 20), checkpoint_every=max(1, steps // 10))
    init_from = None
    if method == "gan":
        init_ref = init or "denoise-cnn"
        if preset != "quick" or init is not None:
            cnn = load_model(init_ref, device="cpu")
            if cnn.card["network"] != network:
                raise NMAIError(f"{init_ref}: its network differs from the GAN generator's; train the cnn with "
                                f"the same preset first")
            module.load_state_dict(cnn.module.state_dict())
            init_from = {"model": cnn.name, "sha256": cnn.card.get("sha256")}
        disc = build_network(discriminator_spec())
        result = train({"generator": module, "discriminator": disc}, sampler, lr=p.lr / 4,
                       step_fn=gan_step(p.adversarial_weight), schedule="constant", **common)
    else:
        result = train(module, sampler, l1_loss if method == "sr" else hot_weighted_l1, lr=p.lr,
                       warmup_steps=steps // 30, **common)
    fine = None
    if fine_steps:  # from the trained network: keep lesion sums (hot_sum_loss)
        ft = train(module, sampler, hot_sum_loss, steps=fine_steps, lr=p.fine_tune_lr, seed=FINE_TUNE_SEED,
                   warmup_steps=fine_steps // 20, device=dev, log_every=max(1, fine_steps // 10),
                   checkpoint_every=fine_steps, progress=progress.sub(base_end, 0.9),
                   checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir) / "fine-tune")
        fine = {"steps": ft["steps"], "lr": ft["lr"], "seed": ft["seed"], "duration_s": ft["duration_s"],
                "loss": f"hot-weighted L1 + {HOT_SUM_WEIGHT:g} x relative error of each window's sum over the "
                        "truth's hot voxels",
                "final_losses": {k: v for k, v in ft["final_losses"].items() if k != "step"}}
    module.eval().cpu()
    training = card_training(result, command or f"nmai train denoise --method {method} --preset {preset}", preset)
    training.update({
        "batch_size": p.batch, "roi": [ROI, ROI],
        "loss": {"gan": f"L1 (the truth's hot voxels x{HOT_WEIGHT:g}) + {HOT_SUM_WEIGHT:g} x relative "
                        f"error of the sum over the truth's hot voxels + {p.adversarial_weight:g} x least-squares "
                        "GAN (conditional patch discriminator)",
                 "cnn": f"L1, the truth's hot voxels (> {HOT:g} x its body mean, lesions) weighted x{HOT_WEIGHT:g}",
                 "sr": "L1"}[method],
        "initialised_from": init_from,
        "fine_tune": fine,
        "data": {"phantoms": p.cases[method], "seeds": [seeds.start, seeds.stop - 1], "voxel_mm_range": list(p.voxel_mm),
                 "count_fractions": (list(p.fractions) if method != "sr" else [0.3, 1.0]),
                 "versions_per_phantom": p.per_case, "build_s": round(data_s, 1),
                 "lesions_per_phantom": [lesions[0], lesions[1] - 1], "lesion_centred_windows": lesion_windows,
                 "input": ("large-crystal (8 mm) OSEM without PSF" if method == "sr" else "thinned OSEM"),
                 "target": ("small-crystal (4 mm) full-count OSEM with PSF, independent realisation"
                            if method == "sr" else "full-count OSEM, independent Poisson realisation")}})
    folder = Path(out_dir) / NAMES[method]
    description = {
        "cnn": "2.5-D residual MONAI U-Net: low-count PET OSEM (5-50 % counts) -> full-count quality",
        "gan": "2.5-D residual MONAI U-Net generator trained adversarially (conditional patch GAN + L1): "
               "low-count PET -> full-count quality, keeping noise texture and lesion contrast",
        "sr": "2.5-D residual MONAI U-Net, local fit and Richardson-Lucy resolution recovery: large-crystal (8 mm) "
              "PET OSEM -> small-crystal (4 mm) resolution",
    }[method]

    def save(metrics):
        training["total_s"] = round(time.time() - t0, 1)
        card = new_card(
            name=NAMES[method], task="denoise", network=network, network_data_format=data_format(),
            training=training, version=VERSIONS[method], description=description + "; unit-invariant (Bq/ml or SUV)",
            intended_use="research only; trained on simulated phantoms — validate on your scanner's data and "
                         "retrain with `nmai train denoise` before any use on patients",
            data_source=f"NMAI simulator whole-body phantoms, seeds {seeds.start}-{seeds.stop - 1}, voxel "
                        f"{p.voxel_mm[0]:g}-{p.voxel_mm[1]:g} mm, Biograph-mMR-class per-slice scanner model",
            metrics=metrics, local_fit=LOCAL_FIT[method], local_fit_significance=FIT_SIGNIFICANCE[method],
            **({"hot_spot_fit": HOT_SPOT_FIT[method]} if HOT_SPOT_FIT[method] else {}),
            **({"resolution_recovery": sr_resolution_recovery()} if method == "sr" else {}))
        save_model(module, folder, card)

    save({})
    progress(0.9, "validating on held-out phantoms")
    val_seeds = range(VAL_SEED_BASE, VAL_SEED_BASE + p.val_cases)
    metrics = {"validation": validate(module, method, p, val_seeds, cache_dir)}
    save(metrics)
    progress(1.0, f"saved {folder}")
    return {"folder": str(folder), "metrics": metrics["validation"], "training": training}


def validate(module, method: str, preset: Preset, seeds, cache_dir=None) -> dict:
    """Mean L1 (in units of the body mean) of input and output against the target, on held-out phantoms."""
    import torch

    from ..models.sliding import sliding_predict

    before, after = [], []
    for case in build_cases(seeds, method, preset, cache_dir=cache_dir):
        for x, y in zip(case["x"].astype(np.float32), case["y"].astype(np.float32)):
            with torch.no_grad():
                out, _ = sliding_predict(module, x[None], dims=2, context_slices=CONTEXT, roi_size=[128, 128],
                                         out_channels=1, device="cpu")
            body = y > 0.05
            before.append(float(np.abs(x - y)[body].mean()))
            after.append(float(np.abs(out[0] - y)[body].mean()))
    return {"cases": len(seeds), "first_seed": int(seeds[0]), "l1_input_vs_target": float(np.mean(before)),
            "l1_output_vs_target": float(np.mean(after))}
