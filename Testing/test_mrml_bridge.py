"""The MRML bridge (NMAIExtensionLib.mrml / outputs) on real MRML nodes (slicer-core).

Geometry is checked against independent references: SimpleITK's index-to-physical mapping (LPS) with the
x and y signs flipped for RAS, and hand-written corner positions. Units codes are the ones Slicer's DICOM
plugins write. SUV factors read through the DICOM database path are checked against the QIBA formula.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from geometry_cases import GEOMETRIES
from nmai import NMAIError, Volume
from nmai.io import read_volume, to_sitk, write_volume

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

from NMAIExtensionLib import mrml, outputs  # noqa: E402

F_3600 = 70.0 * 1000.0 / (370e6 * 2 ** (-3600.0 / 6586.2))  # dicom_factory defaults: 70 kg, 370 MBq, 60 min


def ramp_volume(geometry: str, **kw) -> Volume:
    """Distinct values 1000·k + 10·j + i + 1 on a (5, 4, 3) [k, j, i] grid: any axis mix-up shows."""
    k, j, i = np.meshgrid(np.arange(5), np.arange(4), np.arange(3), indexing="ij")
    array = (1000 * k + 10 * j + i + 1).astype(np.float32)
    kw.setdefault("modality", "PT")
    kw.setdefault("units", "Bq/ml")
    return Volume(array, **GEOMETRIES[geometry], **kw)


def new_node(scene, volume: Volume, name: str = "PET"):
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    mrml.update_node_from_volume(node, volume)
    return node


def ras_of_index(node, ijk) -> np.ndarray:
    return (mrml.ijk_to_ras(node) @ np.array([*ijk, 1.0]))[:3]


def snapshot(node) -> dict:
    units = node.GetVoxelValueUnits()
    return {"array": slicer.util.arrayFromVolume(node).copy(), "matrix": mrml.ijk_to_ras(node),
            "attributes": {k: node.GetAttribute(k) for k in node.GetAttributeNames()},
            "units": units.GetAsString() if units else None, "name": node.GetName()}


def assert_same_snapshot(a: dict, b: dict) -> None:
    assert np.array_equal(a["array"], b["array"]) and a["array"].dtype == b["array"].dtype
    assert np.array_equal(a["matrix"], b["matrix"])
    assert a["attributes"] == b["attributes"] and a["units"] == b["units"] and a["name"] == b["name"]


# ------------------------------------------------------------------------------------------ geometry
@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_node_matrix_matches_simpleitk_physical_points(scene, geometry):
    volume = ramp_volume(geometry)
    node = new_node(scene, volume)
    image = to_sitk(volume)  # independent index -> LPS implementation
    for ijk in [(0, 0, 0), (2, 0, 0), (0, 3, 0), (0, 0, 4), (2, 3, 4), (1, 2, 3)]:
        lps = np.array(image.TransformContinuousIndexToPhysicalPoint([float(v) for v in ijk]))
        np.testing.assert_allclose(ras_of_index(node, ijk), lps * [-1, -1, 1], atol=1e-9)
    # voxel (i, j, k) of the node holds array[k, j, i] of the volume
    assert slicer.util.arrayFromVolume(node)[4, 3, 2] == volume.array[4, 3, 2] == 4000 + 30 + 2 + 1


def test_lps_origin_becomes_ras_origin(scene):
    node = new_node(scene, ramp_volume("lps"))
    origin = GEOMETRIES["lps"]["origin"]
    np.testing.assert_allclose(node.GetOrigin(), (-origin[0], -origin[1], origin[2]))
    np.testing.assert_allclose(node.GetSpacing(), GEOMETRIES["lps"]["spacing"])


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_volume_node_volume_round_trip_is_exact(scene, geometry):
    volume = ramp_volume(geometry, metadata={"suv_bw_factor": 1.25e-4})
    back = mrml.volume_from_node(new_node(scene, volume))
    assert np.array_equal(back.array, volume.array) and back.array.dtype == volume.array.dtype
    np.testing.assert_allclose(back.spacing, volume.spacing, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.origin, volume.origin, rtol=0, atol=1e-12)
    np.testing.assert_allclose(back.direction, volume.direction, rtol=0, atol=1e-12)
    assert (back.modality, back.units, back.suv_factor("bw")) == ("PT", "Bq/ml", 1.25e-4)


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_nifti_node_nifti_round_trip(scene, tmp_path, geometry):
    volume = ramp_volume(geometry, metadata={"suv_bw_factor": 2e-4})
    first = read_volume(write_volume(volume, tmp_path / "in.nii.gz"))
    node = new_node(scene, first)
    second = read_volume(write_volume(mrml.volume_from_node(node), tmp_path / "out.nii.gz"))
    assert np.array_equal(second.array, volume.array)
    assert second.same_grid(volume, tol=1e-4)
    assert (second.modality, second.units, second.suv_factor("bw")) == ("PT", "Bq/ml", 2e-4)
    # and the node sits where the original file says (NIfTI stores float32: sub-micrometre agreement)
    np.testing.assert_allclose(mrml.ijk_to_ras(node), volume.index_to_ras(), atol=1e-4)


@pytest.mark.parametrize("geometry", ["oblique", "ras"])
def test_output_on_input_grid_copies_the_input_matrix_exactly(study, geometry):
    scene, sh, study_item = study
    node = new_node(scene, ramp_volume(geometry))
    sh.CreateItem(study_item, node)
    # what an output read back from a float32 file looks like: the same grid to ~1e-6 mm
    nudged = mrml.volume_from_node(node)
    nudged = Volume(nudged.array * 2, tuple(np.float32(nudged.spacing)), tuple(np.float32(nudged.origin)),
                    nudged.direction.astype(np.float32), modality="PT", units="Bq/ml")
    assert not np.array_equal(nudged.index_to_ras(), mrml.ijk_to_ras(node))
    out = outputs.create_volume_node(nudged, reference=node, task="double")
    assert np.array_equal(mrml.ijk_to_ras(out), mrml.ijk_to_ras(node))
    assert np.array_equal(slicer.util.arrayFromVolume(out), nudged.array)


def test_output_on_another_grid_keeps_its_own_geometry(scene):
    node = new_node(scene, ramp_volume("lps"))
    other = ramp_volume("oblique")
    out = outputs.create_volume_node(other, reference=node, task="other")
    np.testing.assert_allclose(mrml.ijk_to_ras(out), other.index_to_ras(), atol=1e-12)
    # the input has no subject-hierarchy item (nothing creates one under slicer-core): the output still gets
    # its own item, at the top level
    sh = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    item = sh.GetItemByDataNode(out)
    assert item and sh.GetItemParent(item) == sh.GetSceneItemID()


def test_output_follows_the_input_transform(scene):
    node = new_node(scene, ramp_volume("lps"))
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
    node.SetAndObserveTransformNodeID(transform.GetID())
    out = outputs.create_volume_node(mrml.volume_from_node(node), reference=node, task="copy")
    assert out.GetTransformNodeID() == transform.GetID()


def test_label_output_is_a_label_map(scene):
    node = new_node(scene, ramp_volume("lps"))
    labels = Volume((ramp_volume("lps").array > 2000).astype(np.uint8), **GEOMETRIES["lps"], modality="SEG",
                    units="label")
    out = outputs.create_volume_node(labels, reference=node, task="mask")
    assert out.IsA("vtkMRMLLabelMapVolumeNode") and out.GetName() == "PET_mask"
    assert np.array_equal(slicer.util.arrayFromVolume(out), labels.array)


# ------------------------------------------------------------------------------------------ units
@pytest.mark.parametrize("units,modality,code,quantity", [
    ("Bq/ml", "PT", "Bq/ml", "110821"), ("SUVbw", "PT", "{SUVbw}g/ml", "126400"),
    ("SUVlbm", "PT", "{SUVlbm}g/ml", "126400"), ("cm-1", "OT", "/cm", "112031"),
    ("HU", "CT", "[hnsf'U]", "112031"), ("a.u.", "MR", "1", "110852"),
])
def test_units_written_as_dicom_ucum_codes_and_read_back(scene, units, modality, code, quantity):
    node = new_node(scene, ramp_volume("lps", units=units, modality=modality))
    assert node.GetVoxelValueUnits().GetCodeValue() == code
    assert node.GetVoxelValueUnits().GetCodingSchemeDesignator() == "UCUM"
    assert node.GetVoxelValueQuantity().GetCodeValue() == quantity
    assert node.GetAttribute("NMAI.units") == units
    node.RemoveAttribute("NMAI.units")  # read from the coded entries alone, as for a node loaded by Slicer
    node.RemoveAttribute("NMAI.modality")
    back = mrml.volume_from_node(node)
    assert back.units == units
    if modality != "OT":
        assert back.modality == modality


def slicer_dicom_like_node(scene, units_code, quantity_code=None, name="series"):
    """A node as Slicer's DICOM plugins leave it: voxels, coded entries, DICOM.instanceUIDs; no NMAI.*."""
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    slicer.util.updateVolumeFromArray(node, np.arange(60, dtype=np.float32).reshape(3, 4, 5) + 1)
    if units_code:
        node.SetVoxelValueUnits(mrml.coded_entry(*units_code))
    if quantity_code:
        node.SetVoxelValueQuantity(mrml.coded_entry(*quantity_code))
    node.SetAttribute("DICOM.instanceUIDs", "1.2.3.4 1.2.3.5")
    return node


