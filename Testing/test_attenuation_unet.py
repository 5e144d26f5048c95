"""MR -> μ-map with the attenuation U-Net: orientation, geometry, provenance, bad inputs, and the CLI.

The networks here are tiny random ones saved as real model folders (``save_model`` with the training code's
``data_format``): the tests check the plumbing (reorientation to the training orientation, the grid going in
and coming back, normalisation/padding, messages), not the trained model's accuracy, which
``nmai evaluate attenuation`` measures.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from geometry_cases import rotation
from nmai import NMAIError, Volume
from nmai.attenuation.training import CONTEXT, INPUTS, NAMES, data_format
from nmai.cli import main
from nmai.io import read_volume, write_volume
from nmai.mu import hu_to_mu, mu_to_hu


def save_tiny_model(folder, kind="dixon", network=None, seed=0):
    """A model folder with a small random network and the shipped models' data format."""
    import torch

    from nmai.models import build_network, new_card, save_model

    c_in = len(INPUTS[kind]) * (2 * CONTEXT + 1)
    network = network or {"name": "unet", "kwargs": {"spatial_dims": 2, "in_channels": c_in, "out_channels": 1,
                                                     "channels": [4, 8, 16], "strides": [2, 2],
                                                     "num_res_units": 1, "norm": "INSTANCE", "act": "PRELU"}}
    network["kwargs"]["in_channels"] = c_in
    torch.manual_seed(seed)
    module = build_network(network)
    with torch.no_grad():  # μ around 0.1 cm-1 so the outputs look like a μ-map
        last = [p for p in module.parameters() if p.ndim == 1][-1]
        last.add_(1.0)
    card = new_card(name=NAMES[kind], task="attenuation", network=network, network_data_format=data_format(kind),
                    training={"command": "test fixture", "seed": seed, "steps": 0, "duration_s": 0, "device": "cpu"})
    save_model(module, folder, card)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"dixon": str(save_tiny_model(root / "dixon", "dixon")),
            "t1": str(save_tiny_model(root / "t1", "t1", seed=1))}


def torso(shape=(24, 40, 44), spacing=4.0, smooth=1.2):
    """Smooth synthetic Dixon water/fat/T1 in LPS (identity direction): body, fat ring, lungs, a spine rod.

    Deliberately asymmetric (the lungs differ, the spine is posterior, the body tapers along k), so that a
    flip the code failed to undo would change the prediction."""
    from scipy.ndimage import gaussian_filter

    nk, nj, ni = shape
    k, j, i = np.meshgrid(np.arange(nk), np.arange(nj), np.arange(ni), indexing="ij")
    x, y, z = (i - ni / 2 + 0.5) * spacing, (j - nj / 2 + 0.5) * spacing, k * spacing
    taper = 1.0 - 0.3 * k / nk
    body = (x / (75 * taper)) ** 2 + (y / 60) ** 2 <= 1
    inner = (x / (63 * taper)) ** 2 + (y / 50) ** 2 <= 1
    lung_l = ((x - 28) / 18) ** 2 + ((y + 5) / 25) ** 2 <= 1
    lung_r = ((x + 30) / 14) ** 2 + ((y + 8) / 20) ** 2 <= 1
    spine = x ** 2 + (y - 35) ** 2 <= 10 ** 2
    water = np.where(inner, 900.0, np.where(body, 80.0, 0.0))
    fat = np.where(inner, 40.0, np.where(body, 800.0, 0.0))
    t1 = np.where(inner, 350.0, np.where(body, 1000.0, 0.0))
    for arr in (water, fat, t1):
        arr[(lung_l | lung_r) & inner] = 5.0
        arr[spine] = 20.0
    water += 30.0 * (z / z.max())  # a slow gradient along k
    out = [gaussian_filter(a, smooth).astype(np.float32) for a in (water, fat, t1)]
    g = dict(spacing=(spacing,) * 3, origin=(-80.0, -70.0, 100.0), direction=np.eye(3))
    return [Volume(a, **g, modality="MR", units="a.u.") for a in out]


