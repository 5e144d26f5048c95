"""NMAI Triage Logic on real MRML nodes (slicer-core): findings nodes from the image report, and the monitor.

The artifact and lesion models are tiny ones trained once per module with the quick preset (they prove the
plumbing, not the quality; NMAI_TEST_TRIAGE_MODELS=<folder holding triage-artifacts/ and triage-lesions/>
reuses trained ones). Expected positions are recomputed here from the PET node's own IJK-to-RAS matrix.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from geometry_cases import GEOMETRIES
from nmai import NMAIError, Volume

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

from NMAIExtensionLib import mrml  # noqa: E402
from NMAITriageLib import NMAITriageLogic  # noqa: E402
from NMAITriageLib.findings import ATTR_ALARM, banner  # noqa: E402
from NMAITriageLib.monitor import format_frame  # noqa: E402
from test_logic import add_series, assert_unchanged, nmai_temp_folders, snapshot  # noqa: E402
from test_triage_models import sphere_phantom  # noqa: E402


@pytest.fixture(scope="module")
def models(quick_triage_models):
    """{"artifacts": folder, "lesions": folder}: quick-preset models (one thread for inference)."""
    import torch

    torch.set_num_threads(1)
    reuse = os.environ.get("NMAI_TEST_TRIAGE_MODELS")
    if reuse and all(os.path.isdir(os.path.join(reuse, f"triage-{m}")) for m in ("artifacts", "lesions")):
        return {m: os.path.join(reuse, f"triage-{m}") for m in ("artifacts", "lesions")}
    return quick_triage_models


def ct_of(pet: Volume) -> Volume:
    return pet.derive(np.where(pet.array > 0.5, 40.0, -1000.0).astype(np.float32), modality="CT", units="HU")


def mumap_of(pet: Volume, radius_mm: float | None = None) -> Volume:
    """Water inside the body (or inside a cylinder of ``radius_mm``: a truncated μ-map)."""
    body = pet.array > 0.5
    if radius_mm is not None:
        _, j, i = np.indices(pet.shape)
        body &= ((j - 24) ** 2 + (i - 24) ** 2) * pet.spacing[0] ** 2 < radius_mm ** 2
    return pet.derive(np.where(body, 0.096, 0.0).astype(np.float32), modality="OT", units="cm-1")


def nodes_of(scene, cls: str) -> list:
    return [scene.GetNthNodeByClass(i, cls) for i in range(scene.GetNumberOfNodesByClass(cls))]


def points(markups) -> list[np.ndarray]:
    return [np.array(markups.GetNthControlPointPosition(i)) for i in range(markups.GetNumberOfControlPoints())]


# ------------------------------------------------------------------------------------------ image triage
def test_process_with_ct_makes_table_points_and_segmentation_on_an_oblique_pet(study, models):
    scene, sh, study_item = study
    pet_volume, _centres = sphere_phantom(direction=GEOMETRIES["oblique"]["direction"])
    pet = add_series(study, pet_volume, "PET AC", "PT")
    ct = add_series(study, ct_of(pet_volume), "CT", "CT")
    before_pet, before_ct = snapshot(pet), snapshot(ct)
    temp_before = nmai_temp_folders()
    logic = NMAITriageLogic()

    alarm = logic.process(pet, ctNode=ct, model=models["artifacts"], lesionModel=models["lesions"], threshold=0.0)

    report = logic.lastReport
    assert alarm == report["alarm"] and alarm in ("ok", "check", "repeat")
    assert report["checked"] == {"image_rules": True, "mumap_rules": True, "image_classifier": True, "raw_data": False,
                                 "lesions": True}
    assert report["classifier"]["with_mumap"]
    artifacts, lesions = report["artifacts"], report["lesions"]
    assert len(lesions) >= 2 and report["lesions_units"] == "SUVbw"
    nodes = logic.lastNodes
    assert set(nodes) == {"table", "points", "segmentation"}
    assert [n.GetName() for n in (nodes["table"], nodes["points"], nodes["segmentation"])] == \
        ["PET AC_triage", "PET AC_triage_points", "PET AC_triage_lesions"]
    for node in nodes.values():
        assert node.GetAttribute(ATTR_ALARM) == alarm == NMAITriageLogic.alarmOf(node)
        assert node.GetAttribute("NMAI.task") == "triage" and node.GetAttribute("NMAI.sourceNode") == "PET AC"
        assert node.GetAttribute("NMAI.model") == "triage-artifacts"
        item = sh.GetItemByDataNode(node)
        assert item and sh.GetItemParent(item) == study_item

    # table: one row per artifact, then per lesion candidate
    table = nodes["table"]
    n_rows = len(artifacts) + len(lesions)
    assert table.GetNumberOfRows() == n_rows
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert columns == ["Kind", "Type", "Probability", "Alarm", "Location", "SUVmax", "SUVpeak", "Volume (ml)", "TLG",
                       "Message"]
    kinds = [table.GetCellText(r, 0) for r in range(n_rows)]
    assert kinds == ["artifact"] * len(artifacts) + ["lesion"] * len(lesions)
    for r, a in enumerate(artifacts):
        assert table.GetCellText(r, 1) == a["type"] and table.GetCellText(r, 3) == a["alarm"]
        assert float(table.GetCellText(r, 2)) == pytest.approx(a["probability"], abs=1e-6)
    for n, le in enumerate(lesions):
        r = len(artifacts) + n
        for c, key in ((5, "suv_max"), (6, "suv_peak"), (7, "volume_ml"), (8, "tlg"), (2, "probability")):
            assert float(table.GetCellText(r, c)) == pytest.approx(le[key], rel=1e-6), key
    top = lesions[0]
    assert top["suv_max"] == pytest.approx(float(pet_volume.array.max()), rel=1e-4)

    # points: point n is row n; lesions at LPS -> RAS, which is also the PET node's IJK-to-RAS of the maximum
    markups = nodes["points"]
    assert markups.GetNumberOfControlPoints() == n_rows
    ijk_to_ras = mrml.ijk_to_ras(pet)
    for n, le in enumerate(lesions):
        i = len(artifacts) + n
        x, y, z = le["position_lps"]
        np.testing.assert_allclose(points(markups)[i], [-x, -y, z], atol=1e-6)
        k, j, ii = le["index_kji"]
        np.testing.assert_allclose(points(markups)[i], (ijk_to_ras @ [ii, j, k, 1.0])[:3], atol=0.01)
        assert markups.GetNthControlPointLabel(i) == f"L{n + 1} SUVmax {le['suv_max']:.1f}"
    nk, nj, ni = pet_volume.shape
    for n, a in enumerate(artifacts):
        k0, k1 = a["slice_range"]
        expected = (ijk_to_ras @ [(ni - 1) / 2, (nj - 1) / 2, (k0 + k1) / 2, 1.0])[:3]
        np.testing.assert_allclose(points(markups)[n], expected, atol=1e-6)
        assert markups.GetNthControlPointLabel(n) == a["type"]

    # segmentation: one segment per candidate, in rank order
    segmentation = nodes["segmentation"].GetSegmentation()
    assert segmentation.GetNumberOfSegments() == len(lesions)
    assert [segmentation.GetNthSegment(s).GetName() for s in range(len(lesions))] == \
        [markups.GetNthControlPointLabel(len(artifacts) + n) for n in range(len(lesions))]
    import vtk

    exported = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "exported")
    ids = vtk.vtkStringArray()
    for s in range(len(lesions)):
        ids.InsertNextValue(segmentation.GetNthSegmentID(s))
    assert slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(nodes["segmentation"], ids, exported,
                                                                                pet)
    labels = slicer.util.arrayFromVolume(exported)
    assert labels.shape == pet_volume.shape and int(labels.max()) == len(lesions)
    for n, le in enumerate(lesions, start=1):
        assert labels[tuple(le["index_kji"])] == n  # segment n holds candidate n's maximum, on the PET grid
    assert (labels == 1).sum() * 0.064 == pytest.approx(top["volume_ml"], rel=0.05)  # 4 mm voxels: 0.064 ml
    scene.RemoveNode(exported)

    # the inputs are untouched; the temporary files are gone; no stray node (labelmap) is left
    assert_unchanged(before_pet, pet)
    assert_unchanged(before_ct, ct)
    assert nmai_temp_folders() == temp_before
    assert [n.GetName() for n in nodes_of(scene, "vtkMRMLVolumeNode")] == ["PET AC", "CT"]
    alarm_text = banner(report)[1]
    assert alarm_text.startswith(alarm.upper())
    assert "L1   max" in logic.formatFindings()


def test_rules_only_in_a_child_process_flags_a_truncated_mumap(study):
    scene, sh, study_item = study
    pet_volume, _ = sphere_phantom(direction=GEOMETRIES["flipped_k"]["direction"])
    pet = add_series(study, pet_volume, "PET", "PT")
    mu = add_series(study, mumap_of(pet_volume, radius_mm=40.0), "mu-map")
    logic = NMAITriageLogic()
    assert logic.attenuationRole(mu) == "mumap"

    handle = logic.process(pet, mumapNode=mu, rulesOnly=True, wait=False)
    handle.wait(timeout=180)
    alarm = logic.finish(handle)

    assert alarm == "check"
    report = logic.lastReport
    assert [a["type"] for a in report["artifacts"]] == ["truncation"] and report["lesions"] == []
    assert report["checked"]["mumap_rules"] and not report["checked"]["image_classifier"]
    assert set(logic.lastNodes) == {"table", "points"}  # no candidates searched: no segmentation
    table = logic.lastNodes["table"]
    assert table.GetNumberOfRows() == 1 and table.GetCellText(0, 1) == "truncation"
    assert table.GetAttribute(ATTR_ALARM) == "check"
    assert nodes_of(scene, "vtkMRMLSegmentationNode") == []
    level, text = logic.banner(report)
    assert level == "check" and text.startswith("CHECK: truncation: ") and "μ-map" in text


def test_bad_inputs_raise_clear_errors_and_create_nothing(study):
    scene, sh, study_item = study
    pet_volume, _ = sphere_phantom()
    pet = add_series(study, pet_volume, "PET", "PT")
    ct = add_series(study, ct_of(pet_volume), "CT", "CT")
    far = Volume(mumap_of(pet_volume).array, pet_volume.spacing, (5000.0, 0.0, 0.0), pet_volume.direction,
                 modality="OT", units="cm-1")
    mu_far = add_series(study, far, "mu-map of another study")
    logic = NMAITriageLogic()
    count, temp_before = scene.GetNumberOfNodes(), nmai_temp_folders()

    with pytest.raises(NMAIError, match="'CT' is a CT volume, not PET"):
        logic.process(ct, rulesOnly=True)
    with pytest.raises(NMAIError, match="does not overlap the PET"):
        logic.process(pet, mumapNode=mu_far, rulesOnly=True)
    with pytest.raises(NMAIError, match="is a CT .HU., not a μ-map"):
        logic.process(pet, mumapNode=ct, rulesOnly=True)
    with pytest.raises(NMAIError, match="either the μ-map or the CT"):
        logic.process(pet, mumapNode=mu_far, ctNode=ct)
    with pytest.raises(NMAIError, match="between 0 and 1"):
        logic.process(pet, threshold=1.5)
    with pytest.raises(NMAIError, match="Select the PET"):
        logic.process(None)

    assert scene.GetNumberOfNodes() == count
    assert nmai_temp_folders() == temp_before
    assert logic.lastNodes == {}


def test_banner_and_lines_without_findings():
    assert banner({"alarm": "ok", "artifacts": [], "lesions": []}) == ("ok", "OK: no artifact found")
    line = format_frame({"frame": 3, "alarm": "repeat", "file": "frame_0003.npz",
                         "findings": [{"type": "failed_blocks", "message": "detector block(s) 10 dead"}]})
    assert line.startswith("frame 3") and "REPEAT" in line and line.endswith("frame_0003.npz: detector block(s) 10 dead")


# ------------------------------------------------------------------------------------------ monitor
@pytest.fixture(scope="module")
def failed_block_acquisition():
    """A 3-frame acquisition of a 12-slice whole-body slab by a scanner with dead block 10."""
    from nmai.sim import DEFAULT_SCANNER, make_phantom, simulate_acquisition
    from nmai.sim.phantoms import Phantom

    ph = make_phantom("wholebody", seed=0, voxel_mm=8, supersample=1, mr=False, arms=True)
    vols = {}
    for name, v in ph.volumes.items():  # slices 50-61 (thorax)
        origin = (v.origin[0], v.origin[1], v.origin[2] + 50 * v.spacing[2])
        vols[name] = Volume(v.array[50:62], v.spacing, origin, v.direction, v.modality, v.units, dict(v.metadata))
    slab = Phantom(ph.name, vols, ph.label_table, ph.info)
    return simulate_acquisition(slab.activity, slab.mumap, DEFAULT_SCANNER.with_(failed_blocks=(10,)),
                                duration_s=30.0, frames=3, count_fraction=0.05, seed=2)


@pytest.fixture
def frame_folder(tmp_path, failed_block_acquisition):
    from nmai.triage.frames import write_frames

    folder = tmp_path / "scan"
    write_frames(failed_block_acquisition, folder)
    (folder / "frame_0003.npz").write_bytes(b"PK\x03\x04 truncated")  # a corrupt frame file
    return folder


def test_watch_reports_each_frame_and_survives_a_corrupt_file(frame_folder):
    seen = []
    results = NMAITriageLogic().watch(frame_folder, seen.append, timeout_s=10, expected_frames=4,
                                      unreadable_after_s=0.5, poll_s=0.05)
    assert seen == results and len(results) == 4
    good = [r for r in results if not r.get("refused")]
    assert [r["frame"] for r in good] == [0, 1, 2]
    assert all(r["alarm"] == "repeat" and r["failed_blocks"] == [10] for r in good)
    bad = [r for r in results if r.get("refused")]
    assert len(bad) == 1 and bad[0]["file"] == "frame_0003.npz" and bad[0]["alarm"] == "check"
    assert "truncated or corrupt" in format_frame(bad[0])
    assert "REPEAT" in format_frame(good[0]) and "block(s) 10 dead" in format_frame(good[0])


def test_watch_stops_when_the_callback_says_so_and_a_failing_callback_does_not_crash_it(frame_folder):
    calls = []

    def stop_after_two(result):
        calls.append(result)
        if len(calls) == 1:
            raise RuntimeError("a panel bug")
        return len(calls) < 2

    results = NMAITriageLogic().watch(frame_folder, stop_after_two, timeout_s=10, poll_s=0.05)
    assert len(results) == 2 and [r["frame"] for r in results] == [0, 1]


def test_watch_in_a_child_process_streams_lines_and_stops_at_once(frame_folder):
    lines = []
    watch = NMAITriageLogic().watch(frame_folder, lambda r: lines.append(format_frame(r)), timeout_s=300,
                                    expected_frames=10, wait=False)
    deadline = time.monotonic() + 120
    while len(watch.results) < 3 and watch.running and time.monotonic() < deadline:
        watch.poll()
        time.sleep(0.05)
    assert watch.running, watch.error  # the corrupt file (still settling) does not end it
    assert [r["frame"] for r in watch.results] == [0, 1, 2] and all(r["alarm"] == "repeat" for r in watch.results)
    assert len(lines) == 3 and all("REPEAT" in line for line in lines)
    t = time.monotonic()
    watch.stop()
    assert time.monotonic() - t < 5 and watch.finished and not watch.running
    assert watch.error is None and watch.summary == "Stopped after 3 frame(s)."


def test_watch_refuses_a_missing_folder(tmp_path):
    with pytest.raises(NMAIError, match="does not exist"):
        NMAITriageLogic().watch(tmp_path / "nowhere", print)
    with pytest.raises(NMAIError, match="scan.json"):
        NMAITriageLogic().watch(tmp_path, print, timeout_s=0.3, poll_s=0.05)


def test_panel_parameters_pick_ct_or_mumap_and_ignore_models_in_rules_only(study):
    import types

    pet_volume, _ = sphere_phantom()
    pet = add_series(study, pet_volume, "PET", "PT")
    ct = add_series(study, ct_of(pet_volume), "CT", "CT")
    logic = NMAITriageLogic()
    assert logic.attenuationRole(ct) == "ct"
    p = types.SimpleNamespace(inputVolume=pet, attenuationVolume=ct, modelPath="/not/used", lesionModelPath="",
                              threshold=0.5, rulesOnly=True)
    assert logic.processParameters(p, wait=True) == "ok"
    assert logic.lastReport["checked"]["mumap_rules"] and logic.lastReport["artifacts"] == []
    assert json.loads(logic.lastNodes["table"].GetAttribute("NMAI.parameters"))["attenuation"] == "ct"
