"""NMAI Denoise Logic on real MRML nodes (slicer-core): learned and Gaussian denoising, before/after metrics.

The learned model is a tiny cnn trained once per module with the quick preset (it proves the plumbing, not
the quality). Expected metric values are recomputed here with numpy/scipy, independently of the code under
test; the denoised values are compared with the engine called directly on the same data.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import types

import numpy as np
import pytest

from geometry_cases import GEOMETRIES
from nmai import NMAIError, Volume
from nmai.denoise.training import FIT_SIGNIFICANCE, HOT_SPOT_FIT

slicer = pytest.importorskip("slicer", reason="slicer-core is not installed (pip install slicer-core)")

from NMAIDenoiseLib import NMAIDenoiseLogic  # noqa: E402
from NMAIDenoiseLib.logic import ATTR_NOTE  # noqa: E402
from NMAIExtensionLib import mrml  # noqa: E402
from test_logic import add_series, assert_unchanged, nmai_temp_folders, snapshot  # noqa: E402

SUV_F = 2.0e-4  # SUVbw = Bq/ml * SUV_F


@pytest.fixture(scope="module")
def tiny_cnn(quick_denoise_models):
    """A denoise-cnn model folder trained with the quick preset (NMAI_TEST_DENOISE_MODEL: reuse a folder)."""
    reuse = os.environ.get("NMAI_TEST_DENOISE_MODEL")
    if reuse and os.path.isdir(reuse):
        return reuse
    return quick_denoise_models["cnn"]


def phantom(shape=(16, 20, 24), seed=0, scale=1.0):
    """A noisy PET-like image (Bq/ml): warm body, a hot sphere, Gamma noise; and its noise-free truth."""
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    c = [(n - 1) / 2 for n in shape]
    body = ((k - c[0]) / (0.45 * shape[0])) ** 2 + ((j - c[1]) / (0.42 * shape[1])) ** 2 + \
        ((i - c[2]) / (0.42 * shape[2])) ** 2 <= 1
    truth = np.where(body, 5000.0, 50.0)
    lesion = (k - c[0]) ** 2 + (j - c[1] + 3) ** 2 + (i - c[2] - 3) ** 2 <= 4
    truth[lesion] = 25000.0
    noisy = np.random.default_rng(seed).gamma(8.0, truth / 8.0)
    return (noisy * scale).astype(np.float32), (truth * scale).astype(np.float32), body, lesion


def pet_node(study, name="PET", geometry="oblique", array=None, units="Bq/ml", suv=SUV_F, **kw):
    if array is None:
        array = phantom()[0]
    metadata = {"suv_bw_factor": suv} if suv else {}
    return add_series(study, Volume(array, **(GEOMETRIES[geometry] | kw), modality="PT", units=units,
                                    metadata=metadata), name, "PT")


def node_count(scene) -> int:
    return scene.GetNumberOfNodes()


def model_sha(folder) -> str:
    with open(os.path.join(folder, "metadata.json")) as fh:
        return json.load(fh)["sha256"]


# ------------------------------------------------------------------------------------------ denoising
@pytest.mark.parametrize("method", ["cnn", "gaussian"])
def test_output_is_a_new_pet_node_on_the_oblique_input_grid(study, tiny_cnn, method):
    from nmai.denoise.apply import denoise_volume

    scene, sh, study_item = study
    node = pet_node(study, "PET AC")
    before = snapshot(node)
    temp_before = nmai_temp_folders()
    logic = NMAIDenoiseLogic()
    kw = {"model": tiny_cnn} if method == "cnn" else {"fwhm_mm": 6.0}

    out = logic.process(node, method=method, **kw)

    assert out is not node and out.GetName() == "PET AC_denoised"
    assert_unchanged(before, node)
    # geometry: the input's IJK-to-RAS bit for bit (spacing, origin and the oblique direction)
    assert np.array_equal(mrml.ijk_to_ras(out), mrml.ijk_to_ras(node))
    assert out.GetSpacing() == node.GetSpacing() and out.GetOrigin() == node.GetOrigin()
    assert mrml.node_shape(out) == mrml.node_shape(node)
    # units, quantity, modality, SUV factor, display
    assert out.GetAttribute("NMAI.units") == "Bq/ml" and out.GetVoxelValueUnits().GetCodeValue() == "Bq/ml"
    assert out.GetVoxelValueQuantity().GetCodeValue() == "110821"
    assert out.GetAttribute("NMAI.modality") == "PT"
    assert float(out.GetAttribute("NMAI.suv_bw_factor")) == SUV_F
    assert out.GetDisplayNode().GetColorNodeID() == "vtkMRMLPETProceduralColorNodePET-Heat"
    assert sh.GetItemParent(sh.GetItemByDataNode(out)) == study_item
    # values: the engine on the same data
    expected, info = denoise_volume(mrml.volume_from_node(node), method, **kw)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out), expected.array, rtol=1e-5,
                               atol=1e-5 * float(expected.array.max()))
    # provenance
    assert out.GetAttribute("NMAI.task") == "denoise" and out.GetAttribute("NMAI.method") == method
    parameters = json.loads(out.GetAttribute("NMAI.parameters"))
    if method == "cnn":
        assert out.GetAttribute("NMAI.model") == "denoise-cnn"
        assert out.GetAttribute("NMAI.modelSha256") == model_sha(tiny_cnn) == info["model_sha256"]
        assert parameters == {"model": "denoise-cnn", "model_path": os.path.abspath(tiny_cnn),
                              "local_fit_voxels": [3, 3, 3], "local_fit_significance": FIT_SIGNIFICANCE["cnn"],
                              "hot_spot_fit": {k: HOT_SPOT_FIT["cnn"][k] for k in ("ratio", "window")},
                              "resolution_recovery": None}
    else:
        assert parameters == {"fwhm_mm": 6.0} and out.GetAttribute("NMAI.modelSha256") == ""
    assert logic.lastNote is None and out.GetAttribute(ATTR_NOTE) is None
    assert nmai_temp_folders() == temp_before


def test_note_of_the_engine_is_surfaced(study, tiny_cnn, caplog):
    node = pet_node(study, "PET fine", geometry="ras")  # 1.5 mm voxels: far from the training size
    logic = NMAIDenoiseLogic()
    with caplog.at_level("WARNING", logger="NMAI"):
        out = logic.process(node, method="cnn", model=tiny_cnn)
    assert "training voxel size" in logic.lastNote
    assert out.GetAttribute(ATTR_NOTE) == logic.lastNote == NMAIDenoiseLogic.noteOf(out)
    assert logic.lastNote in caplog.text
    assert np.array_equal(mrml.ijk_to_ras(out), mrml.ijk_to_ras(node))  # back on the input grid


def test_learned_output_is_unit_invariant(study, tiny_cnn):
    noisy = phantom(seed=4)[0]
    bq = pet_node(study, "PET Bq", array=noisy)
    suv = pet_node(study, "PET scaled", array=noisy * np.float32(1e-3), units="SUVbw", suv=None)
    logic = NMAIDenoiseLogic()
    out_bq = slicer.util.arrayFromVolume(logic.process(bq, method="cnn", model=tiny_cnn)).astype(np.float64)
    out_suv_node = logic.process(suv, method="cnn", model=tiny_cnn)
    assert out_suv_node.GetAttribute("NMAI.units") == "SUVbw"
    out_suv = slicer.util.arrayFromVolume(out_suv_node).astype(np.float64)
    assert out_bq.max() > 0
    np.testing.assert_allclose(out_suv, 1e-3 * out_bq, rtol=0.01, atol=0.01 * 1e-3 * out_bq.max())


def test_fit_significance_reaches_the_engine_and_is_recorded(study, tiny_cnn):
    from nmai.denoise.apply import denoise_volume

    node = pet_node(study, "PET z")
    logic = NMAIDenoiseLogic()
    out = logic.process(node, method="cnn", model=tiny_cnn, fit_significance=3)
    expected, _ = denoise_volume(mrml.volume_from_node(node), "cnn", model=tiny_cnn, fit_significance=3.0)
    np.testing.assert_allclose(slicer.util.arrayFromVolume(out), expected.array, rtol=1e-5,
                               atol=1e-5 * float(expected.array.max()))
    parameters = json.loads(out.GetAttribute("NMAI.parameters"))
    assert parameters["local_fit_significance"] == 3.0
    count = node_count(study[0])
    for method, kw in (("gaussian", {}), ("cnn", {"model": tiny_cnn})):
        with pytest.raises(NMAIError, match="significance"):
            logic.process(node, method=method, fit_significance=-1.0 if method == "cnn" else 3.0, **kw)
    assert node_count(study[0]) == count


def test_background_run_with_a_model_folder_and_panel_choices(study, tiny_cnn):
    node = pet_node(study, "PET", geometry="lps")
    p = types.SimpleNamespace(inputVolume=node, inputUnits="recorded on the node", method="cnn", fwhmMm=6.0,
                              modelPath=" " + tiny_cnn + " ", fitSignificance=-1.0)
    handle = NMAIDenoiseLogic().processParameters(p, wait=False)
    nodes = handle.wait(timeout=300)
    assert list(nodes) == ["denoised"] and handle.node.GetName() == "PET_denoised"
    assert handle.node.GetAttribute("NMAI.modelSha256") == model_sha(tiny_cnn)
    assert NMAIDenoiseLogic.noteOf(handle) is None
    card = json.load(open(f"{tiny_cnn}/metadata.json"))
    recorded = json.loads(handle.node.GetAttribute("NMAI.parameters"))["local_fit_significance"]
    assert recorded == card["local_fit_significance"]
    p.fitSignificance = 2.5   # the panel's fit significance reaches the engine
    out = NMAIDenoiseLogic().processParameters(p, wait=True)
    assert json.loads(out.GetAttribute("NMAI.parameters"))["local_fit_significance"] == 2.5
    p.method = "gaussian"  # the FWHM spin box is used for gaussian only, the fit significance is not
    out = NMAIDenoiseLogic().processParameters(p, wait=True)
    assert json.loads(out.GetAttribute("NMAI.parameters")) == {"fwhm_mm": 6.0}


def test_bad_inputs_are_refused_with_clear_messages_and_create_nothing(study, tiny_cnn, tmp_path):
    scene, _, _ = study
    pet = pet_node(study, "PET", geometry="lps")
    ct = add_series(study, Volume(np.full((4, 5, 6), -1000, np.int16), modality="CT", units="HU"), "CT", "CT")
    nan = phantom()[0]
    nan[3, 4, 5] = np.nan
    nan_node = pet_node(study, "PET NaN", geometry="lps", array=nan)
    unknown = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "PET nifti")
    slicer.util.updateVolumeFromArray(unknown, phantom()[0])  # no units recorded anywhere
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_cnn, corrupt)
    with open(corrupt / "model.safetensors", "r+b") as fh:
        fh.seek(100)
        fh.write(b"\0" * 16)
    not_a_model = tmp_path / "empty"
    not_a_model.mkdir()
    before = {n.GetName(): snapshot(n) for n in (pet, nan_node)}
    count, temp_before = node_count(scene), nmai_temp_folders()
    logic = NMAIDenoiseLogic()
    cases = [
        (dict(inputNode=ct), "not PET"),
        (dict(inputNode=unknown, method="gaussian"), "Bq/ml or SUV"),
        (dict(inputNode=nan_node, method="gaussian"), "NaN"),
        (dict(inputNode=nan_node, model=tiny_cnn), "NaN"),
        (dict(inputNode=pet, model=str(tmp_path / "no-such-model")), "not found"),
        (dict(inputNode=pet, model=str(not_a_model)), "model card"),
        (dict(inputNode=pet, model=str(corrupt)), "corrupt"),
        (dict(inputNode=pet, model="attenuation-dixon-unet"), "not a denoising model"),
        (dict(inputNode=pet, method="cnn", fwhm_mm=6.0, model=tiny_cnn), "FWHM applies to the gaussian"),
        (dict(inputNode=pet, method="gaussian", model=tiny_cnn), "model applies"),
        (dict(inputNode=pet, method="gaussian", fwhm_mm=0.1), "FWHM 0.1 mm is outside"),
        (dict(inputNode=pet, method="unet"), "Unknown denoising method"),
        (dict(inputNode=pet, units="kBq/ml"), "units must be one of"),
        (dict(inputNode=None), "No input volume"),
    ]
    for kw, message in cases:
        with pytest.raises(NMAIError, match=message):
            logic.process(**kw)
        with pytest.raises(NMAIError, match=message):
            logic.process(wait=False, **kw)
    if not NMAIDenoiseLogic.modelInstalled("gan"):  # the shipped models are not registered yet
        with pytest.raises(NMAIError, match="built-in 'gan' model .* not installed.*gaussian"):
            logic.process(pet, method="gan")
    assert node_count(scene) == count and nmai_temp_folders() == temp_before
    assert_unchanged(before["PET"], pet)
    assert np.array_equal(before["PET NaN"]["array"], slicer.util.arrayFromVolume(nan_node), equal_nan=True)


# ------------------------------------------------------------------------------------------ metrics
def segmentation_from_labels(scene, labels: np.ndarray, grid_node, name="Segmentation"):
    """A segmentation node with one segment per label value (1, 2, ...), drawn on ``grid_node``'s grid."""
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    slicer.util.updateVolumeFromArray(labelmap, labels.astype(np.uint8))
    mrml.set_ijk_to_ras(labelmap, mrml.ijk_to_ras(grid_node))
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    ids = [segmentation.GetSegmentation().GetNthSegmentID(i) for i in range(len(np.unique(labels)) - 1)]
    for segment_id, segment_name in zip(ids, ("liver", "lesion")):
        segmentation.GetSegmentation().GetSegment(segment_id).SetName(segment_name)
    return segmentation, ids, labelmap


