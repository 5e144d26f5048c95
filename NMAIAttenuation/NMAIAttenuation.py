"""NMAI Attenuation: PET attenuation map (μ at 511 keV, cm⁻¹) from CT.

The panel is thin: it binds its widgets to a parameter node, starts the Logic in a child process and shows
its progress. All work is in ``NMAIAttenuationLib.logic`` (importable and tested without the application) and
in the ``nmai`` engine. Heavy libraries (torch, MONAI) are never imported here.
"""

import os
import sys
from typing import Annotated, Optional

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, parameterNodeWrapper
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

from NMAIAttenuationLib.logic import KVP_CHOICES, NMAIAttenuationLogic  # noqa: E402


class NMAIAttenuation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NMAI Attenuation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = ["NMAIExtension"]
        self.parent.contributors = ["NMAI contributors"]
        self.parent.helpText = _(
            "Make a PET attenuation map from a CT: linear attenuation coefficients at 511 keV in cm⁻¹, by "
            "bilinear conversion of CT numbers for the CT's tube voltage (Carney et al., Med Phys 2006). "
            "The result is a NEW volume named &lt;ct&gt;_mumap on the CT's grid, in the same study. "
            "The CT is never modified.")
        self.parent.acknowledgementText = _("NMAI is an open-source extension for nuclear-medicine imaging.")


@parameterNodeWrapper
class NMAIAttenuationParameterNode:
    ctVolume: vtkMRMLScalarVolumeNode
    kvp: Annotated[int, Choice(list(KVP_CHOICES))] = 120


class NMAIAttenuationWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.monitor = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NMAIAttenuation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        from NMAIExtensionLib.gui import TaskMonitor

        self.logic = NMAIAttenuationLogic()
        self.monitor = TaskMonitor(self.ui.progressBar, self.ui.cancelButton, statusLabel=self.ui.statusLabel,
                                   busyWidgets=[self.ui.applyButton, self.ui.inputsCollapsibleButton,
                                                self.ui.parametersCollapsibleButton],
                                   title=_("NMAI Attenuation"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.monitor is not None and self.monitor.running:
            self.monitor.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        self.setParameterNode(None)

    def onSceneStartClose(self, caller, event) -> None:
        if self.monitor is not None and self.monitor.running:
            self.monitor.cancel()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(NMAIAttenuationParameterNode(self.logic.getParameterNode()))
        if not self._parameterNode.ctVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                self._parameterNode.ctVolume = first

    def setParameterNode(self, inputParameterNode: Optional[NMAIAttenuationParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._checkCanApply)
            self._checkCanApply()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.ctVolume)
        running = self.monitor is not None and self.monitor.running
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = (_("Make a μ-map from the selected CT") if ready
                                       else _("Select a CT volume"))

    def onApplyButton(self) -> None:
        from NMAIExtensionLib.messages import user_message

        p = self._parameterNode
        try:
            import NMAIExtension

            if not NMAIExtension.NMAIExtensionLogic().ensureDependencies(requester=_("NMAI Attenuation")):
                return
            handle = self.logic.process(ctNode=p.ctVolume, kvp=p.kvp, wait=False)
        except Exception as exc:
            slicer.util.errorDisplay(user_message(exc), windowTitle=_("NMAI Attenuation"))
            return
        self.monitor.start(handle, onSuccess=self.onMuMapCreated, onFinished=self._checkCanApply)

    def onMuMapCreated(self, handle) -> None:
        slicer.util.setSliceViewerLayers(background=handle.node, fit=False)


class NMAIAttenuationTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Developer mode: Reload and Test). Logic details are covered by pytest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ct_to_mumap()

    def test_ct_to_mumap(self):
        import numpy as np

        self.delayDisplay("Converting a synthetic CT to a μ-map")
        hu = np.full((8, 10, 12), -1000, dtype=np.int16)
        hu[2:6, 2:8, 2:10] = 0  # water
        hu[3:5, 4:6, 4:8] = 1000  # bone
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT")
        slicer.util.updateVolumeFromArray(node, hu)
        mu = NMAIAttenuationLogic().process(ctNode=node, kvp=120)
        self.assertEqual(mu.GetName(), "CT_mumap")
        self.assertEqual(mu.GetAttribute("NMAI.units"), "cm-1")
        values = slicer.util.arrayFromVolume(mu)
        self.assertAlmostEqual(float(values[0, 0, 0]), 0.0, places=4)
        self.assertAlmostEqual(float(values[2, 2, 2]), 0.096, places=3)
        self.delayDisplay("Test passed")
