"""The PET error an MR -> μ-map method causes, on simulated whole-body phantoms (``nmai evaluate attenuation``).

Per case (seed ``seed_start + i``; the training uses seeds >= 10000 and its validation 15000+, so seeds
below 10000 are never seen by the models):

1. a whole-body phantom (``nmai.sim.make_phantom``, 4 mm, arms down beside the body in every third case as
   in a real whole-body scan) with ``lesions`` lesions, half of them drawn in trabecular bone and the rest in
   the liver, spleen and lymph-node stations (soft tissue);
2. ONE acquisition simulated with the TRUE μ-map (``nmai.sim.simulate``). By default it is noise-free
   (expected counts): the reconstructions then differ only through the μ-map used for attenuation
   correction, which isolates the μ-map bias — the quantity the published numbers report (they average
   the bias over many patients, so Poisson noise averages out there). ``noise=True`` draws Poisson counts
   (seed = case seed) instead;
3. that acquisition reconstructed (OSEM, same iterations, subsets and PSF) with the true μ-map and with each
   method's μ-map (``dixon4`` from the Dixon water/fat images, ``unet`` from the same images with the Dixon
   U-Net, ``unet-t1`` from the T1 image with the T1 U-Net, ``unet-raw`` the Dixon U-Net without its
   soft-tissue smoothing). The scatter and randoms estimates stay those of
   the acquisition (computed from the true μ-map), so the error measured is that of attenuation correction
   alone;
4. per region (labels of the phantom: bone = cortical + trabecular, soft tissue = muscle, lung, fat =
   subcutaneous + visceral, liver, brain = grey + white matter, lesions in bone, lesions in soft tissue):
   PET error = 100 x (mean of the method's reconstruction over the region / mean of the true-μ
   reconstruction over the same region - 1), in %;
5. μ-map quality: bone Dice (μ > 0.105 cm⁻¹ in both) and μ MAE in the body (``training.mu_metrics``).

The summary is the mean and SD over cases of the per-case regional errors, with pass/fail against the
issue's targets. The figure shows, per method, the joint histogram of predicted vs true μ (body voxels,
all cases) and a Bland–Altman plot of the regional PET values (true-μ vs method reconstruction, in SUV).
"""

from __future__ import annotations

import time

import numpy as np

from ..errors import NMAIError
from ..progress import as_progress
from ..volume import Volume

METHODS = ("unet", "dixon4", "unet-t1", "unet-raw")
DEFAULT_METHODS = ("unet", "dixon4")
DEFAULT_SEED_START = 100
TRAINING_SEEDS_FROM = 10_000
REGIONS = {
    "bone": ("bone_cortical", "bone_trabecular"),
    "soft_tissue": ("muscle",),
    "lung": ("lung",),
    "fat": ("fat_subcutaneous", "fat_visceral"),
    "liver": ("liver",),
    "brain": ("brain_grey_matter", "brain_white_matter"),
    "lesions_bone": (),          # lesions whose site is bone
    "lesions_soft_tissue": (),   # every other lesion (liver, spleen, lymph nodes)
}
LESION_SITES = ("bone", "liver", "bone", "spleen", "bone", "node")
# (method, region or metric, criterion, limit) from the issue
TARGETS = [
    ("unet", "bone", "abs_le", 3.0),
    ("unet", "lesions_bone", "abs_le", 3.0),
    ("unet", "soft_tissue", "abs_le", 2.0),
    ("unet", "lung", "abs_le", 5.0),
    ("unet", "bone_dice", "ge", 0.80),
    ("dixon4", "bone", "le", -10.0),
]
PUBLISHED = {
    "bone_dice": {"Hwang et al. J Nucl Med 2019 (whole body)": 0.77, "Liu et al. Radiology 2018 (brain)": 0.80},
    "deep_learning_pet_error_pct": {"soft_tissue": "< 2", "bone": "< 4",
                                    "source": "Torrado-Carvajal et al. J Nucl Med 2019"},
    "dixon4_pet_error_pct": {"bone": "about -25 (Paulus et al. J Nucl Med 2015)",
                             "bone_lesions": "about -7 to -10 (Leynes et al. J Nucl Med 2018)"},
}
QUICK = {"voxel_mm": 8.0, "supersample": 1, "iterations": 1, "subsets": 7, "lesions": 4}
MU_BINS = np.linspace(0.0, 0.2, 101)