def reorder(volume: Volume, flips=(False, False, False), perm=(0, 1, 2)) -> Volume:
    """The same physical image stored differently: array axes (i, j, k) permuted by ``perm`` and flipped."""
    a = volume.array.transpose(2, 1, 0)  # (i, j, k)
    a = a.transpose(perm)
    m = volume.index_to_lps()
    cols = m[:3, :3][:, list(perm)]
    origin = m[:3, 3].copy()
    size = np.asarray(a.shape)
    for axis, flip in enumerate(flips):
        if flip:
            a = np.flip(a, axis)
            origin = origin + cols[:, axis] * (size[axis] - 1)
            cols[:, axis] = -cols[:, axis]
    new = np.eye(4)
    new[:3, :3], new[:3, 3] = cols, origin
    return Volume.from_index_to_lps(np.ascontiguousarray(a.transpose(2, 1, 0)), new, modality=volume.modality,
                                    units=volume.units)


def back_to_canonical(out: Volume, flips, perm) -> np.ndarray:
    a = out.array.transpose(2, 1, 0)
    for axis, flip in enumerate(flips):
        if flip:
            a = np.flip(a, axis)
    return np.ascontiguousarray(a.transpose(np.argsort(perm)).transpose(2, 1, 0))


# ---------------------------------------------------------------------------------------------- engine
def test_lps_4mm_input_is_used_as_it_is_and_the_output_keeps_its_grid(models):
    from nmai.attenuation.unet import unet_mumap

    water, fat, _ = torso()
    mu = unet_mumap({"water": water, "fat": fat}, model=models["dixon"])
    assert mu.same_grid(water, tol=0) and mu.units == "cm-1" and mu.array.dtype == np.float32
    assert mu.metadata["model_grid"]["shape_kji"] == list(water.shape)
    np.testing.assert_allclose(mu.metadata["model_grid"]["origin_lps_mm"], water.origin)
    assert mu.metadata["reoriented_to_lps"] is False
    card = json.loads(open(f"{models['dixon']}/metadata.json").read())
    assert mu.metadata["model_name"] == "attenuation-dixon-unet"
    assert mu.metadata["model_sha256"] == card["sha256"] and mu.metadata["model_version"] == card["version"]
    assert mu.metadata["method"] == "unet" and np.all(mu.array >= 0) and np.isfinite(mu.array).all()
    assert mu.array.std() > 0


