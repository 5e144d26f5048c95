"""Denoise a PET image: ``gaussian`` post-filter, learned ``cnn`` / ``gan`` denoisers, ``sr`` super-resolution.

A network output can be followed by a local linear fit to the input (after Kim et al., IEEE TMI 2018): a
network trained toward the mean smooths small lesions and, off its training count levels, biases the image;
refitting its output to the data in 3 × 3 × 3-voxel windows keeps its structure but the data's local level.
The plain fit also gives back part of the noise the network removed; with a ``significance`` z > 0 each
window's correction is kept only as far as it stands out of the noise (z standard errors:
:func:`nmai.denoise.prior.local_linear_fit`), so the network's output stays where it agrees with the data; the
network output's hot spots (lesions) can take the plain fit all the same (:func:`nmai.denoise.prior.hot_spot_fit`).
Whether the fit runs by default, its significance and the hot spots are the model card's ``local_fit`` (true when
absent), ``local_fit_significance`` (0 when absent) and ``hot_spot_fit`` (none when absent); shipped: cnn z 4 with
hot spots, gan and sr 0, chosen on phantoms — README. ``local_fit``, ``fit_significance`` and ``hot_spots``
override the card.

``sr`` then recovers resolution: Richardson–Lucy deconvolution of the input scanner's resolution (the blur
its OSEM did not model; ``resolution_recovery`` in the model card), started from the fitted network output.
The network alone smooths a point source and small spheres like noise; deconvolving the input alone
sharpens them but more than doubles its noise; the network's output is a low-noise image to deconvolve.
The PSF is the input scanner's: on an image that is already sharper (another scanner, PSF modelling) the
deconvolution over-sharpens, so ``fwhm_mm`` sets it for sr (0: none).

The learned models are unit-invariant: the input is divided by its mean in the body before the network and
the output multiplied back (k × input → k × output, Bq/ml, kBq/ml or SUV alike). They were trained on
3–5 mm voxels; a volume whose voxels fall far outside (below 2 mm or above 7 mm) is resampled to the nearest
trained size for the network and back to its own grid, and the result says so. The output always keeps the
input's grid, units and modality; negative network outputs are set to 0 (activity cannot be negative).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import NMAIError
from ..progress import as_progress
from ..validate import check_pet
from ..volume import Volume

METHODS = ("gaussian", "cnn", "gan", "sr")
DEFAULT_MODELS = {"cnn": "denoise-cnn", "gan": "denoise-gan", "sr": "denoise-sr"}
VOXEL_LIMITS_MM = (2.0, 7.0)   # beyond these the network input is resampled
DEFAULT_FWHM_MM = 6.0
FIT_WINDOW = (3, 3, 3)         # voxels (k, j, i) of the local linear fit of network outputs to the input


def _model(method: str, model):
    from ..models import load_model
    from ..models.loading import LoadedModel

    loaded = model if isinstance(model, LoadedModel) else load_model(model or DEFAULT_MODELS[method], device="cpu")
    if loaded.task != "denoise":
        raise NMAIError(f"model '{loaded.name}' is a {loaded.task} model, not a denoising model; choose a "
                        "denoise model (denoise-cnn, denoise-gan, denoise-sr or one from `nmai train denoise`)")
    return loaded


def network_grid(volume: Volume, training_mm=(3.0, 5.0)):
    """Spacing the network should see: the volume's own, unless a voxel side is outside
    ``VOXEL_LIMITS_MM``; then each side is clipped into the training range. Returns (spacing, note)."""
    sp = np.asarray(volume.spacing, float)
    if np.all((sp >= VOXEL_LIMITS_MM[0]) & (sp <= VOXEL_LIMITS_MM[1])):
        return None, None
    new = np.clip(sp, *training_mm)
    note = (f"voxels of {' x '.join(f'{s:.2f}' for s in sp)} mm are far from the training voxel size "
            f"({training_mm[0]:g}-{training_mm[1]:g} mm): the network ran on a {' x '.join(f'{s:.2f}' for s in new)} mm "
            "grid and its output was resampled back to the input grid")
    return tuple(float(s) for s in new), note


def denoise_volume(volume: Volume, method: str = "cnn", *, fwhm_mm: float | None = None, model=None,
                   local_fit: bool | None = None, fit_significance: float | None = None,
                   hot_spots: bool | None = None, progress=None, **predict_kw) -> tuple[Volume, dict]:
    """Denoise ``volume`` (PET, Bq/ml or SUV) with ``method``; returns (output Volume, info dict).

    ``fwhm_mm``: gaussian: the filter's FWHM (default 6 mm); sr: the FWHM of the resolution to recover, i.e.
    the blur the input's reconstruction left in (default: the model card's, 0: no deconvolution).
    ``model``: a model folder, registry name or loaded model (default: the shipped model of the method).
    ``local_fit`` (default: the model card's ``local_fit``, true when absent): the network output is fitted
    back to the input by local linear fitting (:func:`nmai.denoise.prior.local_linear_fit`, :data:`FIT_WINDOW`
    voxels), which keeps the network's noise suppression but the input's local level. For ``sr`` the fitted
    output is then deconvolved as the model card's ``resolution_recovery`` says; ``local_fit=False`` gives the
    raw network output of every method.
    ``fit_significance`` (default: the card's ``local_fit_significance``, 0 when absent): z of the fit's
    corrections to keep (0: the plain fit, the data's level everywhere; larger: closer to the network).
    ``hot_spots`` (default: true when the card has ``hot_spot_fit``): with z > 0, the network's hot spots take
    the plain fit (:func:`nmai.denoise.prior.hot_spot_fit`, the card's ``ratio`` and ``window``): lesions keep
    the input's level, the rest the network's noise suppression.
    ``predict_kw`` go to :func:`nmai.inference.predict_volume` (threads, memory limit, device, ...).
    """
    from ..filters import gaussian_filter

    progress = as_progress(progress)
    if method not in METHODS:
        raise NMAIError(f"unknown denoising method {method!r}; use one of {', '.join(METHODS)}")
    check_pet(volume, volume.metadata.get("source_node", "input"))
    if method == "gaussian":
        fwhm = DEFAULT_FWHM_MM if fwhm_mm is None else float(fwhm_mm)
        out = gaussian_filter(volume, fwhm, progress=progress)
        out.metadata["denoising"] = {"method": "gaussian", "fwhm_mm": fwhm}
        return out, {"method": "gaussian", "fwhm_mm": fwhm, "note": None}
    if fwhm_mm is not None and method != "sr":
        raise NMAIError(f"--fwhm applies to the gaussian and sr methods, not to {method}")
    if fwhm_mm is not None and not (math.isfinite(float(fwhm_mm)) and float(fwhm_mm) >= 0):
        raise NMAIError(f"--fwhm must be a finite number of mm >= 0 (0: no resolution recovery), got {fwhm_mm}")
    from ..inference import predict_volume, resample_to_reference, resample_to_spacing

    loaded = _model(method, model)
    if local_fit is None:
        local_fit = bool(loaded.card.get("local_fit", True))
    if fwhm_mm is not None and not local_fit:
        raise NMAIError("--fwhm sets sr's resolution recovery, which the raw output (--no-local-fit) does not have")
    if fit_significance is not None and not local_fit:
        raise NMAIError("--fit-significance sets the local fit, which --no-local-fit turns off; give one of them")
    z = float(loaded.card.get("local_fit_significance", 0.0) if fit_significance is None else fit_significance)
    if not (math.isfinite(z) and z >= 0):
        raise NMAIError(f"--fit-significance must be a finite number >= 0 (0: the plain local fit), got {z}")
    spots = loaded.card.get("hot_spot_fit")
    if hot_spots and not spots:
        raise NMAIError(f"model '{loaded.name}' has no hot-spot fit in its card (hot_spot_fit); leave --hot-spots "
                        "off for it")
    if hot_spots is not None and not local_fit:
        raise NMAIError("--hot-spots/--no-hot-spots set the local fit, which --no-local-fit turns off; "
                        "give one of them")
    spots = spots if hot_spots is not False and local_fit and z > 0 else None
    progress(0.0, f"loading {loaded.name}")
    training_mm = tuple(loaded.card.get("training", {}).get("data", {}).get("voxel_mm_range", (3.0, 5.0)))
    spacing, note = network_grid(volume, training_mm)
    source = volume if spacing is None else resample_to_spacing(volume, spacing)
    y = predict_volume(loaded, source.array[None].astype(np.float32), progress=progress.sub(0.02, 0.95),
                       **predict_kw)[0]
    if spacing is not None:
        y = resample_to_reference(source.derive(y), volume).array
    y = np.maximum(y, 0.0).astype(np.float32)
    if local_fit:
        from .prior import hot_spot_fit, local_linear_fit

        progress(0.96, "local linear fit to the input")
        if spots:
            y = hot_spot_fit(y, volume.array, window=FIT_WINDOW, significance=z, ratio=spots["ratio"],
                             spot_window=spots["window"])
        else:
            y = local_linear_fit(y, volume.array, window=FIT_WINDOW, significance=z)
        y = np.maximum(y, 0.0)
    recovery = loaded.card.get("resolution_recovery") if method == "sr" and local_fit else None
    if recovery and fwhm_mm is not None:
        recovery = dict(recovery, psf_fwhm_mm=float(fwhm_mm)) if fwhm_mm > 0 else None
    if recovery and fwhm_mm is None and min(volume.spacing[:2]) < training_mm[0]:
        note = "; ".join(filter(None, [note, (
            f"in-plane voxels of {min(volume.spacing[:2]):.2f} mm are finer than sr's training inputs "
            f"({training_mm[0]:g}-{training_mm[1]:g} mm): this image is probably from a sharper scanner or "
            f"reconstruction than the one whose {recovery['psf_fwhm_mm']:g} mm blur sr removes, and there it "
            "over-sharpens (hot spots read too high); give that scanner's remaining blur with --fwhm, or 0")]))
    if recovery:
        from ..filters import richardson_lucy

        progress(0.97, f"resolution recovery: Richardson-Lucy, {recovery['iterations']} iterations, "
                       f"{recovery['psf_fwhm_mm']:g} mm")
        y = richardson_lucy(volume.derive(y), recovery["psf_fwhm_mm"], recovery["iterations"]).array
    info = {"method": method, "model": loaded.name, "model_version": loaded.version,
            "model_sha256": loaded.sha256, "local_fit_voxels": list(FIT_WINDOW) if local_fit else None,
            "local_fit_significance": z if local_fit else None,
            "hot_spot_fit": {"ratio": list(spots["ratio"]), "window": spots["window"]} if spots else None,
            "resolution_recovery": ({"psf_fwhm_mm": recovery["psf_fwhm_mm"], "iterations": recovery["iterations"]}
                                    if recovery else None),
            "note": note}
    out = volume.derive(y, units=volume.units, modality="PT")
    out.metadata["denoising"] = {k: v for k, v in info.items() if v is not None}
    progress(1.0, "denoised")
    return out, info
