"""Volume node <-> :class:`nmai.Volume`, with exact geometry and what the numbers mean.

Geometry
    A node's IJKToRAS matrix is the engine's ``index_to_ras()``; :meth:`Volume.from_index_to_ras` converts to
    the engine's LPS convention. Any orientation (axial, flipped, oblique) survives the round trip exactly;
    the node's own matrix is used, so a node under a parent transform is exported in its local frame and
    its outputs are placed under the same transform (see :mod:`.outputs`).

Units, in order of precedence (the first that says something wins)
    1. the ``NMAI.units`` node attribute (written on every NMAI output node);
    2. the node's VoxelValueUnits / VoxelValueQuantity coded entries, which Slicer's DICOM plugins set:
       CT ``([hnsf'U], UCUM)``, MR ``(1, UCUM)`` with quantity ``(110852, DCM)``, and the PET DICOM extension's
       SUV loader ``({SUVbw}g/ml, UCUM)`` / ``({SUVlbm}g/ml, UCUM)`` (its voxels are already SUV);
       the older ``DICOM.MeasurementUnitsCodeValue`` attribute is read the same way;
    3. inside the Slicer application, for a node loaded from the DICOM database (``DICOM.instanceUIDs``
       attribute): the series' own headers, read with pydicom (PET Units BQML -> Bq/ml, GML -> SUVbw, others
       unknown; the SUV factors computed by :mod:`nmai.suv` from the same headers, QIBA rules);
    4. what the caller declares (``units=``, a user's choice: a contradiction is an error) or assumes
       (``default_units=``, only when the modality does not contradict it: recorded in
       ``metadata["warnings"]``).
    Unknown units stay unknown (``"1"``, with ``metadata["units_unknown_reason"]``); nothing is guessed.

Modality: the ``NMAI.modality`` attribute; a label map is SEG; the subject-hierarchy series item's
``DICOM.Modality``; the DICOM headers (rule 3); else inferred from the units (Bq/ml/SUV -> PT, HU -> CT,
a.u. -> MR); else ``default_modality``; else OT.

SUV factors (multiply Bq/ml by them to get g/ml) live in node attributes ``NMAI.suv_bw_factor`` /
``NMAI.suv_lbm_factor`` (with ``NMAI.suv_unavailable_reason`` when missing) and the full engine metadata in
``NMAI.metadata`` (JSON). Slicer's PET DICOM extension does not store its SUV factor on the node (it is the
slope of a separate Real World Value Mapping object): for such nodes the factor comes from rule 3, and
outside the application it is reported as unavailable.

Nothing here modifies an input node: arrays are copied, attributes only read.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from nmai.errors import NMAIError
from nmai.volume import UNITS, Volume

# ------------------------------------------------------------------------------------------ attributes
ATTR_PREFIX = "NMAI."
ATTR_MODALITY = "NMAI.modality"
ATTR_UNITS = "NMAI.units"
ATTR_METADATA = "NMAI.metadata"
ATTR_SUV_REASON = "NMAI.suv_unavailable_reason"
SUV_KINDS = ("bw", "lbm")
PET_UNITS = ("Bq/ml", "SUVbw", "SUVlbm")


def suv_attribute(kind: str) -> str:
    return f"NMAI.suv_{kind}_factor"


# ------------------------------------------------------------------------------------------ coded entries
# (CodeValue, CodingSchemeDesignator, CodeMeaning), as Slicer's DICOM plugins and dcmqi write them.
QUANTITY_CODES = {
    "activity_concentration": ("110821", "DCM", "Nuclear Medicine Tomographic Activity"),
    "suv": ("126400", "DCM", "Standardized Uptake Value"),
    "linear_attenuation": ("112031", "DCM", "Attenuation Coefficient"),
    "ct_number": ("112031", "DCM", "Attenuation Coefficient"),
    "mr_signal": ("110852", "DCM", "MR signal intensity"),
}
UNIT_CODES = {
    "Bq/ml": ("Bq/ml", "UCUM", "Becquerels/milliliter"),
    "SUVbw": ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight"),
    "SUVlbm": ("{SUVlbm}g/ml", "UCUM", "Standardized Uptake Value lean body mass"),
    "cm-1": ("/cm", "UCUM", "per centimeter"),
    "HU": ("[hnsf'U]", "UCUM", "Hounsfield unit"),
    "a.u.": ("1", "UCUM", "no units"),
    "1": ("1", "UCUM", "no units"),
}
# UCUM code value (lower case) -> engine units; "1" is resolved with the quantity (MR signal or ratio)
_UNITS_FROM_CODE = {
    "bq/ml": "Bq/ml", "bq/ml{activity}": "Bq/ml",
    "{suvbw}g/ml": "SUVbw", "{suv}g/ml": "SUVbw", "g/ml{suvbw}": "SUVbw",
    "{suvlbm}g/ml": "SUVlbm", "g/ml{suvlbm}": "SUVlbm",
    "[hnsf'u]": "HU", "hu": "HU",
    "/cm": "cm-1", "cm-1": "cm-1", "1/cm": "cm-1", "cm^-1": "cm-1",
}
_MODALITY_FROM_UNITS = {"Bq/ml": "PT", "SUVbw": "PT", "SUVlbm": "PT", "HU": "CT", "a.u.": "MR", "label": "SEG"}


def coded_entry(value: str, scheme: str, meaning: str):
    import slicer

    entry = slicer.vtkCodedEntry()
    entry.SetValueSchemeMeaning(value, scheme, meaning)
    return entry


def set_voxel_units(node, units: str, modality: str | None = None) -> None:
    """Set VoxelValueQuantity/VoxelValueUnits (DICOM/UCUM coded entries) and the ``NMAI.units`` attribute."""
    if units not in UNITS:
        raise NMAIError(f"unknown units {units!r}")
    quantity = UNITS[units][0]
    q = QUANTITY_CODES.get(quantity)
    u = UNIT_CODES.get(units)
    node.SetVoxelValueQuantity(coded_entry(*q) if q else None)
    node.SetVoxelValueUnits(coded_entry(*u) if u and units != "1" else None)
    node.SetAttribute(ATTR_UNITS, units)
    if modality:
        node.SetAttribute(ATTR_MODALITY, modality)


# ------------------------------------------------------------------------------------------ geometry
def ijk_to_ras(node) -> np.ndarray:
    """The node's IJKToRAS matrix as a 4×4 numpy array."""
    import vtk

    m = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(m)
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)], dtype=float)


