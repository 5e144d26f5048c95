"""NMAI Triage Logic: PET (+ μ-map or CT) in, NEW findings nodes out; raw-data monitor; input check.

``process`` runs ``nmai triage image`` (artifact classifier, μ-map rules, lesion candidates scored by a CNN)
and loads the report as NEW nodes in the PET's study (:mod:`.findings`): a findings table, a markups point
per finding and a segmentation of the lesion candidates; ``NMAI.alarm`` (ok / check / repeat) is set on each.
``watch`` follows a folder where a scan writes its sinogram frames and reports an alarm per frame
(:mod:`.monitor`). ``checkInput`` shows what the engine sees in a volume and creates nothing.

Console::

    from NMAITriageLib import NMAITriageLogic
    logic = NMAITriageLogic()
    alarm = logic.process(getNode("PET"), ctNode=getNode("CT"))   # "ok", "check" or "repeat"
    print(logic.formatFindings())                                # logic.lastReport: the engine's report
    table, points = logic.lastNodes["table"], logic.lastNodes["points"]
    logic.watch("/data/scan-in-progress", print, timeout_s=60)  # one dict per frame, as it lands
    print(NMAITriageLogic.formatReport(logic.checkInput(getNode("PET"))))

Imports neither qt nor the Slicer application: tested with pytest and slicer-core.
"""

from __future__ import annotations

import json
import logging
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
from NMAIExtensionLib.task import EngineTask, TaskInput
from nmai.errors import NMAIError

from . import findings
from .monitor import FolderWatch, call_safely, format_frame

log = logging.getLogger("NMAI")

# what the engine's info result holds that the report repeats as is
_INFO_KEYS = ("modality", "units", "quantity", "shape", "spacing", "origin_lps", "direction",
              "suv_bw_factor", "suv_bw_unavailable_reason", "suv_lbm_factor", "suv_lbm_unavailable_reason",
              "statistics", "details")

DEFAULT_THRESHOLD = 0.5
DEFAULT_WATCH_TIMEOUT_S = 120.0
LESION_MODEL = "triage-lesions"  # the shipped lesion scorer (used when installed and no other is chosen)


def check_pet_input(volume) -> None:
    """Fail early, in words a physician understands, when the volume is not PET activity or SUV."""
    from nmai.validate import check_pet

    name = volume.metadata.get("source_node", "PET")
    if volume.modality not in ("PT", "OT"):
        raise NMAIError(_("'{name}' is a {modality} volume, not PET. Select the PET series as the PET.").format(
            name=name, modality=volume.modality))
    if volume.units not in PET_UNITS:
        raise NMAIError(_("'{name}' does not record whether its values are Bq/ml or SUV ({reason}); it cannot be "
                          "triaged as PET.").format(
            name=name, reason=volume.metadata.get("units_unknown_reason", volume.units)))
    check_pet(volume, f"'{name}'")


def check_mumap_input(volume) -> None:
    name = volume.metadata.get("source_node", "μ-map")
    if volume.units == "HU" or volume.modality == "CT":
        raise NMAIError(_("'{name}' is a CT (HU), not a μ-map; select it as the CT.").format(name=name))
    if volume.units not in ("cm-1", "1") or volume.modality == "PT":
        raise NMAIError(_("'{name}' is a {modality} volume in {units}, not a μ-map (cm-1 at 511 keV); select the "
                          "μ-map or the CT the PET was corrected with.").format(
            name=name, modality=volume.modality, units=volume.units))


def check_ct_input(volume) -> None:
    name = volume.metadata.get("source_node", "CT")
    if volume.units != "HU" or volume.modality not in ("CT", "OT"):
        raise NMAIError(_("'{name}' is a {modality} volume in {units}, not a CT in HU; select the CT the PET was "
                          "corrected with (or give a μ-map as the μ-map).").format(
            name=name, modality=volume.modality, units=volume.units))


def _model_argument(model) -> str | None:
    model = str(model).strip() if model is not None and str(model).strip() else None
    if model is not None and os.path.exists(os.path.expanduser(model)):  # the engine may run elsewhere
        model = os.path.abspath(os.path.expanduser(model))
    return model


def lesion_model_installed() -> bool:
    """True when the shipped lesion scorer is registered (then candidates are searched by default)."""
    from nmai.models.registry import list_models

    try:
        return any(m["name"] == LESION_MODEL for m in list_models())
    except NMAIError:
        return False