def sphere_peak(image, mask, spacing_ijk, volume_ml=1.0):
    """Brute force: the highest mean over voxels whose centre is within the 1 ml sphere of a mask voxel."""
    radius = (3 * volume_ml * 1000 / (4 * math.pi)) ** (1 / 3)
    sp = np.asarray(spacing_ijk)[::-1]
    coords = np.argwhere(np.ones(image.shape, bool)) * sp
    values = image.reshape(-1).astype(np.float64)
    best = -np.inf
    for centre in np.argwhere(mask):
        inside = np.sum((coords - centre * sp) ** 2, axis=1) <= radius ** 2
        best = max(best, float(values[inside].mean()))
    return best


def independent_ssim(t, r, m, sigma=1.5):
    from scipy.ndimage import gaussian_filter

    t, r = t.astype(np.float64), r.astype(np.float64)
    rng = r[m].max() - r[m].min()
    c1, c2 = (0.01 * rng) ** 2, (0.03 * rng) ** 2
    g = lambda a: gaussian_filter(a, sigma, truncate=3.5)  # noqa: E731
    mt, mr = g(t), g(r)
    s = ((2 * mt * mr + c1) * (2 * (g(t * r) - mt * mr) + c2)) / \
        ((mt ** 2 + mr ** 2 + c1) * (g(t * t) - mt ** 2 + g(r * r) - mr ** 2 + c2))
    return float(s[m].mean())