def test_reads_slicer_dicom_plugin_codes(scene):
    ct = slicer_dicom_like_node(scene, ("[hnsf'U]", "UCUM", "Hounsfield unit"),
                                ("112031", "DCM", "Attenuation Coefficient"), "CT")
    mr = slicer_dicom_like_node(scene, ("1", "UCUM", "no units"), ("110852", "DCM", "MR signal intensity"), "MR")
    suv = slicer_dicom_like_node(scene, ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight"),
                                 ("126400", "DCM", "Standardized Uptake Value"), "PET SUV")
    assert (mrml.volume_from_node(ct).modality, mrml.volume_from_node(ct).units) == ("CT", "HU")
    assert (mrml.volume_from_node(mr).modality, mrml.volume_from_node(mr).units) == ("MR", "a.u.")
    v = mrml.volume_from_node(suv)
    assert (v.modality, v.units) == ("PT", "SUVbw")
    assert v.suv_factor("bw") is None and "no SUV factor" in v.metadata["suv_unavailable_reason"]


def test_unknown_units_stay_unknown_with_a_reason(scene):
    node = slicer_dicom_like_node(scene, None)
    v = mrml.volume_from_node(node)
    assert (v.units, v.modality) == ("1", "OT")
    assert "records no units" in v.metadata["units_unknown_reason"]
    assert mrml.volume_from_node(node, units="Bq/ml").units == "Bq/ml"
    assumed = mrml.volume_from_node(node, default_units="HU", default_modality="CT")
    assert (assumed.units, assumed.modality) == ("HU", "CT")
    assert any("assumed HU" in w for w in assumed.metadata["warnings"])


