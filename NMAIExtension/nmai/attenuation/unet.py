"""MR -> μ-map (cm⁻¹ at 511 keV) with the attenuation U-Nets (``attenuation-dixon-unet``, ``attenuation-t1-unet``).

``unet_mumap({"water": w, "fat": f})`` or ``unet_mumap({"t1": t1})`` returns the μ-map on the first input's
grid (exactly its shape, spacing, origin and direction) with the model's name, version and sha256 in its
metadata. Steps:

1. checks: each input must be an MR image (PET, CT, μ-maps, segmentations refused; values that look like
   Hounsfield units refused), finite, 3-D; the other inputs are resampled onto the first one's grid
   (linear) and must cover the same body (:func:`check_coverage`);
2. **reorientation**: the networks were trained on axial slices of arrays in LPS orientation (i -> L,
   j -> P, k -> S) at 4 mm. The inputs are resampled onto the *model grid*: axis-aligned with LPS, the
   card's voxel size, covering the first input's field of view (:func:`model_grid`). A volume stored
   RAS-flipped, with k pointing inferior, permuted (sagittal/coronal stacks) or oblique therefore reaches
   the network the way it was trained; an input already in LPS at 4 mm is used as it is (no
   interpolation). Downsampling is anti-aliased (Gaussian, FWHM sqrt(new² - old²) per axis);
3. normalisation exactly as in training: z-score in the body per channel, statistics over the model grid,
   then in-plane padding to the training patch with each channel's normalised air value (MONAI's own
   padding would pad with the body mean);
4. slice-wise 2.5-D (or 3-D) sliding-window inference (:func:`nmai.models.sliding.sliding_predict`) with
   progress and cancel, GPU when present; a 2-D network sees each whole slice in one window when the slice
   is less than twice the training patch (:func:`window_size`);
5. μ = output x 0.1 (the card's linear output normalisation), clipped to [0, 0.3] cm⁻¹ (cortical bone is
   about 0.17; voxels clipped above are counted in a warning);
6. soft tissue smoothed on the model grid (:func:`smooth_soft_tissue`; ``soft_smoothing=False`` skips it),
   then resampled back onto the first input's grid (linear; outside the model grid μ = 0).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import NMAIError
from ..progress import as_progress
from ..validate import check_mr
from ..volume import Volume

#: input kind -> the names of its images, in network order
INPUT_KEYS = {"dixon": ("water", "fat"), "t1": ("t1",)}
#: μ (cm⁻¹) is clipped to [0, MU_MAX]: the densest cortical bone is about 0.17 at 511 keV
MU_MAX = 0.3
#: :func:`smooth_soft_tissue`: Gaussian σ (mm), μ above which a voxel is a bone core (cm⁻¹), μ below which a
#: voxel is fat, lung or air (cm⁻¹); chosen on validation phantoms (seeds 9000-9005), see the README
SOFT_SMOOTHING = {"sigma_mm": 6.0, "bone_core_cm-1": 0.12, "fat_below_cm-1": 0.095}
#: input kind -> default built-in model
DEFAULT_MODELS = {"dixon": "attenuation-dixon-unet", "t1": "attenuation-t1-unet"}


# ---------------------------------------------------------------------------------------------- inputs
def input_kind(inputs: dict) -> str:
    """``"dixon"`` for {water, fat}, ``"t1"`` for {t1}; anything else is an error naming what is missing."""
    keys = {k for k, v in inputs.items() if v is not None}
    for kind, names in INPUT_KEYS.items():
        if keys == set(names):
            return kind
    if keys == {"water"}:
        raise NMAIError("the Dixon fat image is missing: the Dixon U-Net needs both water and fat images; "
                        "with only one MR image, use a T1-weighted image and the T1 model (--t1)")
    if keys == {"fat"}:
        raise NMAIError("the Dixon water image is missing: the Dixon U-Net needs both water and fat images")
    raise NMAIError(f"MR inputs must be water + fat (Dixon) or t1, got {', '.join(sorted(keys)) or 'none'}")


def check_mr_input(volume: Volume, name: str) -> Volume:
    """An MR magnitude image: :func:`nmai.validate.check_mr` plus a look at the values (a CT in HU saved
    without a sidecar says nothing about its modality, but its air is at -1000)."""
    check_mr(volume, name)
    data = volume.array
    low = float(data.min())
    if low < -100.0 and float(np.mean(data < -500.0)) > 0.01:
        raise NMAIError(f"{name}: values go down to {low:.0f} and {np.mean(data < -500.0):.0%} of the voxels are "
                        "below -500 — this looks like a CT in Hounsfield units, not an MR image; select the MR "
                        "series (or use --ct for a CT)")
    return volume


def as_mr(volume: Volume) -> Volume:
    """The same data declared MR in arbitrary units (a bare NIfTI reads as OT, units '1')."""
    if volume.modality == "MR" and volume.units == "a.u.":
        return volume
    return volume.derive(volume.array, modality="MR", units="a.u.")


def check_coverage(first: Volume, other: Volume, names=("water", "fat"), coverage: np.ndarray | None = None,
                   minimum: float = 0.9) -> None:
    """Refuse ``other`` when it does not image the body seen in ``first`` (both on ``first``'s grid).

    ``coverage``: where ``other``'s field of view lies on ``first``'s grid (after resampling); without it
    (same grid) an axial slice of ``other`` that is all zero where ``first`` shows body counts as missing.
    """
    a = np.abs(first.array.astype(np.float32))
    scale = float(np.percentile(a, 99.5))
    body = a > 0.1 * scale if scale > 0 else np.zeros(a.shape, bool)
    if not body.any():
        return
    if coverage is not None:
        covered = float(np.mean(coverage[body]))
    else:
        with_body = body.any(axis=(1, 2))
        has_signal = np.any(other.array != 0, axis=(1, 2))
        covered = float(np.mean(has_signal[with_body]))
    if covered < minimum:
        raise NMAIError(f"the {names[1]} image covers only {covered:.0%} of the body seen in the {names[0]} "
                        "image; use images of the same acquisition (same body coverage)")


def prepare_inputs(inputs: dict, progress=None) -> tuple[str, list[Volume]]:
    """Check the MR inputs and resample them onto the first one's grid -> (kind, volumes in network order)."""
    from ..resample import resample_like

    progress = as_progress(progress)
    kind = input_kind(inputs)
    names = INPUT_KEYS[kind]
    volumes = [as_mr(check_mr_input(inputs[n], n)) for n in names]
    first = volumes[0]
    out = [first]
    for name, v in zip(names[1:], volumes[1:]):
        if v.same_grid(first, tol=1e-3):
            check_coverage(first, v, (names[0], name))
            out.append(v)
            continue
        progress(0.5, f"resampling the {name} image onto the {names[0]} image's grid")
        fov = resample_like(v.derive(np.ones(v.shape, np.uint8), units="label"), first, interpolation="nearest")
        moved = resample_like(v, first)
        check_coverage(first, moved, (names[0], name), coverage=fov.array > 0)
        out.append(moved)
    return kind, out


# ---------------------------------------------------------------------------------------------- models
def missing_model_message(name: str, kind: str) -> str:
    return (f"the MR -> μ-map model '{name}' is not installed. Make it with `nmai train attenuation --inputs "
            f"{kind} --preset shipped --out MODELS` and pass `--model MODELS/{DEFAULT_MODELS[kind]}` (or register "
            "it with --register), or reinstall the extension"
            + ("; or use --method dixon4" if kind == "dixon" else ""))


def model_installed(kind: str, model=None) -> bool:
    """True when ``model`` (default: the built-in model for ``kind``) can be found (not loaded)."""
    from ..models import resolve_model

    try:
        resolve_model(model or DEFAULT_MODELS[kind])
    except NMAIError:
        return False
    return True


def load_attenuation_model(kind: str, model=None, device=None):
    """The :class:`~nmai.models.LoadedModel` for ``kind`` (``model``: name, folder path or LoadedModel)."""
    from ..models import LoadedModel, ModelFileError, load_model, resolve_model

    if isinstance(model, LoadedModel):
        loaded = model
    else:
        name = model or DEFAULT_MODELS[kind]
        try:
            resolve_model(name)
        except ModelFileError:
            raise
        except NMAIError as exc:
            if model is None or str(model) in DEFAULT_MODELS.values():
                raise NMAIError(missing_model_message(str(name), kind)) from None
            raise NMAIError(f"{exc}; the MR -> μ-map models are made by `nmai train attenuation --inputs "
                            f"{kind}`") from None
        loaded = load_model(name, device)
    fmt = loaded.data_format
    if loaded.task != "attenuation":
        raise NMAIError(f"model '{loaded.name}' is a {loaded.task} model, not an attenuation (MR -> μ-map) model")
    wanted = tuple(fmt["inputs"])
    if wanted != INPUT_KEYS[kind]:
        given = " + ".join(INPUT_KEYS[kind])
        raise NMAIError(f"model '{loaded.name}' takes {' + '.join(wanted)} images, but {given} were given; "
                        f"use the {'T1' if wanted == ('t1',) else 'Dixon'} inputs or another model")
    outputs = [(n, e) for n, e in fmt["outputs"].items() if e["units"] == "cm-1"]
    if len(outputs) != 1 or outputs[0][1]["channels"] != 1 or len(fmt["outputs"]) != 1:
        raise NMAIError(f"model '{loaded.name}' does not have one μ-map output in cm-1; it is not an NMAI "
                        "attenuation model")
    if fmt["spacing_mm"] is None:
        raise NMAIError(f"model '{loaded.name}' records no training voxel size (spacing_mm); re-save its card")
    return loaded


# ---------------------------------------------------------------------------------------------- geometry
def model_grid(reference: Volume, spacing_mm) -> Volume:
    """An empty LPS-aligned Volume (identity direction) with voxel ``spacing_mm`` covering ``reference``.

    The grid spans the bounding box (in LPS) of ``reference``'s voxels and is centred on it, so an input
    already LPS-aligned at ``spacing_mm`` gets back exactly its own grid, and flipped or permuted copies of
    the same volume get exactly the same grid.
    """
    spacing = np.asarray([float(s) for s in spacing_mm])
    n = np.asarray(reference.shape[::-1], float)
    corners = np.array([[a, b, c] for a in (-0.5, n[0] - 0.5) for b in (-0.5, n[1] - 0.5)
                        for c in (-0.5, n[2] - 0.5)])
    m = reference.index_to_lps()
    lps = corners @ m[:3, :3].T + m[:3, 3]
    lo, hi = lps.min(axis=0), lps.max(axis=0)
    size = np.maximum(1, np.round((hi - lo) / spacing - 1e-6)).astype(int)
    origin = (lo + hi) / 2.0 - (size - 1) * spacing / 2.0
    return Volume(np.zeros(size[::-1], np.uint8), tuple(spacing), tuple(origin), np.eye(3), modality="OT",
                  units="label")


def to_grid(volume: Volume, grid: Volume, *, antialias: bool = True) -> np.ndarray:
    """``volume`` resampled onto ``grid`` (linear, 0 outside), smoothed first when its voxels are smaller."""
    import SimpleITK as sitk

    from ..io import to_sitk

    if volume.same_grid(grid, tol=1e-4):
        return volume.array.astype(np.float32)
    image = to_sitk(volume.derive(volume.array.astype(np.float32)))
    old, new = np.asarray(volume.spacing), np.asarray(grid.spacing)
    if antialias:
        # voxel sizes are compared along the input's axes (the model grid is isotropic in practice)
        target = np.full(3, float(new.max())) if np.allclose(new, new[0]) else new
        variance = np.maximum(target ** 2 - old ** 2, 0.0) / (8 * math.log(2))
        if np.any(variance > 0):
            image = sitk.DiscreteGaussian(image, [float(v) for v in variance], 32, 0.01, True)
    out = sitk.Resample(image, to_sitk(grid), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def window_size(shape_kji, roi, dims: int, multiple: int = 16) -> list[int]:
    """The sliding window: the training patch, or for a 2-D network a whole slice (rounded up to
    ``multiple``) when the slice is less than twice the patch — a U-Net is fully convolutional, and one
    window per slice is several times faster than 2 x 2 overlapping windows of a slice just over the patch."""
    roi = [int(r) for r in roi]
    if dims != 2:
        return roi
    return [max(r, -(-int(n) // multiple) * multiple) if n <= 2 * r else r for r, n in zip(roi, shape_kji[1:])]


def _pad_to_roi(x: np.ndarray, air: list[float], roi, dims: int):
    """Pad (C, Z, Y, X) to at least ``roi`` on the network's axes with each channel's air value."""
    axes = [2, 3] if dims == 2 else [1, 2, 3]
    pads = [(0, 0)] * 4
    for axis, r in zip(axes, roi):
        extra = max(0, int(r) - x.shape[axis])
        pads[axis] = (extra // 2, extra - extra // 2)
    if not any(p != (0, 0) for p in pads):
        return x, pads
    return np.stack([np.pad(c, pads[1:], constant_values=v) for c, v in zip(x, air)]), pads


# ---------------------------------------------------------------------------------------------- prediction
def smooth_soft_tissue(mu: np.ndarray, spacing_ijk, *, sigma_mm: float = SOFT_SMOOTHING["sigma_mm"],
                       bone_core: float = SOFT_SMOOTHING["bone_core_cm-1"],
                       fat_below: float = SOFT_SMOOTHING["fat_below_cm-1"]) -> np.ndarray:
    """``mu`` (cm⁻¹, array order k, j, i) with soft tissue replaced by its Gaussian-weighted local mean.

    The networks' μ in soft tissue carries voxel noise from the MR (SD 0.004 cm⁻¹, 4 %, in soft tissue far from
    bone on a validation phantom) where the true μ is nearly uniform; bone starts only 0.004 cm⁻¹ above soft
    tissue, so the noise's upper tail reads as bone (v0.3: 87 % of the voxels predicted 0.105–0.110 were soft
    tissue). Voxels below ``fat_below`` (fat, lung, air), bone cores (μ > ``bone_core``) and their 6-neighbours
    keep their values; every other voxel becomes the Gaussian-weighted (σ ``sigma_mm``) mean of the other such
    voxels (normalised convolution), so soft tissue is averaged with soft tissue only and its mass is kept.
    """
    from scipy.ndimage import binary_dilation, gaussian_filter

    keep = binary_dilation(mu > bone_core) | (mu < fat_below)
    weight = (~keep).astype(np.float32)
    sigma = [sigma_mm / float(s) for s in np.asarray(spacing_ijk, dtype=float)[::-1]]
    mean = gaussian_filter(mu * weight, sigma) / np.maximum(gaussian_filter(weight, sigma), 1e-6)
    return np.where(keep, mu, mean).astype(np.float32)


def unet_mumap(inputs: dict, *, model=None, progress=None, device=None, overlap: float = 0.25,
               batch: int | None = None, soft_smoothing: bool = True) -> Volume:
    """μ-map (cm⁻¹) from MR ``inputs`` ({"water", "fat"} or {"t1"}: Volumes) on the first input's grid.

    ``model``: a built-in name, a model folder path, or a loaded model; default the built-in model for the
    inputs (``attenuation-dixon-unet`` / ``attenuation-t1-unet``). ``batch``: windows (slices) per network
    call, default 8 for a 2-D network (per-call overhead dominates small slices on a CPU), 1 for 3-D.
    ``soft_smoothing``: smooth the network's soft tissue (:func:`smooth_soft_tissue`; on by default).
    """
    from ..models.normalisation import compute_stats, denormalise, normalise
    from ..models.sliding import sliding_predict, torch_threads
    from ..resample import resample_like

    progress = as_progress(progress)
    progress(0.0, "checking the MR images")
    kind, volumes = prepare_inputs(inputs, progress.sub(0.0, 0.05))
    loaded = load_attenuation_model(kind, model, device)
    fmt = loaded.data_format
    first = volumes[0]
    grid = model_grid(first, fmt["spacing_mm"])
    reoriented = not np.allclose(first.direction, np.eye(3), atol=1e-6)
    progress(0.06, "reorienting to LPS and resampling to the model's grid" if reoriented
             else "resampling to the model's grid")
    raw = [to_grid(v, grid) for v in volumes]
    x, air = [], []
    for (name, entry), channel in zip(fmt["inputs"].items(), raw):
        spec = entry["normalisation"]
        stats = compute_stats(channel, spec, name)
        x.append(normalise(channel, spec, stats))
        air.append(float(normalise(np.zeros(1, np.float32), spec, stats)[0]))
    del raw
    roi = window_size(grid.shape, fmt["roi_size"], fmt["dims"])
    x, pads = _pad_to_roi(np.stack(x), air, roi, fmt["dims"])
    if not np.isfinite(x).all():  # pragma: no cover - inputs are checked; guards the normalisation
        raise NMAIError("normalised MR inputs are not finite; check the images")
    from ..models.loading import pick_device

    with torch_threads(None):
        y, used = sliding_predict(loaded.module, x, dims=fmt["dims"], context_slices=fmt["context_slices"],
                                  roi_size=roi, out_channels=1, overlap=overlap,
                                  sw_batch_size=batch or (8 if fmt["dims"] == 2 else 1), device=pick_device(device),
                                  progress=progress.sub(0.08, 0.92))
    loaded.device = used
    del x
    (_, out_entry), = fmt["outputs"].items()
    mu = denormalise(y[0], out_entry["normalisation"])
    (z0, _), (y0, _), (x0, _) = pads[1:]
    nz, ny, nx = grid.shape
    mu = mu[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx]
    clipped = int(np.count_nonzero(mu > MU_MAX))
    mu = np.clip(mu, 0.0, MU_MAX).astype(np.float32)
    if soft_smoothing:
        mu = smooth_soft_tissue(mu, grid.spacing)
    progress(0.93, "resampling the μ-map back onto the input grid")
    on_model = grid.derive(mu, units="cm-1", modality="OT")
    back = resample_like(on_model, first).array.astype(np.float32)
    back = np.clip(back, 0.0, MU_MAX)
    parameters = {"model": loaded.name, "inputs": kind, "window": roi, "overlap": overlap,
                  "soft_tissue_smoothing": dict(SOFT_SMOOTHING) if soft_smoothing else None}
    out = first.derive(back, units="cm-1", modality="OT", method="unet", parameters=parameters,
                       reoriented_to_lps=bool(reoriented),
                       model_grid={"shape_kji": list(grid.shape), "spacing_mm": list(grid.spacing),
                                   "origin_lps_mm": [round(o, 4) for o in grid.origin]},
                       energy_kev=511, **loaded.provenance())
    if clipped:
        out.metadata.setdefault("warnings", []).append(
            f"{clipped} voxels of the network output were above {MU_MAX} cm-1 (not a tissue) and were clipped")
    for key in ("sequence", "source", "resampled_to_reference"):
        out.metadata.pop(key, None)
    progress(1.0, "μ-map ready")
    return out

