"""Before/after metrics of a denoising run, from MRML nodes, into a NEW table node.

Rows (one per metric; columns Metric, Input, Output, Change %, Units), all on the input PET's grid and in one
unit (the input's, or the one asked for):

* always: ``Body mean`` and ``Body max`` (the body: voxels above 5 % of the 99.5th percentile of the
  reference, else of the input) — a denoiser should keep the mean activity;
* with a full-count reference PET: ``PSNR`` (dB), ``SSIM`` and ``NRMSE`` (%) of the input and of the output
  against the reference, inside the body (:mod:`nmai.denoise.metrics`);
* with a noise region: its mean, SD and CoV (%);
* with a lesion: SUVmax, SUVpeak (mean of the 1 ml sphere with the highest mean whose centre lies in the
  lesion, PERCIST) and SUVmean ("max", "peak", "mean" when the values are Bq/ml).

``Change %`` is 100 × (output − input) / |input|. Regions are segments (exported onto the PET grid by
Slicer's segmentation logic, so any orientation and transform is handled) or label maps (resampled with
nearest neighbour when their grid differs). Nothing here modifies a node; temporary nodes are removed.
"""

from __future__ import annotations

import numpy as np

from NMAIExtensionLib import mrml, outputs
from NMAIExtensionLib.messages import _
from NMAIExtensionLib.mrml import PET_UNITS
from NMAIExtensionLib.outputs import Provenance
from nmai.errors import NMAIError

COLUMNS = (  # (row key, column name, description)
    ("metric", "Metric", "what is measured"),
    ("input", "Input", "value on the input (before denoising)"),
    ("output", "Output", "value on the output (after denoising)"),
    ("change_pct", "Change %", "100 x (output - input) / |input|"),
    ("units", "Units", "units of the input and output values"),
)
SSIM_PAD = 6  # voxels: SSIM's Gaussian window (sigma 1.5, truncate 3.5) reaches 5 voxels


# ------------------------------------------------------------------------------------------ pure numbers
def _row(key: str, metric: str, before, after, units: str) -> dict:
    before = None if before is None else float(before)
    after = None if after is None else float(after)
    change = None
    if before is not None and after is not None and before != 0 and np.isfinite(before) and np.isfinite(after):
        change = 100.0 * (after - before) / abs(before)
    return {"key": key, "metric": metric, "input": before, "output": after, "change_pct": change, "units": units}


def _crop_box(mask: np.ndarray, pad: int) -> tuple:
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - pad, 0)
    hi = np.minimum(idx.max(0) + pad + 1, mask.shape)
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def compute_rows(before: np.ndarray, after: np.ndarray, spacing, units: str, *, reference: np.ndarray | None = None,
                 region: np.ndarray | None = None, lesion: np.ndarray | None = None) -> list[dict]:
    """The metric rows from arrays ``[k, j, i]`` on one grid, all in ``units``; masks are boolean arrays."""
    from nmai.denoise.metrics import body_mask, nrmse, psnr_db, region_stats, ssim

    before = np.asarray(before, np.float64)
    after = np.asarray(after, np.float64)
    body = body_mask(reference if reference is not None else before)
    if not body.any():
        raise NMAIError(_("No body found in the {image} (every voxel is at the background level).").format(
            image=_("reference") if reference is not None else _("input")))
    rows = [_row("body_mean", _("Body mean"), before[body].mean(), after[body].mean(), units),
            _row("body_max", _("Body max"), before.max(), after.max(), units)]
    if reference is not None:
        reference = np.asarray(reference, np.float64)
        box = _crop_box(body, SSIM_PAD)  # SSIM inside the body is the same on the cropped box, and faster
        b, a, r, m = before[box], after[box], reference[box], body[box]
        rows += [_row("psnr", _("PSNR vs reference (body)"), psnr_db(b, r, m), psnr_db(a, r, m), "dB"),
                 _row("ssim", _("SSIM vs reference (body)"), ssim(b, r, m), ssim(a, r, m), "1"),
                 _row("nrmse", _("NRMSE vs reference (body)"), 100 * nrmse(b, r, m), 100 * nrmse(a, r, m), "%")]
    if region is not None:
        s0, s1 = region_stats(before, region, spacing), region_stats(after, region, spacing)
        cov = [None if s["cov"] is None else 100.0 * s["cov"] for s in (s0, s1)]
        rows += [_row("region_mean", _("Noise region mean"), s0["mean"], s1["mean"], units),
                 _row("region_sd", _("Noise region SD"), s0["sd"], s1["sd"], units),
                 _row("region_cov", _("Noise region CoV"), cov[0], cov[1], "%")]
    if lesion is not None:
        s0, s1 = region_stats(before, lesion, spacing), region_stats(after, lesion, spacing)
        suv = units.startswith("SUV")
        rows += [_row("lesion_max", _("Lesion SUVmax") if suv else _("Lesion max"), s0["max"], s1["max"], units),
                 _row("lesion_peak", _("Lesion SUVpeak (1 ml)") if suv else _("Lesion peak (1 ml)"),
                      s0["peak"], s1["peak"], units),
                 _row("lesion_mean", _("Lesion SUVmean") if suv else _("Lesion mean"), s0["mean"], s1["mean"],
                      units)]
    return rows


