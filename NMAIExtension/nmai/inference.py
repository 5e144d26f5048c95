"""Running a loaded model on volumes: checks, resampling, normalisation, sliding windows, and back.

``predict_volume(model, inputs)`` does, following the model card's ``network_data_format``:

1. check the inputs (count, modality, units, shared grid, finite values); PET units are converted with the
   recorded SUV factors only when the normalisation is not scale-invariant (``robust_scale`` makes the
   model unit-invariant, so Bq/ml and SUV inputs give outputs in the same units as the input);
2. resample to the training voxel size (``spacing_mm``) with SimpleITK (anti-aliased when downsampling);
3. normalise each channel with whole-volume statistics;
4. sliding-window inference (3-D, or slice-wise 2.5-D) in bounded memory (:mod:`nmai.models.sliding`),
   under ``torch.inference_mode`` with a thread count that fits the machine, GPU when present;
5. undo the output normalisation and resample back onto the input grid exactly (same shape, spacing,
   origin and direction) unless the card's ``output_grid`` is ``"model"``.

An ndarray input (C, Z, Y, X) is taken as raw values on the model's grid (steps 3-5 only).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import NMAIError
from .progress import as_progress
from .volume import Volume

PET_UNITS = ("Bq/ml", "SUVbw", "SUVlbm")
_INTERPOLATORS = ("linear", "nearest", "bspline")


# ------------------------------------------------------------------------------------------- resampling
def _sitk_interpolator(name: str):
    import SimpleITK as sitk

    if name not in _INTERPOLATORS:
        raise NMAIError(f"unknown interpolator {name!r}; use one of {', '.join(_INTERPOLATORS)}")
    return {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor, "bspline": sitk.sitkBSpline}[name]


def _resample(volume: Volume, size, spacing, origin, direction, interpolator, default_value, smooth=None):
    import SimpleITK as sitk

    from .io import from_sitk, to_sitk

    interpolator = interpolator or ("nearest" if volume.units == "label" else "linear")
    source = volume if interpolator == "nearest" else volume.derive(volume.array.astype(np.float32))
    image = to_sitk(source)
    if smooth is not None and interpolator != "nearest":
        image = sitk.DiscreteGaussian(image, [float(v) for v in smooth], 32, 0.01, True)
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in size])
    f.SetOutputSpacing([float(s) for s in spacing])
    f.SetOutputOrigin([float(o) for o in origin])
    f.SetOutputDirection([float(d) for d in np.asarray(direction, float).flatten()])
    f.SetInterpolator(_sitk_interpolator(interpolator))
    f.SetDefaultPixelValue(float(default_value))
    f.SetOutputPixelType(image.GetPixelID())
    out = from_sitk(f.Execute(image))
    return Volume(out.array, tuple(spacing), tuple(origin), np.array(direction, float), volume.modality,
                  volume.units, dict(volume.metadata))


def resample_to_spacing(volume: Volume, spacing, *, interpolator: str | None = None, default_value: float = 0.0,
                        antialias: bool = True) -> Volume:
    """Resample to voxel size ``spacing`` (i, j, k mm), keeping the field of view's centre and direction.

    The new size is ``round(size x old / new)``. When a voxel grows, the image is first smoothed with a
    Gaussian of FWHM ``sqrt(new^2 - old^2)`` per axis (``antialias``). Labels use nearest neighbour.
    """
    new = np.array([float(s) for s in spacing])
    if new.shape != (3,) or not np.all(new > 0):
        raise NMAIError(f"spacing must be 3 positive numbers in mm, got {spacing!r}")
    old = np.array(volume.spacing)
    size = np.array(volume.shape[::-1])
    new_size = np.maximum(1, np.round(size * old / new)).astype(int)
    centre = np.array(volume.origin) + volume.direction @ ((size - 1) * old / 2)
    origin = centre - volume.direction @ ((new_size - 1) * new / 2)
    smooth = None
    if antialias and np.any(new > old * (1 + 1e-6)):
        smooth = np.maximum(new**2 - old**2, 0.0) / (8 * math.log(2))  # variance (mm^2) from FWHM
    return _resample(volume, new_size, new, origin, volume.direction, interpolator, default_value, smooth)


def resample_to_reference(volume: Volume, reference: Volume, *, interpolator: str | None = None,
                          default_value: float = 0.0) -> Volume:
    """Resample onto ``reference``'s grid exactly (its shape, spacing, origin and direction).

    Delegates to :func:`nmai.resample.resample_like` (labels: nearest neighbour by default).
    """
    from .resample import resample_like

    interpolator = interpolator or ("nearest" if volume.units == "label" else "linear")
    _sitk_interpolator(interpolator)  # same names, same error for a bad one
    return resample_like(volume, reference, interpolation=interpolator, default=default_value)


# ------------------------------------------------------------------------------------------- inputs
def _channel_specs(fmt):
    """(input name, entry) for every channel, in network order."""
    return [(name, entry) for name, entry in fmt["inputs"].items() for _ in range(entry["channels"])]


def _describe_inputs(fmt) -> str:
    return ", ".join(f"{n}: {e['channels']} x {e['modality']} in {e['units']}" for n, e in fmt["inputs"].items())


def _gather(model, inputs, progress):
    """-> (array (C, Z, Y, X), reference Volume or None, model-grid Volume or None, actual units per input)."""
    from .models.normalisation import is_scale_invariant

    fmt = model.data_format
    specs = _channel_specs(fmt)
    units = {name: entry["units"] for name, entry in fmt["inputs"].items()}
    if isinstance(inputs, Volume):
        inputs = [inputs]
    if isinstance(inputs, np.ndarray) or (isinstance(inputs, (list, tuple)) and inputs and
                                          all(isinstance(a, np.ndarray) for a in inputs)):
        array = np.asarray(inputs) if isinstance(inputs, np.ndarray) else np.stack(inputs)
        array = array[None] if array.ndim == 3 else array
        if array.ndim != 4 or array.shape[0] != len(specs):
            raise NMAIError(f"model '{model.name}' needs a ({len(specs)}, Z, Y, X) array "
                            f"({_describe_inputs(fmt)}), got shape {array.shape}")
        return array, None, None, units
    volumes = list(inputs)
    if len(volumes) != len(specs) or not all(isinstance(v, Volume) for v in volumes):
        raise NMAIError(f"model '{model.name}' needs {len(specs)} input volume(s) ({_describe_inputs(fmt)}), "
                        f"got {len(volumes)}")
    reference = volumes[0]
    checked, seen = [], set()
    for v, (name, entry) in zip(volumes, specs):
        if not v.same_grid(reference):
            raise NMAIError(f"input volumes of model '{model.name}' must share one grid; resample "
                            f"'{name}' onto the first input first")
        if entry["modality"] != "OT" and v.modality != entry["modality"]:
            raise NMAIError(f"model '{model.name}' input '{name}' must be {entry['modality']}, got "
                            f"{v.modality}; select the right volume")
        if v.units != entry["units"]:
            both_pet = v.units in PET_UNITS and entry["units"] in PET_UNITS
            if both_pet and is_scale_invariant(entry["normalisation"]):
                pass  # unit-invariant model: keep the user's units end to end
            elif both_pet:
                v = v.to_units(entry["units"])  # raises NMAIError naming the missing SUV factor
            else:
                raise NMAIError(f"model '{model.name}' input '{name}' must be in {entry['units']}, got "
                                f"{v.units}; convert the volume first")
        if name not in seen:
            units[name] = v.units
            seen.add(name)
        checked.append(v)
    grid = None
    if fmt["spacing_mm"] is not None and not np.allclose(reference.spacing, fmt["spacing_mm"], rtol=1e-4):
        checked = [resample_to_spacing(v, fmt["spacing_mm"]) for v in checked]
        grid = checked[0]
        progress(1.0, f"resampled to {fmt['spacing_mm']} mm")
    return np.stack([v.array for v in checked]), reference, grid, units


# ------------------------------------------------------------------------------------------- prediction
def _predict(model, inputs, *, roi_size=None, overlap=0.25, sw_batch_size=None, progress=None, device=None,
             mode="gaussian", memory_limit_mb=None, num_threads=None, max_windows_per_slab=None, allow_tf32=False):
    from .models.loading import pick_device
    from .models.normalisation import compute_stats, denormalise, normalise, output_inverse
    from .models.sliding import sliding_predict, torch_threads

    progress = as_progress(progress)
    fmt = model.data_format
    if not 0 <= overlap < 1:
        raise NMAIError(f"overlap must be in [0, 1), got {overlap}")
    array, reference, grid, units = _gather(model, inputs, progress.sub(0.0, 0.05))
    if not np.isfinite(array).all():
        raise NMAIError("the input contains NaN or infinite values; fix or mask the volume first")
    x = np.empty(array.shape, dtype=np.float32)
    input_specs, input_stats = {}, {}
    for c, (name, entry) in enumerate(_channel_specs(fmt)):
        stats = compute_stats(array[c], entry["normalisation"], name)
        x[c] = normalise(array[c], entry["normalisation"], stats)
        if name not in input_stats:
            input_specs[name], input_stats[name] = entry["normalisation"], stats
    del array
    activations, start = [], 0
    for entry in fmt["outputs"].values():
        if entry["activation"] != "none":
            activations.append((start, start + entry["channels"], entry["activation"]))
        start += entry["channels"]
    dev = pick_device(device)
    batch = sw_batch_size or (4 if dev.type == "cuda" else 1)
    with torch_threads(num_threads):
        y, used = sliding_predict(model.module, x, dims=fmt["dims"], context_slices=fmt["context_slices"],
                                  roi_size=roi_size or fmt["roi_size"], out_channels=start, overlap=overlap,
                                  sw_batch_size=batch, mode=mode, device=dev, activations=activations,
                                  progress=progress.sub(0.05, 0.95), memory_limit_mb=memory_limit_mb,
                                  max_windows_per_slab=max_windows_per_slab, allow_tf32=allow_tf32)
    model.device = used
    del x
    c = 0
    for entry in fmt["outputs"].values():
        spec, stats = output_inverse(entry["normalisation"], input_specs, input_stats)
        y[c:c + entry["channels"]] = denormalise(y[c:c + entry["channels"]], spec, stats)
        c += entry["channels"]
    if grid is not None and fmt["output_grid"] == "input":
        y = np.stack([resample_to_reference(grid.derive(ch, units="1", modality="OT"), reference).array
                      for ch in y]).astype(np.float32)
        grid = None
    progress(1.0, "model inference done")
    return y, reference if grid is None else grid, units


def predict_volume(model, inputs, *, roi_size=None, overlap: float = 0.25, sw_batch_size: int | None = None,
                   progress=None, device=None, mode: str = "gaussian", memory_limit_mb: float | None = None,
                   num_threads: int | None = None, max_windows_per_slab: int | None = None,
                   allow_tf32: bool = False) -> np.ndarray:
    """Run ``model`` (a :class:`~nmai.models.LoadedModel`) -> float32 array (C_out, Z, Y, X).

    ``inputs``: one Volume per input channel (card order), or an ndarray (C, Z, Y, X) of raw values on the
    model's grid. ``roi_size`` defaults to the card's training patch; ``sw_batch_size`` to 1 on the CPU and
    4 on a GPU; ``device`` to the GPU when present (CPU fallback on out-of-memory); ``num_threads`` to the
    physical cores available. ``progress`` gets per-window progress and is checked for cancel.
    GPU arithmetic is IEEE float32 unless ``allow_tf32`` (see :func:`nmai.models.sliding.fp32_precision`).
    """
    return _predict(model, inputs, roi_size=roi_size, overlap=overlap, sw_batch_size=sw_batch_size,
                    progress=progress, device=device, mode=mode, memory_limit_mb=memory_limit_mb,
                    num_threads=num_threads, max_windows_per_slab=max_windows_per_slab,
                    allow_tf32=allow_tf32)[0]


def predict_volumes(model, inputs, **kwargs) -> list[Volume]:
    """Like :func:`predict_volume` for Volume inputs, returning one Volume per output channel.

    Each output carries the card's modality and units (for a ``same_as_input`` output, the units the user
    gave), the input's metadata, and the model's provenance (name, version, sha256). Names:
    ``metadata["model_output"]`` is the card's output name (``name_<i>`` for multi-channel outputs).
    """
    if not isinstance(inputs, Volume) and not all(isinstance(v, Volume) for v in inputs):
        raise NMAIError("predict_volumes needs Volume inputs; use predict_volume for arrays")
    y, grid, units = _predict(model, inputs, **kwargs)
    outputs, c = [], 0
    for name, entry in model.data_format["outputs"].items():
        norm = entry["normalisation"]
        out_units = units[norm["input"]] if norm["method"] == "same_as_input" and \
            entry["units"] == model.data_format["inputs"][norm["input"]]["units"] else entry["units"]
        for i in range(entry["channels"]):
            label = name if entry["channels"] == 1 else f"{name}_{i}"
            outputs.append(grid.derive(y[c], units=out_units, modality=entry["modality"],
                                       model_output=label, **model.provenance()))
            c += 1
    return outputs