def test_declared_units_contradicting_the_node_are_refused(scene):
    node = new_node(scene, ramp_volume("lps", units="SUVbw"))
    with pytest.raises(NMAIError, match="recorded as SUVbw"):
        mrml.volume_from_node(node, units="Bq/ml")


def test_modality_from_subject_hierarchy(study):
    scene, sh, study_item = study
    node = slicer_dicom_like_node(scene, None, name="CT")
    item = sh.CreateItem(study_item, node)
    sh.SetItemAttribute(item, "DICOM.Modality", "CT")
    v = mrml.volume_from_node(node, default_units="HU", default_modality="CT")
    assert (v.modality, v.units) == ("CT", "HU")
    # a PET-like default is not applied to a node the hierarchy says is CT
    v = mrml.volume_from_node(node, default_units="Bq/ml", default_modality="PT")
    assert (v.modality, v.units) == ("CT", "1")


def test_suv_attributes_round_trip_and_validation(scene):
    node = new_node(scene, ramp_volume("lps", metadata={"suv_bw_factor": 3e-4, "suv_lbm_factor": 2e-4}))
    assert float(node.GetAttribute("NMAI.suv_bw_factor")) == 3e-4
    assert json.loads(node.GetAttribute("NMAI.metadata"))["suv_lbm_factor"] == 2e-4
    node.SetAttribute("NMAI.suv_bw_factor", "5e-4")  # a user's correction wins over the JSON copy
    assert mrml.volume_from_node(node).suv_factor("bw") == 5e-4
    node.SetAttribute("NMAI.suv_bw_factor", "abc")
    with pytest.raises(NMAIError, match="not a number"):
        mrml.volume_from_node(node)
    node.SetAttribute("NMAI.suv_bw_factor", "-1")
    with pytest.raises(NMAIError, match="positive"):
        mrml.volume_from_node(node)


