"""NEW output nodes: name, place in the subject hierarchy, display, units, provenance.

An output never replaces or edits its input. It is named ``<input>_<task>`` (``_1``, ``_2``... when that
name is taken), sits in the input's study in the subject hierarchy (beside the input series), lives under
the input's parent transform, and carries:

* VoxelValueQuantity / VoxelValueUnits (DICOM/UCUM coded entries, see :mod:`.mrml`) and ``NMAI.units``;
* display: PET-Heat for PET with window/level in SUV when an SUV factor is known; grey 0-0.2 cm⁻¹ for μ-maps;
* provenance attributes ``NMAI.engineVersion``, ``NMAI.task``, ``NMAI.method``, ``NMAI.model``,
  ``NMAI.modelSha256``, ``NMAI.parameters`` (JSON), ``NMAI.sourceNode``, ``NMAI.created`` (UTC ISO time).

Works in the Slicer application and with plain slicer-core, where nothing creates subject-hierarchy items
or colour nodes automatically: both are created here when missing.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nmai.volume import Volume

from . import mrml

# display defaults
PET_SUV_WINDOW = (0.0, 6.0)          # SUV range shown for PET (typical FDG reading window)
MU_WINDOW = (0.0, 0.2)               # cm^-1: air 0, water 0.096, cortical bone ~0.17
PET_HEAT_ID = "vtkMRMLPETProceduralColorNodePET-Heat"
GREY_ID = "vtkMRMLColorTableNodeGrey"


@dataclass
class Provenance:
    """What produced an output. ``parameters`` must be JSON-serialisable."""
    task: str
    method: str = ""
    engine_version: str = ""
    model: str = ""
    model_sha256: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

    def attributes(self) -> dict[str, str]:
        if not self.engine_version:
            import nmai

            self.engine_version = nmai.__version__
        return {
            "NMAI.engineVersion": self.engine_version,
            "NMAI.task": self.task,
            "NMAI.method": self.method,
            "NMAI.model": self.model,
            "NMAI.modelSha256": self.model_sha256,
            "NMAI.parameters": json.dumps(self.parameters, sort_keys=True, default=str),
            "NMAI.created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }


def output_name(reference, task: str, scene=None) -> str:
    """``<input>_<task>``, made unique in the scene (Slicer appends ``_1``, ``_2``...)."""
    scene = scene or reference.GetScene()
    base = f"{reference.GetName()}_{task}"
    if scene is None or scene.GetFirstNodeByName(base) is None:
        return base
    return scene.GenerateUniqueName(base)


# ------------------------------------------------------------------------------------------ subject hierarchy
def _subject_hierarchy(scene):
    import slicer

    return slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)


def item_for_node(node):
    """The subject-hierarchy item of ``node``, created under the scene item when missing (slicer-core)."""
    sh = _subject_hierarchy(node.GetScene())
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(sh.GetSceneItemID(), node)
    return item


def study_item_of(node):
    """The item ``node``'s outputs go under: its study, else its parent folder/patient, else the scene."""
    import slicer

    sh = _subject_hierarchy(node.GetScene())
    item = sh.GetItemByDataNode(node)
    if not item:
        return sh.GetSceneItemID()
    study = sh.GetItemAncestorAtLevel(item, slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy())
    if study:
        return study
    parent = sh.GetItemParent(item)
    return parent or sh.GetSceneItemID()


def place_beside(node, reference) -> int:
    """Put ``node`` in ``reference``'s study (creating the item if needed); return its item ID."""
    sh = _subject_hierarchy(node.GetScene())
    parent = study_item_of(reference)
    item = sh.GetItemByDataNode(node)
    if not item:
        item = sh.CreateItem(parent, node)
    else:
        sh.SetItemParent(item, parent)
    return item


# ------------------------------------------------------------------------------------------ display
def pet_heat_color_id(scene) -> str:
    """ID of the PET-Heat colour node, adding that one node to a bare (slicer-core) scene if needed."""
    import slicer

    node_id = slicer.vtkMRMLColorLogic.GetPETColorNodeID(slicer.vtkMRMLPETProceduralColorNode.PETheat)
    if scene.GetNodeByID(node_id) is None:
        color = slicer.vtkMRMLPETProceduralColorNode()
        color.SetTypeToHeat()
        color.SetName(color.GetTypeAsString())
        color.SetSingletonTag(color.GetTypeAsString())  # singleton ID = class name + tag, as the colour logic
        color.SetAttribute("Category", "PET")
        color.SaveWithSceneOff()
        scene.AddNode(color)
    return node_id