def set_ijk_to_ras(node, matrix) -> None:
    import vtk

    matrix = np.asarray(matrix, dtype=float)
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(matrix[r, c]))
    node.SetIJKToRASMatrix(m)


def node_shape(node) -> tuple[int, int, int]:
    """Array shape (k, j, i) of the node's image data."""
    image = node.GetImageData()
    if image is None:
        return (0, 0, 0)
    return tuple(int(d) for d in image.GetDimensions()[::-1])


def same_geometry(volume: Volume, node, tol_mm: float = 1e-3) -> bool:
    """True when ``volume`` lies on the node's voxel grid (to ``tol_mm`` at the far corner)."""
    if tuple(volume.shape) != node_shape(node):
        return False
    a, b = volume.index_to_ras(), ijk_to_ras(node)
    extent = np.array([*[max(n - 1, 1) for n in volume.shape[::-1]], 1.0])
    return bool(np.all(np.abs((a - b) * extent[None, :]) <= tol_mm))


# ------------------------------------------------------------------------------------------ reading a node
def _check_scalar_volume(node) -> None:
    if node is None:
        raise NMAIError("No input volume is selected.")
    if not node.IsA("vtkMRMLScalarVolumeNode") or node.IsA("vtkMRMLVectorVolumeNode") \
            or node.IsA("vtkMRMLDiffusionWeightedVolumeNode") or node.IsA("vtkMRMLTensorVolumeNode"):
        raise NMAIError(f"'{node.GetName()}' is a {node.GetClassName()}, not a scalar volume; "
                        "select a PET, CT or MR image volume.")
    image = node.GetImageData()
    if image is None or 0 in image.GetDimensions():
        raise NMAIError(f"'{node.GetName()}' holds no image data; load the series again.")
    if image.GetNumberOfScalarComponents() != 1:
        raise NMAIError(f"'{node.GetName()}' has {image.GetNumberOfScalarComponents()} values per voxel "
                        "(colour or vector image); select a scalar PET, CT or MR volume.")


