"""A triage report (``nmai triage image``) as NEW MRML nodes beside the PET: findings table, points, candidates.

* table ``<PET>_triage``: one row per artifact finding (most probable first), then one per lesion candidate
  (most probable first); columns Kind, Type, Probability, Alarm, Location, SUVmax, SUVpeak, Volume (ml),
  TLG, Message;
* markups ``<PET>_triage_points``: control point n is table row n: an artifact at the centre of its slice
  range on the PET's central axis (labelled with its type), a lesion candidate at its maximum (the report's
  ``position_lps`` with x and y negated: RAS), labelled ``L<rank> SUVmax <value>``;
* segmentation ``<PET>_triage_lesions`` (when candidates were searched and found): segment n is candidate n,
  from the engine's label volume (label n).

Positions are in the PET's own frame: the points and the segmentation observe the PET's parent transform.
Every node carries the provenance attributes and ``NMAI.alarm``. All or nothing: on any failure the nodes
made so far are removed.
"""

from __future__ import annotations

import json
import math

import numpy as np

from NMAIExtensionLib import mrml, outputs
from NMAIExtensionLib.messages import _

ATTR_ALARM = "NMAI.alarm"
ATTR_REPORT = "NMAI.triageReport"  # the report as JSON (without the per-frame raw-data lines)
ALARMS = ("ok", "check", "repeat")
COLUMNS = (  # (row key, column title, description)
    ("kind", "Kind", "artifact or lesion candidate"),
    ("type", "Type", "artifact type, or the candidate's rank"),
    ("probability", "Probability", "classifier probability or rule score (0-1)"),
    ("alarm", "Alarm", "what the finding asks for: check (look, fix the μ-map) or repeat (repeat the scan)"),
    ("location", "Location", "PET slices (artifact) or position of the maximum in RAS mm (lesion)"),
    ("suv_max", "SUVmax", "maximum of the candidate"),
    ("suv_peak", "SUVpeak", "mean of the 1 ml sphere with the highest mean (PERCIST)"),
    ("volume_ml", "Volume (ml)", "volume of the region at >= 50 % of the maximum"),
    ("tlg", "TLG", "total lesion glycolysis: SUVmean x volume (ml)"),
    ("message", "Message", "what the finding means and what to do"),
)
NUMERIC = ("probability", "suv_max", "suv_peak", "volume_ml", "tlg")
SEGMENT_COLOURS = ((0.9, 0.2, 0.2), (0.2, 0.6, 0.9), (0.95, 0.75, 0.1), (0.3, 0.8, 0.3), (0.7, 0.3, 0.9),
                   (1.0, 0.5, 0.0))


def worst_alarm(alarms) -> str:
    return max((a for a in alarms if a in ALARMS), key=ALARMS.index, default="ok")


def lps_to_ras(position) -> list[float]:
    x, y, z = (float(v) for v in position)
    return [-x, -y, z]


def _slice_centre_ras(pet_node, slice_range) -> list[float]:
    """RAS of the PET's central axis at the middle of ``slice_range`` (k indices of the node's array)."""
    nk, nj, ni = mrml.node_shape(pet_node)
    k0, k1 = (slice_range or [0, nk - 1])[:2]
    ijk = np.array([(ni - 1) / 2.0, (nj - 1) / 2.0, (float(k0) + float(k1)) / 2.0, 1.0])
    return [float(v) for v in (mrml.ijk_to_ras(pet_node) @ ijk)[:3]]


def lesion_label(rank: int, lesion: dict, units: str | None) -> str:
    value = lesion.get("suv_max")
    if value is None:
        return f"L{rank}"
    if units and not str(units).startswith("SUV"):
        return f"L{rank} max {value:.4g} {units}"
    return f"L{rank} SUVmax {value:.1f}"


