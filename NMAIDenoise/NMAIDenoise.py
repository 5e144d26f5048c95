"""NMAI Denoise: PET denoising (Gaussian post-filter baseline; learned methods later).

The panel is thin: it binds its widgets to a parameter node, starts the Logic in a child process and shows
its progress. All work is in ``NMAIDenoiseLib.logic`` (importable and tested without the application) and
in the ``nmai`` engine. Heavy libraries (torch, MONAI) are never imported here.
"""

import os
import sys
from typing import Annotated


import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
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

from NMAIDenoiseLib.logic import FWHM_RANGE_MM, METHODS, NMAIDenoiseLogic  # noqa: E402
from NMAIExtensionLib.gui import ParameterNodeWidgetMixin, TaskMonitor  # noqa: E402

UNITS_FROM_NODE = "recorded on the node"


class NMAIDenoise(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NMAI Denoise")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = ["NMAIExtension"]
        self.parent.contributors = ["NMAI contributors"]
        self.parent.helpText = _(
            "Denoise a PET volume. The result is a NEW volume named &lt;input&gt;_denoised in the same study, "
            "with the input's units (Bq/ml or SUV), geometry and PET display. The input is never modified. "
            "Method: Gaussian post-filter with the chosen FWHM (the baseline every learned method must beat).")
        self.parent.acknowledgementText = _("NMAI is an open-source extension for nuclear-medicine imaging.")


@parameterNodeWrapper
class NMAIDenoiseParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    inputUnits: Annotated[str, Choice([UNITS_FROM_NODE, "Bq/ml", "SUVbw", "SUVlbm"])] = UNITS_FROM_NODE
    method: Annotated[str, Choice(list(METHODS))] = "gaussian"
    fwhmMm: Annotated[float, WithinRange(*FWHM_RANGE_MM)] = 6.0


class NMAIDenoiseWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    parameterNodeClass = NMAIDenoiseParameterNode

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.monitor = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NMAIDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NMAIDenoiseLogic()
        self.monitor = TaskMonitor(self.ui.progressBar, self.ui.cancelButton, statusLabel=self.ui.statusLabel,
                                   busyWidgets=[self.ui.applyButton, self.ui.inputsCollapsibleButton,
                                                self.ui.parametersCollapsibleButton],
                                   title=_("NMAI Denoise"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def _checkCanApply(self, caller=None, event=None) -> None:
        ready = bool(self._parameterNode and self._parameterNode.inputVolume)
        running = self.monitor is not None and self.monitor.running
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = (_("Denoise the selected PET volume into a new volume") if ready
                                       else _("Select a PET volume"))

    def onApplyButton(self) -> None:
        from NMAIExtensionLib.messages import user_message

        p = self._parameterNode
        units = None if p.inputUnits == UNITS_FROM_NODE else p.inputUnits
        try:
            import NMAIExtension

            if not NMAIExtension.NMAIExtensionLogic().ensureDependencies(requester=_("NMAI Denoise")):
                return
            handle = self.logic.process(p.inputVolume, method=p.method, fwhm_mm=p.fwhmMm, units=units,
                                        wait=False)
        except Exception as exc:
            slicer.util.errorDisplay(user_message(exc), windowTitle=_("NMAI Denoise"))
            return
        self.monitor.start(handle, onSuccess=self.onDenoised, onFinished=self._checkCanApply)

    def onDenoised(self, handle) -> None:
        slicer.util.setSliceViewerLayers(background=handle.node, fit=False)


class NMAIDenoiseTest(ScriptedLoadableModuleTest):
    """Runs in Slicer (Developer mode: Reload and Test). Logic details are covered by pytest."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_denoise_makes_new_pet_node()

    def test_denoise_makes_new_pet_node(self):
        import numpy as np

        from NMAIExtensionLib import mrml
        from nmai import Volume

        self.delayDisplay("Denoising a synthetic PET volume")
        data = np.random.default_rng(0).gamma(3.0, 1000.0, size=(16, 20, 24)).astype(np.float32)
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET")
        mrml.update_node_from_volume(node, Volume(data, (2.0, 2.0, 3.0), modality="PT", units="Bq/ml",
                                                  metadata={"suv_bw_factor": 2e-4}))
        before = slicer.util.arrayFromVolume(node).copy()
        out = NMAIDenoiseLogic().process(node, method="gaussian", fwhm_mm=6.0)
        self.assertEqual(out.GetName(), "PET_denoised")
        self.assertEqual(out.GetAttribute("NMAI.units"), "Bq/ml")
        self.assertTrue(np.array_equal(before, slicer.util.arrayFromVolume(node)))
        self.assertLess(float(slicer.util.arrayFromVolume(out).std()), float(before.std()))
        self.delayDisplay("Test passed")
