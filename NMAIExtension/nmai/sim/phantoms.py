"""Procedural phantoms: ``wholebody``, ``brain`` and ``nema``, as Volumes in physical units.

Every phantom is painted as tissue labels on a fine canvas (voxel / ``supersample``), then each tissue
property is averaged over the output voxel (partial volume): FDG activity (Bq/ml: SUV × decayed dose /
weight), CT number (HU), μ at 511 keV (cm⁻¹, from the CT number through :func:`nmai.mu.hu_to_mu`,
averaged as μ), MR proton density / fat fraction / T1w → MR images (:mod:`nmai.sim.mr`). Labels are the
majority tissue of each output voxel. Anatomy, tissue values, lesions and MR noise all follow from
``seed`` through independent random streams, so the same seed gives the same phantom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import NMAIError
from ..mu import hu_to_mu
from ..progress import as_progress
from ..volume import Volume
from . import nema as nema_mod
from .body import BodyFrame, lymph_stations, paint_abdomen, paint_thorax, paint_trunk
from .head import paint_head
from .lesions import add_lesions
from .mr import mr_images
from .scanner import DEFAULT_UPTAKE_S, FDG_DOSE_MBQ_PER_KG, decay_factor
from .shapes import Canvas
from .skeleton import paint_pelvis, paint_ribs, paint_shoulder_girdle, paint_spine
from .tissues import BY_LABEL, LESION_LABEL_BASE, SPHERE_LABEL_BASE, L, Properties, sample_properties

PHANTOMS = ("wholebody", "brain", "nema")
DEFAULT_VOXEL_MM = {"wholebody": 4.0, "brain": 2.0, "nema": 4.0}
DEFAULT_DURATION_S = {"wholebody": 180.0, "brain": 600.0, "nema": 300.0}
MR_NAMES = ("mr_water", "mr_fat", "mr_in_phase", "mr_opposed_phase", "mr_t1")


@dataclass
class Phantom:
    name: str
    volumes: dict                   # name -> Volume (activity, mumap, ct, labels, mr_*)
    label_table: dict               # tissue/lesion name -> label value
    info: dict = field(default_factory=dict)

    @property
    def activity(self) -> Volume:
        return self.volumes["activity"]

    @property
    def mumap(self) -> Volume:
        return self.volumes["mumap"]

    @property
    def labels(self) -> Volume:
        return self.volumes["labels"]

    def truth_means(self) -> dict:
        """Mean true activity (Bq/ml) and voxel count per label present."""
        lab = self.labels.array
        act = self.activity.array
        counts = np.bincount(lab.ravel(), minlength=256)
        sums = np.bincount(lab.ravel(), weights=act.ravel().astype(np.float64), minlength=256)
        out = {}
        for name, value in self.label_table.items():
            if counts[value] > 0:
                out[name] = {"label": value, "voxels": int(counts[value]),
                             "mean_bq_ml": float(sums[value] / counts[value])}
        return out


def _grid(half_xy: float, z_lo: float, z_hi: float, voxel: float):
    n = int(math.ceil(2.0 * half_xy / voxel))
    n += n % 2
    nz = int(math.ceil((z_hi - z_lo) / voxel))
    origin = (-(n - 1) * voxel / 2.0, -(n - 1) * voxel / 2.0, z_lo + voxel / 2.0)
    return (nz, n, n), origin


def _block_mean(a: np.ndarray, ss: int) -> np.ndarray:
    if ss == 1:
        return a.astype(np.float32)
    nz, ny, nx = a.shape
    return a.reshape(nz // ss, ss, ny // ss, ss, nx // ss, ss).mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)


def _majority(labels: np.ndarray, ss: int) -> np.ndarray:
    if ss == 1:
        return labels.copy()
    nz, ny, nx = labels.shape
    shape = (nz // ss, ny // ss, nx // ss)
    best = np.zeros(shape, np.uint8)
    best_n = np.zeros(shape, np.int16)
    for value in np.unique(labels):
        n = (labels == value).reshape(shape[0], ss, shape[1], ss, shape[2], ss).sum(axis=(1, 3, 5), dtype=np.int16)
        better = n > best_n
        best[better] = value
        best_n[better] = n[better]
    return best


def _lut(props: dict, attr: str) -> np.ndarray:
    lut = np.zeros(256, np.float32)
    for label, p in props.items():
        lut[label] = getattr(p, attr)
    return lut


def make_phantom(name: str = "wholebody", seed: int = 0, voxel_mm: float | None = None, *,
                 supersample: int = 2, arms: bool = False, lesions: int | None = None,
                 lesion_sites=None, lesion_contrast: float | None = None, lesion_diameter_mm=(5.0, 30.0),
                 sphere_ratio: float = 4.0, weight_kg: float | None = None, dose_mbq: float | None = None,
                 uptake_s: float = DEFAULT_UPTAKE_S, background_bq_ml: float = nema_mod.BACKGROUND_BQ_ML,
                 mr: bool = True, progress=None) -> Phantom:
    """Build a phantom. ``dose_mbq`` is the injected FDG dose (default 3.5 MBq/kg), ``uptake_s`` the
    time from injection to scan start; activities are given at scan start."""
    progress = as_progress(progress)
    if name not in PHANTOMS:
        raise NMAIError(f"unknown phantom {name!r}; use one of {', '.join(PHANTOMS)}")
    voxel = float(voxel_mm or DEFAULT_VOXEL_MM[name])
    if not 0.5 <= voxel <= 10.0:
        raise NMAIError(f"voxel size {voxel} mm out of range; use 0.5–10 mm")
    ss = int(supersample)
    if ss < 1 or ss > 4:
        raise NMAIError("supersample must be 1–4")
    streams = [np.random.default_rng(np.random.SeedSequence([int(seed), 0, k])) for k in range(5)]
    rng_anat, rng_prop, rng_les, rng_mr, rng_misc = streams
    info: dict = {"phantom": name, "seed": int(seed), "voxel_mm": voxel, "supersample": ss}
    progress(0.0, f"painting {name} phantom")
    if name == "nema":
        shape, origin = _grid(nema_mod.HALF_WIDTH + 8.0, nema_mod.Z_LID - nema_mod.LENGTH - 22.0,
                              nema_mod.Z_LID + 22.0, voxel)
    elif name == "brain":
        f = BodyFrame.random(rng_anat, end_depth=240.0)
        shape, origin = _grid(110.0 * f.head_scale + 8.0, float(f.z(240.0)), 12.0, voxel)
    else:
        f = BodyFrame.random(rng_anat)
        shape, origin = _grid(f.max_half_width(arms) + 12.0, float(f.z(f.end_depth)), 12.0, voxel)
    fine = voxel / ss
    cv = Canvas(tuple(s * ss for s in shape), (fine,) * 3,
                tuple(o - (ss - 1) * fine / 2.0 for o in origin))
    props = sample_properties(rng_prop)
    if name == "nema":
        info["structures"] = nema_mod.paint_nema(cv)
        for i in range(len(nema_mod.SPHERE_DIAMETERS_MM)):
            w = props[L("water")]
            props[SPHERE_LABEL_BASE + i] = Properties(float(sphere_ratio), w.hu, w.pd, w.ff, w.t1w)
        info.update(sphere_ratio=float(sphere_ratio), background_bq_ml=float(background_bq_ml))
        n_les = 0
    else:
        info["body"] = {"height_scale": f.height_scale, "width_scale": f.width_scale,
                        "subcutaneous_fat_mm": f.fat_mm, "visceral_fat_fraction": f.visceral,
                        "head_scale": f.head_scale, "bladder_fill": f.bladder_fill, "arms": bool(arms)}
        if name == "wholebody":
            info["head"] = paint_head(cv, f, rng_anat, neck_depth=300.0)
            progress(0.1, "trunk")
            paint_trunk(cv, f, arms)
            progress(0.2, "thorax and abdomen")
            info["thorax"] = {k: v for k, v in paint_thorax(cv, f).items() if not k.startswith("dome")}
            info["abdomen"] = paint_abdomen(cv, f, rng_anat)
            progress(0.35, "skeleton")
            info["spine"] = paint_spine(cv, f)
            paint_ribs(cv, f)
            paint_shoulder_girdle(cv, f, arms)
            info["pelvis"] = paint_pelvis(cv, f)
            stations = lymph_stations(f)
            sites = lesion_sites or ("liver", "lung", "bone", "node")
            n_les = 3 if lesions is None else int(lesions)
        else:
            info["head"] = paint_head(cv, f, rng_anat, neck_depth=260.0)
            paint_spine(cv, f)
            stations = {}
            sites = lesion_sites or ("brain",)
            n_les = 0 if lesions is None else int(lesions)
        progress(0.45, "lesions")
        info["lesions"] = add_lesions(cv, rng_les, props, n_les, sites, stations, lesion_diameter_mm,
                                      lesion_contrast)
        info["lymph_node_stations_lps_mm"] = stations
    progress(0.5, "tissue properties")
    present = set(int(v) for v in np.unique(cv.labels))
    props = {k: v for k, v in props.items() if k in present}
    label_table = {}
    for v in sorted(present):
        if v in BY_LABEL:
            label_table[BY_LABEL[v].name] = v
        elif v >= LESION_LABEL_BASE:
            label_table[f"lesion_{v - LESION_LABEL_BASE + 1:02d}"] = v
        elif v >= SPHERE_LABEL_BASE:
            label_table[f"sphere_{int(nema_mod.SPHERE_DIAMETERS_MM[v - SPHERE_LABEL_BASE])}mm"] = v
    # activity scale: Bq/ml per SUV unit (or per relative unit for NEMA)
    if name == "nema":
        if weight_kg is not None or dose_mbq is not None:
            raise NMAIError("the NEMA phantom is filled with a background activity concentration, not dosed "
                            "by weight; drop --weight/--dose (the SUV factor makes the background SUV 1)")
        scale = float(background_bq_ml)
        info.update(weight_kg=None, suv_bw_factor=1.0 / scale,
                    suv_note="NEMA phantom: SUV factor set so that the background is 1")
    else:
        w = round(float(weight_kg or np.clip(72.0 * f.width_scale ** 2 * f.height_scale * (0.82 + f.fat_mm / 100.0),
                                             45.0, 140.0)), 3)
        dose = (dose_mbq if dose_mbq is not None else FDG_DOSE_MBQ_PER_KG * w) * 1e6
        if dose <= 0 or w <= 0:
            raise NMAIError("dose and weight must be > 0")
        decayed = dose * decay_factor(uptake_s)
        scale = decayed / (w * 1000.0)
        info.update(weight_kg=w, injected_dose_bq=dose, uptake_s=float(uptake_s),
                    dose_at_scan_start_bq=decayed, suv_bw_factor=w * 1000.0 / decayed,
                    radiopharmaceutical="FDG (F-18)")
    info["tissue_properties"] = {name_: props[v].as_dict() for name_, v in label_table.items() if v in props}
    spacing = (voxel,) * 3
    lab_fine = cv.labels

    def vol(array, **kw):
        return Volume(array, spacing, origin, np.eye(3), **kw)

    volumes = {}
    suv = _block_mean(_lut(props, "suv")[lab_fine], ss)
    meta_pt = {k: info[k] for k in ("suv_bw_factor", "weight_kg", "injected_dose_bq", "dose_at_scan_start_bq",
                                    "radiopharmaceutical") if k in info}
    volumes["activity"] = vol(suv * np.float32(scale), modality="PT", units="Bq/ml",
                              metadata=dict(meta_pt, truth=True, phantom=name, seed=int(seed)))
    del suv
    progress(0.65, "CT and μ-map")
    hu_fine = _lut(props, "hu")[lab_fine]
    hu_fine[lab_fine == 0] = -1000.0
    volumes["mumap"] = vol(_block_mean(hu_to_mu(hu_fine), ss), modality="OT", units="cm-1",
                           metadata={"truth": True, "energy_kev": 511, "from": "hu_to_mu(120 kVp)"})
    volumes["ct"] = vol(_block_mean(hu_fine, ss), modality="CT", units="HU", metadata={"kvp": 120})
    del hu_fine
    labels = _majority(lab_fine, ss)
    volumes["labels"] = vol(labels, modality="SEG", units="label", metadata={"label_table": label_table})
    if mr:
        progress(0.8, "MR images")
        pd = _block_mean(_lut(props, "pd")[lab_fine], ss)
        ff = _block_mean(_lut(props, "pd")[lab_fine] * _lut(props, "ff")[lab_fine], ss) / np.maximum(pd, 1e-6)
        t1 = _block_mean(_lut(props, "t1w")[lab_fine], ss)
        for key, arr in mr_images(pd, ff, t1, spacing, origin, rng_mr).items():
            volumes[key] = vol(arr, modality="MR", units="a.u.", metadata={"sequence": key[3:]})
    del rng_misc
    progress(1.0, "phantom ready")
    return Phantom(name, volumes, label_table, info)
