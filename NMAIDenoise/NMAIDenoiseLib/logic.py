"""NMAI Denoise Logic: PET volume node in, NEW denoised PET node out (same units, geometry and display).

Console::

    from NMAIDenoiseLib import NMAIDenoiseLogic
    logic = NMAIDenoiseLogic()
    out = logic.process(getNode("PET"), method="gaussian", fwhm_mm=6.0)      # the baseline post-filter
    out = logic.process(getNode("PET"), method="cnn")                        # built-in model denoise-cnn
    out = logic.process(getNode("PET"), method="cnn", model="/path/to/my-model")
    logic.lastNote          # e.g. the engine resampled because the voxels were far from the training size
    table = logic.metrics(getNode("PET"), out, referenceNode=getNode("PET full count"),
                          region=(getNode("Segmentation"), "liver"), lesion=(getNode("Segmentation"), "lesion"))
    print(logic.formatMetrics())

Methods: ``cnn`` (residual U-Net trained on low-count -> full-count pairs), ``gan`` (the same network trained
adversarially: keeps noise texture and lesion contrast), ``sr`` (large-crystal -> small-crystal resolution)
and ``gaussian`` (post-filter of ``fwhm_mm``, default 6 mm: the baseline). Metrics (before/after, in the
PET's units) are in :mod:`.metrics`.

Imports neither qt nor the Slicer application: tested with pytest and slicer-core.
"""

from __future__ import annotations

import logging
import math
import os
import sys

try:
    import NMAIExtensionLib  # noqa: F401
except ImportError:  # source tree: the shared library lives in the hidden core module's folder
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "NMAIExtension"))

from NMAIExtensionLib.messages import _
from NMAIExtensionLib.mrml import PET_UNITS
from NMAIExtensionLib.outputs import Provenance
from NMAIExtensionLib.parameters import ModuleLogic
from NMAIExtensionLib.task import EngineTask, TaskInput, TaskOutput
from nmai.errors import NMAIError

log = logging.getLogger("NMAI")

METHODS = ("cnn", "gan", "sr", "gaussian")  # the panel's order: learned methods first
LEARNED_METHODS = ("cnn", "gan", "sr")
DEFAULT_MODELS = {"cnn": "denoise-cnn", "gan": "denoise-gan", "sr": "denoise-sr"}  # as nmai.denoise.apply
DEFAULT_FWHM_MM = 6.0
FWHM_RANGE_MM = (0.5, 30.0)
ATTR_NOTE = "NMAI.note"  # the engine's note on an output node (e.g. it was resampled for the network)


def check_pet_input(volume) -> None:
    """Fail early, in words a physician understands, when the volume is not PET activity or SUV."""
    from nmai.validate import check_pet

    name = volume.metadata.get("source_node", "input")
    if volume.modality not in ("PT", "OT"):
        raise NMAIError(_("'{name}' is a {modality} volume, not PET. Select the PET series.").format(
            name=name, modality=volume.modality))
    if volume.units not in PET_UNITS:
        raise NMAIError(_("'{name}' does not record whether its values are Bq/ml or SUV ({reason}). "
                          "Choose the input units in the panel, or pass units='Bq/ml' or units='SUVbw'.").format(
            name=name, reason=volume.metadata.get("units_unknown_reason", volume.units)))
    check_pet(volume, f"'{name}'")


def check_model(method: str, model: str | None = None):
    """Check, without loading it, that the model of a learned method can be used; return its folder.

    ``model``: a folder or a built-in name (None: the method's built-in model). Reads only the card and hashes
    the weights file (no torch): a missing model, a card of another task or weights that do not match their
    card fail here, before anything runs.
    """
    from nmai.models import read_card, resolve_model, sha256_file
    from nmai.models.card import weights_path

    name = model or DEFAULT_MODELS[method]
    try:
        ref = resolve_model(name)
    except NMAIError as exc:
        if model is None:
            raise NMAIError(_("The built-in '{method}' model ({name}) is not installed. Choose the gaussian "
                              "method, or give a model folder made by `nmai train denoise`.").format(
                method=method, name=name)) from None
        raise NMAIError(_("Model '{model}' was not found: {reason}").format(model=model, reason=exc)) from None
    try:
        card = read_card(ref.folder)
    except NMAIError as exc:
        raise NMAIError(_("Model '{model}' cannot be used: {reason}").format(model=name, reason=exc)) from None
    if card.get("task") != "denoise":
        raise NMAIError(_("Model '{model}' is a {task} model, not a denoising model; choose a denoise model "
                          "(denoise-cnn, denoise-gan, denoise-sr or one made by `nmai train denoise`).").format(
            model=name, task=card.get("task")))
    weights = weights_path(ref.folder)
    if not weights.is_file():
        raise NMAIError(_("Model '{model}' has no weights file ({path}); reinstall or retrain it.").format(
            model=name, path=weights))
    if card.get("sha256") and sha256_file(weights) != card["sha256"]:
        raise NMAIError(_("The weights of model '{model}' are corrupt or belong to another model (their sha256 "
                          "does not match the model card); reinstall or retrain it.").format(model=name))
    return ref.folder