def _units_from_codes(node) -> tuple[str | None, str]:
    units_entry = node.GetVoxelValueUnits() if hasattr(node, "GetVoxelValueUnits") else None
    quantity_entry = node.GetVoxelValueQuantity() if hasattr(node, "GetVoxelValueQuantity") else None
    code = units_entry.GetCodeValue() if units_entry is not None else None
    source = "VoxelValueUnits"
    if not code and node.GetAttribute("DICOM.MeasurementUnitsCodeValue"):
        code, source = node.GetAttribute("DICOM.MeasurementUnitsCodeValue"), "DICOM.MeasurementUnitsCodeValue"
    if not code:
        return None, ""
    key = code.strip().lower()
    if key in _UNITS_FROM_CODE:
        return _UNITS_FROM_CODE[key], f"{source} {code}"
    if key == "1":
        qcode = quantity_entry.GetCodeValue() if quantity_entry is not None else ""
        return ("a.u." if qcode == "110852" else "1"), f"{source} {code}"
    return None, f"{source} {code} (not a unit NMAI knows)"


def node_units(node) -> tuple[str | None, str]:
    """``(units, source)`` recorded on the node itself (rules 1-2), or ``(None, reason)``."""
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        return "label", "label map volume"
    attr = node.GetAttribute(ATTR_UNITS)
    if attr:
        if attr in UNITS:
            return attr, f"attribute {ATTR_UNITS}"
        raise NMAIError(f"'{node.GetName()}': attribute {ATTR_UNITS}={attr!r} is not one of {', '.join(UNITS)}; "
                        "fix or remove the attribute.")
    units, source = _units_from_codes(node)
    return units, source or "the node records no units"


def _subject_hierarchy_modality(node) -> str | None:
    import slicer

    scene = node.GetScene()
    if scene is None:
        return None
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    if sh is None:
        return None
    item = sh.GetItemByDataNode(node)
    if not item:
        return None
    name = slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMSeriesModalityAttributeName()
    return sh.GetItemAttribute(item, name) or None


def node_modality(node) -> tuple[str | None, str]:
    """``(modality, source)`` from the node (attribute, label map, subject hierarchy), else ``(None, "")``."""
    attr = node.GetAttribute(ATTR_MODALITY)
    if attr:
        return attr, f"attribute {ATTR_MODALITY}"
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        return "SEG", "label map volume"
    modality = _subject_hierarchy_modality(node)
    if modality:
        return modality, "subject hierarchy (DICOM.Modality)"
    return None, ""


_DICOM_CACHE: dict[tuple, dict] = {}


def dicom_pet_info(node) -> dict[str, Any]:
    """Rule 3: what the DICOM headers of the node's series say (Slicer application only, else ``{}``).

    Returns ``{"modality", "units" (or None), "units_reason", "metadata"}``. Slicer's scalar-volume loader
    applies RescaleSlope/Intercept, so BQML series are in Bq/ml and GML series in SUVbw; other PET units
    (Philips CNTS, ...) are reported as unknown because the loaded numbers are not activity.
    """
    import slicer

    uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
    database = getattr(slicer, "dicomDatabase", None)
    if not uids or database is None:
        return {}
    key = (uids[0], uids[-1], len(uids))
    if key in _DICOM_CACHE:
        return _DICOM_CACHE[key]
    info: dict[str, Any] = {}
    try:
        import pydicom

        files = [database.fileForInstance(uid) for uid in uids]
        files = [f for f in files if f and os.path.isfile(f)]
        if not files:
            return {}
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
        ds = datasets[0]
        info["modality"] = str(ds.get("Modality", "")) or None
        if info["modality"] == "PT":
            from nmai.suv import compute_suv, header_from_datasets

            result = compute_suv(header_from_datasets(datasets))
            meta = {k: v for k, v in result.metadata().items() if v is not None}
            dicom_units = str(ds.get("Units", "")).upper()
            meta["dicom_units"] = dicom_units
            info["metadata"] = meta
            if dicom_units == "BQML":
                info["units"] = "Bq/ml"
            elif dicom_units == "GML" and str(ds.get("SUVType", "BW")).upper() in ("BW", ""):
                info["units"] = "SUVbw"
            else:
                info["units"] = None
                info["units_reason"] = (f"the DICOM Units are {dicom_units or 'missing'}: the values Slicer "
                                        "loaded are not activity concentration")
    except Exception as exc:  # best effort: never block a task because a header is odd
        logging.getLogger("NMAI").warning("could not read DICOM headers of %s: %s", node.GetName(), exc)
        info = {"error": str(exc)}
    _DICOM_CACHE[key] = info
    return info