CASES = {
    "ras (i, j flipped)": ((True, True, False), (0, 1, 2)),
    "k pointing inferior": ((False, False, True), (0, 1, 2)),
    "left-handed, all flipped": ((True, True, True), (0, 1, 2)),
    "sagittal stack (axes permuted)": ((False, True, False), (2, 0, 1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_flipped_and_permuted_storage_gives_the_same_prediction(models, case):
    from nmai.attenuation.unet import unet_mumap

    flips, perm = CASES[case]
    water, fat, _ = torso()
    reference = unet_mumap({"water": water, "fat": fat}, model=models["dixon"])
    w2, f2 = reorder(water, flips, perm), reorder(fat, flips, perm)
    assert not np.allclose(w2.direction, np.eye(3))
    out = unet_mumap({"water": w2, "fat": f2}, model=models["dixon"])
    assert out.same_grid(w2, tol=0)  # exactly the input's grid
    assert out.metadata["reoriented_to_lps"] is True
    np.testing.assert_allclose(back_to_canonical(out, flips, perm), reference.array, atol=2e-5)


def test_the_orientation_test_is_sensitive_to_a_mirror(models):
    """A mirrored patient (flipped array, same direction) must NOT give the mirrored prediction: the network is
    not symmetric, so the test above would fail if the code ignored the direction."""
    from nmai.attenuation.unet import unet_mumap

    water, fat, _ = torso()
    reference = unet_mumap({"water": water, "fat": fat}, model=models["dixon"]).array
    for axis in (0, 2):
        mw = water.derive(np.ascontiguousarray(np.flip(water.array, axis)))
        mf = fat.derive(np.ascontiguousarray(np.flip(fat.array, axis)))
        mirrored = unet_mumap({"water": mw, "fat": mf}, model=models["dixon"]).array
        assert np.abs(np.flip(mirrored, axis) - reference).max() > 1e-3


def test_oblique_input_matches_the_canonical_prediction_within_interpolation(models):
    """A 9° oblique stack at 3.6 mm: the prediction, put back on the oblique grid, matches the prediction on
    the canonical LPS volume resampled onto that grid up to interpolation; treating the same array as if it
    were axial (ignoring the direction) is an order of magnitude worse."""
    from scipy.ndimage import binary_erosion

    from nmai.attenuation.unet import unet_mumap
    from nmai.resample import resample_like

    water, fat, _ = torso(shape=(30, 44, 48), smooth=2.0)
    reference = unet_mumap({"water": water, "fat": fat}, model=models["dixon"])
    rot = rotation((1, 2, 3), 9.0)
    centre = np.asarray(water.origin) + (np.asarray(water.shape[::-1]) - 1) * 2.0
    shape_kji, spacing = (50, 56, 56), (3.6, 3.6, 3.6)
    origin = centre - rot @ ((np.asarray(shape_kji[::-1]) - 1) * np.asarray(spacing) / 2)
    grid = Volume(np.zeros(shape_kji, np.float32), spacing, tuple(origin), rot, modality="MR", units="a.u.")
    w2, f2 = resample_like(water, grid), resample_like(fat, grid)
    out = unet_mumap({"water": w2, "fat": f2}, model=models["dixon"])
    assert out.same_grid(grid, tol=0) and out.metadata["reoriented_to_lps"] is True
    expected = resample_like(reference, grid).array
    inside = resample_like(water.derive(np.ones(water.shape, np.float32)), grid).array > 0.999
    inside = binary_erosion(inside, iterations=3)  # away from the field-of-view edges
    scale = float(np.ptp(expected[inside]))
    diff = np.abs(out.array - expected)[inside] / scale
    assert np.median(diff) < 0.01 and np.percentile(diff, 95) < 0.04
    axial = [Volume(v.array, v.spacing, v.origin, np.eye(3), modality="MR", units="a.u.") for v in (w2, f2)]
    naive = np.abs(unet_mumap({"water": axial[0], "fat": axial[1]}, model=models["dixon"]).array - expected)
    assert np.median(naive[inside] / scale) > 5 * np.median(diff)


def test_fat_on_another_grid_and_t1_input(models):
    from nmai.attenuation.unet import unet_mumap
    from nmai.resample import resample_like

    water, fat, t1 = torso()
    fine = Volume(np.zeros((36, 60, 66), np.float32), (2.7, 2.7, 2.7), (-81.0, -71.0, 99.0), np.eye(3))
    fat_fine = resample_like(fat, fine)
    mu = unet_mumap({"water": water, "fat": fat_fine}, model=models["dixon"])
    assert mu.same_grid(water, tol=0)
    mu_t1 = unet_mumap({"t1": t1}, model=models["t1"])
    assert mu_t1.same_grid(t1, tol=0) and mu_t1.metadata["parameters"]["inputs"] == "t1"
    # a 3 mm input goes to the model's 4 mm grid and back onto its own grid
    w3 = resample_like(water, fine)
    f3 = resample_like(fat, fine)
    mu3 = unet_mumap({"water": w3, "fat": f3}, model=models["dixon"])
    assert mu3.same_grid(w3, tol=0) and mu3.metadata["model_grid"]["spacing_mm"] == [4.0, 4.0, 4.0]


def test_bad_inputs_are_refused_with_the_reason(models, tmp_path):
    from nmai.attenuation.unet import unet_mumap
    from nmai.models import ModelFileError

    water, fat, t1 = torso()
    run = lambda **kw: unet_mumap(kw, model=models["dixon"])  # noqa: E731
    with pytest.raises(NMAIError, match="a PET image"):
        run(water=water.derive(water.array, modality="PT", units="Bq/ml"), fat=fat)
    with pytest.raises(NMAIError, match="a CT"):
        run(water=water, fat=fat.derive(fat.array - 1000, modality="CT", units="HU"))
    with pytest.raises(NMAIError, match="Hounsfield"):  # a CT saved without a sidecar: OT, units '1'
        run(water=water.derive(water.array - 1000.0, modality="OT", units="1"), fat=fat)
    bad = water.array.copy()
    bad[3, 4, 5] = np.nan
    with pytest.raises(NMAIError, match="NaN"):
        run(water=water.derive(bad), fat=fat)
    with pytest.raises(NMAIError, match="T1"):
        unet_mumap({"water": water}, model=models["dixon"])
    partial = fat.array.copy()
    partial[12:] = 0.0  # fat image of half the body
    with pytest.raises(NMAIError, match="covers only"):
        run(water=water, fat=fat.derive(partial))
    shifted = Volume(fat.array, fat.spacing, (fat.origin[0], fat.origin[1], fat.origin[2] + 60.0), modality="MR",
                     units="a.u.")
    with pytest.raises(NMAIError, match="covers only"):
        run(water=water, fat=shifted)
    with pytest.raises(NMAIError, match="takes t1 images"):
        unet_mumap({"water": water, "fat": fat}, model=models["t1"])
    corrupt = tmp_path / "corrupt"
    shutil.copytree(models["dixon"], corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ModelFileError, match="corrupt"):
        unet_mumap({"water": water, "fat": fat}, model=str(corrupt))


def test_missing_built_in_model_names_it_and_how_to_make_it(monkeypatch, tmp_path):
    from nmai.attenuation.unet import unet_mumap

    empty = tmp_path / "models.json"
    empty.write_text(json.dumps({"nmai_registry_version": 1, "models": []}))
    monkeypatch.setattr("nmai.models.registry.REGISTRY_FILE", empty)
    water, fat, t1 = torso()
    with pytest.raises(NMAIError, match=r"'attenuation-dixon-unet' is not installed.*nmai train attenuation "
                                        r"--inputs dixon"):
        unet_mumap({"water": water, "fat": fat})
    with pytest.raises(NMAIError, match=r"'attenuation-t1-unet' is not installed.*--inputs t1"):
        unet_mumap({"t1": t1})
    with pytest.raises(NMAIError, match="unknown model"):
        unet_mumap({"t1": t1}, model=str(tmp_path / "nowhere"))


def test_soft_tissue_smoothing_removes_noise_that_reads_as_bone_and_keeps_the_rest():
    """Noisy soft tissue (SD 0.004 cm-1 around 0.100), a bone rod (0.15 core), fat and lung: the noise's upper
    tail crosses the bone threshold before and not after; bone cores, their neighbours, fat and lung keep their
    values; soft tissue keeps its mean (normalised convolution) and its noise falls to the averaging's level."""
    from nmai.attenuation.training import BONE_MU
    from nmai.attenuation.unet import smooth_soft_tissue

    rng = np.random.default_rng(3)
    shape = (20, 48, 48)
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    mu = 0.100 + 0.004 * rng.standard_normal(shape)
    rod = (j - 24) ** 2 + (i - 30) ** 2 <= 9
    mu[rod] = 0.15
    mu[:, :, :8] = 0.088   # fat
    mu[:, 40:, :] = 0.022  # lung
    mu = mu.astype(np.float32)
    before = mu.copy()
    out = smooth_soft_tissue(mu, (4.0, 4.0, 4.0))
    np.testing.assert_array_equal(mu, before)  # the input is not modified
    from scipy.ndimage import binary_dilation, distance_transform_edt

    kept = binary_dilation(rod) | (mu < 0.095)
    np.testing.assert_array_equal(out[kept], mu[kept])
    soft = ~kept & (distance_transform_edt(~rod) > 4) & (i >= 12) & (j < 36)
    assert np.count_nonzero(mu[soft] > BONE_MU) > 100
    assert np.count_nonzero(out[soft] > BONE_MU) == 0
    assert abs(out[soft].mean() - mu[soft].mean()) < 2e-4
    # σ 6 mm on 4 mm voxels averages ~(2 sqrt(pi) 1.5)^3 = 150 voxels: the SD falls ~12-fold
    assert out[soft].std() < mu[soft].std() / 6
    # anisotropic voxels: σ is in millimetres, so 2 mm slices average over twice as many slices
    thin = smooth_soft_tissue(mu, (4.0, 4.0, 2.0))
    assert thin[soft].std() < out[soft].std()


def test_unet_mumap_smooths_soft_tissue_by_default_and_says_so(models):
    from nmai.attenuation.unet import SOFT_SMOOTHING, unet_mumap

    water, fat, _ = torso()
    smooth = unet_mumap({"water": water, "fat": fat}, model=models["dixon"])
    raw = unet_mumap({"water": water, "fat": fat}, model=models["dixon"], soft_smoothing=False)
    assert smooth.metadata["parameters"]["soft_tissue_smoothing"] == SOFT_SMOOTHING
    assert raw.metadata["parameters"]["soft_tissue_smoothing"] is None
    assert smooth.same_grid(raw, tol=0) and not np.array_equal(smooth.array, raw.array)


def test_window_is_a_whole_slice_when_the_slice_is_near_the_patch():
    from nmai.attenuation.unet import window_size

    assert window_size((100, 112, 112), [128, 128], 2) == [128, 128]
    assert window_size((100, 132, 140), [128, 128], 2) == [144, 144]
    assert window_size((100, 300, 100), [128, 128], 2) == [128, 128]
    assert window_size((100, 300, 100), [32, 32, 32], 3) == [32, 32, 32]


# ---------------------------------------------------------------------------------------------- CLI
def _files(tmp_path, case="lps"):
    water, fat, t1 = torso()
    if case == "ras":
        water, fat, t1 = (reorder(v, (True, True, False)) for v in (water, fat, t1))
    return (str(write_volume(water, tmp_path / "w.nii.gz")), str(write_volume(fat, tmp_path / "f.nii.gz")),
            str(write_volume(t1, tmp_path / "t1.nii.gz")))


@pytest.mark.parametrize("case", ["lps", "ras"])
def test_cli_unet_writes_mumap_and_pseudo_ct_on_the_water_grid(models, tmp_path, capsys, case):
    w, f, _ = _files(tmp_path, case)
    out, pct = tmp_path / "mu.nii.gz", tmp_path / "pct.nii.gz"
    assert main(["--jsonl", "attenuation", "--water", w, "--fat", f, "--method", "unet", "--model", models["dixon"],
                 "--out", str(out), "--pseudo-ct", str(pct)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]
    mu, ct = read_volume(out), read_volume(pct)
    water = read_volume(w)
    assert mu.same_grid(water, tol=1e-5) and ct.same_grid(water, tol=1e-5)
    assert (mu.units, mu.modality, ct.units, ct.modality) == ("cm-1", "OT", "HU", "CT")
    np.testing.assert_allclose(ct.array, mu_to_hu(mu.array, 120), rtol=1e-5, atol=1e-2)
    assert result["method"] == "unet" and result["model"]["name"] == "attenuation-dixon-unet"
    assert len(result["model"]["sha256"]) == 64 and mu.metadata["model_sha256"] == result["model"]["sha256"]


def test_cli_t1_and_the_method_rules(models, tmp_path, capsys, monkeypatch):
    w, f, t1 = _files(tmp_path)
    out = tmp_path / "mu.nii.gz"
    assert main(["attenuation", "--t1", t1, "--model", models["t1"], "--out", str(out)]) == 0
    assert read_volume(out).metadata["parameters"]["inputs"] == "t1"
    assert read_volume(out).metadata["parameters"]["soft_tissue_smoothing"]["sigma_mm"] == 6.0
    assert main(["attenuation", "--t1", t1, "--model", models["t1"], "--no-soft-smoothing", "--out", str(out)]) == 0
    assert read_volume(out).metadata["parameters"]["soft_tissue_smoothing"] is None
    out.unlink()
    assert main(["attenuation", "--t1", t1, "--method", "dixon4", "--out", str(out)]) == 2
    assert "needs Dixon water and fat" in capsys.readouterr().err and not out.exists()
    assert main(["attenuation", "--water", w, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--fat" in err and "--t1" in err and not out.exists()
    assert main(["attenuation", "--water", w, "--fat", f, "--method", "dixon4", "--model", models["dixon"],
                 "--out", str(out)]) == 2
    assert "--model and --no-soft-smoothing apply to --method unet" in capsys.readouterr().err
    assert main(["attenuation", "--water", w, "--fat", f, "--method", "dixon4", "--no-soft-smoothing",
                 "--out", str(out)]) == 2
    assert "apply to --method unet" in capsys.readouterr().err and not out.exists()
    # without an installed model: dixon4 for Dixon input (said in the result), a clear error for T1
    monkeypatch.setattr("nmai.attenuation.unet.model_installed", lambda kind, model=None: False)
    assert main(["--jsonl", "attenuation", "--water", w, "--fat", f, "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]
    assert result["method"] == "dixon4" and "not installed" in result["warnings"][0]
    out.unlink()
    assert main(["attenuation", "--t1", t1, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "attenuation-t1-unet" in err and "nmai train attenuation --inputs t1" in err and not out.exists()


def test_cli_refuses_bad_inputs_and_writes_nothing(models, tmp_path, capsys):
    w, f, _ = _files(tmp_path)
    water = read_volume(w)
    out, pct = tmp_path / "mu.nii.gz", tmp_path / "pct.nii.gz"
    args = ["--method", "unet", "--model", models["dixon"], "--out", str(out), "--pseudo-ct", str(pct)]
    pet = write_volume(water.derive(water.array, modality="PT", units="Bq/ml"), tmp_path / "pet.nii.gz")
    assert main(["attenuation", "--water", str(pet), "--fat", f, *args]) == 2
    assert "a PET image" in capsys.readouterr().err
    nan = water.array.copy()
    nan[1, 2, 3] = np.inf
    bad = write_volume(water.derive(nan), tmp_path / "nan.nrrd")
    assert main(["attenuation", "--water", w, "--fat", str(bad), *args]) == 2
    assert "NaN or infinite" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt"
    shutil.copytree(models["dixon"], corrupt)
    data = bytearray((corrupt / "model.safetensors").read_bytes())
    data[-100:] = b"\x01" * 100
    (corrupt / "model.safetensors").write_bytes(bytes(data))
    assert main(["attenuation", "--water", w, "--fat", f, "--model", str(corrupt), "--out", str(out)]) == 2
    assert "corrupt" in capsys.readouterr().err
    assert main(["attenuation", "--ct", w, "--method", "unet", "--out", str(out)]) == 2
    assert "apply to MR inputs" in capsys.readouterr().err
    assert not out.exists() and not pct.exists()
    assert not list(tmp_path.glob(".mu*")) and not list(tmp_path.glob(".pct*"))


def test_cli_compare_with_a_ct_gives_the_difference_map_and_regional_table(models, tmp_path, capsys):
    water, fat, _ = torso()
    # a CT of the same patient: soft tissue 40 HU, fat ring -100 HU, air -1000 HU
    hu = np.full(water.shape, -1000.0, np.float32)
    body = water.array + fat.array > 200
    hu[body] = 40.0
    hu[body & (fat.array > water.array)] = -100.0
    ct = Volume(hu, water.spacing, water.origin, modality="CT", units="HU", metadata={"kvp": 120})
    w = write_volume(water, tmp_path / "w.nii.gz")
    f = write_volume(fat, tmp_path / "f.nii.gz")
    c = write_volume(ct, tmp_path / "ct.nii.gz")
    out, diff = tmp_path / "mu.nii.gz", tmp_path / "diff.nii.gz"
    assert main(["--jsonl", "attenuation", "--water", str(w), "--fat", str(f), "--method", "dixon4",
                 "--compare-ct", str(c), "--difference", str(diff), "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]
    mu, d = read_volume(out), read_volume(diff)
    assert d.same_grid(mu) and d.units == "cm-1"
    np.testing.assert_allclose(d.array, mu.array - hu_to_mu(hu, 120), atol=1e-6)
    rows = {r["class"]: r for r in result["comparison"]["classes"]}
    assert list(rows) == ["air", "lung", "fat", "soft_tissue", "bone"]
    soft = hu_to_mu(np.float32(40.0), 120)
    sel = hu == 40.0
    assert rows["soft_tissue"]["voxels"] == int(sel.sum())
    assert rows["soft_tissue"]["ct_mu_mean"] == pytest.approx(float(soft), rel=1e-5)
    expected = float((mu.array[sel] - soft).mean())
    assert rows["soft_tissue"]["difference_mean"] == pytest.approx(expected, abs=1e-6)
    assert rows["soft_tissue"]["difference_pct"] == pytest.approx(100 * expected / float(soft), rel=1e-4)
    assert rows["air"]["difference_pct"] is None and rows["bone"]["voxels"] == 0
    assert main(["attenuation", "--water", str(w), "--fat", str(f), "--method", "dixon4",
                 "--difference", str(diff), "--out", str(out)]) == 2
    assert "--difference needs --compare-ct" in capsys.readouterr().err