def finding_rows(report: dict, pet_node) -> list[dict]:
    """One dict per finding (table row n = control point n): the table's keys plus ``label`` and ``ras``."""
    rows = []
    for a in report.get("artifacts") or []:
        sr = a.get("slice_range") or []
        where = _("slices {k0}-{k1}").format(k0=sr[0], k1=sr[1]) if len(sr) == 2 else _("whole scan")
        source = a.get("source")
        rows.append({"kind": "artifact", "type": a.get("type", ""), "probability": a.get("probability"),
                     "alarm": a.get("alarm", ""), "location": where + (f" ({source})" if source else ""),
                     "message": a.get("message", ""), "label": a.get("type", ""),
                     "ras": _slice_centre_ras(pet_node, sr)})
    units = report.get("lesions_units")
    for rank, le in enumerate(report.get("lesions") or [], start=1):
        ras = lps_to_ras(le["position_lps"])
        rows.append({"kind": "lesion", "type": _("candidate {rank}").format(rank=rank),
                     "probability": le.get("probability"), "alarm": "",
                     "location": "R {:.1f}, A {:.1f}, S {:.1f}".format(*ras),
                     "suv_max": le.get("suv_max"), "suv_peak": le.get("suv_peak"), "volume_ml": le.get("volume_ml"),
                     "tlg": le.get("tlg"), "message": _("lesion candidate: take a second look"),
                     "label": lesion_label(rank, le, units), "ras": ras})
    return rows


def banner(report: dict) -> tuple[str, str]:
    """(alarm, text) for the panel's banner: ``OK`` / ``CHECK`` / ``REPEAT`` and the top finding's message."""
    alarm = report.get("alarm") or "ok"
    artifacts = [a for a in report.get("artifacts") or [] if a.get("alarm") == alarm] or \
        list(report.get("artifacts") or [])
    n = len(report.get("lesions") or [])
    if artifacts:
        top = artifacts[0]
        text = f"{alarm.upper()}: {top.get('type', '')}: {top.get('message', '')}"
    else:
        text = f"{alarm.upper()}: " + _("no artifact found")
    if n:
        text += " " + _("({n} lesion candidate(s) for a second look)").format(n=n)
    return alarm, text


def format_report(report: dict) -> str:
    """The findings as text (console)."""
    lines = [banner(report)[1]]
    for a in report.get("artifacts") or []:
        lines.append(f"  {a.get('alarm', ''):<7} {a.get('type', ''):<16} p={a.get('probability', 0):.2f} "
                     f"slices {a.get('slice_range')}  {a.get('message', '')}")
    units = report.get("lesions_units") or ""
    for rank, le in enumerate(report.get("lesions") or [], start=1):
        p = le.get("probability")
        lines.append(f"  L{rank:<3} max {le.get('suv_max', 0):.2f} peak {le.get('suv_peak', 0):.2f} {units} "
                     f"{le.get('volume_ml', 0):.1f} ml  p={'-' if p is None else f'{p:.2f}'}  "
                     f"LPS {[round(v, 1) for v in le.get('position_lps', [])]}")
    if report.get("lesions_note"):
        lines.append("  " + report["lesions_note"])
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ nodes
def _number(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value if math.isfinite(value) else float("nan")


def _tag(node, pet_node, report: dict, provenance) -> None:
    for key, value in provenance.attributes().items():
        node.SetAttribute(key, value)
    node.SetAttribute("NMAI.sourceNode", pet_node.GetName())
    node.SetAttribute(ATTR_ALARM, report.get("alarm") or "ok")


def create_table(rows: list[dict], report: dict, pet_node, provenance):
    import vtk

    scene = pet_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", outputs.output_name(pet_node, "triage", scene))
    units = report.get("lesions_units") or "SUVbw"
    suv = str(units).startswith("SUV")
    titles = {"suv_max": "SUVmax" if suv else "Max", "suv_peak": "SUVpeak" if suv else "Peak",
              "tlg": "TLG" if suv else "TLA"}
    for key, title, description in COLUMNS:
        title = titles.get(key, title)
        array = vtk.vtkDoubleArray() if key in NUMERIC else vtk.vtkStringArray()
        array.SetName(title)
        for row in rows:
            if key in NUMERIC:
                array.InsertNextValue(_number(row.get(key)))
            else:
                array.InsertNextValue(str(row.get(key) or ""))
        node.AddColumn(array)
        node.SetColumnDescription(title, description)
    for key in ("suv_max", "suv_peak"):
        node.SetColumnUnitLabel(titles[key], units)
    node.SetColumnUnitLabel("Volume (ml)", "ml")
    _tag(node, pet_node, report, provenance)
    compact = {k: v for k, v in report.items() if k != "raw"}
    node.SetAttribute(ATTR_REPORT, json.dumps(compact, default=str))
    outputs.place_beside(node, pet_node)
    return node


def create_points(rows: list[dict], report: dict, pet_node, provenance):
    scene = pet_node.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                   outputs.output_name(pet_node, "triage_points", scene))
    for row in rows:
        index = node.AddControlPoint([float(v) for v in row["ras"]], row["label"])
        node.SetNthControlPointDescription(index, row.get("message") or "")
        node.SetNthControlPointLocked(index, True)
    transform_id = pet_node.GetTransformNodeID()
    if transform_id:
        node.SetAndObserveTransformNodeID(transform_id)
    _tag(node, pet_node, report, provenance)
    outputs.place_beside(node, pet_node)
    return node


