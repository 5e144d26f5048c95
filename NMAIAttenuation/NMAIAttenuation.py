"""NMAI Attenuation: PET attenuation map (μ at 511 keV, cm⁻¹) from CT, or from MR (U-Net, Dixon 4-class).

The panel is thin: it binds its widgets to a parameter node, starts the Logic in a child process and shows
its progress. All work is in ``NMAIAttenuationLib.logic`` (importable and tested without the application) and
in the ``nmai`` engine. Heavy libraries (torch, MONAI) are never imported here.
"""

import os
import sys
from typing import Annotated


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

from NMAIAttenuationLib.logic import INPUT_CHOICES, KVP_CHOICES, MR_METHODS, NMAIAttenuationLogic  # noqa: E402
from NMAIExtensionLib.gui import ParameterNodeWidgetMixin, TaskMonitor  # noqa: E402

DIXON, T1, CT = list(INPUT_CHOICES)


class NMAIAttenuation(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("NMAI Attenuation")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Nuclear Medicine")]
        self.parent.dependencies = ["NMAIExtension"]
        self.parent.contributors = ["NMAI contributors"]
        self.parent.helpText = _(
            "Make a PET attenuation map (linear attenuation coefficients at 511 keV, cm⁻¹). From a CT: bilinear "
            "conversion of CT numbers for the CT's tube voltage (Carney et al., Med Phys 2006). From MR (Dixon "
            "water + fat, or a T1-weighted image): a MONAI U-Net trained on simulated PET/MR phantoms (bone "
            "included), or the Dixon 4-class reference (air, lung, fat, soft tissue; no bone, so PET in bone is "
            "underestimated). MR runs also make a pseudo-CT (HU). With a CT to compare with, a μ difference map "
            "and a table of regional differences are added. Results are NEW volumes named after the first "
            "input, on its grid, in its study; inputs are never modified. Research use only.")
        self.parent.acknowledgementText = _("NMAI is an open-source extension for nuclear-medicine imaging.")


@parameterNodeWrapper
class NMAIAttenuationParameterNode:
    inputType: Annotated[str, Choice(list(INPUT_CHOICES))] = DIXON
    waterVolume: vtkMRMLScalarVolumeNode
    fatVolume: vtkMRMLScalarVolumeNode
    t1Volume: vtkMRMLScalarVolumeNode
    ctVolume: vtkMRMLScalarVolumeNode
    compareCtVolume: vtkMRMLScalarVolumeNode
    kvp: Annotated[int, Choice(list(KVP_CHOICES))] = 120
    method: Annotated[str, Choice(list(MR_METHODS))] = "unet"
    modelPath: str = ""
    pseudoCt: bool = True


class NMAIAttenuationWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    parameterNodeClass = NMAIAttenuationParameterNode

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.monitor = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NMAIAttenuation.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NMAIAttenuationLogic()
        self.monitor = TaskMonitor(self.ui.progressBar, self.ui.cancelButton, statusLabel=self.ui.statusLabel,
                                   busyWidgets=[self.ui.applyButton, self.ui.inputsCollapsibleButton,
                                                self.ui.parametersCollapsibleButton],
                                   title=_("NMAI Attenuation"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def setDefaultParameters(self, p) -> None:
        if not p.ctVolume:
            first = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if first:
                p.ctVolume = first
        if p.method == "unet" and not p.modelPath and not self.logic.unetInstalled("dixon"):
            p.method = "dixon4"  # the U-Net model is not installed: start from the method that runs

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        kind = p.inputType if p else DIXON
        mr = kind != CT
        for widget, shown in ((self.ui.waterSelector, kind == DIXON), (self.ui.waterSelectorCaption, kind == DIXON),
                              (self.ui.fatSelector, kind == DIXON), (self.ui.fatSelectorCaption, kind == DIXON),
                              (self.ui.t1Selector, kind == T1), (self.ui.t1SelectorCaption, kind == T1),
                              (self.ui.inputSelector, not mr), (self.ui.inputSelectorCaption, not mr),
                              (self.ui.compareCtSelector, mr), (self.ui.compareCtSelectorCaption, mr),
                              (self.ui.methodComboBox, mr), (self.ui.methodComboBoxCaption, mr),
                              (self.ui.modelPathLineEdit, mr), (self.ui.modelPathLineEditCaption, mr),
                              (self.ui.pseudoCtCheckBox, mr), (self.ui.pseudoCtCheckBoxCaption, mr),
                              (self.ui.methodLabel, not mr), (self.ui.methodLabelCaption, not mr)):
            widget.visible = shown
        self.ui.outputLabel.text = (_("new volumes [input]_mumap (cm⁻¹) and [input]_pseudoCT (HU) on the first "
                                      "MR image's grid; with a CT to compare: [input]_mudiff and a table "
                                      "[input]_mu_vs_CT")
                                    if mr else _("a new volume [ct]_mumap in cm⁻¹ on the CT's grid, in the "
                                                 "CT's study"))
        ready = bool(p) and bool({DIXON: p.waterVolume and p.fatVolume, T1: p.t1Volume,
                                  CT: p.ctVolume}.get(kind))
        running = self.monitor is not None and self.monitor.running
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = (_("Make the μ-map from the selected images") if ready
                                       else _("Select the input images"))

    def onApplyButton(self) -> None:
        from NMAIExtensionLib.messages import user_message

        p = self._parameterNode
        try:
            import NMAIExtension

            if not NMAIExtension.NMAIExtensionLogic().ensureDependencies(requester=_("NMAI Attenuation")):
                return
            handle = self.logic.processParameters(p, wait=False)
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
        self.setUp()
        self.test_dixon4_mumap_and_pseudo_ct()

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

    def test_dixon4_mumap_and_pseudo_ct(self):
        import numpy as np

        self.delayDisplay("Dixon 4-class μ-map and pseudo-CT from synthetic water/fat images")
        water = np.zeros((12, 40, 40), np.float32)
        fat = np.zeros_like(water)
        water[2:10, 8:32, 8:32], fat[2:10, 8:32, 8:32] = 900.0, 40.0  # soft tissue
        fat[2:10, 8:32, 8:11], water[2:10, 8:32, 8:11] = 800.0, 60.0  # a fat layer
        nodes = []
        for name, array in (("Dixon W", water), ("Dixon F", fat)):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
            node.SetSpacing(6.0, 6.0, 6.0)
            slicer.util.updateVolumeFromArray(node, array)
            nodes.append(node)
        logic = NMAIAttenuationLogic()
        mu = logic.process(water=nodes[0], fat=nodes[1], method="dixon4")
        self.assertEqual(mu.GetName(), "Dixon W_mumap")
        values = slicer.util.arrayFromVolume(mu)
        self.assertAlmostEqual(float(values[5, 20, 20]), 0.1, places=4)
        self.assertAlmostEqual(float(values[5, 20, 9]), 0.0854, places=4)
        self.assertEqual(logic.lastOutputs["pseudo_ct"].GetName(), "Dixon W_pseudoCT")
        self.delayDisplay("Test passed")
