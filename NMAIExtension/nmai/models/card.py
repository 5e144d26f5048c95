"""The model card (``metadata.json``): what a model is, how it was trained, and how to feed it.

A model is a folder ``<name>/`` with ``model.safetensors`` and ``metadata.json``. The card follows the MONAI
bundle metadata fields where they fit (``version``, ``monai_version``, ``pytorch_version``, ``task``,
``description``, ``network_data_format``, ``intended_use``, ``data_source``, ``metrics``) and adds NMAI
fields: ``network`` (an allowlisted builder and its keyword arguments, never code), ``sha256`` of the weights
file, ``training`` (command, seed, preset, duration, device, steps) and ``nmai_card_version``. A denoising
model may add ``local_fit`` (whether its output is fitted to its input by default),
``local_fit_significance`` (the z of that fit's corrections, 0: the plain fit), ``hot_spot_fit`` (``ratio``,
``window``: where the output is a hot spot, the plain fit instead) and a super-resolution
model ``resolution_recovery`` (``psf_fwhm_mm``, ``iterations``: the deconvolution run after it); see
:mod:`nmai.denoise.apply`.
A MONAI bundle layout (``configs/metadata.json`` + ``models/model.safetensors``) is accepted as well.

``network_data_format`` (how to feed the network; NMAI's shape of MONAI's field)::

    {"dims": 3,                      # 3: volumetric network; 2: slice-wise (2.5-D with context_slices)
     "context_slices": 0,            # 2-D only: k neighbouring slices each side become channels
     "roi_size": [96, 96, 96],       # training patch, the default sliding window (z, y, x for 3-D; y, x for 2-D)
     "spacing_mm": [2.0, 2.0, 2.0],  # training voxel size (i, j, k like Volume.spacing) or null: any grid
     "output_grid": "input",         # "input": outputs resampled back to the input grid; "model": kept
     "inputs":  {"pet": {"channels": 1, "modality": "PT", "units": "Bq/ml",
                         "normalisation": {"method": "robust_scale", "percentile": 99.5}}},
     "outputs": {"pet": {"channels": 1, "modality": "PT", "units": "Bq/ml", "activation": "none",
                         "normalisation": {"method": "same_as_input", "input": "pet"}}}}

Inputs are concatenated as channels in the order written. The checks below are hand-written (no schema
dependency); every failure is an :class:`NMAIError` naming the field.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..errors import NMAIError
from ..volume import MODALITIES, UNITS

CARD_FILE = "metadata.json"
WEIGHTS_FILE = "model.safetensors"
CARD_VERSION = 1
TASKS = ("attenuation", "denoise", "super_resolution", "triage", "segmentation")
ACTIVATIONS = ("none", "sigmoid", "softmax")
# method -> {parameter: (kind, default)}; kinds are checked by _check_value
NORMALISATIONS: dict[str, dict[str, tuple[str, Any]]] = {
    "none": {},
    "linear": {"offset": ("number", 0.0), "scale": ("positive", 1.0), "clip": ("range_or_null", None)},
    # PET: divide by a robust scale (scale-invariant, so k x input -> k x output)
    "robust_scale": {"statistic": (("percentile", "mean_in_body"), "percentile"),
                     "percentile": ("percent", 99.5), "body_fraction": ("fraction", 0.05)},
    # MR: z-score inside a body mask (voxels above body_fraction x the 99.5th percentile)
    "zscore": {"body_fraction": ("fraction", 0.05)},
    # outputs only: the target was normalised with the named input's statistics (undo with them)
    "same_as_input": {"input": ("str", None)},
}
_MONAI_IO_EXTRAS = {"type", "format", "num_channels", "spatial_shape", "dtype", "value_range",
                    "is_patch_data", "channel_def"}
_SHA = re.compile(r"^[0-9a-f]{64}$")


class CardError(NMAIError):
    """A model card field is missing or invalid."""


def _fail(source, path: str, problem: str):
    raise CardError(f"{source}: model card field '{path}' {problem}; fix {CARD_FILE} "
                    "or re-save the model with nmai.models.save_model")


def _check_value(source, path: str, value, kind):
    if isinstance(kind, tuple):  # enum
        ok = value in kind
        if not ok:
            _fail(source, path, f"is {value!r}, expected one of {', '.join(map(str, kind))}")
        return value
    is_num = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "str":
        ok = isinstance(value, str) and value.strip() != ""
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "nonneg_int":
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    elif kind == "pos_int":
        ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    elif kind == "number":
        ok = is_num
    elif kind == "nonneg":
        ok = is_num and value >= 0
    elif kind == "positive":
        ok = is_num and value > 0
    elif kind == "fraction":
        ok = is_num and 0 <= value < 1
    elif kind == "percent":
        ok = is_num and 0 < value <= 100
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "dict":
        ok = isinstance(value, dict)
    elif kind == "str_or_null":
        ok = value is None or (isinstance(value, str) and value.strip() != "")
    elif kind == "range_or_null":
        ok = value is None or (isinstance(value, list) and len(value) == 2 and
                               all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                               and value[0] < value[1])
    elif kind == "sha256":
        ok = isinstance(value, str) and bool(_SHA.match(value))
    else:  # pragma: no cover - programming error
        raise ValueError(kind)
    if not ok:
        _fail(source, path, f"is {value!r}, expected {kind.replace('_', ' ')}")
    return value


def _field(source, obj: dict, key: str, prefix: str, kind, *, default=..., required=True):
    path = f"{prefix}{key}"
    if key not in obj:
        if required and default is ...:
            _fail(source, path, "is missing")
        return None if default is ... else copy.deepcopy(default)
    return _check_value(source, path, obj[key], kind)


def _unknown(source, obj: dict, allowed, prefix: str, extras=frozenset()):
    for key in obj:
        if key not in allowed and key not in extras:
            _fail(source, f"{prefix}{key}", f"is not a known field (known: {', '.join(sorted(allowed))})")


def validate_normalisation(spec, source, path: str, *, output: bool, input_names=()) -> dict:
    """Check a normalisation spec and return it with defaults filled in."""
    if not isinstance(spec, dict):
        _fail(source, path, f"is {spec!r}, expected an object like {{\"method\": \"robust_scale\"}}")
    methods = tuple(m for m in NORMALISATIONS if output or m != "same_as_input")
    method = _field(source, spec, "method", path + ".", methods)
    params = NORMALISATIONS[method]
    _unknown(source, spec, {"method", *params}, path + ".")
    out = {"method": method}
    for key, (kind, default) in params.items():
        out[key] = _field(source, spec, key, path + ".", kind, default=default)
    if method == "same_as_input" and out["input"] not in input_names:
        _fail(source, path + ".input", f"names {out['input']!r}, which is not an input "
                                       f"({', '.join(input_names)})")
    return out


def _validate_io(source, entries, path: str, *, output: bool, input_names=()) -> dict:
    if not isinstance(entries, dict) or not entries:
        _fail(source, path, "must be a non-empty object mapping a name to {channels, modality, units, "
                            "normalisation}")
    known = {"channels", "modality", "units", "normalisation"} | ({"activation"} if output else set())
    result = {}
    for name, entry in entries.items():
        p = f"{path}.{name}"
        if not isinstance(entry, dict):
            _fail(source, p, "must be an object")
        _unknown(source, entry, known, p + ".", _MONAI_IO_EXTRAS)
        e = dict(entry)
        e["channels"] = _field(source, entry, "channels", p + ".", "pos_int")
        e["modality"] = _field(source, entry, "modality", p + ".", MODALITIES)
        e["units"] = _field(source, entry, "units", p + ".", tuple(UNITS))
        e["normalisation"] = validate_normalisation(
            entry.get("normalisation", {"method": "none"}), source, p + ".normalisation",
            output=output, input_names=input_names)
        if output:
            e["activation"] = _field(source, entry, "activation", p + ".", ACTIVATIONS, default="none")
        result[name] = e
    return result


def validate_data_format(fmt, source="model card", path="network_data_format") -> dict:
    """Check ``network_data_format`` and return a copy with defaults filled in."""
    if not isinstance(fmt, dict):
        _fail(source, path, "must be an object")
    p = path + "."
    _unknown(source, fmt, {"dims", "context_slices", "roi_size", "spacing_mm", "output_grid",
                           "inputs", "outputs"}, p)
    out: dict[str, Any] = {}
    out["dims"] = _field(source, fmt, "dims", p, (2, 3))
    out["context_slices"] = _field(source, fmt, "context_slices", p, "nonneg_int", default=0)
    if out["dims"] == 3 and out["context_slices"]:
        _fail(source, p + "context_slices", "must be 0 for a 3-D network (dims 3)")
    if "roi_size" not in fmt:
        _fail(source, p + "roi_size", "is missing")
    roi = fmt["roi_size"]
    if not (isinstance(roi, list) and len(roi) == out["dims"] and
            all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in roi)):
        _fail(source, p + "roi_size", f"is {roi!r}, expected {out['dims']} positive integers")
    out["roi_size"] = list(roi)
    spacing = fmt.get("spacing_mm")
    if spacing is not None and not (isinstance(spacing, list) and len(spacing) == 3 and all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in spacing)):
        _fail(source, p + "spacing_mm", f"is {spacing!r}, expected null or 3 positive numbers (mm)")
    out["spacing_mm"] = None if spacing is None else [float(s) for s in spacing]
    out["output_grid"] = _field(source, fmt, "output_grid", p, ("input", "model"), default="input")
    out["inputs"] = _validate_io(source, fmt.get("inputs"), p + "inputs", output=False)
    out["outputs"] = _validate_io(source, fmt.get("outputs"), p + "outputs", output=True,
                                  input_names=tuple(out["inputs"]))
    return out


def network_in_channels(fmt: dict) -> int:
    """Channels the network sees: the inputs' channels, times 2k+1 neighbouring slices for 2.5-D."""
    base = sum(e["channels"] for e in fmt["inputs"].values())
    return base * (2 * fmt.get("context_slices", 0) + 1) if fmt["dims"] == 2 else base


