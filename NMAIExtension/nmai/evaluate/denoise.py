"""Low-count PET denoising and super-resolution on simulated phantoms (``nmai evaluate denoise``).

Three parts, all on phantoms and seeds the training never used (training phantoms: seeds >= 20000,
validation 25000+; evaluation: whole-body seeds ``seed_start`` .. below 10000):

1. **Whole body** (methods cnn, gan, prior, gaussian). Per case (seed ``seed_start + i``): a whole-body
   phantom (4 mm, arms beside the body when ``seed % 3 == 0``, 8 lesions), ONE full-count acquisition on the
   default (small-crystal) scanner, 180 s, Poisson counts (seed = case seed); the same scan thinned to each
   count fraction (a list-mode subsample: same patient, same scan, fewer counts); each reconstructed with OSEM
   (3 iterations x 14 subsets, PSF). The reference is the full-count OSEM of the same acquisition. Per method
   and count level, in SUV: PSNR, SSIM and NRMSE inside the body mask (``metrics.body_mask`` of the
   reference), liver CoV (noise; liver eroded by one voxel), liver SUVmean bias vs the reference (%; the liver
   is the reference region of PERCIST and Deauville reads) and, per lesion >= 10 mm, SUVmean / SUVmax /
   SUVpeak bias vs the reference (%). ``cnn``/``gan``: the network applied to the OSEM image; ``prior``: the
   CNN-prior reconstruction of the thinned acquisition (:func:`nmai.denoise.prior.reconstruct_with_prior`),
   starting from the same OSEM;
   ``gaussian@M``: the OSEM image filtered with the Gaussian whose FWHM (searched in 0-12 mm) gives the SAME
   liver CoV as method M ("matched noise"); ``psnr_gain_db`` of M = PSNR(M) - PSNR(gaussian@M).
   ``osem`` (the unfiltered low-count image) is always reported. Unit invariance: the network is run on the
   10 % image in Bq/ml and in SUV (k = SUV factor); the output must scale by k within 1 %.
2. **NEMA NU 2 image quality** (IEC body phantom, 4:1): at 10 % and 100 % counts, a few Poisson
   realisations: contrast recovery CRC = (C_H/C_B - 1)/(a_H/a_B - 1) per sphere (circular ROI of the sphere's
   diameter on the plane through the sphere centres) and background variability BV = SD/C_B over 60
   background ROIs of the same diameter (12 positions x 5 planes at 0, +-10, +-20 mm), for every method and
   for Gaussian post-filters of 0-10 mm FWHM (the CRC-BV curve); ``gaussian_crc_at_same_bv``: the Gaussian
   curve's CRC at the method's BV (interpolated), i.e. contrast at matched noise.
3. **Super-resolution** (method sr): a large-crystal scanner (8 mm crystals, ``crystal_group=2``) reconstructed
   without PSF (the network's input), the sr output, and the small-crystal scanner with PSF (reference), on
   a point source (one hot voxel, 3 mm grid, in a warm water cylinder): FWHM in x and y (NEMA: parabolic
   peak, linear interpolation at half maximum, background subtracted) and background CoV; and on the NEMA
   phantom at full count: CRC of every sphere (10 and 13 mm are the targets) and BV.

Pass/fail against the issue's targets is reported like ``nmai evaluate attenuation``.
"""

from __future__ import annotations

import math
import time
from functools import lru_cache

import numpy as np

from ..errors import NMAIError
from ..progress import as_progress
from ..volume import Volume

# cnn-raw: the cnn without its local fit; cnn-fit: with the plain fit (significance 0, the data's level everywhere);
# cnn-nospots: with its card's significance but without the hot-spot fit
METHODS = ("cnn", "gan", "gaussian", "prior", "sr", "cnn-raw", "cnn-fit", "cnn-nospots")
CNN_VARIANTS = {"cnn-raw": dict(local_fit=False), "cnn-fit": dict(local_fit=True, fit_significance=0.0),
                "cnn-nospots": dict(hot_spots=False)}
DEFAULT_METHODS = METHODS
LEARNED = ("cnn", "gan", "prior")          # each compared with a Gaussian at matched noise
NETWORK_METHODS = ("cnn", "gan")           # image-to-image networks checked for unit invariance
DEFAULT_FRACTIONS = (0.025, 0.1, 0.25, 0.5, 1.0)
DEFAULT_SEED_START = 100
TRAINING_SEEDS_FROM = 10_000
TRAINING_FRACTIONS = (0.05, 0.5)           # nmai.denoise.training: cnn/gan count fractions
FWHM_SEARCH_MM = (0.0, 12.0)
FALLBACK_FWHM_MM = 6.0                     # gaussian alone (no learned method to match)
MIN_LESION_MM = 10.0
DURATION_S = 180.0
NEMA_DURATION_S = 300.0
NEMA_SEED_BASE = 0
SR_SEED = 7
NEMA_BACKGROUND_OFFSETS_MM = (-20.0, -10.0, 0.0, 10.0, 20.0)
NEMA_ROI_COUNT = 12
BIAS_KINDS = ("suvmean", "suvmax", "suvpeak")
FULL = {"voxel_mm": 4.0, "supersample": 2, "lesions": 8, "iterations": 3, "subsets": 14, "prior_outer": 3,
        "nema_voxel_mm": 4.0, "nema_fractions": (0.1, 1.0), "realisations": 3,
        "nema_fwhms_mm": (0.0, 2.0, 4.0, 6.0, 8.0, 10.0), "point_voxel_mm": 3.0}
QUICK = {"voxel_mm": 8.0, "supersample": 1, "lesions": 4, "iterations": 1, "subsets": 7, "prior_outer": 1,
         "nema_voxel_mm": 8.0, "nema_fractions": (0.1,), "realisations": 1, "nema_fwhms_mm": (0.0, 4.0, 8.0),
         "point_voxel_mm": 6.0, "fractions": (0.1, 1.0), "roi_size": (64, 64)}
PUBLISHED = {
    "psnr_gain_db": {"regulatory bar for a cleared PET denoiser": ">= 1", "observed (203 studies)": 1.94},
    "suv_bias_pct": {"at 4x count reduction": "|SUVmean| and |SUVmax| < 5",
                     "commercial denoiser SUVmax under-read": "-11.6 (v1), -4.5 (v2)"},
    "off_training_level": "Kim et al., IEEE TMI 2018: test >= 2x above and below the training count levels",
    "super_resolution": "Hong et al., IEEE TMI 2018: large crystals -> small-crystal resolution, better noise",
    "earl1_rc_max_bands": {"37mm": [0.95, 1.16], "10mm": [0.34, 0.57]},
}


# ---------------------------------------------------------------------------------------------- helpers
def _fkey(f: float) -> str:
    return f"{float(f):g}"