# ---------------------------------------------------------------------------------------------- CT comparison
CT_CLASSES = (("air", 0.0, 0.01), ("lung", 0.01, 0.06), ("fat", 0.06, 0.092), ("soft_tissue", 0.092, 0.105),
              ("bone", 0.105, np.inf))


def compare_to_ct(mu: Volume, ct: Volume, *, kvp: int = 120) -> tuple[Volume, list[dict]]:
    """Compare an MR-derived μ-map with a CT's: (difference map on ``mu``'s grid, rows per tissue class).

    The CT is resampled (linear) onto the μ-map's grid and converted with :func:`nmai.mu.hu_to_mu`; voxels
    outside the CT's field of view get difference 0 and are left out of the table. Classes come from the
    CT-derived μ (cm⁻¹): air < 0.01 <= lung < 0.06 <= fat < 0.092 <= soft tissue < 0.105 <= bone. Each row:
    ``class``, ``voxels``, ``volume_ml``, ``ct_mu_mean``, ``method_mu_mean``, ``difference_mean`` (cm⁻¹,
    method − CT) and ``difference_pct`` (100 x difference / CT μ of the class; None for air).
    """
    from ..mu import hu_to_mu
    from ..resample import resample_like

    if mu.units != "cm-1":
        raise NMAIError(f"the μ-map to compare must be in cm-1, got {mu.units}")
    ct_on = resample_like(ct, mu, default=-1000.0)
    fov = resample_like(ct.derive(np.ones(ct.shape, np.uint8), units="label"), mu, interpolation="nearest").array > 0
    if not fov.any():
        raise NMAIError("the CT does not overlap the MR images (no common field of view); select the CT of the "
                        "same patient and session")
    ct_mu = hu_to_mu(ct_on.array, kvp)
    pred = mu.array.astype(np.float32)
    diff = np.where(fov, pred - ct_mu, 0.0).astype(np.float32)
    rows = []
    for name, lo, hi in CT_CLASSES:
        sel = fov & (ct_mu >= lo) & (ct_mu < hi)
        n = int(sel.sum())
        ct_mean = float(ct_mu[sel].mean()) if n else None
        d = float(diff[sel].mean()) if n else None
        rows.append({"class": name, "voxels": n, "volume_ml": round(n * mu.voxel_volume_ml, 3),
                     "ct_mu_mean": ct_mean, "method_mu_mean": float(pred[sel].mean()) if n else None,
                     "difference_mean": d,
                     "difference_pct": (100.0 * d / ct_mean) if n and name != "air" and ct_mean > 0 else None})
    out = mu.derive(diff, units="cm-1", modality="OT", quantity_note="μ difference: method − CT-derived μ",
                    reference="CT", comparison_kvp=kvp,
                    ct_field_of_view_fraction=round(float(fov.mean()), 4))
    return out, rows


# ---------------------------------------------------------------------------------------------- regions
def region_masks(labels: np.ndarray, label_table: dict, lesions: list[dict]) -> dict[str, np.ndarray]:
    masks = {}
    for region, names in REGIONS.items():
        values = [label_table[n] for n in names if n in label_table]
        masks[region] = np.isin(labels, values) if values else np.zeros(labels.shape, bool)
    present = set(label_table.values())
    bone = [d["label"] for d in lesions if d["site"] == "bone" and d["label"] in present]
    soft = [d["label"] for d in lesions if d["site"] != "bone" and d["label"] in present]
    masks["lesions_bone"] = np.isin(labels, bone)
    masks["lesions_soft_tissue"] = np.isin(labels, soft)
    return masks


def regional_means(image: np.ndarray, masks: dict) -> dict[str, float | None]:
    return {r: (float(image[m].mean(dtype=np.float64)) if m.any() else None) for r, m in masks.items()}


def _pct(method: float | None, true: float | None) -> float | None:
    if method is None or true is None or true <= 0:
        return None
    return 100.0 * (method / true - 1.0)


# ---------------------------------------------------------------------------------------------- cases
def _crop_z(volume: Volume, k0: int, k1: int) -> Volume:
    origin = np.asarray(volume.origin) + volume.direction @ np.array([0.0, 0.0, k0 * volume.spacing[2]])
    return Volume(volume.array[k0:k1].copy(), volume.spacing, tuple(origin), volume.direction.copy(),
                  volume.modality, volume.units, dict(volume.metadata))