def node_metadata(node) -> dict[str, Any]:
    """Engine metadata recorded on the node: ``NMAI.metadata`` JSON, then the explicit SUV attributes."""
    meta: dict[str, Any] = {}
    raw = node.GetAttribute(ATTR_METADATA)
    if raw:
        try:
            loaded = json.loads(raw)
            if isinstance(loaded, dict):
                meta.update(loaded)
        except ValueError:
            logging.getLogger("NMAI").warning("%s: attribute %s is not valid JSON; ignored",
                                              node.GetName(), ATTR_METADATA)
    for kind in SUV_KINDS:
        value = node.GetAttribute(suv_attribute(kind))
        if value:
            try:
                factor = float(value)
            except ValueError:
                raise NMAIError(f"'{node.GetName()}': attribute {suv_attribute(kind)}={value!r} is not a "
                                "number; fix or remove it.") from None
            if not np.isfinite(factor) or factor <= 0:
                raise NMAIError(f"'{node.GetName()}': SUV factor {suv_attribute(kind)}={value} must be a "
                                "positive number.")
            meta[f"suv_{kind}_factor"] = factor
            meta.pop(f"suv_{kind}_unavailable_reason", None)
    reason = node.GetAttribute(ATTR_SUV_REASON)
    if reason and meta.get("suv_bw_factor") is None:
        meta["suv_unavailable_reason"] = reason
        meta.setdefault("suv_bw_unavailable_reason", reason)
    return meta


def volume_from_node(node, *, units: str | None = None, default_units: str | None = None,
                     default_modality: str | None = None) -> Volume:
    """A :class:`Volume` copy of a scalar volume node: array, exact geometry, modality, units, metadata.

    ``units``: what the user declared; used when the node records nothing, an error when it contradicts it.
    ``default_units`` / ``default_modality``: assumptions when nothing is known (recorded as warnings).
    """
    import slicer.util

    _check_scalar_volume(node)
    name = node.GetName()
    if units is not None and units not in UNITS:
        raise NMAIError(f"unknown units {units!r}; use one of {', '.join(UNITS)}")
    metadata = node_metadata(node)
    warnings = list(metadata.get("warnings", []))

    node_u, units_source = node_units(node)
    modality, modality_source = node_modality(node)
    dicom = {}
    if node_u is None or modality is None or (node_u in PET_UNITS and metadata.get("suv_bw_factor") is None):
        dicom = dicom_pet_info(node)
    if node_u is None and dicom.get("units"):
        node_u, units_source = dicom["units"], "DICOM header (Units)"
    if dicom.get("metadata"):
        for k, v in dicom["metadata"].items():
            metadata.setdefault(k, v)
    if modality is None and dicom.get("modality"):
        modality, modality_source = dicom["modality"], "DICOM header (Modality)"

    if units is not None and node_u is not None and units != node_u:
        raise NMAIError(f"'{name}' is recorded as {node_u} ({units_source}) but {units} was chosen; "
                        "choose the units recorded on the node.")
    final_units = node_u or units
    if final_units is None and default_units is not None and \
            (modality is None or default_modality is None or modality == default_modality):
        final_units, units_source = default_units, "assumed"
        warnings.append(f"units not recorded on the node; assumed {default_units}")
    elif final_units is not None and node_u is None:
        units_source = "declared by the user"
    if final_units is None:
        final_units = "1"
        units_source = dicom.get("units_reason") or units_source or "the node records no units"
        metadata["units_unknown_reason"] = units_source

    if modality is None:
        modality = _MODALITY_FROM_UNITS.get(final_units) if final_units != "1" else None
        modality_source = "inferred from the units" if modality else ""
    if modality is None and default_modality is not None:
        modality, modality_source = default_modality, "assumed"
    if modality not in ("PT", "CT", "MR", "SEG", "OT"):
        if modality:
            warnings.append(f"DICOM modality {modality} is treated as OT")
        modality = "OT"

    if final_units in ("SUVbw", "SUVlbm") or final_units == "Bq/ml":
        for kind in SUV_KINDS:
            if metadata.get(f"suv_{kind}_factor") is None and not metadata.get(f"suv_{kind}_unavailable_reason"):
                metadata[f"suv_{kind}_unavailable_reason"] = (
                    f"'{name}' records no SUV factor (attribute {suv_attribute(kind)}) and its DICOM "
                    "headers are not available")
        if metadata.get("suv_bw_factor") is None and not metadata.get("suv_unavailable_reason"):
            metadata["suv_unavailable_reason"] = metadata["suv_bw_unavailable_reason"]
    elif final_units == "1" and modality in ("PT", "OT"):
        metadata.setdefault("suv_unavailable_reason", "the units of the volume are unknown")

    metadata.update(source_node=name, units_source=units_source, modality_source=modality_source)
    if warnings:
        metadata["warnings"] = warnings
    array = np.array(slicer.util.arrayFromVolume(node), copy=True)
    return Volume.from_index_to_ras(array, ijk_to_ras(node), modality=modality, units=final_units,
                                    metadata=metadata)


