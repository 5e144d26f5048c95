"""Hot-spot / lesion candidates for a second look, with physiological uptake suppressed by a CNN.

1. **Candidates** (rules, high sensitivity): the image is smoothed (Gaussian, 1 voxel σ), its local
   background is a grey-level opening with a box of ``BACKGROUND_MM`` (removes anything smaller than
   ~40 mm), and a voxel is a hot-spot voxel when it is at least ``MIN_RATIO`` × its background,
   ``MIN_SIGMA`` noise standard deviations above it and twice the body's median. Each local maximum of
   hot-spot voxels (``PEAK_SEPARATION_MM`` apart) is a candidate, described by the voxels at ≥ 50 % of its
   maximum contiguous with it.
2. **Scoring** (CNN): a MONAI/NMAI small 3-D CNN sees a 24³-voxel patch (4 mm grid, 96 mm) around each
   candidate's maximum, normalised by the candidate's maximum (shape) and by the body's mean (level), and
   gives the probability that it is a lesion rather than physiological uptake (brain, myocardium, kidneys,
   bladder, ...) or noise. Without a model every candidate gets ``probability`` null.

Per candidate: ``position_lps`` (the maximum's centre, DICOM patient mm), ``suv_max``, ``suv_peak`` (1 ml
sphere), ``suv_mean`` and ``volume_ml`` of the 50 %-of-max region, ``tlg`` (= SUVmean × volume in ml),
``probability``. Values are in SUV when the image is in SUV; an image in Bq/ml is converted with its SUV
factor, and without one the values stay in Bq/ml and ``units`` says so.
"""

from __future__ import annotations

import numpy as np

from ..errors import NMAIError
from ..volume import Volume

SMOOTH_SIGMA_VOX = 1.0
BACKGROUND_MM = 40.0
MIN_RATIO = 1.5
MIN_SIGMA = 4.0
PATCH = 24
PATCH_MM = 4.0
MAX_CANDIDATES = 200
MIN_BODY_MULTIPLE = 2.0      # a hot spot is at least twice the body's median uptake
PEAK_SEPARATION_MM = 12.0


def _noise_sigma(image: np.ndarray, smooth: np.ndarray, body: np.ndarray) -> float:
    r = (image - smooth)[body]
    return float(1.4826 * np.median(np.abs(r - np.median(r)))) if r.size else 0.0


def find_candidates(image: np.ndarray, spacing, *, min_ratio: float = MIN_RATIO, min_sigma: float = MIN_SIGMA,
                    max_candidates: int = MAX_CANDIDATES) -> list[dict]:
    """Hot spots of ``image`` [k, j, i] (any positive units): [{max_index (k, j, i), contrast}], most
    contrasted first."""
    from scipy import ndimage

    img = np.asarray(image, np.float32)
    smooth = ndimage.gaussian_filter(img, SMOOTH_SIGMA_VOX)
    size = [max(3, int(round(BACKGROUND_MM / s)) | 1) for s in (spacing[2], spacing[1], spacing[0])]
    background = ndimage.grey_opening(smooth, size=size)
    body = smooth > 0.05 * float(np.percentile(smooth, 99.5))
    sigma = max(_noise_sigma(img, smooth, body), 1e-6 * float(smooth.max()))
    hot = body & (smooth >= min_ratio * background) & (smooth - background >= min_sigma * sigma)
    hot &= smooth >= MIN_BODY_MULTIPLE * float(np.median(smooth[body]))
    # one candidate per local maximum (≥ PEAK_SEPARATION_MM apart), so touching lesions stay apart
    sep = [max(3, int(round(PEAK_SEPARATION_MM / s)) | 1) for s in (spacing[2], spacing[1], spacing[0])]
    peaks = np.argwhere(hot & (smooth == ndimage.maximum_filter(smooth, size=sep)))
    out = []
    for k, j, i in peaks:
        # the raw maximum next to the smoothed peak is the SUVmax voxel
        box = tuple(slice(max(0, c - 1), c + 2) for c in (k, j, i))
        arg = np.unravel_index(int(np.argmax(img[box])), img[box].shape)
        index = tuple(int(a + b.start) for a, b in zip(arg, box))
        out.append({"max_index": index, "contrast": float(smooth[k, j, i] / max(background[k, j, i], 1e-12))})
    out.sort(key=lambda c: -c["contrast"])
    return out[:max_candidates]


def region_of(image: np.ndarray, spacing, index) -> tuple[tuple, np.ndarray]:
    """(box, mask in the box): voxels ≥ 50 % of ``image[index]`` connected to it, within 30 mm."""
    from scipy import ndimage

    vmax = float(image[tuple(index)])
    pad = [int(np.ceil(30.0 / s)) for s in (spacing[2], spacing[1], spacing[0])]
    box = tuple(slice(max(0, c - p), min(n, c + p + 1)) for c, p, n in zip(index, pad, image.shape))
    above, _ = ndimage.label(image[box] >= 0.5 * vmax)
    centre = tuple(c - b.start for c, b in zip(index, box))
    return box, above == above[centre]


