"""NMAI Triage Logic. For now: input quality control only ("Check input").

``checkInput(node)`` exports the node exactly as every NMAI task would and asks the engine (``nmai info``)
what it sees: modality, units, SUV factor (or why SUV is unavailable), geometry and value statistics.
It creates no node. Lesion triage itself has no engine yet, so nothing else is offered.

Console::

    from NMAITriageLib import NMAITriageLogic
    report = NMAITriageLogic().checkInput(getNode("PET"))
    print(NMAITriageLogic.formatReport(report))
"""

from __future__ import annotations

import os
import sys

try:
    import NMAIExtensionLib  # noqa: F401
except ImportError:  # source tree: the shared library lives in the hidden core module's folder
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "NMAIExtension"))

from NMAIExtensionLib.messages import _
from NMAIExtensionLib.outputs import Provenance
from NMAIExtensionLib.parameters import ModuleLogic
from NMAIExtensionLib.task import EngineTask, TaskInput

# what the engine's info result holds that the report repeats as is
_INFO_KEYS = ("modality", "units", "quantity", "shape", "spacing", "origin_lps", "direction",
              "suv_bw_factor", "suv_bw_unavailable_reason", "suv_lbm_factor", "suv_lbm_unavailable_reason",
              "statistics", "details")


class NMAITriageLogic(ModuleLogic):
    """Triage of PET studies. Implemented so far: the input check."""

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