def make_case_phantom(seed: int, *, voxel_mm: float = 4.0, supersample: int = 2, lesions: int = 8,
                      quick: bool = False):
    """The phantom of one evaluation case (in ``quick`` mode cropped to the thorax and upper abdomen)."""
    from ..sim import Phantom, make_phantom

    ph = make_phantom("wholebody", seed=int(seed), voxel_mm=voxel_mm, supersample=supersample,
                      arms=(int(seed) % 3 == 0), lesions=lesions, lesion_sites=LESION_SITES)
    if quick:
        lab = ph.labels.array
        keep = np.isin(lab, [ph.label_table.get("lung", -1), ph.label_table.get("liver", -1)]).any(axis=(1, 2))
        ks = np.flatnonzero(keep)
        if ks.size:
            k0, k1 = max(0, int(ks[0]) - 2), min(lab.shape[0], int(ks[-1]) + 3)
            ph = Phantom(ph.name, {k: _crop_z(v, k0, k1) for k, v in ph.volumes.items()}, ph.label_table,
                         dict(ph.info, cropped_slices=[k0, k1]))
    return ph


def method_mumap(method: str, phantom, models: dict, progress=None) -> Volume:
    from ..attenuation.dixon import dixon4_mumap
    from ..attenuation.unet import unet_mumap

    v = phantom.volumes
    if method == "dixon4":
        return dixon4_mumap(v["mr_water"], v["mr_fat"])
    if method in ("unet", "unet-raw"):
        return unet_mumap({"water": v["mr_water"], "fat": v["mr_fat"]}, model=models["unet"], progress=progress,
                          soft_smoothing=method == "unet")
    if method == "unet-t1":
        return unet_mumap({"t1": v["mr_t1"]}, model=models["unet-t1"], progress=progress)
    raise NMAIError(f"unknown method {method!r}; use {', '.join(METHODS)}")


def evaluate_case(seed: int, methods, models: dict, settings: dict, progress=None, keep_dir=None) -> dict:
    """One case: per method the regional PET errors (%), bone Dice, μ MAE, and the figure's raw material."""
    from ..attenuation.training import mu_metrics
    from ..sim import reconstruct, simulate

    progress = as_progress(progress)
    progress(0.0, f"seed {seed}: phantom")
    ph = make_case_phantom(seed, voxel_mm=settings["voxel_mm"], supersample=settings["supersample"],
                           lesions=settings["lesions"], quick=settings["quick"])
    progress(0.1, f"seed {seed}: acquisition with the true μ-map")
    sim = simulate(ph, seed=int(seed), noise=settings["noise"], iterations=settings["iterations"],
                   subsets=settings["subsets"], progress=progress.sub(0.1, 0.3))
    true_recon = sim.recon.array
    masks = region_masks(ph.labels.array, ph.label_table, ph.info.get("lesions", []))
    suv = float(sim.recon.metadata.get("suv_bw_factor") or 1.0)
    true_means = regional_means(true_recon, masks)
    true_mu = ph.mumap.array
    body = (true_mu > 0.01)
    case = {"seed": int(seed), "voxels": {r: int(m.sum()) for r, m in masks.items()},
            "lesions": [{"site": d["site"], "diameter_mm": d["diameter_mm"], "label": d["label"]}
                        for d in ph.info.get("lesions", [])],
            "methods": {}}
    mumaps = {}
    step = 0.7 / max(len(methods), 1)
    for i, method in enumerate(methods):
        p = progress.sub(0.3 + i * step, 0.3 + (i + 1) * step)
        p(0.0, f"seed {seed}: {method} μ-map")
        mu = method_mumap(method, ph, models, p.sub(0.0, 0.4))
        mumaps[method] = mu
        p(0.4, f"seed {seed}: reconstructing with the {method} μ-map")
        recon = reconstruct(sim.acquisition, mu, iterations=settings["iterations"], subsets=settings["subsets"],
                            progress=p.sub(0.4, 1.0)).array
        means = regional_means(recon, masks)
        hist, _, _ = np.histogram2d(true_mu[body], mu.array[body], bins=[MU_BINS, MU_BINS])
        case["methods"][method] = {
            "regions_pct": {r: _pct(means[r], true_means[r]) for r in masks},
            "regional_suv": {r: ([true_means[r] * suv, means[r] * suv] if means[r] is not None else None)
                             for r in masks},
            **mu_metrics(mu.array, true_mu),
            "_hist": hist,
        }
    if keep_dir is not None:
        from pathlib import Path

        from ..io import write_volume
        from ..sim import write_simulation

        folder = Path(keep_dir) / f"case_{int(seed)}"
        write_simulation(sim, folder)
        for method, mu in mumaps.items():
            write_volume(mu, folder / f"mumap_{method}.nii.gz")
    progress(1.0, f"seed {seed}: done")
    return case