def _finite(v):
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def clean(obj):
    """JSON-ready copy: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite(obj)
    return obj


def _pct(value, reference):
    if value is None or reference is None or reference == 0:
        return None
    return 100.0 * (float(value) / float(reference) - 1.0)


def cov(array: np.ndarray, mask: np.ndarray) -> float:
    """Coefficient of variation (SD with ddof=1 / mean) of ``array`` in ``mask``."""
    v = np.asarray(array, np.float64)[mask]
    m = float(v.mean())
    return float(v.std(ddof=1)) / m if m else math.nan


def _crop_box(mask: np.ndarray, margin):
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin, 0)
    hi = np.minimum(idx.max(0) + margin + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def match_noise_fwhm(volume: Volume, mask: np.ndarray, target_cov: float, *, fwhm_range=FWHM_SEARCH_MM,
                     tol_mm: float = 1e-3, max_iter: int = 40) -> dict:
    """FWHM (mm) of the Gaussian post-filter (:func:`nmai.filters.gaussian_filter`) that gives ``volume`` the
    CoV ``target_cov`` inside ``mask`` (bisection; CoV falls as the FWHM grows).

    Filtering runs on a box around the mask wide enough (4 sigma of the largest FWHM) that the result in the
    mask equals that of filtering the whole volume. Returns ``fwhm_mm``, ``cov`` (at that FWHM),
    ``target_cov`` and ``matched`` (False when the target lies outside the range: the FWHM is then clipped
    to 0 — the method is noisier than the unfiltered image — or to the upper limit).
    """
    from ..filters import FWHM_TO_SIGMA, gaussian_filter

    lo, hi = (float(v) for v in fwhm_range)
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise NMAIError("the noise region (liver) is empty")
    margin = [int(math.ceil(4.0 * hi * FWHM_TO_SIGMA / s)) + 1 for s in volume.spacing[::-1]]
    box = _crop_box(mask, margin)
    sub = Volume(np.ascontiguousarray(volume.array[box], np.float32), volume.spacing)
    sub_mask = mask[box]

    def cov_at(fwhm):
        return cov(gaussian_filter(sub, fwhm).array, sub_mask)

    c_lo, c_hi = cov_at(lo), cov_at(hi)
    target = float(target_cov)
    if not math.isfinite(target) or target >= c_lo:
        return {"fwhm_mm": lo, "cov": c_lo, "target_cov": target, "matched": bool(math.isclose(target, c_lo,
                                                                                                rel_tol=1e-3))}
    if target <= c_hi:
        return {"fwhm_mm": hi, "cov": c_hi, "target_cov": target, "matched": bool(math.isclose(target, c_hi,
                                                                                                rel_tol=1e-3))}
    a, b, ca, cb = lo, hi, c_lo, c_hi
    for _ in range(max_iter):
        if b - a <= tol_mm:
            break
        mid = 0.5 * (a + b)
        cm = cov_at(mid)
        if cm > target:
            a, ca = mid, cm
        else:
            b, cb = mid, cm
    f = a + (b - a) * (ca - target) / (ca - cb) if ca != cb else 0.5 * (a + b)
    return {"fwhm_mm": float(f), "cov": cov_at(f), "target_cov": target, "matched": True}


def profile_fwhm(profile, spacing_mm: float) -> float | None:
    """FWHM (mm) of a 1-D profile as NEMA NU 2 measures it: the peak from a parabola through the maximum
    and its two neighbours, the half-maximum crossings by linear interpolation between samples."""
    p = np.asarray(profile, np.float64)
    m = int(np.argmax(p))
    if m == 0 or m == p.size - 1 or p[m] <= 0:
        return None
    a, b, c = p[m - 1], p[m], p[m + 1]
    denom = a - 2 * b + c
    peak = b - 0.125 * (a - c) ** 2 / denom if denom < 0 else b
    half = 0.5 * peak
    i = m
    while i > 0 and p[i] > half:
        i -= 1
    if p[i] > half:
        return None
    left = i + (half - p[i]) / (p[i + 1] - p[i])
    j = m
    while j < p.size - 1 and p[j] > half:
        j += 1
    if p[j] > half:
        return None
    right = j - 1 + (p[j - 1] - half) / (p[j - 1] - p[j])
    return float((right - left) * spacing_mm)


def point_fwhm_mm(volume: Volume, centre_lps, *, background: float = 0.0, search_mm: float = 12.0) -> dict:
    """FWHM (mm) in x, y (and z) of the profiles through the maximum found within ``search_mm`` of
    ``centre_lps`` (identity direction), after subtracting ``background``."""
    a = np.asarray(volume.array, np.float64) - float(background)
    sp = np.asarray(volume.spacing)
    ijk = np.rint((np.asarray(centre_lps, float) - np.asarray(volume.origin)) / sp).astype(int)
    r = np.ceil(search_mm / sp).astype(int)
    lo = np.maximum(ijk - r, 0)
    hi = np.minimum(ijk + r + 1, a.shape[::-1])
    box = a[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
    k, j, i = np.unravel_index(int(np.argmax(box)), box.shape)
    k, j, i = k + lo[2], j + lo[1], i + lo[0]
    fx = profile_fwhm(a[k, j, :], sp[0])
    fy = profile_fwhm(a[k, :, i], sp[1])
    fz = profile_fwhm(a[:, j, i], sp[2])
    xy = [v for v in (fx, fy) if v is not None]
    return {"x": fx, "y": fy, "z": fz, "mean_xy": float(np.mean(xy)) if len(xy) == 2 else None,
            "max_voxel_ijk": [int(i), int(j), int(k)]}


# ---------------------------------------------------------------------------------------------- NEMA
@lru_cache(maxsize=None)
def background_roi_centres(n: int = NEMA_ROI_COUNT, roi_mm: float = 37.0, wall_mm: float = 15.0,
                           max_clearance_mm: float = 15.0) -> tuple[np.ndarray, float]:
    """(n, 2) x, y (LPS mm) of the NEMA background ROI centres and the sphere clearance used.

    ROIs of ``roi_mm`` lie ``wall_mm`` inside the phantom wall, do not overlap each other and keep a
    clearance (edge to edge) from the spheres and the lung insert: 15 mm as NEMA asks when 12 such ROIs fit;
    this phantom's interior does not hold 12 non-overlapping 37 mm ROIs 15 mm from both the wall and the
    spheres, so the largest clearance (1 mm steps) at which they fit is used. Positions are spread by
    farthest-point sampling from the most anterior point (deterministic).
    """
    from ..sim import nema as nema_mod

    r = roi_mm / 2.0
    inner = nema_mod._body(-(wall_mm + r))
    g = np.arange(-160.0, 160.0, 1.0)
    X, Y = np.meshgrid(g, g)
    base = inner(X, Y, np.zeros_like(X))
    centres = nema_mod.sphere_centres()
    for clearance in np.arange(max_clearance_mm, -0.5, -1.0):
        ok = base & (np.hypot(X, Y) >= 25.0 + clearance + r)
        for d, c in centres.items():
            ok &= np.hypot(X - c[0], Y - c[1]) >= d / 2.0 + clearance + r
        pts = np.c_[X[ok], Y[ok]]
        if len(pts) < n:
            continue
        chosen = [pts[int(np.argmin(pts[:, 1]))]]
        dmin = np.hypot(*(pts - chosen[0]).T)
        while len(chosen) < n:
            i = int(np.argmax(dmin))
            if dmin[i] < roi_mm:
                break
            chosen.append(pts[i])
            dmin = np.minimum(dmin, np.hypot(*(pts - pts[i]).T))
        if len(chosen) == n:
            return np.array(chosen), float(clearance)
    raise AssertionError("no background ROI layout fits the phantom")  # pragma: no cover


def _plane(volume: Volume, z_mm: float) -> np.ndarray:
    """Transverse plane at ``z_mm`` (linear interpolation between the two nearest slices)."""
    a = volume.array
    kf = (z_mm - volume.origin[2]) / volume.spacing[2]
    k0 = int(np.clip(math.floor(kf), 0, a.shape[0] - 1))
    k1 = min(k0 + 1, a.shape[0] - 1)
    w = float(np.clip(kf - k0, 0.0, 1.0))
    return (1.0 - w) * a[k0].astype(np.float64) + w * a[k1].astype(np.float64)


def roi_mean(plane: np.ndarray, volume: Volume, cx: float, cy: float, diameter_mm: float, sub: int = 5) -> float:
    """Mean of ``plane`` in a circle (centre LPS x, y mm), pixels weighted by the fraction inside
    (``sub`` x ``sub`` sub-samples per pixel)."""
    sx, sy = volume.spacing[0], volume.spacing[1]
    ox, oy = volume.origin[0], volume.origin[1]
    r = diameter_mm / 2.0
    i0, i1 = int(math.floor((cx - r - ox) / sx)) - 1, int(math.ceil((cx + r - ox) / sx)) + 2
    j0, j1 = int(math.floor((cy - r - oy) / sy)) - 1, int(math.ceil((cy + r - oy) / sy)) + 2
    i0, j0 = max(i0, 0), max(j0, 0)
    i1, j1 = min(i1, plane.shape[1]), min(j1, plane.shape[0])
    offs = (np.arange(sub) + 0.5) / sub - 0.5
    xs = ox + (np.arange(i0, i1)[:, None] + offs[None, :]) * sx          # (ni, sub)
    ys = oy + (np.arange(j0, j1)[:, None] + offs[None, :]) * sy          # (nj, sub)
    inside = ((xs[None, :, None, :] - cx) ** 2 + (ys[:, None, :, None] - cy) ** 2) <= r * r
    w = inside.mean(axis=(2, 3))                                          # (nj, ni)
    if w.sum() <= 0:
        raise NMAIError(f"ROI at ({cx:.1f}, {cy:.1f}) mm lies outside the image")
    return float((plane[j0:j1, i0:i1] * w).sum() / w.sum())


def nema_image_quality(image: Volume, phantom) -> dict:
    """NEMA NU 2 CRC and BV per sphere of ``image`` (any PET units) of the IEC phantom ``phantom``.

    Returns ``{"spheres": {"10mm": {"crc", "bv", "c_h", "c_b", "diameter_mm"}, ...}, "lung_residual_pct",
    "background_clearance_mm"}``.
    """
    structures = phantom.info["structures"]
    ratio = float(phantom.info.get("sphere_ratio", 4.0))
    centres, clearance = background_roi_centres()
    spheres = sorted(((s["inner_diameter_mm"], s["centre_lps_mm"]) for n, s in structures.items()
                      if n.startswith("sphere_")), key=lambda t: t[0])
    z0 = float(spheres[0][1][2])
    planes = {dz: _plane(image, z0 + dz) for dz in NEMA_BACKGROUND_OFFSETS_MM}
    out = {}
    lung = []
    for d, c in spheres:
        c_h = roi_mean(planes[0.0], image, c[0], c[1], d)
        bg = np.array([roi_mean(planes[dz], image, x, y, d) for dz in NEMA_BACKGROUND_OFFSETS_MM for x, y in centres])
        c_b = float(bg.mean())
        sd = float(bg.std(ddof=1))
        out[f"{int(d)}mm"] = {"diameter_mm": d, "crc": (c_h / c_b - 1.0) / (ratio - 1.0) if c_b else None,
                              "bv": sd / c_b if c_b else None, "c_h": c_h, "c_b": c_b}
    c_b37 = out[f"{int(spheres[-1][0])}mm"]["c_b"]
    for dz in NEMA_BACKGROUND_OFFSETS_MM:
        lung.append(roi_mean(planes[dz], image, 0.0, 0.0, 30.0))
    return {"spheres": out, "lung_residual_pct": 100.0 * float(np.mean(lung)) / c_b37 if c_b37 else None,
            "background_rois": len(centres) * len(NEMA_BACKGROUND_OFFSETS_MM),
            "background_clearance_mm": clearance}


def _nema_summary(results: list[dict]) -> dict:
    """Mean CRC and BV per sphere over noise realisations."""
    out = {}
    for name in results[0]["spheres"]:
        crc = [r["spheres"][name]["crc"] for r in results]
        bv = [r["spheres"][name]["bv"] for r in results]
        out[name] = {"crc": float(np.mean(crc)), "bv": float(np.mean(bv)),
                     "crc_sd": float(np.std(crc, ddof=1)) if len(crc) > 1 else None}
    lung = [r["lung_residual_pct"] for r in results if r["lung_residual_pct"] is not None]
    return {"spheres": out, "lung_residual_pct": float(np.mean(lung)) if lung else None}


def crc_at_bv(curve: list[dict], sphere: str, bv: float):
    """The Gaussian curve's CRC at background variability ``bv`` (linear in BV; None outside the curve)."""
    pts = sorted((c["spheres"][sphere]["bv"], c["spheres"][sphere]["crc"]) for c in curve)
    b = np.array([p[0] for p in pts])
    if bv is None or bv < b[0] or bv > b[-1]:
        return None
    return float(np.interp(bv, b, [p[1] for p in pts]))


