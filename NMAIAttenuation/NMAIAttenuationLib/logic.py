"""NMAI Attenuation Logic: CT or MR volume nodes in, NEW μ-map (and pseudo-CT, difference, table) nodes out.

Console::

    from NMAIAttenuationLib import NMAIAttenuationLogic
    logic = NMAIAttenuationLogic()
    mu = logic.process(ctNode=getNode("CT"), kvp=120)                                   # CT -> μ (bilinear)
    mu = logic.process(water=getNode("Dixon W"), fat=getNode("Dixon F"), method="unet")  # MR U-Net
    mu = logic.process(t1=getNode("T1"), compareCt=getNode("CT"))                         # T1 U-Net vs a CT
    logic.lastOutputs   # {"mumap", "pseudo_ct", "difference", "comparison"}: every node the last run made

Methods: ``ct`` (bilinear CT-number -> μ, Carney et al. 2006), ``unet`` (MONAI U-Net from Dixon water + fat
or from T1; the default for MR when the model is installed) and ``dixon4`` (the Dixon 4-class reference:
air, lung, fat, soft tissue; no bone). MR runs also make a pseudo-CT (HU, the inverse bilinear conversion
of the μ-map). With ``compareCt``, the CT is resampled onto the MR grid and converted to μ: a difference map
(method − CT μ, cm⁻¹) and a table of the mean difference per CT-derived class (air, lung, fat, soft tissue,
bone; cm⁻¹ and %) are added.

Imports neither qt nor the Slicer application: tested with pytest and slicer-core.
"""

from __future__ import annotations

import math
import os
import sys

try:
    import NMAIExtensionLib  # noqa: F401
except ImportError:  # source tree: the shared library lives in the hidden core module's folder
    sys.path.append(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "NMAIExtension"))

from NMAIExtensionLib import outputs
from NMAIExtensionLib.messages import _
from NMAIExtensionLib.outputs import Provenance
from NMAIExtensionLib.parameters import ModuleLogic
from NMAIExtensionLib.task import EngineTask, TaskInput, TaskOutput
from nmai.errors import NMAIError
from nmai.mu import CARNEY

METHODS = ("ct", "unet", "dixon4")
MR_METHODS = ("unet", "dixon4")
# the panel's input choice (label shown -> input kind)
INPUT_CHOICES = {"Dixon water + fat": "dixon", "T1-weighted MR": "t1", "CT": "ct"}
KVP_CHOICES = tuple(sorted(CARNEY))
DIFFERENCE_WINDOW = (-0.05, 0.05)  # cm^-1
TABLE_COLUMNS = (  # (result key, column name, unit, description)
    ("voxels", "Voxels", "", "voxels of the class inside the CT's field of view"),
    ("volume_ml", "Volume", "ml", "volume of the class"),
    ("ct_mu_mean", "CT μ", "cm-1", "mean μ at 511 keV from the CT (bilinear)"),
    ("method_mu_mean", "Method μ", "cm-1", "mean μ of the MR-derived μ-map"),
    ("difference_mean", "Difference", "cm-1", "mean of method − CT μ"),
    ("difference_pct", "Difference %", "%", "mean difference / mean CT μ of the class"),
)


def check_ct_input(volume) -> None:
    """Fail early when the volume is not a CT in Hounsfield units."""
    from nmai.validate import check_volume

    name = volume.metadata.get("source_node", "input")
    if volume.modality not in ("CT", "OT") or volume.units != "HU":
        raise NMAIError(_("'{name}' is a {modality} volume in {units}, not a CT in Hounsfield units. "
                          "Select the CT series.").format(name=name, modality=volume.modality,
                                                          units=volume.units))
    check_volume(volume, f"'{name}'")


def check_mr_input(volume) -> None:
    """Fail early when the volume is not an MR image (PET, CT, μ-maps and segmentations are refused)."""
    from nmai.attenuation.unet import check_mr_input as check

    check(volume, "'{}'".format(volume.metadata.get("source_node", "MR")))


def create_comparison_table(comparison: dict, *, reference, provenance: Provenance | None = None, name=None):
    """A NEW table node of the regional μ differences (one row per CT-derived class), beside ``reference``."""
    import vtk

    scene = reference.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name or outputs.output_name(reference, "mu_vs_CT", scene))
    try:
        classes = vtk.vtkStringArray()
        classes.SetName("Class")
        columns = []
        for key, title, _unit, _description in TABLE_COLUMNS:
            array = vtk.vtkDoubleArray()
            array.SetName(title)
            columns.append((key, array))
        for row in comparison.get("classes", []):
            classes.InsertNextValue(str(row["class"]).replace("_", " "))
            for key, array in columns:
                value = row.get(key)
                array.InsertNextValue(float("nan") if value is None else float(value))
        node.AddColumn(classes)
        for _key, array in columns:
            node.AddColumn(array)
        for _key, title, unit, description in TABLE_COLUMNS:
            if unit:
                node.SetColumnUnitLabel(title, unit)
            node.SetColumnDescription(title, description)
        node.SetAttribute("NMAI.sourceNode", reference.GetName())
        node.SetAttribute("NMAI.comparison", "μ-map minus CT-derived μ (kVp {})".format(comparison.get("kvp", "")))
        for key, value in (provenance or Provenance(task="attenuation")).attributes().items():
            node.SetAttribute(key, value)
        outputs.place_beside(node, reference)
    except BaseException:
        outputs.remove_nodes([node])
        raise
    return node


