"""NMAI Triage: PET study triage: artifact alarm, lesion candidates, raw-data monitor, input check.

The panel is thin: it binds its widgets to a parameter node, runs the Logic in a child process (TaskMonitor)
and shows the result: an alarm banner, the findings table (a click jumps the slice views to the finding) and,
in monitor mode, one line per frame. All work is in ``NMAITriageLib`` (importable and tested without the
application) and in the ``nmai`` engine. Heavy libraries (torch, MONAI) are never imported here.
"""

import os
import sys
from typing import Annotated


import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

from slicer import vtkMRMLScalarVolumeNode

_SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "NMAIExtension")
if os.path.isdir(_SHARED) and _SHARED not in sys.path:  # source tree; installed modules share one folder
    sys.path.append(_SHARED)

from NMAITriageLib.logic import DEFAULT_THRESHOLD, NMAITriageLogic  # noqa: E402
from NMAIExtensionLib.gui import ParameterNodeWidgetMixin, TaskMonitor  # noqa: E402

ALARM_STYLE = {  # banner colours: background, text
    "ok": ("#2e7d32", "white"),
    "check": ("#ef6c00", "white"),
    "repeat": ("#c62828", "white"),
}


class NMAITriage(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NMAI Triage")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = ["NMAIExtension"]
        self.parent.contributors = ["NMAI contributors"]
        self.parent.helpText = _(
            "Triage of PET studies. <b>Apply</b> checks a PET (with the μ-map or CT it was corrected with, when "
            "given) for artifacts (motion, breathing, misregistration, truncation, failed detector blocks, metal, "
            "low counts) and lists lesion candidates for a second look. The alarm is OK, CHECK (look, fix the "
            "μ-map and reconstruct) or REPEAT (repeat or extend the scan). New nodes in the PET's study: a "
            "findings table, a point per finding and a segmentation of the candidates; click a table row to jump "
            "to it. <b>Monitor folder</b> checks each raw-data frame as the scanner writes it. <b>Check input</b> "
            "shows what NMAI sees in a volume (modality, units, SUV factor). The input is never modified. The "
            "models were trained on simulated phantoms: check them on your own scanner's data. Research use only.")
        self.parent.acknowledgementText = _("NMAI is an open-source extension for nuclear-medicine imaging.")


@parameterNodeWrapper
class NMAITriageParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    attenuationVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    lesionModelPath: str = ""
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = DEFAULT_THRESHOLD
    rulesOnly: bool = False


class NMAITriageWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    parameterNodeClass = NMAITriageParameterNode

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.monitor = None
        self._points = None  # the markups of the findings shown in the table (point n = row n)
        self._watch = None  # the running folder monitor (NMAITriageLib.monitor.FolderWatch)
        self._watchTimer = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NMAITriage.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NMAITriageLogic()
        self.monitor = TaskMonitor(self.ui.progressBar, self.ui.cancelButton, statusLabel=self.ui.statusLabel,
                                   busyWidgets=[self.ui.applyButton, self.ui.checkInputButton,
                                                self.ui.inputsCollapsibleButton, self.ui.parametersCollapsibleButton],
                                   title=_("NMAI Triage"))
        self.ui.alarmLabel.visible = False
        self.ui.monitorStopButton.enabled = False
        self._watchTimer = qt.QTimer()
        self._watchTimer.setInterval(250)
        self._watchTimer.connect("timeout()", self._pollWatch)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.checkInputButton.connect("clicked(bool)", self.onCheckInputButton)
        self.ui.findingsTableView.connect("selectionChanged()", self.onFindingSelected)
        self.ui.monitorStartButton.connect("clicked(bool)", self.onMonitorStart)
        self.ui.monitorStopButton.connect("clicked(bool)", self.onMonitorStop)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.onMonitorStop()
        ParameterNodeWidgetMixin.cleanup(self)

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        ready = bool(p and p.inputVolume)
        running = self.monitor is not None and self.monitor.running
        if p is not None:
            for widget in (self.ui.modelPathLineEdit, self.ui.lesionModelPathLineEdit, self.ui.thresholdSpinBox):
                widget.enabled = not p.rulesOnly
        self.ui.applyButton.enabled = ready and not running
        self.ui.checkInputButton.enabled = ready and not running
        self.ui.applyButton.toolTip = (_("Triage the selected PET: artifacts, alarm and lesion candidates") if ready
                                       else _("Select a PET volume"))

    # ------------------------------------------------------------------ image triage
    def onApplyButton(self) -> None:
        from NMAIExtensionLib.messages import user_message

        self._showAlarm(None)
        self.ui.findingsTableView.setMRMLTableNode(None)
        self._points = None
        try:
            import NMAIExtension

            if not NMAIExtension.NMAIExtensionLogic().ensureDependencies(requester=_("NMAI Triage")):
                return
            handle = self.logic.processParameters(self._parameterNode, wait=False)
        except Exception as exc:
            slicer.util.errorDisplay(user_message(exc), windowTitle=_("NMAI Triage"))
            return
        self.monitor.start(handle, onSuccess=self.onTriaged, onFinished=self._checkCanApply)

    def onTriaged(self, handle) -> None:
        self.logic.finish(handle)
        self._showAlarm(self.logic.lastReport)
        table, self._points = handle.nodes.get("table"), handle.nodes.get("points")
        self.ui.findingsTableView.setMRMLTableNode(table)
        self.ui.resultsCollapsibleButton.collapsed = False
        slicer.util.setSliceViewerLayers(background=self._parameterNode.inputVolume, fit=False)
        note = self.logic.lastReport.get("lesions_note")
        if note:
            self.ui.statusLabel.text = self.ui.statusLabel.text + " " + note

    def _showAlarm(self, report) -> None:
        if not report:
            self.ui.alarmLabel.visible = False
            return
        alarm, text = self.logic.banner(report)
        background, colour = ALARM_STYLE.get(alarm, ALARM_STYLE["check"])
        self.ui.alarmLabel.text = text
        self.ui.alarmLabel.setStyleSheet(f"QLabel {{ background-color: {background}; color: {colour}; "
                                         "font-weight: bold; padding: 6px; border-radius: 3px; }")
        self.ui.alarmLabel.visible = True

    def onFindingSelected(self) -> None:
        """Jump the slice views to the finding of the current table row (control point n = row n)."""
        view, points = self.ui.findingsTableView, self._points
        index = view.currentIndex()
        if points is None or points.GetScene() is None or not index.isValid():
            return
        source = view.sortFilterProxyModel().mapToSource(index)
        try:
            row = view.tableModel().mrmlTableRowIndex(source)
        except AttributeError:  # not wrapped: rows are the table's (column names are the header)
            row = source.row()
        if 0 <= row < points.GetNumberOfControlPoints():
            slicer.modules.markups.logic().JumpSlicesToNthPointInMarkup(points.GetID(), row, True)

    # ------------------------------------------------------------------ input check
    def onCheckInputButton(self) -> None:
        from NMAIExtensionLib.messages import user_message

        self.ui.reportTextEdit.setPlainText("")
        try:
            import NMAIExtension

            if not NMAIExtension.NMAIExtensionLogic().ensureDependencies(requester=_("NMAI Triage")):
                return
            handle = self.logic.checkInput(self._parameterNode.inputVolume, wait=False)
        except Exception as exc:
            slicer.util.errorDisplay(user_message(exc), windowTitle=_("NMAI Triage"))
            return
        self.monitor.start(handle, onSuccess=self.onReport, onFinished=self._checkCanApply)

    def onReport(self, handle) -> None:
        self.ui.reportTextEdit.setPlainText(NMAITriageLogic.formatReport(NMAITriageLogic.report(handle)))
        self.ui.resultsCollapsibleButton.collapsed = False

    # ------------------------------------------------------------------ folder monitor
    def onMonitorStart(self) -> None:
        from NMAIExtensionLib.messages import user_message

        self.onMonitorStop()
        folder = self.ui.monitorDirectoryButton.directory
        self.ui.monitorTextEdit.setPlainText(_("Watching {folder} ...").format(folder=folder))
        try:
            self._watch = self.logic.watch(folder, self._onFrame, wait=False)
        except Exception as exc:
            slicer.util.errorDisplay(user_message(exc), windowTitle=_("NMAI Triage"))
            return
        self.ui.monitorStartButton.enabled = False
        self.ui.monitorStopButton.enabled = True
        self._watchTimer.start()

    def _onFrame(self, result) -> None:
        self.ui.monitorTextEdit.appendPlainText(NMAITriageLogic.formatFrame(result))

    def _pollWatch(self) -> None:
        watch = self._watch
        if watch is None:
            self._watchTimer.stop()
            return
        watch.poll()
        if watch.finished:
            self._endWatch()

    def onMonitorStop(self) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._endWatch()

    def _endWatch(self) -> None:
        watch, self._watch = self._watch, None
        self._watchTimer.stop()
        self.ui.monitorTextEdit.appendPlainText(watch.summary)
        self.ui.monitorStartButton.enabled = True
        self.ui.monitorStopButton.enabled = False


class NMAITriageTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Developer mode: Reload and Test). Logic details are covered by pytest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_check_input_reports_units_and_suv()
        self.setUp()
        self.test_truncated_mumap_gives_check_alarm_and_findings_nodes()

    def test_check_input_reports_units_and_suv(self):
        import numpy as np

        from NMAIExtensionLib import mrml
        from nmai import Volume

        self.delayDisplay("Checking a synthetic PET volume")
        data = np.random.default_rng(0).gamma(3.0, 1000.0, size=(8, 10, 12)).astype(np.float32)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET")
        mrml.update_node_from_volume(node, Volume(data, modality="PT", units="Bq/ml",
                                                  metadata={"suv_bw_factor": 2e-4}))
        nodes_before = slicer.mrmlScene.GetNumberOfNodes()
        report = NMAITriageLogic().checkInput(node)
        self.assertEqual(report["modality"], "PT")
        self.assertEqual(report["units"], "Bq/ml")
        self.assertAlmostEqual(report["suv_bw_factor"], 2e-4)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodes_before)
        self.delayDisplay("Test passed")

    def test_truncated_mumap_gives_check_alarm_and_findings_nodes(self):
        import numpy as np

        from NMAIExtensionLib import mrml
        from nmai import Volume

        self.delayDisplay("Triage (rules only) of a PET with a truncated μ-map")
        k, j, i = np.mgrid[:24, :40, :40]
        radius2 = (j - 20) ** 2 + (i - 20) ** 2
        pet = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET")
        mrml.update_node_from_volume(pet, Volume((radius2 < 18 ** 2).astype(np.float32) * 5000.0, (4.0, 4.0, 4.0),
                                                 modality="PT", units="Bq/ml", metadata={"suv_bw_factor": 2e-4}))
        mu = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mu-map")
        mrml.update_node_from_volume(mu, Volume((radius2 < 9 ** 2).astype(np.float32) * 0.096, (4.0, 4.0, 4.0),
                                                modality="OT", units="cm-1"))
        logic = NMAITriageLogic()
        alarm = logic.process(pet, mumapNode=mu, rulesOnly=True)
        self.assertEqual(alarm, "check")
        table = logic.lastNodes["table"]
        self.assertEqual(table.GetCellText(0, 1), "truncation")
        self.assertEqual(table.GetAttribute("NMAI.alarm"), "check")
        self.assertEqual(logic.lastNodes["points"].GetNumberOfControlPoints(), 1)
        self.delayDisplay("Test passed")