# ---------------------------------------------------------------------------------------------- whole body
def case_phantom(seed: int, settings: dict):
    """The phantom of one whole-body case (quick mode: cropped to the thorax and upper abdomen)."""
    from ..sim import Phantom, make_phantom

    from .attenuation import _crop_z

    ph = make_phantom("wholebody", seed=int(seed), voxel_mm=settings["voxel_mm"],
                      supersample=settings["supersample"], arms=(int(seed) % 3 == 0), lesions=settings["lesions"],
                      mr=False)
    if settings["quick"]:
        lab = ph.labels.array
        keep = np.isin(lab, [ph.label_table.get("lung", -1), ph.label_table.get("liver", -1)]).any(axis=(1, 2))
        ks = np.flatnonzero(keep)
        if ks.size:
            k0, k1 = max(0, int(ks[0]) - 2), min(lab.shape[0], int(ks[-1]) + 3)
            ph = Phantom(ph.name, {k: _crop_z(v, k0, k1) for k, v in ph.volumes.items()}, ph.label_table,
                         dict(ph.info, cropped_slices=[k0, k1]))
    return ph


def liver_mask(labels: np.ndarray, label_table: dict) -> np.ndarray:
    """The liver, eroded by one voxel (partial volume at its edge is not noise) unless that empties it."""
    from scipy.ndimage import binary_erosion

    liver = labels == label_table.get("liver", -1)
    eroded = binary_erosion(liver)
    return eroded if eroded.sum() >= 20 else liver