# ------------------------------------------------------------------------------------------ writing a node
_NOT_ON_NODE = ("source_node", "units_source", "modality_source", "source")


def _slicer_array(array: np.ndarray) -> np.ndarray:
    """An array Slicer can hold: no bool, no 64-bit integers (VTK 'long long' volumes are not rendered)."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype in (np.int64, np.uint64):
        lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
        if np.iinfo(np.int32).min <= lo and hi <= np.iinfo(np.int32).max:
            return array.astype(np.int32)
        return array.astype(np.float64)
    return np.ascontiguousarray(array)


def write_volume_attributes(node, volume: Volume) -> None:
    """Units codes, modality, SUV factors and the engine metadata on ``node`` (an output node)."""
    set_voxel_units(node, volume.units, volume.modality)
    for kind in SUV_KINDS:
        factor = volume.metadata.get(f"suv_{kind}_factor")
        if factor is not None:
            node.SetAttribute(suv_attribute(kind), repr(float(factor)))
        else:
            node.RemoveAttribute(suv_attribute(kind))
    reason = volume.metadata.get("suv_unavailable_reason") or volume.metadata.get("suv_bw_unavailable_reason")
    if volume.metadata.get("suv_bw_factor") is None and reason and volume.units in PET_UNITS:
        node.SetAttribute(ATTR_SUV_REASON, str(reason))
    else:
        node.RemoveAttribute(ATTR_SUV_REASON)
    meta = {k: v for k, v in volume.metadata.items() if k not in _NOT_ON_NODE and not k.endswith("_from_file")}
    node.SetAttribute(ATTR_METADATA, json.dumps(meta, sort_keys=True, default=str))


def update_node_from_volume(node, volume: Volume, *, reference=None) -> None:
    """Fill ``node`` with ``volume``: voxels, geometry, units, SUV factors, metadata.

    When ``reference`` (the input node) is given and ``volume`` lies on its grid, the reference's IJKToRAS
    matrix is copied bit for bit, so an output overlays its input exactly even after a float32 file format.
    """
    import slicer.util

    slicer.util.updateVolumeFromArray(node, _slicer_array(volume.array))
    matrix = volume.index_to_ras()
    if reference is not None and same_geometry(volume, reference):
        matrix = ijk_to_ras(reference)
    set_ijk_to_ras(node, matrix)
    write_volume_attributes(node, volume)
