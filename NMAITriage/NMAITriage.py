"""NMAI Triage: PET study triage. Implemented so far: "Check input" (what the engine sees in a volume).

The panel is thin: it binds its widgets to a parameter node, runs the Logic in a child process and shows
the report. All work is in ``NMAITriageLib.logic`` (importable and tested without the application) and in
the ``nmai`` engine. Heavy libraries (torch, MONAI) are never imported here.
"""

import os
import sys


import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import parameterNodeWrapper
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

from NMAITriageLib.logic import NMAITriageLogic  # noqa: E402
from NMAIExtensionLib.gui import ParameterNodeWidgetMixin, TaskMonitor  # noqa: E402


class NMAITriage(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NMAI Triage")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = ["NMAIExtension"]
        self.parent.contributors = ["NMAI contributors"]
        self.parent.helpText = _(
            "Triage of PET studies. Available now: <b>Check input</b> shows what NMAI sees in a volume before "
            "any analysis: modality, units (Bq/ml or SUV), the SUV factor or why SUV is unavailable, and the "
            "voxel grid. Nothing is created or modified.")
        self.parent.acknowledgementText = _("NMAI is an open-source extension for nuclear-medicine imaging.")


@parameterNodeWrapper
class NMAITriageParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode


class NMAITriageWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    parameterNodeClass = NMAITriageParameterNode

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.monitor = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NMAITriage.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NMAITriageLogic()
        self.monitor = TaskMonitor(self.ui.progressBar, self.ui.cancelButton, statusLabel=self.ui.statusLabel,
                                   busyWidgets=[self.ui.checkInputButton, self.ui.inputsCollapsibleButton],
                                   title=_("NMAI Triage"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.checkInputButton.connect("clicked(bool)", self.onCheckInputButton)
        self.initializeParameterNode()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        running = self.monitor is not None and self.monitor.running
        self.ui.checkInputButton.enabled = ready and not running
        self.ui.checkInputButton.toolTip = (_("Show what NMAI sees in the selected volume") if ready
                                            else _("Select a volume"))

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


class NMAITriageTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Developer mode: Reload and Test). Logic details are covered by pytest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_check_input_reports_units_and_suv()

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