def format_rows(rows: list[dict]) -> str:
    def fmt(v, spec):
        return "-" if v is None or not np.isfinite(v) else format(v, spec)

    lines = [f"{'metric':<28} {'input':>12} {'output':>12} {'change %':>9}  units"]
    for r in rows:
        lines.append(f"{r['metric']:<28} {fmt(r['input'], '.5g'):>12} {fmt(r['output'], '.5g'):>12} "
                     f"{fmt(r['change_pct'], '+.1f'):>9}  {r['units']}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ masks from nodes
def _segment_id(segmentation_node, segment, what: str) -> str:
    segmentation = segmentation_node.GetSegmentation()
    if segment is None or segment == "":
        if segmentation.GetNumberOfSegments() == 1:
            return segmentation.GetNthSegmentID(0)
        raise NMAIError(_("Choose the {what} segment of '{node}' (it has {n} segments).").format(
            what=what, node=segmentation_node.GetName(), n=segmentation.GetNumberOfSegments()))
    segment = str(segment)
    if segmentation.GetSegment(segment) is not None:
        return segment
    by_name = segmentation.GetSegmentIdBySegmentName(segment)
    if by_name:
        return by_name
    raise NMAIError(_("'{node}' has no segment '{segment}' (the {what}).").format(
        node=segmentation_node.GetName(), segment=segment, what=what))


def _segment_mask(segmentation_node, segment_id: str, pet_node) -> np.ndarray:
    """The segment as a boolean array on ``pet_node``'s grid (Slicer's export; temporary nodes removed)."""
    import slicer
    import vtk

    scene = pet_node.GetScene()
    before = {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName("__NMAI_mask__"))
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        ok = slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(segmentation_node, ids, labelmap,
                                                                                   pet_node)
        if not ok:
            raise NMAIError(_("Segment '{segment}' of '{node}' could not be placed on the PET grid.").format(
                segment=segment_id, node=segmentation_node.GetName()))
        array = slicer.util.arrayFromVolume(labelmap)
        if tuple(array.shape) != mrml.node_shape(pet_node):
            raise NMAIError(_("Segment '{segment}' of '{node}' could not be placed on the PET grid.").format(
                segment=segment_id, node=segmentation_node.GetName()))
        return np.asarray(array) > 0
    finally:
        # the temporary label map and what the export added for it (display, colour table), nothing shared
        added = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        for node in added:
            if node is not None and node.GetID() not in before and node.GetScene() is scene \
                    and not node.GetSingletonTag() and not node.IsA("vtkMRMLSubjectHierarchyNode"):
                scene.RemoveNode(node)


def _labelmap_mask(labelmap_node, value, pet_volume) -> np.ndarray:
    volume = mrml.volume_from_node(labelmap_node, default_units="label", default_modality="SEG")
    array = np.asarray(volume.array)
    if value is None:
        mask_values = (array != 0).astype(np.uint8)
    else:
        mask_values = (array == value).astype(np.uint8)
    mask = volume.derive(mask_values, units="label", modality="SEG")
    if not mask.same_grid(pet_volume, tol=1e-3):
        from nmai.inference import resample_to_reference

        mask = resample_to_reference(mask, pet_volume, interpolator="nearest")
    return np.asarray(mask.array) > 0


def region_mask(region, pet_node, pet_volume, what: str) -> np.ndarray | None:
    """``region`` (see :meth:`NMAIDenoiseLogic.metrics`) as a boolean array on the PET grid, or None."""
    if region is None:
        return None
    node, key = (region if isinstance(region, (tuple, list)) else (region, None))
    if isinstance(region, (tuple, list)) and len(region) != 2:
        raise NMAIError(_("Give the {what} as (segmentation node, segment ID) or a label map.").format(what=what))
    if node is None:
        return None
    if node.IsA("vtkMRMLSegmentationNode"):
        segment_id = _segment_id(node, key, what)
        mask = _segment_mask(node, segment_id, pet_node)
        label = f"'{node.GetName()}' / {node.GetSegmentation().GetSegment(segment_id).GetName()}"
    elif node.IsA("vtkMRMLLabelMapVolumeNode"):
        try:
            value = None if key is None or key == "" else int(key)
        except (TypeError, ValueError):
            raise NMAIError(_("The label value of the {what} must be a whole number, not {key!r}.").format(
                what=what, key=key)) from None
        mask = _labelmap_mask(node, value, pet_volume)
        label = f"'{node.GetName()}'" + ("" if value is None else f" label {value}")
    else:
        raise NMAIError(_("The {what} must be a segmentation (with a segment) or a label map, not '{node}' "
                          "({cls}).").format(what=what, node=node.GetName(), cls=node.GetClassName()))
    if not mask.any():
        raise NMAIError(_("The {what} {label} has no voxel inside the PET volume '{pet}'; check that it was "
                          "drawn on this patient's PET.").format(what=what, label=label, pet=pet_node.GetName()))
    return mask


# ------------------------------------------------------------------------------------------ nodes
def _pet_volume(node, units, role: str, default_units=None):
    from nmai.validate import check_pet

    if node is None:
        raise NMAIError(_("Select the {role} PET volume.").format(role=role))
    volume = mrml.volume_from_node(node, default_units=default_units, default_modality="PT")
    if volume.modality not in ("PT", "OT") or volume.units not in PET_UNITS:
        raise NMAIError(_("The {role} '{name}' is not a PET volume in Bq/ml or SUV ({modality}, {units}).").format(
            role=role, name=node.GetName(), modality=volume.modality, units=volume.units))
    volume.modality = "PT"
    check_pet(volume, f"'{node.GetName()}'")
    if units is None:
        return volume
    try:
        return volume.to_units(units)
    except NMAIError as exc:
        raise NMAIError(_("The {role} '{name}' is in {have} and cannot be expressed in {want}: {reason}").format(
            role=role, name=node.GetName(), have=volume.units, want=units, reason=exc)) from None


def compute_node_metrics(inputNode, outputNode, *, referenceNode=None, region=None, lesion=None,
                         units: str | None = None) -> tuple[list[dict], dict]:
    """(rows, context) for the table: all values in one unit, on the input's grid."""
    if units is not None and units not in PET_UNITS:
        raise NMAIError(_("Metric units must be one of {units}.").format(units=", ".join(PET_UNITS)))
    if outputNode is None:
        raise NMAIError(_("Select the denoised PET volume (the output of a run)."))
    out_units, _source = mrml.node_units(outputNode)
    before = _pet_volume(inputNode, units, _("input"), default_units=out_units)
    units = before.units
    after = _pet_volume(outputNode, units, _("output"))
    if not after.same_grid(before, tol=1e-3):
        raise NMAIError(_("The output '{out}' is not on the grid of the input '{inp}'; choose the output of a "
                          "denoising run of this input.").format(out=outputNode.GetName(), inp=inputNode.GetName()))
    reference = None
    if referenceNode is not None:
        ref = _pet_volume(referenceNode, units, _("reference"))
        if not ref.same_grid(before, tol=1e-3):
            from nmai.inference import resample_to_reference

            ref = resample_to_reference(ref, before)
        reference = ref.array
    region_array = region_mask(region, inputNode, before, _("noise region"))
    lesion_array = region_mask(lesion, inputNode, before, _("lesion"))
    rows = compute_rows(before.array, after.array, before.spacing, units, reference=reference,
                        region=region_array, lesion=lesion_array)
    context = {"units": units, "reference": referenceNode.GetName() if referenceNode is not None else ""}
    return rows, context


def create_metrics_table(rows: list[dict], *, inputNode, outputNode, context: dict | None = None, name=None):
    """A NEW table node of the metric rows, in the input's study; all or nothing."""
    import vtk

    context = context or {}
    scene = inputNode.GetScene()
    node = scene.AddNewNodeByClass("vtkMRMLTableNode", name or outputs.output_name(outputNode, "metrics", scene))
    try:
        arrays = []
        for key, title, _description in COLUMNS:
            array = vtk.vtkStringArray() if key in ("metric", "units") else vtk.vtkDoubleArray()
            array.SetName(title)
            arrays.append((key, array))
        for row in rows:
            for key, array in arrays:
                value = row.get(key)
                if isinstance(array, vtk.vtkStringArray):
                    array.InsertNextValue(str(value))
                else:
                    array.InsertNextValue(float("nan") if value is None else float(value))
        for _key, array in arrays:
            node.AddColumn(array)
        for _key, title, description in COLUMNS:
            node.SetColumnDescription(title, description)
        node.SetColumnUnitLabel("Change %", "%")
        provenance = Provenance(task="denoise", method=outputNode.GetAttribute("NMAI.method") or "",
                                model=outputNode.GetAttribute("NMAI.model") or "",
                                model_sha256=outputNode.GetAttribute("NMAI.modelSha256") or "",
                                parameters={"metrics_units": context.get("units", "")})
        for key, value in provenance.attributes().items():
            node.SetAttribute(key, value)
        node.SetAttribute("NMAI.sourceNode", inputNode.GetName())
        node.SetAttribute("NMAI.outputNode", outputNode.GetName())
        node.SetAttribute("NMAI.referenceNode", context.get("reference", ""))
        node.SetAttribute("NMAI.metricsUnits", context.get("units", ""))
        outputs.place_beside(node, inputNode)
    except BaseException:
        outputs.remove_nodes([node])
        raise
    return node