# ---------------------------------------------------------------------------------------------- summary
def _summary(values) -> dict:
    vals = [v for v in values if v is not None]
    return {"mean_pct": float(np.mean(vals)) if vals else None,
            "sd_pct": float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None),
            "n": len(vals), "per_case": [None if v is None else round(float(v), 4) for v in values]}


def summarise(cases: list[dict], methods) -> dict:
    out = {}
    for method in methods:
        per = [c["methods"][method] for c in cases]
        out[method] = {
            "regions": {r: _summary([p["regions_pct"][r] for p in per]) for r in REGIONS},
            "bone_dice": float(np.mean([p["bone_dice"] for p in per])),
            "bone_dice_per_case": [round(p["bone_dice"], 4) for p in per],
            "mu_mae_cm-1": float(np.mean([p["mu_mae_body_cm-1"] for p in per])),
            "mu_mae_per_case": [round(p["mu_mae_body_cm-1"], 5) for p in per],
        }
    return out


def check_targets(summary: dict) -> dict:
    targets = {}
    for method, what, criterion, limit in TARGETS:
        if method not in summary:
            continue
        if what == "bone_dice":
            value = summary[method]["bone_dice"]
        else:
            value = summary[method]["regions"][what]["mean_pct"]
        text = {"abs_le": f"|mean {what} PET error| <= {limit:g} %", "ge": f"{what} >= {limit:g}",
                "le": f"mean {what} PET error <= {limit:g} % (underestimated)"}[criterion]
        if value is None:
            ok = None
        elif criterion == "abs_le":
            ok = abs(value) <= limit
        elif criterion == "ge":
            ok = value >= limit
        else:
            ok = value <= limit
        targets[f"{method}:{what}"] = {"criterion": text, "value": value, "pass": ok}
    return targets