def table_rows(table) -> dict:
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert columns == ["Metric", "Input", "Output", "Change %", "Units"]
    rows = {}
    for r in range(table.GetNumberOfRows()):
        cells = [table.GetCellText(r, c) for c in range(len(columns))]
        rows[cells[0]] = (float(cells[1]), float(cells[2]), float(cells[3]) if cells[3] != "nan" else None,
                          cells[4])
    return rows


def test_metrics_table_matches_an_independent_computation(study):
    scene, sh, study_item = study
    noisy, truth, body, lesion = phantom(seed=2)
    liver = np.zeros_like(body)
    liver[5:11, 4:10, 4:10] = True
    liver &= body & ~lesion
    node = pet_node(study, "PET", array=noisy)
    reference = pet_node(study, "PET full", array=truth)
    out = NMAIDenoiseLogic().process(node, method="gaussian", fwhm_mm=6.0)
    labels = np.zeros(noisy.shape, np.uint8)
    labels[liver], labels[lesion] = 1, 2
    segmentation, ids, labelmap = segmentation_from_labels(scene, labels, node)
    snaps = {n.GetName(): snapshot(n) for n in (node, out, reference)}
    count = node_count(scene)

    logic = NMAIDenoiseLogic()
    table = logic.metrics(node, out, referenceNode=reference, region=(segmentation, "liver"),
                          lesion=(segmentation, ids[1]))

    assert node_count(scene) == count + 1  # the table only (temporary mask nodes removed)
    assert table.GetName() == "PET_denoised_metrics"
    assert sh.GetItemParent(sh.GetItemByDataNode(table)) == study_item
    assert table.GetAttribute("NMAI.metricsUnits") == "Bq/ml" and table.GetAttribute("NMAI.method") == "gaussian"
    for n in (node, out, reference):
        assert_unchanged(snaps[n.GetName()], n)
    rows = table_rows(table)
    assert list(rows) == ["Body mean", "Body max", "PSNR vs reference (body)", "SSIM vs reference (body)",
                          "NRMSE vs reference (body)", "Noise region mean", "Noise region SD", "Noise region CoV",
                          "Lesion max", "Lesion peak (1 ml)", "Lesion mean"]
    assert [r["key"] for r in logic.lastMetrics][-3:] == ["lesion_max", "lesion_peak", "lesion_mean"]

    a, b, r = noisy.astype(np.float64), slicer.util.arrayFromVolume(out).astype(np.float64), truth.astype(np.float64)
    spacing = GEOMETRIES["oblique"]["spacing"]
    m = r > 0.05 * np.percentile(r, 99.5)
    expected = {
        "Body mean": (a[m].mean(), b[m].mean(), "Bq/ml"),
        "Body max": (a.max(), b.max(), "Bq/ml"),
        "PSNR vs reference (body)": tuple(10 * np.log10(r[m].max() ** 2 / np.mean((x[m] - r[m]) ** 2))
                                          for x in (a, b)) + ("dB",),
        "SSIM vs reference (body)": (independent_ssim(a, r, m), independent_ssim(b, r, m), "1"),
        "NRMSE vs reference (body)": tuple(100 * np.sqrt(np.mean((x[m] - r[m]) ** 2)) / r[m].mean()
                                           for x in (a, b)) + ("%",),
        "Noise region mean": (a[liver].mean(), b[liver].mean(), "Bq/ml"),
        "Noise region SD": (a[liver].std(ddof=1), b[liver].std(ddof=1), "Bq/ml"),
        "Noise region CoV": (100 * a[liver].std(ddof=1) / a[liver].mean(),
                             100 * b[liver].std(ddof=1) / b[liver].mean(), "%"),
        "Lesion max": (a[lesion].max(), b[lesion].max(), "Bq/ml"),
        "Lesion peak (1 ml)": (sphere_peak(a, lesion, spacing), sphere_peak(b, lesion, spacing), "Bq/ml"),
        "Lesion mean": (a[lesion].mean(), b[lesion].mean(), "Bq/ml"),
    }
    for metric, (before, after, units) in expected.items():
        got = rows[metric]
        assert got[0] == pytest.approx(before, rel=1e-5), metric
        assert got[1] == pytest.approx(after, rel=1e-5), metric
        assert got[2] == pytest.approx(100 * (after - before) / abs(before), rel=1e-4, abs=1e-6), metric
        assert got[3] == units, metric
    # denoising lowers the noise in the uniform region and improves PSNR against the full-count image
    assert rows["Noise region CoV"][1] < rows["Noise region CoV"][0]
    assert rows["PSNR vs reference (body)"][1] > rows["PSNR vs reference (body)"][0]

    # the same regions as a label map (any label, or one label value) give the same numbers
    rows_lm = table_rows(logic.metrics(node, out, lesion=(labelmap, 2), region=(labelmap, 1)))
    for metric in ("Noise region SD", "Lesion max", "Lesion peak (1 ml)"):
        assert rows_lm[metric][:3] == pytest.approx(rows[metric][:3], rel=1e-6)
    assert table_rows(logic.metrics(node, out))["Body max"][:3] == pytest.approx(rows["Body max"][:3], rel=1e-6)