def case_lesions(phantom, min_mm: float = MIN_LESION_MM) -> tuple[list[dict], list[dict]]:
    """(lesions used: name, site, diameter_mm, mask; lesions left out: name, diameter_mm, why)."""
    labels = phantom.labels.array
    used, left = [], []
    for d in phantom.info.get("lesions", []):
        mask = labels == d["label"]
        if d["diameter_mm"] < min_mm:
            left.append({"name": d["name"], "diameter_mm": d["diameter_mm"], "why": f"< {min_mm:g} mm"})
        elif not mask.any():
            left.append({"name": d["name"], "diameter_mm": d["diameter_mm"], "why": "outside the image"})
        else:
            used.append({"name": d["name"], "site": d["site"], "diameter_mm": d["diameter_mm"], "mask": mask})
    return used, left


def image_metrics(img: np.ndarray, ref: np.ndarray, body, liver, lesions, ref_lesions, spacing) -> dict:
    """Metrics of one SUV image against the reference (see the module docstring)."""
    from ..denoise.metrics import nrmse, psnr_db, region_stats, ssim

    out = {"psnr_db": _finite(psnr_db(img, ref, body)), "ssim": ssim(img, ref, body),
           "nrmse": nrmse(img, ref, body), "liver_cov": cov(img, liver),
           "liver_suvmean_bias_pct": _pct(float(img[liver].mean()), float(ref[liver].mean())) if liver.any() else None,
           "lesions": []}
    for les, r in zip(lesions, ref_lesions):
        s = region_stats(img, les["mask"], spacing)
        row = {"name": les["name"]}
        for kind, key in zip(BIAS_KINDS, ("mean", "max", "peak")):
            row[kind] = s[key]
            row[f"{kind}_bias_pct"] = _pct(s[key], r[key])
        out["lesions"].append(row)
    return out


def _kw(settings: dict) -> dict:
    """predict_volume options: torch's thread count (so ``nmai --threads N`` holds for the networks too);
    quick mode uses 64 x 64 windows (a small image fits one window)."""
    import torch

    kw = {"num_threads": torch.get_num_threads()}
    if settings.get("roi_size"):
        kw["roi_size"] = list(settings["roi_size"])
    return kw


def unit_invariance(volume: Volume, method: str, model, output: Volume | None = None, k: float | None = None,
                    **predict_kw) -> dict:
    """Run ``method`` on ``volume`` (Bq/ml) and on k x ``volume`` declared SUVbw; the outputs must differ by
    the factor k. ``max_dev_pct``: max |out(k x) - k out(x)| in the body / (k max out(x)), %."""
    from ..denoise.apply import denoise_volume
    from ..denoise.metrics import body_mask

    k = float(k or volume.metadata.get("suv_bw_factor") or 1e-3)
    if output is None:
        output, _ = denoise_volume(volume, method, model=model, **predict_kw)
    scaled, _ = denoise_volume(volume.derive(volume.array * np.float32(k), units="SUVbw"), method, model=model,
                               **predict_kw)
    o, s = output.array.astype(np.float64), scaled.array.astype(np.float64)
    body = body_mask(o)
    dev = float(np.abs(s - k * o)[body].max() / (k * o[body].max())) * 100.0
    return {"k": k, "units": ["Bq/ml", "SUVbw"], "max_dev_pct": dev,
            "mean_ratio": float(s[body].mean() / (k * o[body].mean())), "pass": dev <= 1.0}


def evaluate_case(seed: int, methods, models: dict, fractions, settings: dict, progress=None,
                  invariance: bool = False) -> dict:
    """One whole-body case: per count level and method the metrics of :func:`image_metrics`."""
    from ..denoise.apply import denoise_volume
    from ..denoise.metrics import body_mask, region_stats
    from ..denoise.prior import reconstruct_with_prior
    from ..filters import gaussian_filter
    from ..sim import DEFAULT_SCANNER, reconstruct, simulate_acquisition, thinned

    progress = as_progress(progress)
    it, sub = settings["iterations"], settings["subsets"]
    progress(0.0, f"seed {seed}: phantom")
    ph = case_phantom(seed, settings)
    progress(0.03, f"seed {seed}: full-count acquisition")
    acq = simulate_acquisition(ph.activity, ph.mumap, DEFAULT_SCANNER, duration_s=DURATION_S, seed=int(seed))
    progress(0.08, f"seed {seed}: full-count OSEM (reference)")
    ref_vol = reconstruct(acq, ph.mumap, iterations=it, subsets=sub, psf=True)
    suv = float(ph.info["suv_bw_factor"])
    spacing = ref_vol.spacing
    ref = ref_vol.array.astype(np.float64) * suv
    body = body_mask(ref)
    liver = liver_mask(ph.labels.array, ph.label_table)
    lesions, left_out = case_lesions(ph)
    ref_lesions = [region_stats(ref, les["mask"], spacing) for les in lesions]
    case = {"seed": int(seed), "shape_kji": list(ref.shape), "voxel_mm": settings["voxel_mm"],
            "prompts_full_count": float(acq.info.get("prompts", 0.0)),
            "body_voxels": int(body.sum()), "liver_voxels": int(liver.sum()),
            "lesions": [{"name": les["name"], "site": les["site"], "diameter_mm": les["diameter_mm"],
                         "voxels": int(les["mask"].sum()), "ref_suvmean": r["mean"], "ref_suvmax": r["max"],
                         "ref_suvpeak": r["peak"]} for les, r in zip(lesions, ref_lesions)],
            "lesions_left_out": left_out, "fractions": {}}
    learned = [m for m in LEARNED if m in methods]
    inv_fraction = min(fractions, key=lambda f: abs(math.log(f / 0.1))) if invariance else None
    for n, f in enumerate(fractions):
        p = progress.sub(0.1 + 0.9 * n / len(fractions), 0.1 + 0.9 * (n + 1) / len(fractions))
        fk = _fkey(f)
        low_acq = thinned(acq, f)
        p(0.0, f"seed {seed}, {100 * f:g} % counts: OSEM")
        low = ref_vol if f == 1.0 else reconstruct(low_acq, ph.mumap, iterations=it, subsets=sub, psf=True)
        images = {"osem": low}
        for m in ("cnn", "gan"):
            if m in methods:
                p(0.3, f"seed {seed}, {100 * f:g} % counts: {m}")
                images[m], _ = denoise_volume(low, m, model=models[m], **_kw(settings))
        for key, fit in CNN_VARIANTS.items():
            if key in methods:
                images[key], _ = denoise_volume(low, "cnn", model=models["cnn"], **fit, **_kw(settings))
        if "prior" in methods:
            p(0.45, f"seed {seed}, {100 * f:g} % counts: CNN-prior reconstruction")
            images["prior"] = reconstruct_with_prior(low_acq, ph.mumap, models["cnn"], outer=settings["prior_outer"],
                                                     start_iterations=it, subsets=sub, psf=True,
                                                     progress=p.sub(0.45, 0.85))
        p(0.85, f"seed {seed}, {100 * f:g} % counts: metrics")
        res = {k: image_metrics(v.array.astype(np.float64) * suv, ref, body, liver, lesions, ref_lesions, spacing)
               for k, v in images.items()}
        if "gaussian" in methods:
            targets = learned or [None]
            for m in targets:
                if m is None:
                    match = {"fwhm_mm": FALLBACK_FWHM_MM, "matched": None, "target_cov": None}
                    key = f"gaussian@{FALLBACK_FWHM_MM:g}mm"
                else:
                    match = match_noise_fwhm(low, liver, res[m]["liver_cov"])
                    key = f"gaussian@{m}"
                g = gaussian_filter(low, match["fwhm_mm"])
                res[key] = image_metrics(g.array.astype(np.float64) * suv, ref, body, liver, lesions, ref_lesions,
                                         spacing)
                res[key].update(fwhm_mm=match["fwhm_mm"], matched=match["matched"], target_cov=match["target_cov"])
                if m is not None and res[m]["psnr_db"] is not None and res[key]["psnr_db"] is not None:
                    res[m]["psnr_gain_db"] = res[m]["psnr_db"] - res[key]["psnr_db"]
        if f == inv_fraction:
            case["unit_invariance"] = {
                m: dict(unit_invariance(low, m, models[m], images[m], k=suv, **_kw(settings)), fraction=f)
                for m in NETWORK_METHODS if m in methods}
        case["fractions"][fk] = res
    progress(1.0, f"seed {seed}: done")
    return case