class AttenuationTask(EngineTask):
    """``nmai attenuation``; also turns the engine's CT comparison into a table node (all or nothing)."""

    def load_outputs(self, result: dict):
        nodes = super().load_outputs(result)
        try:
            difference = nodes.get("difference")
            if difference is not None and difference.GetDisplayNode() is not None:
                display = difference.GetDisplayNode()
                display.SetAutoWindowLevel(False)
                display.SetWindowLevelMinMax(*DIFFERENCE_WINDOW)
            comparison = (result or {}).get("comparison")
            if comparison is not None:
                nodes["comparison"] = create_comparison_table(comparison, reference=self.inputs[0].node,
                                                              provenance=self._provenance(result))
        except BaseException:
            outputs.remove_nodes(list(nodes.values()))
            raise
        return nodes


class NMAIAttenuationLogic(ModuleLogic):
    """Make a PET attenuation map; every output is a NEW node named after the first input."""

    def __init__(self, scene=None):
        super().__init__(scene)
        self.lastOutputs: dict = {}

    def process(self, ctNode=None, kvp: int = 120, method: str | None = None, wait: bool = True, progress=None,
                *, water=None, fat=None, t1=None, compareCt=None, model: str | None = None,
                pseudoCt: bool = True):
        """CT or MR -> μ-map at 511 keV (cm⁻¹).

        :param ctNode: CT volume node in HU (method ``ct``; a CT without recorded units is assumed in HU).
        :param water, fat: Dixon water and fat MR nodes (methods ``unet``, ``dixon4``); fat is resampled onto
            the water image's grid when needed.
        :param t1: a T1-weighted MR node (method ``unet`` with the T1 model).
        :param method: ``ct``, ``unet`` or ``dixon4``; default ``ct`` for a CT, and for MR ``unet`` when its
            model is installed (or ``model`` is given), else ``dixon4``.
        :param compareCt: MR only: a CT of the same patient to compare the μ-map with (difference map and table).
        :param model: MR U-Net: a model folder path or a built-in model name.
        :param kvp: CT tube voltage (80-140) for CT -> μ, the pseudo-CT and the comparison CT.
        :param pseudoCt: MR only: also make the pseudo-CT node (HU).
        :param wait: True: run here and return the μ-map node (all outputs in ``lastOutputs``). False: return a
            :class:`NMAIExtensionLib.task.TaskHandle` running in a child process (outputs in ``handle.nodes``).
        :raises NMAIError: invalid input or engine failure (nothing is created).
        """
        task = self.buildTask(ctNode=ctNode, kvp=kvp, method=method, water=water, fat=fat, t1=t1,
                              compareCt=compareCt, model=model, pseudoCt=pseudoCt)
        if not wait:
            return task.start()
        self.lastOutputs = dict(task.run(progress).nodes)
        return self.lastOutputs["mumap"]

    def buildTask(self, ctNode=None, kvp: int = 120, method: str | None = None, *, water=None, fat=None, t1=None,
                  compareCt=None, model: str | None = None, pseudoCt: bool = True) -> AttenuationTask:
        """Check the choices and build the engine task (nothing runs, nothing is exported yet)."""
        if method is not None and method not in METHODS:
            raise NMAIError(_("Unknown attenuation method '{method}'; available: {methods}.").format(
                method=method, methods=", ".join(METHODS)))
        try:
            kvp = int(kvp)
        except (TypeError, ValueError):
            raise NMAIError(_("The tube voltage must be a whole number of kVp.")) from None
        if kvp not in CARNEY:
            raise NMAIError(_("No CT-to-μ coefficients for {kvp} kVp; choose one of {choices}.").format(
                kvp=kvp, choices=", ".join(map(str, KVP_CHOICES))))
        mr = any(n is not None for n in (water, fat, t1))
        if mr and ctNode is not None:
            raise NMAIError(_("Give either a CT or MR images, not both; to compare an MR μ-map with a CT, "
                              "select the CT as the CT to compare with."))
        if not mr:
            return self._ctTask(ctNode, kvp, method, compareCt, model)
        return self._mrTask(water, fat, t1, kvp, method, compareCt, model, pseudoCt)

    def _ctTask(self, ctNode, kvp, method, compareCt, model) -> AttenuationTask:
        if method not in (None, "ct"):
            raise NMAIError(_("Method '{method}' needs MR images (Dixon water and fat, or T1); "
                              "a CT uses the bilinear conversion.").format(method=method))
        if compareCt is not None or model:
            raise NMAIError(_("The CT comparison and the model apply to MR inputs only."))
        parameters = {"kvp": kvp}
        return AttenuationTask(
            "attenuation",
            [TaskInput(ctNode, flag="--ct", default_units="HU", default_modality="CT", check=check_ct_input,
                       name="CT")],
            [TaskOutput("mumap", "--out")],
            options=["--kvp", str(kvp)],
            provenance=Provenance(task="attenuation", method="ct", parameters=parameters))

    def _mrTask(self, water, fat, t1, kvp, method, compareCt, model, pseudoCt) -> AttenuationTask:
        if method == "ct":
            raise NMAIError(_("Method 'ct' needs a CT; for MR images choose unet or dixon4."))
        if t1 is not None and (water is not None or fat is not None):
            raise NMAIError(_("Give Dixon water and fat images, or a T1 image, not both."))
        if t1 is None and water is None:
            raise NMAIError(_("The Dixon water image is missing: select both the water and the fat image."))
        if t1 is None and fat is None:
            raise NMAIError(_("The Dixon fat image is missing: the Dixon methods need both water and fat images. "
                              "With only one MR image, choose the T1 input and the T1 U-Net model."))
        if t1 is not None and method == "dixon4":
            raise NMAIError(_("The Dixon 4-class method needs Dixon water and fat images; with a T1 image "
                              "use the U-Net (T1 model)."))
        if model and method == "dixon4":
            raise NMAIError(_("A model applies to the U-Net method only."))
        mr = dict(default_units="a.u.", default_modality="MR", check=check_mr_input)
        if t1 is not None:
            inputs = [TaskInput(t1, flag="--t1", name="T1", **mr)]
        else:
            inputs = [TaskInput(water, flag="--water", name="water", **mr),
                      TaskInput(fat, flag="--fat", name="fat", **mr)]
        outs = [TaskOutput("mumap", "--out")]
        if pseudoCt:
            outs.append(TaskOutput("pseudo_ct", "--pseudo-ct", suffix="pseudoCT"))
        options = ["--kvp", str(kvp)]
        if method is not None:
            options += ["--method", method]
        if model:
            model = str(model)
            if os.path.exists(os.path.expanduser(model)):  # the engine may run in another working folder
                model = os.path.abspath(os.path.expanduser(model))
            options += ["--model", model]
        if compareCt is not None:
            inputs.append(TaskInput(compareCt, flag="--compare-ct", default_units="HU", default_modality="CT",
                                    check=check_ct_input, name="CT"))
            outs.append(TaskOutput("difference", "--difference", suffix="mudiff"))
        parameters = {"kvp": kvp, "inputs": "t1" if t1 is not None else "dixon"}
        if model:
            parameters["model"] = model
        if compareCt is not None:
            parameters["compare_ct"] = compareCt.GetName()
        return AttenuationTask("attenuation", inputs, outs, options=options,
                               provenance=Provenance(task="attenuation", method=method or "", parameters=parameters))

    def processParameters(self, p, wait: bool = False):
        """Run with the panel's choices (a parameter node wrapper, or any object with the same attributes)."""
        kind = INPUT_CHOICES.get(p.inputType, p.inputType)
        if kind == "ct":
            return self.process(ctNode=p.ctVolume, kvp=p.kvp, wait=wait)
        common = dict(kvp=p.kvp, method=p.method, compareCt=p.compareCtVolume, pseudoCt=bool(p.pseudoCt),
                      model=(p.modelPath or "").strip() or None, wait=wait)
        if kind == "t1":
            if p.t1Volume is None:
                raise NMAIError(_("Select the T1-weighted MR image."))
            return self.process(t1=p.t1Volume, **common)
        if p.waterVolume is None:
            raise NMAIError(_("Select the Dixon water image."))
        return self.process(water=p.waterVolume, fat=p.fatVolume, **common)

    @staticmethod
    def unetInstalled(kind: str = "dixon") -> bool:
        """True when the built-in U-Net for ``kind`` ("dixon" or "t1") is installed."""
        from nmai.attenuation.unet import model_installed

        return model_installed(kind)

    @staticmethod
    def formatComparison(comparison: dict) -> str:
        """The regional table as text (console)."""
        lines = ["class        voxels   CT μ    method μ  diff (cm-1)  diff %"]
        for row in comparison.get("classes", []):
            def fmt(v, spec):
                return format(v, spec) if v is not None and not (isinstance(v, float) and math.isnan(v)) else "-"
            lines.append(f"{row['class']:<12} {row['voxels']:>6}  {fmt(row['ct_mu_mean'], '.4f'):>6}  "
                         f"{fmt(row['method_mu_mean'], '.4f'):>8}  {fmt(row['difference_mean'], '+.4f'):>11}  "
                         f"{fmt(row['difference_pct'], '+.1f'):>6}")
        return "\n".join(lines)