def label_map(image: np.ndarray, spacing, lesions: list[dict]) -> np.ndarray:
    """uint16 [k, j, i]: candidate n (1-based, report order) on its 50 %-of-max region."""
    out = np.zeros(image.shape, np.uint16)
    for n, le in reversed(list(enumerate(lesions, start=1))):  # the most probable wins an overlap
        box, mask = region_of(image, spacing, le["index_kji"])
        out[box][mask] = n
    return out


def describe(image: np.ndarray, spacing, cand: dict) -> dict:
    """SUVmax, SUVpeak, SUVmean/volume/TLG of the 50 %-of-max region connected to the maximum."""
    from ..denoise.metrics import region_stats

    vmax = float(image[cand["max_index"]])
    box, region = region_of(image, spacing, cand["max_index"])
    stats = region_stats(image[box], region, spacing)
    return {"suv_max": vmax, "suv_peak": stats["peak"], "suv_mean": stats["mean"],
            "volume_ml": stats["volume_ml"], "tlg": stats["mean"] * stats["volume_ml"]}


def patch(image: np.ndarray, spacing, index, body_mean: float, vmax: float) -> np.ndarray:
    """(2, 24, 24, 24) patch on a 4 mm grid centred on ``index``: image / vmax and image / body mean."""
    from scipy import ndimage

    centre = np.asarray(index, float)
    step = np.array([PATCH_MM / spacing[2], PATCH_MM / spacing[1], PATCH_MM / spacing[0]])
    offs = (np.arange(PATCH) - (PATCH - 1) / 2.0)
    grid = np.meshgrid(*[centre[a] + offs * step[a] for a in range(3)], indexing="ij")
    p = ndimage.map_coordinates(image, grid, order=1, mode="constant", cval=0.0).astype(np.float32)
    return np.stack([p / max(vmax, 1e-12), p / max(body_mean, 1e-12)])


def detect_lesions(pet: Volume, model=None, *, threshold: float = 0.5, progress=None) -> dict:
    """Lesion candidates of a PET Volume; ``model`` (folder/name/LoadedModel or None) scores them.

    Returns {"units", "lesions": [...], "candidates_considered", "model"}; ``lesions`` are the candidates
    with probability ≥ ``threshold`` (all of them, unscored, without a model), most probable first.
    """
    import torch

    from ..progress import as_progress
    from ..validate import check_pet

    progress = as_progress(progress)
    check_pet(pet, "PET")
    vol, units = pet, pet.units
    if units == "Bq/ml" and pet.metadata.get("suv_bw_factor"):
        vol, units = pet.to_units("SUVbw"), "SUVbw"
    image = vol.array.astype(np.float32)
    progress(0.1, "finding hot spots")
    cands = find_candidates(image, vol.spacing)
    body = image > 0.05 * float(np.percentile(image, 99.5))
    body_mean = float(image[body].mean()) if body.any() else 1.0
    loaded = None
    if model is not None:
        from ..models import load_model
        from ..models.loading import LoadedModel

        loaded = model if isinstance(model, LoadedModel) else load_model(model, device="cpu")
        kw = loaded.card["network"]["kwargs"]
        if loaded.task != "triage" or (kw.get("spatial_dims"), kw.get("in_channels"), kw.get("out_channels")) != (3, 2, 1):
            raise NMAIError(f"model '{loaded.name}' is not a lesion-candidate scorer (triage-lesions); check "
                            "--lesion-model")
    probs = [None] * len(cands)
    if loaded is not None and cands:
        progress(0.5, f"scoring {len(cands)} candidates")
        x = np.stack([patch(image, vol.spacing, c["max_index"], body_mean, float(image[c["max_index"]]))
                      for c in cands])
        with torch.no_grad():
            logits = loaded.module(torch.from_numpy(x)).reshape(-1)
        probs = [float(p) for p in torch.sigmoid(logits)]
    lesions = []
    for c, p in zip(cands, probs):
        if p is not None and p < threshold:
            continue
        d = describe(image, vol.spacing, c)
        ijk1 = np.array([*c["max_index"][::-1], 1.0])
        lesions.append({"position_lps": [round(float(v), 2) for v in (vol.index_to_lps() @ ijk1)[:3]],
                        "index_kji": list(c["max_index"]), **{k: round(v, 4) for k, v in d.items()},
                        "contrast": round(c["contrast"], 3), "probability": None if p is None else round(p, 4)})
    lesions.sort(key=lambda le: -(le["probability"] if le["probability"] is not None else le["contrast"]))
    progress(1.0, f"{len(lesions)} lesion candidate(s)")
    return {"units": units, "lesions": lesions, "candidates_considered": len(cands),
            "model": None if loaded is None else {"name": loaded.name, "sha256": loaded.sha256}}