def _display_node(node):
    display = node.GetDisplayNode()
    if display is None:
        node.CreateDefaultDisplayNodes()
        display = node.GetDisplayNode()
    return display


def _robust_range(array: np.ndarray) -> tuple[float, float]:
    data = np.asarray(array)
    data = data[np.isfinite(data)] if data.size else data
    if not data.size:
        return 0.0, 1.0
    lo, hi = float(np.percentile(data, 0.5)), float(np.percentile(data, 99.5))
    return (lo, hi) if hi > lo else (float(data.min()), float(data.max()) + 1.0)


def pet_window(volume: Volume) -> tuple[float, float] | None:
    """(min, max) of an SUV 0-6 window expressed in the volume's units, or None when SUV is unknown."""
    if volume.units in ("SUVbw", "SUVlbm"):
        return PET_SUV_WINDOW
    factor = volume.suv_factor("bw")
    if volume.units == "Bq/ml" and factor:
        return PET_SUV_WINDOW[0] / factor, PET_SUV_WINDOW[1] / factor
    return None


def apply_display(node, volume: Volume) -> None:
    """PET-Heat for PET (window in SUV when known), grey for μ-maps and everything else."""
    display = _display_node(node)
    if display is None or volume.units == "label":  # label maps keep their default label colours
        return
    scene = node.GetScene()
    if volume.units in mrml.PET_UNITS:
        display.SetAndObserveColorNodeID(pet_heat_color_id(scene))
        window = pet_window(volume) or (0.0, _robust_range(volume.array)[1])
    elif volume.units == "cm-1":
        if scene.GetNodeByID(GREY_ID) is not None:
            display.SetAndObserveColorNodeID(GREY_ID)
        window = MU_WINDOW
    else:
        if scene.GetNodeByID(GREY_ID) is not None:
            display.SetAndObserveColorNodeID(GREY_ID)
        window = _robust_range(volume.array)
    if hasattr(display, "SetAutoWindowLevel"):
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(float(window[0]), float(window[1]))


# ------------------------------------------------------------------------------------------ create
def create_volume_node(volume: Volume, *, reference, task: str, provenance: Provenance | None = None,
                       name: str | None = None):
    """A NEW volume node holding ``volume``, named ``<reference>_<task>``, beside ``reference``.

    On any failure the half-made node is removed again: either a complete node is returned or none exists.
    """
    scene = reference.GetScene()
    if scene is None:
        from nmai.errors import NMAIError

        raise NMAIError(f"'{reference.GetName()}' is no longer in the scene; the result was not loaded.")
    class_name = "vtkMRMLLabelMapVolumeNode" if volume.units == "label" else "vtkMRMLScalarVolumeNode"
    node = scene.AddNewNodeByClass(class_name, name or output_name(reference, task, scene))
    try:
        mrml.update_node_from_volume(node, volume, reference=reference)
        transform_id = reference.GetTransformNodeID()
        if transform_id:
            node.SetAndObserveTransformNodeID(transform_id)
        apply_display(node, volume)
        node.SetAttribute("NMAI.sourceNode", reference.GetName())
        for key, value in (provenance or Provenance(task=task)).attributes().items():
            node.SetAttribute(key, value)
        place_beside(node, reference)
    except BaseException:
        remove_nodes([node])
        raise
    return node


def remove_nodes(nodes) -> None:
    """Remove nodes (and their display/storage nodes and subject-hierarchy items) from their scene."""
    for node in nodes:
        scene = node.GetScene() if node is not None else None
        if scene is None:
            continue
        count = node.GetNumberOfDisplayNodes() if hasattr(node, "GetNumberOfDisplayNodes") else 0
        displays = [node.GetNthDisplayNode(i) for i in range(count)]
        scene.RemoveNode(node)
        for display in displays:
            if display is not None and display.GetScene() is not None:
                scene.RemoveNode(display)
