"""Dixon 4-class μ-map on a synthetic torso with known tissues; CLI checks of MR inputs."""

import numpy as np
import pytest

from geometry_cases import GEOMETRIES
from nmai import Volume
from nmai.attenuation.dixon import CLASSES, dixon4_classes
from nmai.cli import main
from nmai.io import read_volume, write_volume


def torso(case="lps"):
    """20 slices of 64x64 at 6 mm: fat ring, muscle, two lungs (dark, large), a spine rod (dark, small)."""
    nk, n = 20, 64
    k, j, i = np.meshgrid(np.arange(nk), np.arange(n), np.arange(n), indexing="ij")
    x, y = (i - 31.5) * 6.0, (j - 31.5) * 6.0
    truth = np.zeros((nk, n, n), np.uint8)
    body = (x / 170) ** 2 + (y / 120) ** 2 <= 1
    inner = (x / 150) ** 2 + (y / 100) ** 2 <= 1
    truth[body] = CLASSES["fat"]
    truth[inner] = CLASSES["soft_tissue"]
    lungs = (((x - 70) / 50) ** 2 + (y / 60) ** 2 <= 1) | (((x + 70) / 50) ** 2 + (y / 60) ** 2 <= 1)
    truth[lungs] = CLASSES["lung"]
    bone = (x ** 2 + (y - 75) ** 2) <= 12 ** 2
    water = np.where(truth == CLASSES["soft_tissue"], 900.0, np.where(truth == CLASSES["fat"], 80.0, 0.0))
    fat = np.where(truth == CLASSES["fat"], 800.0, np.where(truth == CLASSES["soft_tissue"], 40.0, 0.0))
    water[bone] = fat[bone] = 5.0  # cortical bone: dark on MR, truly soft-tissue class in Dixon
    rng = np.random.default_rng(3)
    water = water + rng.normal(0, 10, water.shape) * (water > 0)
    g = dict(GEOMETRIES[case], spacing=(6.0, 6.0, 6.0))  # the anatomy above is drawn at 6 mm
    mk = lambda a: Volume(np.abs(a).astype(np.float32), modality="MR", units="a.u.", **g)  # noqa: E731
    return mk(water), mk(fat), truth, bone


def test_classes_match_the_tissues_and_bone_becomes_soft_tissue():
    water, fat, truth, bone = torso()
    classes = dixon4_classes(water, fat)
    assert np.mean(classes == truth) > 0.99
    assert np.all(classes[bone] == CLASSES["soft_tissue"])  # the known failure: no bone class
    assert classes[0, 0, 0] == CLASSES["air"]


@pytest.mark.parametrize("case", ["oblique", "ras"])
def test_cli_dixon4_writes_mumap_and_pseudo_ct_on_water_grid(tmp_path, case):
    water, fat, truth, _ = torso(case)
    w = write_volume(water, tmp_path / "w.nii.gz")
    f = write_volume(fat, tmp_path / "f.nii.gz")
    assert main(["attenuation", "--water", str(w), "--fat", str(f), "--method", "dixon4",
                 "--out", str(tmp_path / "mu.nii.gz"), "--pseudo-ct", str(tmp_path / "pct.nii.gz")]) == 0
    mu, pct = read_volume(tmp_path / "mu.nii.gz"), read_volume(tmp_path / "pct.nii.gz")
    assert mu.units == "cm-1" and mu.same_grid(water) and pct.units == "HU"
    lung = truth == CLASSES["lung"]
    assert np.median(mu.array[lung]) == pytest.approx(0.0224)
    assert np.median(mu.array[truth == CLASSES["fat"]]) == pytest.approx(0.0854)
    assert np.median(mu.array[truth == CLASSES["soft_tissue"]]) == pytest.approx(0.1)
    assert np.median(pct.array[truth == CLASSES["soft_tissue"]]) == pytest.approx(0.1 / 9.6e-5 - 1000, abs=0.1)  # below the break point


def test_fat_on_another_grid_is_resampled(tmp_path):
    water, fat, _, _ = torso()
    water0 = Volume(water.array, spacing=(6.0, 6.0, 6.0), modality="MR", units="a.u.")
    half = Volume(fat.array[:, ::2, ::2].copy(), spacing=(12.0, 12.0, 6.0), origin=(3.0, 3.0, 0.0),
                  modality="MR", units="a.u.")  # same anatomy, half the in-plane sampling
    w = write_volume(water0, tmp_path / "w.nii.gz")
    f = write_volume(half, tmp_path / "f.nii.gz")
    out = tmp_path / "mu.nii.gz"
    assert main(["attenuation", "--water", str(w), "--fat", str(f), "--out", str(out)]) == 0
    assert read_volume(out).same_grid(water0)


def test_mismatched_coverage_and_wrong_modalities_are_refused(tmp_path, capsys):
    water, fat, _, _ = torso()
    w = write_volume(water, tmp_path / "w.nii.gz")
    part = Volume(fat.array[:5], modality="MR", units="a.u.", spacing=fat.spacing, origin=fat.origin)
    f = write_volume(part, tmp_path / "f.nii.gz")
    out = tmp_path / "mu.nii.gz"
    assert main(["attenuation", "--water", str(w), "--fat", str(f), "--out", str(out)]) == 2
    assert "covers only" in capsys.readouterr().err and not out.exists()
    pet = write_volume(water.derive(water.array, modality="PT", units="Bq/ml"), tmp_path / "pet.nii.gz")
    assert main(["attenuation", "--water", str(pet), "--fat", str(w), "--out", str(out)]) == 2
    assert "a PET image" in capsys.readouterr().err
    assert main(["attenuation", "--water", str(w), "--out", str(out)]) == 2
    assert "--fat" in capsys.readouterr().err


def test_attenuation_output_may_not_replace_an_input(tmp_path, capsys):
    water, fat, _, _ = torso()
    w = write_volume(water, tmp_path / "w.nii.gz")
    f = write_volume(fat, tmp_path / "f.nii.gz")
    before = f.read_bytes()
    assert main(["attenuation", "--water", str(w), "--fat", str(f), "--method", "dixon4", "--out", str(f)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err and f.read_bytes() == before