def _stats(values) -> dict:
    vals = [v for v in values if v is not None]
    return {"mean": float(np.mean(vals)) if vals else None,
            "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None),
            "per_case": [None if v is None else round(float(v), 5) for v in values]}


def summarise_wholebody(cases: list[dict], fractions) -> dict:
    """Per image key (osem, cnn, gan, prior, gaussian@M) and count level: mean/SD over cases of the image
    metrics; lesion biases pooled over every lesion of every case (mean, mean of |bias|, n). For every key but
    osem, ``lesion_suvmean_vs_osem_pct``: each lesion's SUVmean against the same lesion in the low-count OSEM
    (%), pooled — what the method itself does to a lesion, apart from the low-count image's own noise."""
    keys = list(dict.fromkeys(k for c in cases for fr in c["fractions"].values() for k in fr))
    out = {}
    for key in keys:
        out[key] = {}
        for f in fractions:
            fk = _fkey(f)
            per = [c["fractions"][fk][key] for c in cases if key in c["fractions"][fk]]
            if not per:
                continue
            entry = {m: _stats([p.get(m) for p in per])
                     for m in ("psnr_db", "ssim", "nrmse", "liver_cov", "liver_suvmean_bias_pct")}
            for extra in ("psnr_gain_db", "fwhm_mm"):
                if any(extra in p for p in per):
                    entry[extra] = _stats([p.get(extra) for p in per])
            for kind in BIAS_KINDS:
                b = [r[f"{kind}_bias_pct"] for p in per for r in p["lesions"] if r[f"{kind}_bias_pct"] is not None]
                entry[f"lesion_{kind}_bias_pct"] = {
                    "mean": float(np.mean(b)) if b else None, "mean_abs": float(np.mean(np.abs(b))) if b else None,
                    "sd": float(np.std(b, ddof=1)) if len(b) > 1 else None, "n": len(b)}
            if key != "osem":  # the method's own change of each lesion's SUVmean, against its low-count OSEM
                own = [100.0 * (r["suvmean"] / o["suvmean"] - 1.0) for c in cases if key in c["fractions"][fk]
                       for r, o in zip(c["fractions"][fk][key]["lesions"], c["fractions"][fk]["osem"]["lesions"])
                       if o["suvmean"]]
                entry["lesion_suvmean_vs_osem_pct"] = {
                    "mean": float(np.mean(own)) if own else None,
                    "sd": float(np.std(own, ddof=1)) if len(own) > 1 else None, "n": len(own)}
            out[key][fk] = entry
    return out