def write_figure(path, cases: list[dict], methods) -> None:
    """Joint histograms (true vs method μ, body voxels, all cases) and a Bland–Altman plot of regional PET."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    from ..io import atomic_path

    n = len(methods)
    fig = Figure(figsize=(4.2 * (n + 1), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n + 1)
    colours = {"unet": "tab:blue", "dixon4": "tab:red", "unet-t1": "tab:green", "unet-raw": "tab:grey"}
    for ax, method in zip(axes[:n], methods):
        hist = sum(c["methods"][method]["_hist"] for c in cases)
        image = ax.imshow(np.maximum(hist.T, 0.5), origin="lower", extent=[0, 0.2, 0, 0.2], aspect="equal",
                          norm=LogNorm(vmin=0.5, vmax=max(float(hist.max()), 1.0)), cmap="viridis")
        ax.plot([0, 0.2], [0, 0.2], "w--", lw=0.8)
        ax.set_xlabel("true μ (cm⁻¹)")
        ax.set_ylabel(f"{method} μ (cm⁻¹)")
        ax.set_title(f"{method}: joint histogram (body voxels)", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="voxels")
    ax = axes[n]
    for method in methods:
        xs, ys = [], []
        for c in cases:
            for pair in c["methods"][method]["regional_suv"].values():
                if pair is not None and pair[0] > 0:
                    xs.append((pair[0] + pair[1]) / 2.0)
                    ys.append(100.0 * (pair[1] - pair[0]) / pair[0])
        if ys:
            mean, sd = float(np.mean(ys)), float(np.std(ys))
            ax.scatter(xs, ys, s=12, alpha=0.7, color=colours.get(method),
                       label=f"{method}: mean {mean:+.1f} %, ±1.96 SD {1.96 * sd:.1f} %")
            ax.axhline(mean, color=colours.get(method), lw=1)
            for s in (-1.96, 1.96):
                ax.axhline(mean + s * sd, color=colours.get(method), lw=0.7, ls=":")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("regional mean SUV, (true-μ + method) / 2")
    ax.set_ylabel("PET error vs true-μ recon (%)")
    ax.set_title("Bland–Altman, regional PET (all regions, cases)", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png")


def evaluate_attenuation(*, cases: int = 10, seed_start: int = DEFAULT_SEED_START, methods=DEFAULT_METHODS,
                         model=None, t1_model=None, noise: bool = False, iterations: int | None = None,
                         subsets: int | None = None, quick: bool = False, keep_dir=None, figure=None,
                         progress=None) -> dict:
    """Run the evaluation; returns the JSON-ready result (see the module docstring and the README)."""
    from ..attenuation.unet import load_attenuation_model
    from ..sim import DEFAULT_ITERATIONS, DEFAULT_SUBSETS

    progress = as_progress(progress)
    t0 = time.time()
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in METHODS:
            raise NMAIError(f"unknown method {m!r}; use {', '.join(METHODS)}")
    if not methods:
        raise NMAIError("no method to evaluate; give --methods unet,dixon4")
    if cases < 1:
        raise NMAIError("--cases must be at least 1")
    if seed_start < 0 or seed_start + cases > TRAINING_SEEDS_FROM:
        raise NMAIError(f"evaluation seeds must stay below {TRAINING_SEEDS_FROM} (the training phantoms use seeds "
                        f"{TRAINING_SEEDS_FROM} and up); choose --seed-start and --cases accordingly")
    settings = {"voxel_mm": QUICK["voxel_mm"] if quick else 4.0, "supersample": QUICK["supersample"] if quick else 2,
                "lesions": QUICK["lesions"] if quick else 8, "quick": bool(quick), "noise": bool(noise),
                "iterations": iterations or (QUICK["iterations"] if quick else DEFAULT_ITERATIONS),
                "subsets": subsets or (QUICK["subsets"] if quick else DEFAULT_SUBSETS)}
    models, provenance = {}, {}
    if "unet" in methods or "unet-raw" in methods:
        models["unet"] = load_attenuation_model("dixon", model)
    if "unet-t1" in methods:
        models["unet-t1"] = load_attenuation_model("t1", t1_model)
    for key, m in models.items():
        provenance[key] = {"name": m.name, "version": m.version, "sha256": m.sha256,
                           "folder": str(m.folder) if m.folder else None}
    seeds = list(range(seed_start, seed_start + cases))
    results = []
    for i, seed in enumerate(seeds):
        results.append(evaluate_case(seed, methods, models, settings,
                                     progress.sub(0.97 * i / cases, 0.97 * (i + 1) / cases), keep_dir))
    summary = summarise(results, methods)
    result = {
        "cases": cases, "seeds": seeds, "methods": summary, "targets": check_targets(summary),
        "published": PUBLISHED,
        "settings": {
            "phantom": "wholebody", "voxel_mm": settings["voxel_mm"], "supersample": settings["supersample"],
            "arms": "beside the body when seed % 3 == 0",
            "lesions_per_phantom": settings["lesions"], "lesion_sites": sorted(set(LESION_SITES)),
            "acquisition": "Poisson counts (seed = case seed)" if noise else
                           "noise-free (expected counts): isolates the μ-map bias",
            "reconstruction": {"algorithm": "OSEM", "iterations": settings["iterations"],
                               "subsets": settings["subsets"], "psf": True,
                               "scatter_randoms": "the acquisition's own (from the true μ-map) for every method"},
            "error": "100 x (region mean of the method's reconstruction / region mean of the true-μ "
                     "reconstruction - 1), %; mean and SD over cases",
            "regions": {r: list(v) if v else ("lesion labels in bone" if r == "lesions_bone" else
                                              "lesion labels outside bone") for r, v in REGIONS.items()},
            "bone_dice": "μ > 0.105 cm-1 in both maps", "mu_mae": "mean |μ - true μ| over true μ > 0.01 cm-1",
            "quick": bool(quick), "seed_start": seed_start,
            "training_seeds": f">= {TRAINING_SEEDS_FROM}", "models": provenance,
        },
        "per_case": [{k: v for k, v in c.items() if k != "methods"} for c in results],
    }
    if figure:
        progress(0.98, "drawing the figure")
        write_figure(figure, results, methods)
    result["duration_s"] = round(time.time() - t0, 1)
    progress(1.0, "evaluation done")
    return result
