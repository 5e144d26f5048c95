"""Intensity normalisation recorded in the model card, and its inverse for the outputs.

Each input channel is normalised with its own statistics (computed on the whole input volume, never per
window, so sliding-window tiles agree); an output undoes either a fixed ``linear`` map or, with
``same_as_input``, the named input's normalisation (denoising: PET in, PET out).

* ``robust_scale`` (PET): ``x / s`` with ``s`` the ``percentile`` (default 99.5th) of the volume, or with
  ``statistic: mean_in_body`` the mean over the body mask (voxels above ``body_fraction`` x the 99.5th
  percentile). ``s`` scales with the input, so a model with this input and a ``same_as_input`` output is
  unit-invariant: k x input gives k x output (Bq/ml vs kBq/ml vs SUV makes no difference).
* ``zscore`` (MR): ``(x - mean) / std`` inside the body mask.
* ``linear`` (CT, mu-maps): ``(clip(x) - offset) / scale``.
* ``none``.

Statistics are computed in float64 (on at most ~8 M voxels, an evenly strided subsample, which keeps the
scale exactly proportional to the input).
"""

from __future__ import annotations

import numpy as np

from ..errors import NMAIError

_MAX_STAT_VOXELS = 8_000_000


def _sample(x: np.ndarray) -> np.ndarray:
    flat = np.asarray(x).reshape(-1)
    step = max(1, flat.size // _MAX_STAT_VOXELS)
    return flat[::step].astype(np.float64)


def _body(values: np.ndarray, fraction: float) -> np.ndarray:
    if fraction <= 0:
        return values
    ref = np.percentile(values, 99.5)
    body = values[values > fraction * ref] if ref > 0 else values[:0]
    return body if body.size else values


def compute_stats(x: np.ndarray, spec: dict, name: str = "input") -> dict:
    """Statistics for one channel under ``spec`` (a validated normalisation entry)."""
    method = spec["method"]
    if method in ("none", "linear"):
        return {}
    values = _sample(x)
    if method == "robust_scale":
        if spec.get("statistic", "percentile") == "percentile":
            scale = float(np.percentile(values, spec.get("percentile", 99.5)))
        else:
            scale = float(np.mean(_body(values, spec.get("body_fraction", 0.05))))
        if not np.isfinite(scale) or scale <= 0:
            raise NMAIError(f"{name}: the image is empty or not positive (normalisation scale {scale:g}); "
                            "check that the right volume was selected")
        return {"scale": scale}
    if method == "zscore":
        body = _body(values, spec.get("body_fraction", 0.05))
        mean, std = float(body.mean()), float(body.std())
        if not np.isfinite(std) or std <= 0:
            raise NMAIError(f"{name}: the image is constant (standard deviation 0); check the input volume")
        return {"mean": mean, "std": std}
    raise NMAIError(f"normalisation {method!r} cannot be applied to an input")


def normalise(x: np.ndarray, spec: dict, stats: dict) -> np.ndarray:
    """Apply an input normalisation (float32 result)."""
    method = spec["method"]
    x = np.asarray(x, dtype=np.float64)
    if method == "robust_scale":
        y = x / stats["scale"]
    elif method == "zscore":
        y = (x - stats["mean"]) / stats["std"]
    elif method == "linear":
        if spec.get("clip") is not None:
            x = np.clip(x, *spec["clip"])
        y = (x - spec.get("offset", 0.0)) / spec.get("scale", 1.0)
    else:
        y = x
    return y.astype(np.float32)


def denormalise(y: np.ndarray, spec: dict, stats: dict | None = None) -> np.ndarray:
    """Undo a normalisation on a network output (float32 result).

    For ``same_as_input`` pass the input's spec and stats (see :func:`output_inverse`).
    """
    method = spec["method"]
    y = np.asarray(y, dtype=np.float64)
    if method == "robust_scale":
        out = y * stats["scale"]
    elif method == "zscore":
        out = y * stats["std"] + stats["mean"]
    elif method == "linear":
        out = y * spec.get("scale", 1.0) + spec.get("offset", 0.0)
    else:
        out = y
    return out.astype(np.float32)


def output_inverse(out_spec: dict, input_specs: dict, input_stats: dict) -> tuple[dict, dict]:
    """(spec, stats) that undo an output's normalisation; ``input_*`` map input name -> first channel's."""
    if out_spec["method"] == "same_as_input":
        name = out_spec["input"]
        return input_specs[name], input_stats[name]
    return out_spec, {}


def is_scale_invariant(spec: dict) -> bool:
    """True when normalising k x input gives the same network input (so PET units do not matter)."""
    return spec["method"] == "robust_scale"