def network_out_channels(fmt: dict) -> int:
    return sum(e["channels"] for e in fmt["outputs"].values())


def validate_card(card, source="model card", *, require_sha: bool = True) -> dict:
    """Check a card and return a normalised copy (defaults filled in); raise NMAIError naming the field."""
    from .networks import validate_network  # no torch needed

    if not isinstance(card, dict):
        raise CardError(f"{source}: a model card must be a JSON object; fix {CARD_FILE}")
    c = copy.deepcopy(card)
    _field(source, c, "nmai_card_version", "", (CARD_VERSION,))
    for key in ("name", "version", "monai_version", "pytorch_version", "description", "intended_use",
                "data_source"):
        _field(source, c, key, "", "str")
    _field(source, c, "task", "", TASKS)
    c["network_data_format"] = validate_data_format(c.get("network_data_format"), source)
    training = _field(source, c, "training", "", "dict")
    _unknown(source, training, {"command", "seed", "preset", "duration_s", "device", "steps"}, "training.",
             {"lr", "schedule", "optimizer", "final_losses", "resumed_from", "history", "batch_size",
              "loss", "data", "total_s", "roi", "initialised_from", "fine_tune"})
    _field(source, training, "command", "training.", "str")
    _field(source, training, "seed", "training.", "int")
    _field(source, training, "steps", "training.", "nonneg_int")
    _field(source, training, "duration_s", "training.", "nonneg")
    _field(source, training, "device", "training.", "str")
    _field(source, training, "preset", "training.", "str_or_null", required=False)
    metrics = _field(source, c, "metrics", "", "dict")
    for key, value in metrics.items():
        values = value.items() if isinstance(value, dict) else [(None, value)]
        for sub, v in values:
            if not isinstance(v, (int, float)) or isinstance(v, bool):
                _fail(source, f"metrics.{key}" + (f".{sub}" if sub else ""), f"is {v!r}, expected a number")
    network = _field(source, c, "network", "", "dict")
    _unknown(source, network, {"name", "kwargs"}, "network.")
    c["network"] = validate_network(network.get("name"), network.get("kwargs", {}), source)
    fmt = c["network_data_format"]
    kwargs = c["network"]["kwargs"]
    for key, expected in (("in_channels", network_in_channels(fmt)), ("out_channels", network_out_channels(fmt))):
        if key in kwargs and kwargs[key] != expected:
            _fail(source, f"network.kwargs.{key}", f"is {kwargs[key]}, but network_data_format implies "
                                                   f"{expected}")
    if "spatial_dims" in kwargs and kwargs["spatial_dims"] != fmt["dims"]:
        _fail(source, "network.kwargs.spatial_dims",
              f"is {kwargs['spatial_dims']}, but network_data_format.dims is {fmt['dims']}")
    _field(source, c, "local_fit", "", "bool", required=False)  # denoise: fit the output to the input
    _field(source, c, "local_fit_significance", "", "nonneg", required=False)  # z of the fit's corrections
    spots = _field(source, c, "hot_spot_fit", "", "dict", required=False)
    if spots is not None:  # denoise: hot spots take the plain fit (nmai.denoise.prior.hot_spot_fit)
        _unknown(source, spots, {"ratio", "window"}, "hot_spot_fit.", {"why"})
        if _field(source, spots, "ratio", "hot_spot_fit.", "range_or_null") is None or spots["ratio"][0] <= 0:
            _fail(source, "hot_spot_fit.ratio", f"is {spots['ratio']!r}, expected [low, high] with 0 < low < high")
        _field(source, spots, "window", "hot_spot_fit.", "pos_int")
    recovery = _field(source, c, "resolution_recovery", "", "dict", required=False)
    if recovery is not None:  # denoise sr: Richardson-Lucy after the network (nmai.denoise.apply)
        _unknown(source, recovery, {"psf_fwhm_mm", "iterations"}, "resolution_recovery.", {"why"})
        _field(source, recovery, "psf_fwhm_mm", "resolution_recovery.", "positive")
        if _field(source, recovery, "iterations", "resolution_recovery.", "nonneg_int") < 1:
            _fail(source, "resolution_recovery.iterations", "is 0, expected at least 1")
    if require_sha or "sha256" in c:
        _field(source, c, "sha256", "", "sha256")
    return c