def test_reading_never_modifies_the_node(scene):
    node = new_node(scene, ramp_volume("oblique", metadata={"suv_bw_factor": 1e-4}))
    before = snapshot(node)
    v = mrml.volume_from_node(node, units="Bq/ml")
    v.array[:] = -1  # the Volume owns a copy
    assert_same_snapshot(before, snapshot(node))


def test_non_scalar_and_empty_nodes_are_refused(scene):
    vector = scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    slicer.util.updateVolumeFromArray(vector, np.zeros((2, 3, 4, 3), np.uint8))
    with pytest.raises(NMAIError, match="not a scalar volume"):
        mrml.volume_from_node(vector)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(NMAIError, match="no image data"):
        mrml.volume_from_node(empty)
    with pytest.raises(NMAIError, match="No input volume"):
        mrml.volume_from_node(None)


def test_label_map_node_is_a_segmentation(scene):
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(label, np.ones((2, 3, 4), np.uint8))
    v = mrml.volume_from_node(label)
    assert (v.modality, v.units) == ("SEG", "label")


# ------------------------------------------------------------------------------------------ DICOM database
class FakeDicomDatabase:
    """What ``slicer.dicomDatabase`` offers to mrml: SOP Instance UID -> file."""

    def __init__(self, paths):
        import pydicom

        self.files = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): str(p) for p in paths}

    def fileForInstance(self, uid):
        return self.files.get(uid, "")


@pytest.mark.parametrize("dicom_units,expected", [("BQML", "Bq/ml"), ("GML", "SUVbw"), ("CNTS", None)])
def test_pet_loaded_by_slicer_scalar_plugin_gets_units_and_suv_from_its_headers(
        scene, tmp_path, monkeypatch, dicom_units, expected):
    from dicom_factory import ramp, write_series

    paths = write_series(tmp_path / "pet", ramp(3), header={"Units": dicom_units})
    monkeypatch.setattr(slicer, "dicomDatabase", FakeDicomDatabase(paths), raising=False)
    mrml._DICOM_CACHE.clear()
    node = slicer_dicom_like_node(scene, None, name="PET from DICOM")
    node.SetAttribute("DICOM.instanceUIDs", " ".join(FakeDicomDatabase(paths).files))
    v = mrml.volume_from_node(node)
    assert v.modality == "PT"
    if expected is None:
        assert v.units == "1" and "CNTS" in v.metadata["units_unknown_reason"]
    else:
        assert v.units == expected and v.metadata["units_source"] == "DICOM header (Units)"
        if dicom_units == "BQML":
            assert v.suv_factor("bw") == pytest.approx(F_3600, rel=1e-6)


def test_without_dicom_database_nothing_is_guessed(scene, monkeypatch):
    monkeypatch.delattr(slicer, "dicomDatabase", raising=False)
    node = slicer_dicom_like_node(scene, None)
    assert mrml.dicom_pet_info(node) == {}


def test_pet_dicom_extension_suv_node_gets_its_factor_from_the_headers(scene, tmp_path, monkeypatch):
    """The PET DICOM extension loads SUVbw voxels and keeps the factor in a separate RWVM object."""
    from dicom_factory import ramp, write_series

    paths = write_series(tmp_path / "pet", ramp(3))
    database = FakeDicomDatabase(paths)
    monkeypatch.setattr(slicer, "dicomDatabase", database, raising=False)
    mrml._DICOM_CACHE.clear()
    node = slicer_dicom_like_node(scene, ("{SUVbw}g/ml", "UCUM", "Standardized Uptake Value body weight"),
                                  ("126400", "DCM", "Standardized Uptake Value"), "PET SUVbw")
    node.SetAttribute("DICOM.instanceUIDs", " ".join(database.files))
    v = mrml.volume_from_node(node)
    assert (v.modality, v.units) == ("PT", "SUVbw")
    assert v.suv_factor("bw") == pytest.approx(F_3600, rel=1e-6)