def test_metrics_in_suv_and_a_region_on_another_grid(study):
    scene, _, _ = study
    noisy, _, _, lesion = phantom(seed=5)
    node = pet_node(study, "PET", geometry="lps", array=noisy)
    out = NMAIDenoiseLogic().process(node, method="gaussian", fwhm_mm=5.0)
    # a lesion label map on a grid twice as fine (and shifted by half a voxel of that grid)
    geometry = GEOMETRIES["lps"]
    fine = np.repeat(np.repeat(np.repeat(lesion, 2, 0), 2, 1), 2, 2).astype(np.uint8)
    spacing = tuple(s / 2 for s in geometry["spacing"])
    origin = tuple(o - s / 4 for o, s in zip(geometry["origin"], geometry["spacing"]))
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "lesion fine")
    mrml.update_node_from_volume(labelmap, Volume(fine, spacing, origin, modality="SEG", units="label"))
    rows = table_rows(NMAIDenoiseLogic().metrics(node, out, lesion=labelmap, units="SUVbw"))
    a = noisy.astype(np.float64) * SUV_F
    assert rows["Lesion SUVmax"][0] == pytest.approx(a[lesion].max(), rel=1e-5)
    assert rows["Lesion SUVmean"][0] == pytest.approx(a[lesion].mean(), rel=1e-5)
    assert rows["Lesion SUVmax"][3] == "SUVbw" and "Lesion SUVpeak (1 ml)" in rows