class TriageTask(EngineTask):
    """``nmai triage image PET [--mumap|--ct] --out report.json [--lesions seg]``; outputs: findings nodes."""

    def __init__(self, *args, lesions: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.lesions = lesions
        self.report: dict | None = None

    def prepare(self) -> list[str]:
        args = super().prepare()
        args = [args[0], "image", *args[1:], "--out", os.path.join(self.folder, "report.json")]
        if self.lesions:
            args += ["--lesions", os.path.join(self.folder, "lesions.nii")]
        return args

    def load_outputs(self, result: dict):
        from nmai.io import read_volume

        path = os.path.join(self.folder or "", "report.json")
        if not os.path.isfile(path):
            raise NMAIError(_("The engine reported success but wrote no triage report."))
        with open(path, encoding="utf-8") as fh:
            report = json.load(fh)
        labels = None
        seg = os.path.join(self.folder, "lesions.nii")
        if self.lesions and report.get("lesions"):
            if not os.path.isfile(seg):
                raise NMAIError(_("The engine reported success but wrote no lesion label volume."))
            labels = read_volume(seg)
        nodes = findings.create_nodes(report, labels, self.inputs[0].node, self._triage_provenance(report))
        self.report = report
        return nodes

    def _triage_provenance(self, report: dict) -> Provenance:
        base = self.provenance
        classifier = (report.get("classifier") or {}).get("model") or {}
        lesion_model = report.get("lesion_model") or {}
        parameters = dict(base.parameters)
        if lesion_model:
            parameters.update(lesion_model=lesion_model.get("name", ""),
                              lesion_model_sha256=lesion_model.get("sha256", ""))
        return Provenance(task="triage", method=str(report.get("method") or ""),
                          engine_version=str(report.get("nmai_version") or ""),
                          model=str(classifier.get("name") or ""), model_sha256=str(classifier.get("sha256") or ""),
                          parameters=parameters)


class NMAITriageLogic(ModuleLogic):
    """Triage of PET studies: image report (findings nodes), raw-data monitor, input check."""

    def __init__(self, scene=None):
        super().__init__(scene)
        self.lastReport: dict = {}
        self.lastNodes: dict = {}
        self.lastFrames: list[dict] = []

    # ------------------------------------------------------------------ image triage
    def process(self, petNode, mumapNode=None, ctNode=None, model: str | None = None, lesionModel: str | None = None,
                threshold: float = DEFAULT_THRESHOLD, rulesOnly: bool = False, wait: bool = True, progress=None):
        """Triage ``petNode`` (never modified) with the μ-map or CT it was corrected with (optional).

        :param model: artifact classifier folder or name (default: the shipped ``triage-artifacts`` if installed).
        :param lesionModel: lesion scorer folder or name (default: the shipped ``triage-lesions`` if installed);
            without one no lesion candidates are searched.
        :param threshold: list lesion candidates with probability >= it (0-1).
        :param rulesOnly: no networks: image-noise and μ-map rules only (no classifier, no lesion candidates).
        :param wait: True: run here; return the alarm (``"ok"``, ``"check"`` or ``"repeat"``), the report in
            ``lastReport`` and the NEW nodes in ``lastNodes`` (``table``, ``points``, ``segmentation`` when there
            are candidates). False: run in a child process and return a
            :class:`NMAIExtensionLib.task.TaskHandle`; when it has finished, ``finish(handle)`` does the same.
        :raises NMAIError: invalid input (CT given as PET, μ-map not overlapping the PET...), missing model,
            engine failure; nothing is created then.
        """
        task = self.buildTask(petNode, mumapNode=mumapNode, ctNode=ctNode, model=model, lesionModel=lesionModel,
                              threshold=threshold, rulesOnly=rulesOnly)
        if not wait:
            return task.start()
        return self.finish(task.run(progress))

    def buildTask(self, petNode, mumapNode=None, ctNode=None, model=None, lesionModel=None,
                  threshold: float = DEFAULT_THRESHOLD, rulesOnly: bool = False) -> TriageTask:
        """Check the choices and build the engine task (inputs are checked when it starts, before any write)."""
        if petNode is None:
            raise NMAIError(_("Select the PET volume."))
        if mumapNode is not None and ctNode is not None:
            raise NMAIError(_("Give either the μ-map or the CT the PET was corrected with, not both."))
        attenuation = mumapNode if mumapNode is not None else ctNode
        if attenuation is petNode:
            raise NMAIError(_("The PET itself was selected as its μ-map or CT; select the μ-map or CT series."))
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            raise NMAIError(_("The lesion threshold must be a probability between 0 and 1.")) from None
        if not 0.0 <= threshold <= 1.0:
            raise NMAIError(_("The lesion threshold must be a probability between 0 and 1, not {value:g}.").format(
                value=threshold))
        model, lesionModel = _model_argument(model), _model_argument(lesionModel)
        if rulesOnly and (model or lesionModel):
            raise NMAIError(_("Rules only runs no network: leave the models empty or untick Rules only."))
        inputs = [TaskInput(petNode, default_modality="PT", check=check_pet_input, name="PET")]
        if mumapNode is not None:
            inputs.append(TaskInput(mumapNode, flag="--mumap", check=check_mumap_input, name="μ-map"))
        if ctNode is not None:
            inputs.append(TaskInput(ctNode, flag="--ct", default_units="HU", default_modality="CT",
                                    check=check_ct_input, name="CT"))
        options = ["--threshold", repr(threshold)]
        if rulesOnly:
            options.append("--rules-only")
        if model:
            options += ["--model", model]
        if lesionModel:
            options += ["--lesion-model", lesionModel]
        lesions = not rulesOnly and bool(lesionModel or lesion_model_installed())
        parameters = {"threshold": threshold, "rules_only": bool(rulesOnly), "attenuation":
                      "mumap" if mumapNode is not None else "ct" if ctNode is not None else "none"}
        if attenuation is not None:
            parameters["attenuation_node"] = attenuation.GetName()
        return TriageTask("triage", inputs, [], options=options, lesions=lesions,
                          provenance=Provenance(task="triage", method="rules" if rulesOnly else "",
                                                parameters=parameters))

    def processParameters(self, p, wait: bool = False):
        """Run with the panel's choices (parameter node wrapper): ``attenuationVolume`` is a μ-map or a CT."""
        node = p.attenuationVolume
        role = self.attenuationRole(node) if node is not None else None
        models = {} if p.rulesOnly else {"model": (p.modelPath or "").strip() or None,
                                         "lesionModel": (p.lesionModelPath or "").strip() or None}
        return self.process(p.inputVolume, mumapNode=node if role == "mumap" else None,
                            ctNode=node if role == "ct" else None, threshold=p.threshold, rulesOnly=p.rulesOnly,
                            wait=wait, **models)

    @staticmethod
    def attenuationRole(node) -> str:
        """``"ct"`` for a volume in HU (or of modality CT), else ``"mumap"``."""
        from NMAIExtensionLib import mrml

        units, _source = mrml.node_units(node)
        modality, _source = mrml.node_modality(node)
        return "ct" if units == "HU" or modality == "CT" else "mumap"

    def finish(self, handle) -> str:
        """For a finished handle of ``process(wait=False)``: set ``lastReport``/``lastNodes``, return the alarm.
        Raises NMAIError when the task failed or was cancelled."""
        handle.wait()
        self.lastReport = dict(getattr(handle.task, "report", None) or {})
        self.lastNodes = dict(handle.nodes)
        alarm = self.lastReport.get("alarm") or "ok"
        if alarm != "ok":
            log.warning("NMAI Triage: %s", findings.banner(self.lastReport)[1])
        return alarm

    @staticmethod
    def alarmOf(node) -> str | None:
        """The ``NMAI.alarm`` of a triage output node (None for other nodes)."""
        return node.GetAttribute(findings.ATTR_ALARM) if node is not None else None

    @staticmethod
    def banner(report: dict) -> tuple[str, str]:
        """(alarm, text) for a banner: OK / CHECK / REPEAT and the top finding's message."""
        return findings.banner(report)

    def formatFindings(self, report: dict | None = None) -> str:
        """The findings of a report (default: the last one) as text."""
        return findings.format_report(self.lastReport if report is None else report)

    # ------------------------------------------------------------------ raw-data monitor
    def watch(self, folder, callback=None, timeout_s: float | None = DEFAULT_WATCH_TIMEOUT_S,
              expected_frames: int | None = None, wait: bool = True, **options):
        """Check each frame file as it lands in ``folder`` (``scan.json`` + ``frame_NNNN.npz``).

        :param callback: called with each frame's result dict (``frame``, ``alarm`` ok/check/repeat,
            ``findings`` with messages, ``file``, ``latency_s``); returning False stops the watch.
            ``monitor.format_frame(result)`` makes a line of it.
        :param timeout_s: stop when no new frame arrived for that many seconds (None or 0: never).
        :param expected_frames: stop after that many frames (default: the scan header's ``frames_expected``).
        :param wait: True: watch here (blocks) and return every result (also in ``lastFrames``). False: watch
            in a child process and return a :class:`.monitor.FolderWatch` (call ``poll()`` regularly, e.g.
            from a QTimer; ``stop()`` ends it at once).
        :param options: passed to :func:`nmai.triage.frames.watch_folder` (``poll_s``, ``unreadable_after_s``,
            ``motion_check_mm``, ``rate_tolerance``...; in a child process only the last two).
        :raises NMAIError: no such folder, or no scan header within the timeout (wait=True).
        """
        folder = os.fspath(folder or "")
        if not folder or not os.path.isdir(folder):
            raise NMAIError(_("Folder '{folder}' does not exist; choose the folder the scanner writes its frames "
                              "into.").format(folder=folder))
        if not wait:
            try:
                return FolderWatch(folder, callback, timeout_s=timeout_s or 0.0, expected_frames=expected_frames,
                                   **options).start()
            except OSError as exc:
                raise NMAIError(_("Could not start the NMAI engine: {error}").format(error=exc)) from None
        from nmai.triage.frames import watch_folder

        self.lastFrames = []
        for result in watch_folder(folder, timeout_s=timeout_s or None, expected_frames=expected_frames, **options):
            self.lastFrames.append(result)
            if not call_safely(callback, result):
                break
        return self.lastFrames

    @staticmethod
    def formatFrame(result: dict) -> str:
        """One text line for a frame result."""
        return format_frame(result)

    # ------------------------------------------------------------------ input check

    def checkInput(self, node, units: str | None = None, wait: bool = True, progress=None):
        """What the engine sees in ``node``.

        :param units: units the user declares when the node does not record them (optional).
        :param wait: True: return the report dict. False: return a
            :class:`NMAIExtensionLib.task.TaskHandle`; when it has finished, ``report(handle)`` is the dict.
        :returns: dict with ``node``, ``modality``, ``units``, ``quantity``, ``suv_bw_factor`` (None when
            unavailable, with ``suv_bw_unavailable_reason``), ``shape``, ``spacing``, ``origin_lps``,
            ``direction``, ``statistics``, ``details``, ``units_source``, ``modality_source``, ``warnings``.
        """
        task = EngineTask("info", [TaskInput(node, units=units, name="input")], [],
                          provenance=Provenance(task="info", method="info"))
        if not wait:
            return task.start()
        return self.report(task.run(progress))

    @staticmethod
    def report(handle) -> dict:
        """The report dict of a finished :class:`TaskHandle` (raises NMAIError if it failed)."""
        handle.wait()
        result = handle.result or {}
        volume = handle.task.volumes[0]
        meta = volume.metadata
        report = {"node": meta.get("source_node", "")}
        report.update({k: result.get(k) for k in _INFO_KEYS if k in result})
        report["details"] = {k: v for k, v in (report.get("details") or {}).items() if k != "warnings"}
        report["units_source"] = meta.get("units_source", "")
        report["modality_source"] = meta.get("modality_source", "")
        report["warnings"] = list(meta.get("warnings", []))
        if volume.units == "1":
            report["units"] = None
            report["units_unknown_reason"] = meta.get("units_unknown_reason", "")
        return report

    @staticmethod
    def formatReport(report: dict) -> str:
        """Plain text for the panel's report box."""
        lines = [_("Input: {name}").format(name=report.get("node", ""))]
        units = report.get("units")
        lines.append(_("Modality: {modality}  ({source})").format(
            modality=report.get("modality"), source=report.get("modality_source") or _("not recorded")))
        if units:
            lines.append(_("Units: {units}  ({source})").format(units=units, source=report.get("units_source")))
        else:
            lines.append(_("Units: unknown ({reason})").format(
                reason=report.get("units_unknown_reason") or _("not recorded on the node")))
        if report.get("modality") in ("PT", "OT"):
            for kind, label in (("bw", "SUVbw"), ("lbm", "SUVlbm")):
                factor = report.get(f"suv_{kind}_factor")
                if factor is not None:
                    lines.append(_("{label} factor: {factor:.6g} (multiply Bq/ml by it)").format(
                        label=label, factor=factor))
                else:
                    lines.append(_("{label}: unavailable: {reason}").format(
                        label=label, reason=report.get(f"suv_{kind}_unavailable_reason") or _("unknown")))
        shape, spacing = report.get("shape"), report.get("spacing")
        if shape and spacing:
            lines.append(_("Grid: {shape} voxels of {spacing} mm").format(
                shape=" x ".join(map(str, shape)), spacing=" x ".join(f"{s:g}" for s in spacing)))
        if report.get("origin_lps"):
            lines.append(_("Origin (LPS): {origin} mm").format(
                origin=", ".join(f"{o:g}" for o in report["origin_lps"])))
        if report.get("direction"):
            rows = ["[" + ", ".join(f"{v:.4g}" for v in row) + "]" for row in report["direction"]]
            lines.append(_("Direction (LPS columns i, j, k): {rows}").format(rows=" ".join(rows)))
        stats = report.get("statistics") or {}
        if stats.get("min") is not None:
            lines.append(_("Values: min {min:.6g}, max {max:.6g}, mean {mean:.6g}").format(**stats))
        if stats.get("non_finite_voxels"):
            lines.append(_("Warning: {n} voxels are NaN or infinite").format(n=stats["non_finite_voxels"]))
        for key, value in (report.get("details") or {}).items():
            lines.append(f"{key}: {value}")
        for warning in report.get("warnings") or []:
            lines.append(_("Warning: {warning}").format(warning=warning))
        return "\n".join(lines)
