"""The three Logic classes on real MRML nodes (slicer-core), in-process and in a child process.

Expected numbers are independent of the code under test: the Gaussian output is recomputed here with
scipy from the FWHM and the voxel spacing; the μ values follow Carney et al.'s bilinear formula by hand.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time

import numpy as np
import pytest

from geometry_cases import GEOMETRIES
from nmai import NMAIError, Volume, __version__
from nmai.errors import CancelledError

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

from NMAIAttenuationLib import NMAIAttenuationLogic  # noqa: E402
from NMAIDenoiseLib import NMAIDenoiseLogic  # noqa: E402
from NMAIExtensionLib import mrml  # noqa: E402
from NMAIExtensionLib.task import EngineTask, TaskInput, TaskOutput  # noqa: E402
from NMAITriageLib import NMAITriageLogic  # noqa: E402

SUV_F = 2.0e-4  # SUVbw = Bq/ml * SUV_F


def pet_volume(geometry="oblique", shape=(12, 14, 16), seed=0, **kw) -> Volume:
    data = np.random.default_rng(seed).gamma(3.0, 1000.0, size=shape).astype(np.float32)
    kw.setdefault("metadata", {"suv_bw_factor": SUV_F})
    return Volume(data, **GEOMETRIES[geometry], modality=kw.pop("modality", "PT"), units=kw.pop("units", "Bq/ml"),
                  **kw)


def add_series(study, volume: Volume, name: str, dicom_modality: str | None = None):
    """A volume node placed in the study as a series item, as the DICOM module would."""
    scene, sh, study_item = study
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    mrml.update_node_from_volume(node, volume)
    item = sh.CreateItem(study_item, node)
    if dicom_modality:
        sh.SetItemAttribute(item, "DICOM.Modality", dicom_modality)
    node.CreateDefaultDisplayNodes()
    return node


def snapshot(node) -> dict:
    units = node.GetVoxelValueUnits()
    display = node.GetDisplayNode()
    return {"array": slicer.util.arrayFromVolume(node).copy(), "matrix": mrml.ijk_to_ras(node),
            "attributes": {k: node.GetAttribute(k) for k in node.GetAttributeNames()},
            "units": units.GetAsString() if units else None, "name": node.GetName(),
            "window": (display.GetWindow(), display.GetLevel()) if display else None,
            "mtime_image": node.GetImageData().GetMTime()}


def assert_unchanged(before: dict, node) -> None:
    after = snapshot(node)
    assert np.array_equal(before["array"], after["array"]) and before["array"].dtype == after["array"].dtype
    assert np.array_equal(before["matrix"], after["matrix"])
    for key in ("attributes", "units", "name", "window", "mtime_image"):
        assert before[key] == after[key], key


def nmai_temp_folders() -> set:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "NMAI-*")))


def volume_nodes(scene) -> list:
    return [scene.GetNthNodeByClass(i, "vtkMRMLVolumeNode")
            for i in range(scene.GetNumberOfNodesByClass("vtkMRMLVolumeNode"))]


def expected_gaussian(volume: Volume, fwhm_mm: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    sigma_ijk = fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / np.asarray(volume.spacing)
    return gaussian_filter(volume.array.astype(np.float32), sigma=sigma_ijk[::-1], mode="reflect", truncate=4.0)


# ------------------------------------------------------------------------------------------ Denoise
def test_denoise_makes_a_new_pet_node_beside_the_input(study):
    scene, sh, study_item = study
    volume = pet_volume("oblique")
    node = add_series(study, volume, "PET AC", dicom_modality="PT")
    before = snapshot(node)
    temp_before = nmai_temp_folders()

    out = NMAIDenoiseLogic().process(node, method="gaussian", fwhm_mm=6.0)

    assert out is not node and out.GetName() == "PET AC_denoised"
    assert_unchanged(before, node)
    # values: an independent Gaussian with σ per axis from the anisotropic spacing
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out), expected_gaussian(volume, 6.0),
                               rtol=1e-5, atol=1e-2)
    # geometry: exactly the input's
    assert np.array_equal(mrml.ijk_to_ras(out), mrml.ijk_to_ras(node))
    # units, quantity, SUV factor
    assert out.GetAttribute("NMAI.units") == "Bq/ml"
    assert out.GetVoxelValueUnits().GetCodeValue() == "Bq/ml"
    assert out.GetVoxelValueQuantity().GetCodeValue() == "110821"
    assert float(out.GetAttribute("NMAI.suv_bw_factor")) == SUV_F
    # subject hierarchy: in the input's study
    item = sh.GetItemByDataNode(out)
    assert item and sh.GetItemParent(item) == study_item
    # display: PET-Heat, window SUV 0..6 expressed in Bq/ml
    display = out.GetDisplayNode()
    assert display.GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat"
    assert scene.GetNodeByID(display.GetColorNodeID()) is not None
    assert not display.GetAutoWindowLevel()
    assert display.GetWindowLevelMin() == pytest.approx(0.0)
    assert display.GetWindowLevelMax() == pytest.approx(6.0 / SUV_F)
    # provenance
    assert out.GetAttribute("NMAI.engineVersion") == __version__
    assert out.GetAttribute("NMAI.task") == "denoise"
    assert out.GetAttribute("NMAI.method") == "gaussian"
    assert json.loads(out.GetAttribute("NMAI.parameters")) == {"fwhm_mm": 6.0}
    assert out.GetAttribute("NMAI.model") == "" and out.GetAttribute("NMAI.modelSha256") == ""
    assert out.GetAttribute("NMAI.sourceNode") == "PET AC"
    assert nmai_temp_folders() == temp_before  # nothing left on disk


def test_denoise_twice_keeps_both_outputs(study):
    scene, _, _ = study
    node = add_series(study, pet_volume("lps"), "PET")
    first = NMAIDenoiseLogic().process(node, method="gaussian", fwhm_mm=4.0)
    first_values = slicer.util.arrayFromVolume(first).copy()
    second = NMAIDenoiseLogic().process(node, method="gaussian", fwhm_mm=8.0)
    assert (first.GetName(), second.GetName()) == ("PET_denoised", "PET_denoised_1")
    assert np.array_equal(slicer.util.arrayFromVolume(first), first_values)
    assert len(volume_nodes(scene)) == 3


def test_denoise_keeps_suv_units_and_shows_suv_window(study):
    scene, _, _ = study
    node = add_series(study, pet_volume("ras", units="SUVbw", metadata={}), "PET SUV")
    out = NMAIDenoiseLogic().process(node, method="gaussian", fwhm_mm=5.0)
    assert out.GetAttribute("NMAI.units") == "SUVbw"
    assert out.GetVoxelValueUnits().GetCodeValue() == "{SUVbw}g/ml"
    display = out.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 6.0))


def test_denoise_without_units_asks_for_them_and_creates_nothing(study):
    scene, _, _ = study
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET nifti")
    slicer.util.updateVolumeFromArray(node, pet_volume("lps").array)  # no units recorded anywhere
    count = scene.GetNumberOfNodes()
    with pytest.raises(NMAIError, match="Bq/ml or SUV"):
        NMAIDenoiseLogic().process(node, method="gaussian")
    assert scene.GetNumberOfNodes() == count
    out = NMAIDenoiseLogic().process(node, method="gaussian", units="Bq/ml")
    assert out.GetAttribute("NMAI.units") == "Bq/ml"
    assert out.GetAttribute("NMAI.suv_bw_factor") is None
    assert "records no SUV factor" in out.GetAttribute("NMAI.suv_unavailable_reason")


def test_denoise_refuses_a_ct_and_bad_parameters(study):
    scene, _, _ = study
    ct = add_series(study, Volume(np.full((4, 5, 6), -1000, np.int16), modality="CT", units="HU"), "CT", "CT")
    pet = add_series(study, pet_volume("lps"), "PET")
    count = scene.GetNumberOfNodes()
    with pytest.raises(NMAIError, match="not PET"):
        NMAIDenoiseLogic().process(ct)
    with pytest.raises(NMAIError, match="FWHM"):
        NMAIDenoiseLogic().process(pet, method="gaussian", fwhm_mm=0.0)
    with pytest.raises(NMAIError, match="method"):
        NMAIDenoiseLogic().process(pet, method="unet")
    with pytest.raises(NMAIError, match="recorded as Bq/ml"):
        NMAIDenoiseLogic().process(pet, method="gaussian", units="SUVbw")
    with pytest.raises(NMAIError, match="No input volume"):
        NMAIDenoiseLogic().process(None)
    assert scene.GetNumberOfNodes() == count


# ------------------------------------------------------------------------------------------ Attenuation
def test_attenuation_ct_to_mumap(study):
    scene, sh, study_item = study
    hu = np.full((6, 7, 8), -1000, dtype=np.int16)
    hu[1:5, 1:6, 1:7] = 0
    hu[2:4, 2:4, 2:4] = 1000
    hu[0, 0, 1] = 47  # the 120 kVp break point: still on the air-water line
    ct = add_series(study, Volume(hu, **GEOMETRIES["oblique"], modality="CT", units="HU"), "CT", "CT")
    before = snapshot(ct)
    mu = NMAIAttenuationLogic().process(ctNode=ct, kvp=120)
    assert mu.GetName() == "CT_mumap"
    assert_unchanged(before, ct)
    values = slicer.util.arrayFromVolume(mu)
    assert values[0, 0, 0] == pytest.approx(0.0, abs=1e-7)
    assert values[1, 1, 1] == pytest.approx(9.6e-5 * 1000, rel=1e-5)  # water
    assert values[0, 0, 1] == pytest.approx(9.6e-5 * 1047, rel=1e-5)
    assert values[2, 2, 2] == pytest.approx(5.10e-5 * 2000 + 4.71e-2, rel=1e-5)  # bone, 120 kVp
    assert np.array_equal(mrml.ijk_to_ras(mu), mrml.ijk_to_ras(ct))
    assert mu.GetAttribute("NMAI.units") == "cm-1"
    assert mu.GetVoxelValueUnits().GetCodeValue() == "/cm"
    assert mu.GetVoxelValueQuantity().GetCodeValue() == "112031"
    assert sh.GetItemParent(sh.GetItemByDataNode(mu)) == study_item
    display = mu.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((0.0, 0.2))
    assert mu.GetAttribute("NMAI.method") == "ct"
    assert json.loads(mu.GetAttribute("NMAI.parameters")) == {"kvp": 120}


def test_attenuation_kvp_changes_bone_only(study):
    hu = np.full((4, 4, 4), -1000, dtype=np.int16)
    hu[1:3, 1:3, 1:3] = 1000
    hu[0, 0, 1] = 0
    ct = add_series(study, Volume(hu, modality="CT", units="HU"), "CT")
    mu80 = slicer.util.arrayFromVolume(NMAIAttenuationLogic().process(ctNode=ct, kvp=80))
    assert mu80[1, 1, 1] == pytest.approx(3.64e-5 * 2000 + 6.26e-2, rel=1e-5)
    assert mu80[0, 0, 1] == pytest.approx(0.096, rel=1e-5)


def test_attenuation_refuses_pet_and_unknown_kvp(study):
    scene, _, _ = study
    pet = add_series(study, pet_volume("lps"), "PET", "PT")
    ct = add_series(study, Volume(np.full((4, 4, 4), -1000, np.int16), modality="CT", units="HU"), "CT")
    count = scene.GetNumberOfNodes()
    with pytest.raises(NMAIError, match="not a CT"):
        NMAIAttenuationLogic().process(ctNode=pet)
    with pytest.raises(NMAIError, match="kVp"):
        NMAIAttenuationLogic().process(ctNode=ct, kvp=90)
    assert scene.GetNumberOfNodes() == count


# ------------------------------------------------------------------------------------------ Triage
def test_check_input_reports_what_the_engine_sees_and_creates_nothing(study):
    scene, _, _ = study
    node = add_series(study, pet_volume("oblique"), "PET", "PT")
    before, count = snapshot(node), scene.GetNumberOfNodes()
    report = NMAITriageLogic().checkInput(node)
    assert scene.GetNumberOfNodes() == count
    assert_unchanged(before, node)
    assert (report["node"], report["modality"], report["units"]) == ("PET", "PT", "Bq/ml")
    assert report["suv_bw_factor"] == pytest.approx(SUV_F)
    assert report["suv_lbm_factor"] is None and report["suv_lbm_unavailable_reason"]
    assert report["shape"] == [16, 14, 12]
    np.testing.assert_allclose(report["spacing"], GEOMETRIES["oblique"]["spacing"])
    np.testing.assert_allclose(report["direction"], GEOMETRIES["oblique"]["direction"], atol=1e-7)
    text = NMAITriageLogic.formatReport(report)
    assert "SUVbw factor: 0.0002" in text and "Units: Bq/ml" in text


def test_check_input_explains_missing_units_and_suv(study):
    scene, _, _ = study
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "mystery")
    slicer.util.updateVolumeFromArray(node, pet_volume("lps").array)
    report = NMAITriageLogic().checkInput(node)
    assert report["units"] is None and "records no units" in report["units_unknown_reason"]
    assert report["suv_bw_factor"] is None and report["suv_bw_unavailable_reason"]
    assert "Units: unknown" in NMAITriageLogic.formatReport(report)


def test_check_input_on_suv_volume_reports_factor_one(study):
    node = add_series(study, pet_volume("lps", units="SUVbw", metadata={}), "PET SUV")
    assert NMAITriageLogic().checkInput(node)["suv_bw_factor"] == 1.0


# ------------------------------------------------------------------------------------------ child process
def test_background_run_polls_to_a_new_node(study):
    scene, sh, study_item = study
    volume = pet_volume("oblique")
    node = add_series(study, volume, "PET")
    before = snapshot(node)
    handle = NMAIDenoiseLogic().process(node, method="gaussian", fwhm_mm=6.0, wait=False)
    folder = handle.task.folder
    assert os.path.isdir(folder)
    deadline = time.monotonic() + 120
    while not handle.poll():
        assert 0.0 <= handle.fraction <= 1.0
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert handle.succeeded, handle.error
    out = handle.node
    assert out.GetName() == "PET_denoised"
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out), expected_gaussian(volume, 6.0), rtol=1e-5, atol=1e-2)
    assert sh.GetItemParent(sh.GetItemByDataNode(out)) == study_item
    assert not os.path.exists(folder)
    assert_unchanged(before, node)


def test_cancel_leaves_no_node_and_no_file(study):
    scene, _, _ = study
    node = add_series(study, pet_volume("lps", shape=(96, 128, 128)), "PET")
    count, nodes = scene.GetNumberOfNodes(), len(volume_nodes(scene))
    handle = NMAIDenoiseLogic().process(node, method="gaussian", fwhm_mm=12.0, wait=False)
    folder = handle.task.folder
    process = getattr(handle.runner, "_proc", None)  # the runner's child process, when it exposes it
    assert os.path.isdir(folder)
    started = time.monotonic()
    handle.cancel()
    assert time.monotonic() - started < 5
    assert handle.poll() and handle.cancelled and not handle.succeeded
    with pytest.raises(CancelledError):
        handle.wait()
    if process is not None:  # the engine process is gone
        assert process.poll() is not None
        with pytest.raises(ProcessLookupError):
            os.kill(process.pid, 0)
    assert not os.path.exists(folder)
    assert scene.GetNumberOfNodes() == count and len(volume_nodes(scene)) == nodes
    assert handle.nodes == {}


def test_engine_failure_in_child_leaves_nothing(study):
    scene, _, _ = study
    node = add_series(study, pet_volume("lps"), "PET")
    count = scene.GetNumberOfNodes()
    task = EngineTask("denoise", [TaskInput(node)], [TaskOutput("denoised")],
                      options=["--method", "gaussian", "--fwhm", "-3"])
    handle = task.start()
    folder = task.folder
    with pytest.raises(NMAIError, match="FWHM"):
        handle.wait(timeout=120)
    assert not handle.cancelled and handle.nodes == {}
    assert not os.path.exists(folder)
    assert scene.GetNumberOfNodes() == count


def test_failure_while_loading_outputs_removes_the_partial_node(study, monkeypatch):
    scene, _, _ = study
    node = add_series(study, pet_volume("lps"), "PET")
    count = scene.GetNumberOfNodes()
    temp_before = nmai_temp_folders()

    def broken(*args, **kwargs):
        raise NMAIError("disk full while loading")

    monkeypatch.setattr("NMAIExtensionLib.outputs.apply_display", broken)
    with pytest.raises(NMAIError, match="disk full"):
        NMAIDenoiseLogic().process(node, method="gaussian")
    assert scene.GetNumberOfNodes() == count
    assert scene.GetFirstNodeByName("PET_denoised") is None
    assert nmai_temp_folders() == temp_before


# ------------------------------------------------------------------------------------------ parameter nodes
def test_parameter_node_is_a_per_module_singleton(scene):
    denoise = NMAIDenoiseLogic()
    first = denoise.getParameterNode()
    assert first is not None and first.GetAttribute("ModuleName") == "NMAIDenoise"
    assert denoise.getParameterNode() is first or denoise.getParameterNode().GetID() == first.GetID()
    other = NMAIAttenuationLogic().getParameterNode()
    assert other.GetID() != first.GetID() and other.GetAttribute("ModuleName") == "NMAIAttenuation"
    assert NMAITriageLogic().moduleName == "NMAITriage"


# ------------------------------------------------------------------------------------------ panel helper
class _FakeTimer:
    def __init__(self):
        self.callback, self.active = None, False

    def setInterval(self, ms):
        pass

    def connect(self, signal, callback):
        self.callback = callback

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


class _FakeWidget:
    def __init__(self):
        self.enabled, self.visible, self.text, self.value, self.format, self.callback = True, True, "", 0, "", None

    def connect(self, signal, callback):
        self.callback = callback

    def setRange(self, low, high):
        pass

    def setValue(self, value):
        self.value = value

    def setFormat(self, text):
        self.format = text


@pytest.fixture
def fake_qt(monkeypatch):
    """Just enough of qt/slicer.app for NMAIExtensionLib.gui (the real Qt GUI cannot run here)."""
    import sys
    import types

    qt = types.ModuleType("qt")
    qt.QTimer = _FakeTimer
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.delitem(sys.modules, "NMAIExtensionLib.gui", raising=False)
    errors = []
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text), raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(processEvents=lambda: None), raising=False)
    from NMAIExtensionLib.gui import TaskMonitor

    yield TaskMonitor, errors
    sys.modules.pop("NMAIExtensionLib.gui", None)


def _drive(monitor, timeout=120):
    deadline = time.monotonic() + timeout
    while monitor.running:
        assert time.monotonic() < deadline
        monitor.timer.callback()
        time.sleep(0.05)


def test_task_monitor_shows_progress_then_result_cancel_and_errors(study, fake_qt):
    TaskMonitor, errors = fake_qt
    scene, _, _ = study
    node = add_series(study, pet_volume("lps"), "PET")
    bar, cancel, apply, status = _FakeWidget(), _FakeWidget(), _FakeWidget(), _FakeWidget()
    monitor = TaskMonitor(bar, cancel, busyWidgets=[apply], statusLabel=status)
    assert cancel.enabled is False and bar.visible is False
    done = []

    monitor.start(NMAIDenoiseLogic().process(node, method="gaussian", wait=False),
                  onSuccess=lambda h: done.append(h.node.GetName()))
    assert apply.enabled is False and cancel.enabled is True and bar.visible is True and monitor.timer.active
    _drive(monitor)
    assert done == ["PET_denoised"] and errors == []
    assert apply.enabled is True and cancel.enabled is False and not monitor.timer.active
    assert "PET_denoised" in status.text

    count = scene.GetNumberOfNodes()
    monitor.start(NMAIDenoiseLogic().process(node, method="gaussian", wait=False),
                  onSuccess=lambda h: done.append("no"))
    cancel.callback(True)  # the Cancel button
    assert not monitor.running and apply.enabled is True
    assert "Cancelled" in status.text and errors == [] and done == ["PET_denoised"]
    assert scene.GetNumberOfNodes() == count

    task = EngineTask("denoise", [TaskInput(node)], [TaskOutput("denoised")],
                      options=["--method", "gaussian", "--fwhm", "-3"])
    monitor.start(task.start())
    _drive(monitor)
    assert len(errors) == 1 and "FWHM" in errors[0] and "FWHM" in status.text
    assert scene.GetNumberOfNodes() == count


# ------------------------------------------------------------------------------------------ Attenuation from MR
@pytest.fixture(scope="module")
def tiny_dixon_model(tmp_path_factory):
    from test_attenuation_unet import save_tiny_model

    return str(save_tiny_model(tmp_path_factory.mktemp("models") / "dixon", "dixon"))


def dixon_series(study, geometry="oblique"):
    """Water and fat nodes of a synthetic torso (as the DICOM module would place them), and the torso truth."""
    from test_attenuation_unet import torso

    water, fat, _ = torso()
    g = dict(GEOMETRIES[geometry], spacing=water.spacing)
    water, fat = (Volume(v.array, **g, modality="MR", units="a.u.") for v in (water, fat))
    return add_series(study, water, "Dixon W", "MR"), add_series(study, fat, "Dixon F", "MR"), water, fat


def test_attenuation_mr_unet_makes_mumap_and_pseudo_ct_nodes(study, tiny_dixon_model):
    from nmai.attenuation.unet import unet_mumap
    from nmai.mu import mu_to_hu

    scene, sh, study_item = study
    w_node, f_node, water, fat = dixon_series(study)
    before = snapshot(w_node)
    temp_before = nmai_temp_folders()
    logic = NMAIAttenuationLogic()
    mu = logic.process(water=w_node, fat=f_node, method="unet", model=tiny_dixon_model)
    assert mu.GetName() == "Dixon W_mumap" and logic.lastOutputs["mumap"] is mu
    pct = logic.lastOutputs["pseudo_ct"]
    assert pct.GetName() == "Dixon W_pseudoCT" and set(logic.lastOutputs) == {"mumap", "pseudo_ct"}
    assert_unchanged(before, w_node)
    expected = unet_mumap({"water": water, "fat": fat}, model=tiny_dixon_model)  # the engine on the same data
    np.testing.assert_allclose(slicer.util.arrayFromVolume(mu), expected.array, atol=1e-6)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(pct), mu_to_hu(expected.array), rtol=1e-5, atol=1e-2)
    for node in (mu, pct):
        assert np.array_equal(mrml.ijk_to_ras(node), mrml.ijk_to_ras(w_node))
        assert sh.GetItemParent(sh.GetItemByDataNode(node)) == study_item
        assert node.GetAttribute("NMAI.method") == "unet"
        assert node.GetAttribute("NMAI.model") == "attenuation-dixon-unet"
        assert node.GetAttribute("NMAI.modelSha256") == expected.metadata["model_sha256"]
    assert mu.GetAttribute("NMAI.units") == "cm-1" and pct.GetAttribute("NMAI.units") == "HU"
    assert json.loads(mu.GetAttribute("NMAI.parameters"))["inputs"] == "dixon"
    assert nmai_temp_folders() == temp_before


def test_attenuation_dixon4_with_a_ct_gives_difference_map_and_regional_table(study):
    from nmai.mu import hu_to_mu

    scene, sh, study_item = study
    w_node, f_node, water, fat = dixon_series(study, "lps")
    hu = np.full(water.shape, -1000.0, np.float32)
    body = water.array + fat.array > 200
    hu[body] = 40.0
    hu[body & (fat.array > water.array)] = -100.0
    ct = add_series(study, Volume(hu, water.spacing, water.origin, modality="CT", units="HU"), "CT", "CT")
    logic = NMAIAttenuationLogic()
    mu = logic.process(water=w_node, fat=f_node, method="dixon4", compareCt=ct)
    nodes = logic.lastOutputs
    assert set(nodes) == {"mumap", "pseudo_ct", "difference", "comparison"}
    diff, table = nodes["difference"], nodes["comparison"]
    assert diff.GetName() == "Dixon W_mudiff" and table.GetName() == "Dixon W_mu_vs_CT"
    mu_values = slicer.util.arrayFromVolume(mu)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(diff), mu_values - hu_to_mu(hu), atol=1e-6)
    display = diff.GetDisplayNode()
    assert (display.GetWindowLevelMin(), display.GetWindowLevelMax()) == pytest.approx((-0.05, 0.05))
    assert sh.GetItemParent(sh.GetItemByDataNode(table)) == study_item
    assert table.GetAttribute("NMAI.method") == "dixon4"
    assert [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())] == \
        ["air", "lung", "fat", "soft tissue", "bone"]
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    soft = hu == 40.0
    soft_mu = float(hu_to_mu(np.float32(40.0)))
    expected = float((mu_values[soft] - soft_mu).mean())
    row = 3
    assert float(table.GetCellText(row, columns.index("Voxels"))) == soft.sum()
    assert float(table.GetCellText(row, columns.index("Difference"))) == pytest.approx(expected, abs=1e-6)
    assert float(table.GetCellText(row, columns.index("Difference %"))) == pytest.approx(100 * expected / soft_mu,
                                                                                           rel=1e-4)
    assert table.GetColumnUnitLabel("Difference") == "cm-1"


def test_attenuation_mr_refusals_create_nothing(study, tiny_dixon_model):
    scene, _, _ = study
    w_node, f_node, water, _ = dixon_series(study, "lps")
    pet = add_series(study, pet_volume("lps"), "PET", "PT")
    ct = add_series(study, Volume(np.full((4, 4, 4), -1000, np.int16), modality="CT", units="HU"), "CT", "CT")
    count = scene.GetNumberOfNodes()
    logic = NMAIAttenuationLogic()
    with pytest.raises(NMAIError, match="a PET image"):
        logic.process(water=pet, fat=f_node, method="unet", model=tiny_dixon_model)
    with pytest.raises(NMAIError, match="fat image is missing.*T1"):
        logic.process(water=w_node, method="unet")
    with pytest.raises(NMAIError, match="needs Dixon water and fat"):
        logic.process(t1=w_node, method="dixon4")
    with pytest.raises(NMAIError, match="not both"):
        logic.process(ctNode=ct, water=w_node, fat=f_node)
    with pytest.raises(NMAIError, match="needs MR images"):
        logic.process(ctNode=ct, method="unet")
    with pytest.raises(NMAIError, match="not a CT"):
        logic.process(water=w_node, fat=f_node, method="dixon4", compareCt=pet)
    with pytest.raises(NMAIError, match="not installed|unknown model"):
        logic.process(water=w_node, fat=f_node, method="unet", model=str(tempfile.gettempdir()) + "/no-such-model")
    assert scene.GetNumberOfNodes() == count


def test_attenuation_panel_choices_in_a_child_process(study):
    import types

    scene, _, _ = study
    w_node, f_node, water, fat = dixon_series(study, "ras")
    ct = add_series(study, Volume(np.where(water.array + fat.array > 200, 40.0, -1000.0).astype(np.float32),
                                  **GEOMETRIES["ras"] | {"spacing": water.spacing}, modality="CT", units="HU"),
                    "CT", "CT")
    p = types.SimpleNamespace(inputType="Dixon water + fat", waterVolume=w_node, fatVolume=f_node, t1Volume=None,
                              ctVolume=None, compareCtVolume=ct, kvp=120, method="dixon4", modelPath="",
                              pseudoCt=False)
    handle = NMAIAttenuationLogic().processParameters(p, wait=False)
    nodes = handle.wait(timeout=180)
    assert set(nodes) == {"mumap", "difference", "comparison"}
    assert handle.node.GetName() == "Dixon W_mumap"
    assert np.array_equal(mrml.ijk_to_ras(handle.node), mrml.ijk_to_ras(w_node))
    assert nodes["comparison"].GetNumberOfRows() == 5
    p.inputType, p.waterVolume = "Dixon water + fat", None
    with pytest.raises(NMAIError, match="water image"):
        NMAIAttenuationLogic().processParameters(p)
