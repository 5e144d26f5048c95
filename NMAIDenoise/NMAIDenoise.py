"""NMAI Denoise: PET denoising (residual CNN, GAN, super-resolution, Gaussian baseline) and before/after metrics.

The panel is thin: it binds its widgets to a parameter node, starts the Logic in a child process and shows
its progress, then the metrics table and the engine's note. All work is in ``NMAIDenoiseLib`` (importable and
tested without the application) and in the ``nmai`` engine. Heavy libraries (torch, MONAI) are never
imported here.
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

from NMAIDenoiseLib.logic import DEFAULT_FWHM_MM, FWHM_RANGE_MM, METHODS, NMAIDenoiseLogic  # noqa: E402
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
            "Methods: cnn (residual U-Net trained on low-count to full-count pairs), gan (the same network "
            "trained adversarially, keeping noise texture and lesion contrast), sr (super-resolution of a "
            "large-crystal scanner's images; it over-sharpens images that are already sharper) and the "
            "Gaussian post-filter (the baseline). The learned models were trained on simulated phantoms: check "
            "them on your own scanner's data. After a run, a table compares the input and the output: body mean "
            "and max; with a full-count reference, PSNR, SSIM and NRMSE in the body; with a uniform region, its "
            "mean, SD and CoV; with a lesion, SUVmax, SUVpeak (1 ml) and SUVmean. Research use only.")
        self.parent.acknowledgementText = _("NMAI is an open-source extension for nuclear-medicine imaging.")


@parameterNodeWrapper
class NMAIDenoiseParameterNode:
    inputVolume: vtkMRMLScalarVolumeNode
    inputUnits: Annotated[str, Choice([UNITS_FROM_NODE, "Bq/ml", "SUVbw", "SUVlbm"])] = UNITS_FROM_NODE
    method: Annotated[str, Choice(list(METHODS))] = "cnn"
    fwhmMm: Annotated[float, WithinRange(*FWHM_RANGE_MM)] = DEFAULT_FWHM_MM
    fitSignificance: Annotated[float, WithinRange(-1.0, 10.0)] = -1.0   # < 0: the model card's
    modelPath: str = ""
    referenceVolume: vtkMRMLScalarVolumeNode


class NMAIDenoiseWidget(ParameterNodeWidgetMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    parameterNodeClass = NMAIDenoiseParameterNode

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.monitor = None
        self._metricsRequest = None  # the metric inputs chosen when Apply was pressed

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/NMAIDenoise.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = NMAIDenoiseLogic()
        self.monitor = TaskMonitor(self.ui.progressBar, self.ui.cancelButton, statusLabel=self.ui.statusLabel,
                                   busyWidgets=[self.ui.applyButton, self.ui.inputsCollapsibleButton,
                                                self.ui.parametersCollapsibleButton,
                                                self.ui.metricsCollapsibleButton],
                                   title=_("NMAI Denoise"))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.initializeParameterNode()

    def setDefaultParameters(self, p) -> None:
        ParameterNodeWidgetMixin.setDefaultParameters(self, p)
        if p.method != "gaussian" and not p.modelPath and not self.logic.modelInstalled(p.method):
            p.method = "gaussian"  # the built-in model is not installed: start from the method that runs

    def _checkCanApply(self, caller=None, event=None) -> None:
        p = self._parameterNode
        method = p.method if p else "gaussian"
        gaussian = method == "gaussian"
        self.ui.fwhmSpinBox.enabled = gaussian
        self.ui.modelPathLineEdit.enabled = not gaussian
        self.ui.fitSignificanceSpinBox.enabled = not gaussian
        self.ui.methodComboBox.toolTip = self._methodTip(method)
        ready = bool(p and p.inputVolume)
        running = self.monitor is not None and self.monitor.running
        self.ui.applyButton.enabled = ready and not running
        self.ui.applyButton.toolTip = (_("Denoise the selected PET volume into a new volume") if ready
                                       else _("Select a PET volume"))

    @staticmethod
    def _methodTip(method: str) -> str:
        return {
            "cnn": _("Residual U-Net trained on low-count -> full-count pairs (5-50 % counts)"),
            "gan": _("The same network trained adversarially: keeps noise texture and lesion contrast"),
            "sr": _("Super-resolution of images from a large-crystal scanner without PSF modelling (the "
                    "model card's): over-sharpens images that are already sharper"),
            "gaussian": _("Gaussian post-filter of the chosen FWHM: the baseline every learned method must beat"),
        }.get(method, "")

    @staticmethod
    def _segment(selector):
        """(segmentation node, segment ID) chosen in a segment selector, or None."""
        node = selector.currentNode()
        return (node, selector.currentSegmentID()) if node is not None else None

    def onApplyButton(self) -> None:
        from NMAIExtensionLib.messages import user_message

        p = self._parameterNode
        try:
            import NMAIExtension

            if not NMAIExtension.NMAIExtensionLogic().ensureDependencies(requester=_("NMAI Denoise")):
                return
            handle = self.logic.processParameters(p, wait=False)
        except Exception as exc:
            slicer.util.errorDisplay(user_message(exc), windowTitle=_("NMAI Denoise"))
            return
        self._metricsRequest = dict(inputNode=p.inputVolume, referenceNode=p.referenceVolume,
                                    region=self._segment(self.ui.regionSegmentSelector),
                                    lesion=self._segment(self.ui.lesionSegmentSelector))
        self.ui.metricsTableView.setMRMLTableNode(None)
        self.monitor.start(handle, onSuccess=self.onDenoised, onFinished=self._checkCanApply)

    def onDenoised(self, handle) -> None:
        from NMAIExtensionLib.messages import user_message

        slicer.util.setSliceViewerLayers(background=handle.node, fit=False)
        status = [self.ui.statusLabel.text]
        note = self.logic.noteOf(handle)
        if note:
            status.append(_("Note: {note}.").format(note=note))
        request, self._metricsRequest = self._metricsRequest or {}, None
        try:
            table = self.logic.metrics(request.get("inputNode"), handle.node,
                                       referenceNode=request.get("referenceNode"), region=request.get("region"),
                                       lesion=request.get("lesion"))
        except Exception as exc:
            status.append(_("Metrics not computed: {error}").format(error=user_message(exc)))
        else:
            self.ui.metricsTableView.setMRMLTableNode(table)
            self.ui.resultsCollapsibleButton.collapsed = False
            status.append(_("Metrics in {table} ({units}).").format(
                table=table.GetName(), units=table.GetAttribute("NMAI.metricsUnits")))
        self.ui.statusLabel.text = " ".join(s for s in status if s)


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

        self.delayDisplay("Before/after metrics in a lesion segment")
        labels = np.zeros(data.shape, np.uint8)
        labels[6:10, 8:12, 10:14] = 1
        labelmap = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lesion label")
        slicer.util.updateVolumeFromArray(labelmap, labels)
        mrml.set_ijk_to_ras(labelmap, mrml.ijk_to_ras(node))
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(0)
        table = NMAIDenoiseLogic().metrics(node, out, lesion=(segmentation, segment_id))
        rows = {table.GetCellText(r, 0): float(table.GetCellText(r, 1)) for r in range(table.GetNumberOfRows())}
        self.assertAlmostEqual(rows["Lesion max"], float(before[labels > 0].max()), places=2)
        self.delayDisplay("Test passed")