def new_card(*, name: str, task: str, network: dict, network_data_format: dict, training: dict,
             version: str = "0.1.0", description: str = "", intended_use: str = "",
             data_source: str = "", metrics: dict | None = None, **extra) -> dict:
    """A card skeleton with the library versions filled in (``sha256`` is added by ``save_model``)."""
    import monai
    import torch

    card = {
        "nmai_card_version": CARD_VERSION, "name": name, "version": version,
        "monai_version": monai.__version__, "pytorch_version": torch.__version__.split("+")[0],
        "task": task, "description": description or f"{task} model {name}",
        "intended_use": intended_use or "research only; not for clinical use",
        "data_source": data_source or "unspecified", "network": network,
        "network_data_format": network_data_format, "training": training, "metrics": metrics or {},
    }
    card.update(extra)
    return card


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def card_path(folder) -> Path:
    """``metadata.json`` of a model folder, or ``configs/metadata.json`` for a MONAI bundle."""
    folder = Path(folder)
    for candidate in (folder / CARD_FILE, folder / "configs" / CARD_FILE):
        if candidate.is_file():
            return candidate
    raise NMAIError(f"{folder}: no {CARD_FILE} (model card) in this model folder; pass a folder made by "
                    "nmai.models.save_model or `nmai train`")


def weights_path(folder) -> Path:
    """``model.safetensors`` of a model folder (or ``models/model.safetensors`` for a bundle)."""
    folder = Path(folder)
    bundle = folder / "models" / WEIGHTS_FILE
    return bundle if bundle.is_file() and not (folder / WEIGHTS_FILE).exists() else folder / WEIGHTS_FILE


def read_card(folder, *, require_sha: bool = True) -> dict:
    """Read and validate the card of a model folder."""
    path = card_path(folder)
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise NMAIError(f"{path}: model card is not valid JSON ({exc}); reinstall or re-save the model") from None
    return validate_card(card, str(path), require_sha=require_sha)