class DenoiseTask(EngineTask):
    """``nmai denoise``: provenance names the model; the engine's note goes onto the output node."""

    def _provenance(self, result: dict) -> Provenance:
        provenance = super()._provenance(result)
        parameters = (result or {}).get("parameters") or {}
        if not provenance.model and parameters.get("model"):
            provenance.model = str(parameters["model"])
        if self.provenance.parameters.get("model_path"):  # the folder a user model was loaded from
            provenance.parameters["model_path"] = self.provenance.parameters["model_path"]
        return provenance

    def load_outputs(self, result: dict):
        nodes = super().load_outputs(result)
        note = (result or {}).get("note")
        if note:
            for node in nodes.values():
                node.SetAttribute(ATTR_NOTE, str(note))
        return nodes


class NMAIDenoiseLogic(ModuleLogic):
    """Denoise a PET volume node; the output is a NEW node ``<input>_denoised``."""

    def __init__(self, scene=None):
        super().__init__(scene)
        self.lastResult: dict = {}
        self.lastNote: str | None = None
        self.lastMetrics: list[dict] = []

    # ------------------------------------------------------------------ denoising
    def process(self, inputNode, method: str = "cnn", fwhm_mm: float | None = None, model: str | None = None,
                units: str | None = None, wait: bool = True, progress=None, fit_significance: float | None = None):
        """Denoise ``inputNode`` (never modified) into a NEW PET node with its units, geometry and display.

        :param method: ``cnn``, ``gan``, ``sr`` (learned) or ``gaussian`` (the baseline post-filter).
        :param fwhm_mm: gaussian only: filter FWHM in mm (default 6).
        :param model: cnn/gan/sr only: a model folder or a built-in model name (default ``denoise-<method>``).
        :param fit_significance: cnn/gan/sr only: z of the local fit's corrections (default: the model card's,
            4 for denoise-cnn, whose hot spots keep the plain fit, 0 for denoise-gan and denoise-sr; 0: the plain
            fit, the input's level everywhere; larger: closer to the network's output, less noise, lesions that
            are not hot spots read lower — README).
        :param units: ``"Bq/ml"``, ``"SUVbw"`` or ``"SUVlbm"`` when the node does not record its units.
        :param wait: True: run here and return the output node (the engine's note in ``lastNote``). False: run
            in a child process and return a :class:`NMAIExtensionLib.task.TaskHandle` (poll it;
            ``handle.node`` is the output and ``handle.result["note"]`` the note when done).
        :raises NMAIError: invalid input, missing or corrupt model, engine failure (nothing is created).
        """
        task = self.buildTask(inputNode, method=method, fwhm_mm=fwhm_mm, model=model, units=units,
                              fit_significance=fit_significance)
        if not wait:
            return task.start()
        handle = task.run(progress)
        self.lastResult = dict(handle.result or {})
        self.lastNote = self.lastResult.get("note") or None
        if self.lastNote:
            log.warning("NMAI Denoise: %s", self.lastNote)
        return handle.nodes["denoised"]

    def buildTask(self, inputNode, method: str = "cnn", fwhm_mm: float | None = None, model: str | None = None,
                  units: str | None = None, fit_significance: float | None = None) -> DenoiseTask:
        """Check the choices and build the engine task. Nothing runs yet: the input and the model are checked
        when the task starts (``run``/``start``), before anything is written."""
        if method not in METHODS:
            raise NMAIError(_("Unknown denoising method '{method}'; available: {methods}.").format(
                method=method, methods=", ".join(METHODS)))
        if units is not None and units not in PET_UNITS:
            raise NMAIError(_("Input units must be one of {units}.").format(units=", ".join(PET_UNITS)))
        model = str(model).strip() if model is not None and str(model).strip() else None
        if method == "gaussian":
            if model is not None:
                raise NMAIError(_("A model applies to the cnn, gan and sr methods, not to the Gaussian filter."))
            if fit_significance is not None:
                raise NMAIError(_("A fit significance applies to the cnn, gan and sr methods, not to the Gaussian "
                                  "filter."))
            fwhm = self._fwhm(DEFAULT_FWHM_MM if fwhm_mm is None else fwhm_mm)
            options, parameters = ["--method", method, "--fwhm", repr(fwhm)], {"fwhm_mm": fwhm}
        else:
            if fwhm_mm is not None:
                raise NMAIError(_("The FWHM applies to the gaussian method only, not to {method}.").format(
                    method=method))
            options, parameters = ["--method", method], {"model": model or DEFAULT_MODELS[method]}
            if model is not None:
                if os.path.exists(os.path.expanduser(model)):  # the engine may run in another working folder
                    model = os.path.abspath(os.path.expanduser(model))
                    parameters["model_path"] = model
                options += ["--model", model]
            if fit_significance is not None:
                z = float(fit_significance)
                if not (math.isfinite(z) and z >= 0):
                    raise NMAIError(_("The fit significance must be a number >= 0 (0: the plain local fit)."))
                options += ["--fit-significance", repr(z)]   # the engine records it (local_fit_significance)

        def check(volume) -> None:  # after the input is read, before anything is written
            check_pet_input(volume)  # the input's problem is the one to fix first
            if method != "gaussian":
                check_model(method, model)  # light: the card and the weights' hash, no torch

        return DenoiseTask(
            "denoise",
            [TaskInput(inputNode, units=units, default_modality="PT", check=check, name="PET")],
            [TaskOutput("denoised", "--out")],
            options=options,
            provenance=Provenance(task="denoise", method=method, parameters=parameters))

    @staticmethod
    def _fwhm(value) -> float:
        try:
            fwhm = float(value)
        except (TypeError, ValueError):
            raise NMAIError(_("The FWHM must be a number of millimetres.")) from None
        if not FWHM_RANGE_MM[0] <= fwhm <= FWHM_RANGE_MM[1]:
            raise NMAIError(_("FWHM {fwhm:g} mm is outside {lo:g}-{hi:g} mm.").format(
                fwhm=fwhm, lo=FWHM_RANGE_MM[0], hi=FWHM_RANGE_MM[1]))
        return fwhm

    def processParameters(self, p, wait: bool = False):
        """Run with the panel's choices (a parameter node wrapper, or any object with the same attributes)."""
        units = p.inputUnits if p.inputUnits in PET_UNITS else None
        if p.method == "gaussian":
            return self.process(p.inputVolume, method="gaussian", fwhm_mm=p.fwhmMm, units=units, wait=wait)
        z = getattr(p, "fitSignificance", -1.0)  # the panel's "model default" is -1
        return self.process(p.inputVolume, method=p.method, model=(p.modelPath or "").strip() or None, units=units,
                            wait=wait, fit_significance=None if z is None or z < 0 else float(z))

    @staticmethod
    def modelInstalled(method: str) -> bool:
        """True when the built-in model of a learned ``method`` is installed (always True for gaussian)."""
        if method not in LEARNED_METHODS:
            return True
        try:
            check_model(method)
        except NMAIError:
            return False
        return True

    @staticmethod
    def noteOf(nodeOrHandle) -> str | None:
        """The engine's note for an output node or a finished task handle (None when there is none)."""
        result = getattr(nodeOrHandle, "result", None)
        if isinstance(result, dict):
            return result.get("note") or None
        if hasattr(nodeOrHandle, "GetAttribute"):
            return nodeOrHandle.GetAttribute(ATTR_NOTE) or None
        return None

    # ------------------------------------------------------------------ metrics
    def metrics(self, inputNode, outputNode, referenceNode=None, region=None, lesion=None, units: str | None = None,
                name: str | None = None):
        """Before/after metrics of a denoising run as a NEW table node in the input's study.

        :param inputNode, outputNode: the PET before and after (the output on the input's grid).
        :param referenceNode: optional full-count PET: PSNR, SSIM, NRMSE inside the body (from the reference).
        :param region: optional uniform region for noise (mean, SD, CoV): ``(segmentationNode, segmentId or
            name)``, a segmentation with one segment, a label map volume (any label), or
            ``(labelMapNode, labelValue)``. Resampled onto the PET grid (nearest neighbour).
        :param lesion: optional lesion, given the same way: max, peak (1 ml sphere, PERCIST) and mean.
        :param units: units of the values (default: the input's); ``"SUVbw"`` etc. need the SUV factor.
        :returns: the table node (columns Metric, Input, Output, Change %, Units); rows in ``lastMetrics``.
        :raises NMAIError: invalid inputs (nothing is created; inputs are never modified).
        """
        from . import metrics

        rows, context = metrics.compute_node_metrics(inputNode, outputNode, referenceNode=referenceNode,
                                                     region=region, lesion=lesion, units=units)
        table = metrics.create_metrics_table(rows, inputNode=inputNode, outputNode=outputNode, context=context,
                                             name=name)
        self.lastMetrics = rows
        return table

    def formatMetrics(self, rows: list[dict] | None = None) -> str:
        """The metrics as text (console)."""
        from .metrics import format_rows

        return format_rows(self.lastMetrics if rows is None else rows)