def test_metrics_refusals_create_nothing(study):
    scene, _, _ = study
    node = pet_node(study, "PET", geometry="lps")
    out = NMAIDenoiseLogic().process(node, method="gaussian")
    no_suv = pet_node(study, "PET no SUV", geometry="lps", suv=None)
    no_suv_out = NMAIDenoiseLogic().process(no_suv, method="gaussian")
    other = pet_node(study, "PET other", geometry="oblique")
    ct = add_series(study, Volume(np.full((4, 5, 6), -1000, np.int16), modality="CT", units="HU"), "CT", "CT")
    outside = np.zeros(phantom()[0].shape, np.uint8)
    outside[0, 0, 0] = 1
    segmentation, ids, _ = segmentation_from_labels(scene, outside, node)
    # move the segment out of the PET's field of view
    far = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "far")
    mrml.update_node_from_volume(far, Volume(np.ones((3, 3, 3), np.uint8), origin=(5000.0, 0.0, 0.0),
                                             modality="SEG", units="label"))
    count = node_count(scene)
    logic = NMAIDenoiseLogic()
    cases = [
        (dict(referenceNode=ct), "reference 'CT' is not a PET"),
        (dict(region=(segmentation, "spleen")), "no segment 'spleen'"),
        (dict(lesion=far), "lesion 'far' has no voxel inside the PET"),
        (dict(region=node), "must be a segmentation"),
        (dict(units="SUVlbm"), "cannot be expressed in SUVlbm"),
    ]
    for kw, message in cases:
        with pytest.raises(NMAIError, match=message):
            logic.metrics(node, out, **kw)
    with pytest.raises(NMAIError, match="not on the grid of the input"):
        logic.metrics(other, out)
    with pytest.raises(NMAIError, match="cannot be expressed in SUVbw"):
        logic.metrics(no_suv, no_suv_out, units="SUVbw")
    with pytest.raises(NMAIError, match="denoised PET"):
        logic.metrics(node, None)
    assert node_count(scene) == count