# ---------------------------------------------------------------------------------------------- NEMA part
def evaluate_nema(methods, models: dict, settings: dict, progress=None) -> dict:
    """NEMA image quality at ``settings['nema_fractions']`` count levels (see the module docstring)."""
    from ..denoise.apply import denoise_volume
    from ..denoise.prior import reconstruct_with_prior
    from ..filters import gaussian_filter
    from ..sim import DEFAULT_SCANNER, make_phantom, reconstruct, simulate_acquisition, thinned

    progress = as_progress(progress)
    t0 = time.time()
    it, sub = settings["iterations"], settings["subsets"]
    ph = make_phantom("nema", voxel_mm=settings["nema_voxel_mm"], supersample=settings["supersample"], mr=False)
    fractions = settings["nema_fractions"]
    R = settings["realisations"]
    seeds = [NEMA_SEED_BASE + r for r in range(R)]
    fwhms = settings["nema_fwhms_mm"] if "gaussian" in methods else (0.0,)
    raw = {_fkey(f): {} for f in fractions}
    for r, seed in enumerate(seeds):
        acq = simulate_acquisition(ph.activity, ph.mumap, DEFAULT_SCANNER, duration_s=NEMA_DURATION_S, seed=seed)
        for n, f in enumerate(fractions):
            step = (r * len(fractions) + n) / (R * len(fractions))
            p = progress.sub(step, step + 1.0 / (R * len(fractions)))
            p(0.0, f"NEMA realisation {r + 1}/{R}, {100 * f:g} % counts")
            low_acq = thinned(acq, f)
            osem = reconstruct(low_acq, ph.mumap, iterations=it, subsets=sub, psf=True)
            images = {f"gaussian@{w:g}mm": gaussian_filter(osem, w) for w in fwhms}
            for m in ("cnn", "gan"):
                if m in methods:
                    images[m], _ = denoise_volume(osem, m, model=models[m], **_kw(settings))
            if "prior" in methods:
                p(0.4, f"NEMA realisation {r + 1}/{R}, {100 * f:g} % counts: CNN-prior reconstruction")
                images["prior"] = reconstruct_with_prior(low_acq, ph.mumap, models["cnn"], outer=settings["prior_outer"],
                                                         start_iterations=it, subsets=sub, psf=True)
            for k, v in images.items():
                raw[_fkey(f)].setdefault(k, []).append(nema_image_quality(v, ph))
    results = {}
    for fk, per in raw.items():
        summary = {k: _nema_summary(v) for k, v in per.items()}
        curve = [dict(summary[f"gaussian@{w:g}mm"], fwhm_mm=w) for w in fwhms]
        entry = {"osem": summary.pop("gaussian@0mm"),
                 "gaussian_curve": curve if len(curve) > 1 else []}
        for k in list(summary):
            if k.startswith("gaussian@"):
                summary.pop(k)
        for m, s in summary.items():
            if len(curve) > 1:
                for name, v in s["spheres"].items():
                    v["gaussian_crc_at_same_bv"] = crc_at_bv(curve, name, v["bv"])
            entry[m] = s
        results[fk] = entry
    return {"fractions": list(fractions), "realisations": R, "noise_seeds": seeds,
            "duration_s_per_scan": NEMA_DURATION_S, "voxel_mm": settings["nema_voxel_mm"],
            "sphere_ratio": ph.info.get("sphere_ratio"), "gaussian_fwhms_mm": list(fwhms),
            "background_rois": {"positions_xy_mm": background_roi_centres()[0].tolist(),
                                "planes_mm_from_sphere_centres": list(NEMA_BACKGROUND_OFFSETS_MM),
                                "wall_distance_mm": 15.0, "sphere_clearance_mm": background_roi_centres()[1]},
            "results": results, "seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------------- SR part
def point_source_phantom(voxel_mm: float = 3.0, *, radius_mm: float = 100.0, length_mm: float = 48.0,
                         offset_mm=(0.0, 10.0), contrast: float = 100.0, background_bq_ml: float = 5300.0):
    """(activity Volume, μ-map Volume, point centre LPS, background mask): one hot voxel (``contrast`` x the
    background) ``offset_mm`` (x, y) from the axis in a warm water cylinder, centred on the grid."""
    from ..mu import hu_to_mu

    n = int(math.ceil(2 * (radius_mm + 16.0) / voxel_mm))
    n += n % 2
    nz = max(int(math.ceil(length_mm / voxel_mm)) + 4, 9)
    nz += 1 - nz % 2                                     # odd: a centre slice
    origin = (-(n - 1) * voxel_mm / 2.0, -(n - 1) * voxel_mm / 2.0, -(nz - 1) * voxel_mm / 2.0)
    x = origin[0] + np.arange(n) * voxel_mm
    z = origin[2] + np.arange(nz) * voxel_mm
    inside2d = (x[None, :] ** 2 + x[:, None] ** 2) <= radius_mm ** 2
    inside = inside2d[None] & (np.abs(z)[:, None, None] <= length_mm / 2.0)
    act = np.where(inside, background_bq_ml, 0.0).astype(np.float32)
    i = int(np.argmin(np.abs(x - offset_mm[0])))
    j = int(np.argmin(np.abs(x - offset_mm[1])))
    k = nz // 2
    act[k, j, i] = contrast * background_bq_ml
    mu = np.where(inside, float(hu_to_mu(np.float32(0.0))), 0.0).astype(np.float32)
    meta = {"suv_bw_factor": 1.0 / background_bq_ml, "phantom": "point source in a warm cylinder"}
    spacing = (voxel_mm,) * 3
    centre = (float(x[i]), float(x[j]), float(z[k]))
    zz, yy, xx = np.meshgrid(z, x, x, indexing="ij")
    r_axis = np.hypot(xx, yy)
    background = (inside & (r_axis <= radius_mm - 15.0) & (np.abs(zz) <= length_mm / 2.0 - 2 * voxel_mm)
                  & (np.sqrt((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (zz - centre[2]) ** 2) >= 30.0))
    return (Volume(act, spacing, origin, modality="PT", units="Bq/ml", metadata=meta),
            Volume(mu, spacing, origin, modality="OT", units="cm-1"), centre, background)


def evaluate_sr(models: dict, settings: dict, progress=None) -> dict:
    """Large-crystal OSEM (no PSF), its sr output and the small-crystal OSEM (PSF) on a point source and on
    the NEMA phantom (full count)."""
    from ..denoise.apply import denoise_volume
    from ..denoise.training import LARGE_CRYSTAL_GROUP
    from ..sim import DEFAULT_SCANNER, make_phantom, reconstruct, simulate_acquisition

    progress = as_progress(progress)
    t0 = time.time()
    it, sub = settings["iterations"], settings["subsets"]
    large = DEFAULT_SCANNER.with_(crystal_group=LARGE_CRYSTAL_GROUP)
    scanners = {"large_osem": (large, False), "small_osem": (DEFAULT_SCANNER, True)}

    def images(activity, mumap, duration, p):
        out = {}
        for n, (key, (scanner, psf)) in enumerate(scanners.items()):
            p(n / 3, f"{key}: acquisition and OSEM")
            acq = simulate_acquisition(activity, mumap, scanner, duration_s=duration, seed=SR_SEED)
            out[key] = reconstruct(acq, mumap, iterations=it, subsets=sub, psf=psf)
        p(2 / 3, "sr network")
        out["sr"], _ = denoise_volume(out["large_osem"], "sr", model=models["sr"], **_kw(settings))
        return {k: out[k] for k in ("large_osem", "sr", "small_osem")}

    act, mu, centre, bg = point_source_phantom(settings["point_voxel_mm"])
    point_images = images(act, mu, DURATION_S, progress.sub(0.0, 0.4))
    point = {}
    for key, img in point_images.items():
        level = float(img.array[bg].mean())
        point[key] = {"fwhm_mm": point_fwhm_mm(img, centre, background=level), "background_cov": cov(img.array, bg),
                      "background_bq_ml": level}
    ph = make_phantom("nema", voxel_mm=settings["nema_voxel_mm"], supersample=settings["supersample"], mr=False)
    nema_images = images(ph.activity, ph.mumap, NEMA_DURATION_S, progress.sub(0.4, 0.9))
    nema = {key: nema_image_quality(img, ph) for key, img in nema_images.items()}
    progress(0.9, "sr unit invariance")
    inv = unit_invariance(nema_images["large_osem"], "sr", models["sr"], nema_images["sr"],
                          k=float(ph.info["suv_bw_factor"]), **_kw(settings))
    return {"scanners": {"large_osem": {"crystal_mm": large.effective_crystal_mm, "psf_modelling": False,
                                        "resolution_fwhm_mm": round(large.resolution_fwhm_mm, 3)},
                         "small_osem": {"crystal_mm": DEFAULT_SCANNER.effective_crystal_mm, "psf_modelling": True,
                                        "resolution_fwhm_mm": round(DEFAULT_SCANNER.resolution_fwhm_mm, 3)}},
            "point_source": {"voxel_mm": settings["point_voxel_mm"], "centre_lps_mm": list(centre),
                             "contrast": 100.0, "duration_s": DURATION_S, "noise_seed": SR_SEED, "images": point},
            "nema": {"voxel_mm": settings["nema_voxel_mm"], "duration_s": NEMA_DURATION_S, "noise_seed": SR_SEED,
                     "images": {k: {"spheres": v["spheres"], "lung_residual_pct": v["lung_residual_pct"]}
                                for k, v in nema.items()}},
            "unit_invariance": inv, "seconds": round(time.time() - t0, 1)}


# ---------------------------------------------------------------------------------------------- targets
def _target(criterion: str, value, ok) -> dict:
    return {"criterion": criterion, "value": value, "pass": ok}


def _get(d, *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def check_targets(result: dict) -> dict:
    """Pass/fail of the issue's targets (None where the needed method or count level was not run)."""
    t = {}
    wb = _get(result, "wholebody", "summary") or {}
    if wb:
        at = "0.1"
        gain = _get(wb, "cnn", at, "psnr_gain_db", "mean")
        if "cnn" in wb:
            t["cnn:psnr_gain_10pct"] = _target("cnn PSNR - PSNR of the Gaussian at matched liver noise >= 1.5 dB "
                                               "at 10 % counts", gain, None if gain is None else gain >= 1.5)
        for m in ("cnn", "gan"):
            if m not in wb:
                continue
            for kind, limit in (("suvmean", 5.0), ("suvmax", 10.0)):
                v = _get(wb, m, at, f"lesion_{kind}_bias_pct", "mean")
                t[f"{m}:lesion_{kind}_bias_10pct"] = _target(
                    f"|mean lesion {'SUV' + kind[3:]} bias| <= {limit:g} % at 10 % counts "
                    f"(lesions >= {MIN_LESION_MM:g} mm, pooled)", v, None if v is None else abs(v) <= limit)
            for fk in result["wholebody"]["off_training_fractions"]:
                v = _get(wb, m, fk, "lesion_suvmean_bias_pct", "mean")
                t[f"{m}:off_training_suvmean_bias_{fk}"] = _target(
                    f"|mean lesion SUVmean bias| <= 5 % at {100 * float(fk):g} % counts (outside the training "
                    f"{100 * TRAINING_FRACTIONS[0]:g}-{100 * TRAINING_FRACTIONS[1]:g} %)", v,
                    None if v is None else abs(v) <= 5.0)
        if "cnn" in wb and "gan" in wb:
            g, c = _get(wb, "gan", at), _get(wb, "cnn", at)
            vals = None if not (g and c) else {
                "gan_suvmax_bias_pct": _get(g, "lesion_suvmax_bias_pct", "mean"),
                "cnn_suvmax_bias_pct": _get(c, "lesion_suvmax_bias_pct", "mean"),
                "gan_liver_cov": _get(g, "liver_cov", "mean"), "cnn_liver_cov": _get(c, "liver_cov", "mean")}
            ok = None
            if vals and None not in vals.values():
                ok = (abs(vals["gan_suvmax_bias_pct"]) < abs(vals["cnn_suvmax_bias_pct"])
                      and vals["gan_liver_cov"] <= 1.05 * vals["cnn_liver_cov"])
            t["gan:suvmax_bias_below_cnn_10pct"] = _target(
                "|gan SUVmax bias| < |cnn SUVmax bias| at equal or better noise (gan liver CoV <= 1.05 x cnn's), "
                "10 % counts", vals, ok)
    inv = _get(result, "wholebody", "unit_invariance") or {}
    for m, v in inv.items():
        t[f"{m}:unit_invariance"] = _target("k x input -> k x output within 1 % (k = SUV factor)",
                                            v["max_dev_pct_worst"], v["pass"])
    sr = result.get("sr")
    if sr:
        p = sr["point_source"]["images"]
        a, b = p["large_osem"]["fwhm_mm"]["mean_xy"], p["sr"]["fwhm_mm"]["mean_xy"]
        t["sr:point_fwhm"] = _target("sr point-source FWHM (mean of x, y) < large-crystal OSEM's",
                                     {"sr": b, "large_osem": a, "small_osem": p["small_osem"]["fwhm_mm"]["mean_xy"]},
                                     None if a is None or b is None else b < a)
        n = sr["nema"]["images"]
        for s in ("10mm", "13mm"):
            a, b = n["large_osem"]["spheres"][s]["crc"], n["sr"]["spheres"][s]["crc"]
            small = n["small_osem"]["spheres"][s]["crc"]
            t[f"sr:recovery_{s}"] = _target(f"sr CRC of the {s} sphere > large-crystal OSEM's",
                                            {"sr": b, "large_osem": a, "small_osem": small}, b > a)
        vals = {"sr_background_cov": p["sr"]["background_cov"],
                "large_background_cov": p["large_osem"]["background_cov"],
                "sr_bv_10mm": n["sr"]["spheres"]["10mm"]["bv"],
                "large_bv_10mm": n["large_osem"]["spheres"]["10mm"]["bv"]}
        t["sr:noise"] = _target("sr noise <= large-crystal OSEM's (point-phantom background CoV and NEMA BV, 10 mm)",
                                vals, vals["sr_background_cov"] <= vals["large_background_cov"]
                                and vals["sr_bv_10mm"] <= vals["large_bv_10mm"])
        t["sr:unit_invariance"] = _target("k x input -> k x output within 1 % (k = SUV factor)",
                                          sr["unit_invariance"]["max_dev_pct"], sr["unit_invariance"]["pass"])
    return t


# ---------------------------------------------------------------------------------------------- figure
def write_figure(path, result: dict) -> None:
    """CRC vs BV per sphere: rows = NEMA count levels (+ the super-resolution comparison), columns = spheres;
    the Gaussian post-filter curve (FWHM labelled) and one marker per method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ..io import atomic_path

    nema, sr = result.get("nema"), result.get("sr")
    rows = []
    if nema:
        rows += [("nema", fk) for fk in nema["results"]]
    if sr:
        rows.append(("sr", None))
    if not rows:
        return
    spheres = list((nema["results"][next(iter(nema["results"]))]["osem"] if nema
                    else sr["nema"]["images"]["large_osem"])["spheres"])
    fig = Figure(figsize=(2.9 * len(spheres), 2.7 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    axes = np.atleast_2d(fig.subplots(len(rows), len(spheres), squeeze=False))
    style = {"osem": ("k", "o"), "cnn": ("tab:blue", "s"), "gan": ("tab:red", "^"), "prior": ("tab:green", "D"),
             "large_osem": ("tab:gray", "o"), "sr": ("tab:purple", "*"), "small_osem": ("k", "P")}
    for r, (kind, fk) in enumerate(rows):
        for c, s in enumerate(spheres):
            ax = axes[r, c]
            if kind == "nema":
                entry = nema["results"][fk]
                curve = entry.get("gaussian_curve") or []
                if curve:
                    bv = [100 * g["spheres"][s]["bv"] for g in curve]
                    crc = [100 * g["spheres"][s]["crc"] for g in curve]
                    ax.plot(bv, crc, "-", color="tab:orange", lw=1, label="OSEM + Gaussian")
                    for g, x, y in zip(curve, bv, crc):
                        ax.annotate(f"{g['fwhm_mm']:g}", (x, y), fontsize=6, color="tab:orange")
                points = {k: v for k, v in entry.items() if k != "gaussian_curve"}
                title = f"{s}, {100 * float(fk):g} % counts"
            else:
                points = sr["nema"]["images"]
                title = f"{s}, super-resolution (100 %)"
            for k, v in points.items():
                colour, marker = style.get(k, ("tab:brown", "x"))
                ax.plot(100 * v["spheres"][s]["bv"], 100 * v["spheres"][s]["crc"], marker, color=colour, label=k,
                        ms=6)
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=7)
            if r == len(rows) - 1:
                ax.set_xlabel("background variability (%)", fontsize=7)
            if c == 0:
                ax.set_ylabel("contrast recovery (%)", fontsize=7)
            if c == len(spheres) - 1:
                ax.legend(fontsize=6, loc="best")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(str(tmp), format="png")


# ---------------------------------------------------------------------------------------------- run
def _provenance(m) -> dict:
    return {"name": m.name, "version": m.version, "sha256": m.sha256, "folder": str(m.folder) if m.folder else None,
            "preset": m.card.get("training", {}).get("preset")}


def evaluate_denoise(*, cases: int = 10, seed_start: int = DEFAULT_SEED_START, methods=DEFAULT_METHODS,
                     fractions=None, model=None, gan_model=None, sr_model=None, realisations: int | None = None,
                     iterations: int | None = None, subsets: int | None = None, quick: bool = False,
                     figure=None, command: str | None = None, progress=None) -> dict:
    """Run the evaluation; returns the JSON-ready result (see the module docstring and the README)."""
    from ..denoise.apply import _model

    progress = as_progress(progress)
    t0 = time.time()
    methods = list(dict.fromkeys(methods))
    for m in methods:
        if m not in METHODS:
            raise NMAIError(f"unknown method {m!r}; use {', '.join(METHODS)}")
    if not methods:
        raise NMAIError("no method to evaluate; give --methods cnn,gan,gaussian,prior,sr")
    if cases < 1:
        raise NMAIError("--cases must be at least 1")
    if seed_start < 0 or seed_start + cases > TRAINING_SEEDS_FROM:
        raise NMAIError(f"evaluation seeds must stay below {TRAINING_SEEDS_FROM} (the training phantoms use seeds "
                        f"20000 and up, and seeds {TRAINING_SEEDS_FROM}+ are kept for training); choose --seed-start "
                        "and --cases accordingly")
    base = QUICK if quick else FULL
    fractions = sorted(set(float(f) for f in (fractions or base.get("fractions", DEFAULT_FRACTIONS))))
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise NMAIError(f"count fractions must be in (0, 1], got {f:g}")
    settings = dict(base, quick=bool(quick), iterations=iterations or base["iterations"],
                    subsets=subsets or base["subsets"], realisations=realisations or base["realisations"])
    if settings["realisations"] < 1:
        raise NMAIError("--realisations must be at least 1")
    needs = {"cnn": {"cnn", "prior", *CNN_VARIANTS}, "gan": {"gan"}, "sr": {"sr"}}
    refs = {"cnn": model, "gan": gan_model, "sr": sr_model}
    models = {k: _model(k, refs[k]) for k, uses in needs.items() if uses & set(methods)}
    provenance = {k: _provenance(m) for k, m in models.items()}
    image_methods = [m for m in methods if m != "sr"]
    result = {"command": command, "quick": bool(quick),
              "note": ("QUICK MODE (tests only): 8 mm voxels, a cropped phantom, 1 OSEM iteration, 1 case — these "
                       "numbers are NOT the evaluation's") if quick else None,
              "methods": methods, "models": provenance}
    spans = {"wholebody": (0.0, 0.7), "nema": (0.7, 0.88), "sr": (0.88, 0.98)}
    if not image_methods:
        spans["sr"] = (0.0, 0.98)
    if image_methods:
        tw = time.time()
        seeds = list(range(seed_start, seed_start + cases))
        a, b = spans["wholebody"]
        per_case = []
        for i, seed in enumerate(seeds):
            per_case.append(evaluate_case(seed, image_methods, models, fractions, settings,
                                          progress.sub(a + (b - a) * i / cases, a + (b - a) * (i + 1) / cases),
                                          invariance=(i == 0)))
        inv = {}
        for c in per_case:
            for m, v in c.get("unit_invariance", {}).items():
                inv[m] = {"max_dev_pct_worst": v["max_dev_pct"], "mean_ratio": v["mean_ratio"], "k": v["k"],
                          "fraction": v["fraction"], "seed": c["seed"], "pass": v["pass"]}
        lo, hi = TRAINING_FRACTIONS
        result["wholebody"] = {
            "cases": cases, "seeds": seeds, "fractions": fractions, "training_fractions": list(TRAINING_FRACTIONS),
            "off_training_fractions": [_fkey(f) for f in fractions if f <= lo / 2 or f >= 2 * hi],
            "summary": summarise_wholebody(per_case, fractions), "unit_invariance": inv,
            "per_case": per_case, "seconds": round(time.time() - tw, 1)}
        a, b = spans["nema"]
        result["nema"] = evaluate_nema(image_methods, models, settings, progress.sub(a, b))
    if "sr" in methods:
        a, b = spans["sr"]
        result["sr"] = evaluate_sr(models, settings, progress.sub(a, b))
    result["targets"] = check_targets(result)
    result["published"] = PUBLISHED
    result["settings"] = {
        "phantom": "wholebody", "voxel_mm": settings["voxel_mm"], "supersample": settings["supersample"],
        "arms": "beside the body when seed % 3 == 0", "lesions_per_phantom": settings["lesions"],
        "lesions_scored": f">= {MIN_LESION_MM:g} mm nominal diameter",
        "scanner": "default small-crystal (4 mm) scanner", "duration_s": DURATION_S,
        "acquisition": "one Poisson full-count acquisition per case (seed = case seed), thinned (list-mode "
                       "subsample) to each count fraction",
        "reconstruction": {"algorithm": "OSEM", "iterations": settings["iterations"], "subsets": settings["subsets"],
                           "psf": True},
        "prior": {"start_iterations": settings["iterations"], "outer_iterations": settings["prior_outer"],
                  "subsets": settings["subsets"], "weight": "default"},
        "reference": "full-count OSEM of the same acquisition", "units": "SUVbw",
        "noise": "liver CoV (liver eroded by 1 voxel)",
        "matched_noise_gaussian": f"FWHM in {FWHM_SEARCH_MM[0]:g}-{FWHM_SEARCH_MM[1]:g} mm giving the method's "
                                  "liver CoV (bisection)",
        "seed_start": seed_start, "training_seeds": ">= 20000 (validation 25000+)",
    }
    if figure:
        progress(0.985, "drawing the figure")
        write_figure(figure, result)
    result["duration_s"] = round(time.time() - t0, 1)
    progress(1.0, "evaluation done")
    return clean(result)