def create_segmentation(label_volume, report: dict, pet_node, provenance):
    """Segment n = candidate n (label n of ``label_volume``, on the PET grid).

    A candidate whose region lies entirely inside a more probable one's keeps at least its own maximum
    voxel, so that every candidate has a segment (the engine's label map gives an overlap to the more probable).
    """
    import slicer

    from nmai.errors import NMAIError

    scene = pet_node.GetScene()
    lesions = report.get("lesions") or []
    labels = np.array(label_volume.array, dtype=np.uint16, copy=True)
    for rank, le in enumerate(lesions, start=1):
        if not (labels == rank).any():
            labels[tuple(int(v) for v in le["index_kji"])] = rank
    if int(labels.max()) > len(lesions):
        raise NMAIError(_("The lesion label volume holds labels that are not candidates of the report."))
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", outputs.output_name(pet_node, "triage_lesions", scene))
    labelmap = None
    try:
        node.SetReferenceImageGeometryParameterFromVolumeNode(pet_node)
        transform_id = pet_node.GetTransformNodeID()
        if transform_id:
            node.SetAndObserveTransformNodeID(transform_id)
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("__NMAI_lesions__"))
        mrml.update_node_from_volume(labelmap, label_volume.derive(labels), reference=pet_node)
        if transform_id:
            labelmap.SetAndObserveTransformNodeID(transform_id)
        segmentation = node.GetSegmentation()
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, node) \
                or segmentation.GetNumberOfSegments() != len(lesions):
            raise NMAIError(_("The lesion candidates could not be turned into segments."))
        for i in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(i)
            rank = int(segment.GetLabelValue())
            segment.SetName(lesion_label(rank, lesions[rank - 1], report.get("lesions_units")))
            segment.SetColor(*SEGMENT_COLOURS[(rank - 1) % len(SEGMENT_COLOURS)])
            segment.SetTag("NMAI.candidate", str(rank))
        _tag(node, pet_node, report, provenance)
        outputs.place_beside(node, pet_node)
    except BaseException:
        outputs.remove_nodes([node])
        raise
    finally:
        if labelmap is not None:
            outputs.remove_nodes([labelmap])
    return node


def create_nodes(report: dict, label_volume, pet_node, provenance) -> dict:
    """``{"table", "points"[, "segmentation"]}``: NEW nodes beside ``pet_node``; all or nothing."""
    if pet_node.GetScene() is None:
        from nmai.errors import NMAIError

        raise NMAIError(_("'{name}' is no longer in the scene; the result was not loaded.").format(
            name=pet_node.GetName()))
    created: dict = {}
    try:
        rows = finding_rows(report, pet_node)
        created["table"] = create_table(rows, report, pet_node, provenance)
        created["points"] = create_points(rows, report, pet_node, provenance)
        if label_volume is not None and report.get("lesions"):
            created["segmentation"] = create_segmentation(label_volume, report, pet_node, provenance)
    except BaseException:
        outputs.remove_nodes(list(created.values()))
        raise
    return created
