"""The ``nmai`` command line end to end on small synthetic volumes, and its handling of bad input."""

import json
import subprocess
import sys

import numpy as np
import pytest

from geometry_cases import GEOMETRIES
from nmai import Volume
from nmai.cli import main
from nmai.io import read_volume, sidecar_path, write_volume


def pet(tmp_path, name="pet.nii.gz", array=None, units="Bq/ml", modality="PT", case="oblique", **meta):
    rng = np.random.default_rng(0)
    arr = rng.gamma(4.0, 1000.0, size=(8, 10, 12)).astype(np.float32) if array is None else array
    return write_volume(Volume(arr, modality=modality, units=units, metadata=meta, **GEOMETRIES[case]),
                        tmp_path / name)


def test_info_json_schema(tmp_path, capsys):
    path = pet(tmp_path, suv_bw_factor=3.1e-4)
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["modality"] == "PT" and info["units"] == "Bq/ml"
    assert info["shape"] == [12, 10, 8]
    assert info["spacing"] == pytest.approx(list(GEOMETRIES["oblique"]["spacing"]))
    assert info["suv_bw_factor"] == pytest.approx(3.1e-4)
    assert info["suv_lbm_factor"] is None and info["suv_lbm_unavailable_reason"]


def test_info_reports_why_suv_is_unavailable(tmp_path, capsys):
    path = pet(tmp_path, suv_unavailable_reason="PatientWeight (0010,1030) missing")
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["suv_bw_factor"] is None
    assert "PatientWeight" in info["suv_bw_unavailable_reason"]


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_convert_to_suv_keeps_geometry(tmp_path, suffix):
    src = pet(tmp_path, suv_bw_factor=2e-4, case="ras")
    out = tmp_path / f"suv{suffix}"
    assert main(["convert", str(src), "--out", str(out), "--suv"]) == 0
    a, b = read_volume(src), read_volume(out)
    assert b.units == "SUVbw" and b.same_grid(a)
    np.testing.assert_allclose(b.array, a.array * 2e-4, rtol=1e-6)


def test_convert_suv_without_factor_fails_clearly(tmp_path, capsys):
    src = pet(tmp_path, suv_unavailable_reason="injected dose missing")
    assert main(["convert", str(src), "--out", str(tmp_path / "x.nii.gz"), "--suv"]) == 2
    err = capsys.readouterr().err
    assert "injected dose missing" in err and not (tmp_path / "x.nii.gz").exists()


def test_denoise_gaussian_end_to_end(tmp_path, capsys):
    src = pet(tmp_path, units="SUVbw", suv_bw_factor=1.0)
    out = tmp_path / "den.nii.gz"
    assert main(["denoise", str(src), "--method", "gaussian", "--no-local-fit", "--out", str(out)]) == 2
    assert "--local-fit/--no-local-fit apply to cnn, gan and sr" in capsys.readouterr().err and not out.exists()
    assert main(["denoise", str(src), "--method", "gaussian", "--fwhm", "6", "--out", str(out)]) == 0
    a, b = read_volume(src), read_volume(out)
    assert b.units == "SUVbw" and b.modality == "PT" and b.same_grid(a)
    assert b.array.std() < a.array.std()  # smoother
    assert b.metadata["parameters"]["fwhm_mm"] == 6.0


def test_denoise_bare_nifti_needs_units(tmp_path, capsys):
    src = pet(tmp_path)
    sidecar_path(src).unlink()
    out = tmp_path / "den.nii.gz"
    assert main(["denoise", str(src), "--out", str(out)]) == 2
    assert "--units" in capsys.readouterr().err
    assert main(["denoise", str(src), "--units", "Bq/ml", "--out", str(out)]) == 0
    assert read_volume(out).units == "Bq/ml"


def test_attenuation_from_ct(tmp_path):
    hu = np.full((4, 5, 6), -1000.0, np.float32)
    hu[1:3, 1:4, 1:5] = 0.0
    hu[2, 2, 2] = 1000.0
    src = write_volume(Volume(hu, modality="CT", units="HU", **GEOMETRIES["lps"]), tmp_path / "ct.nii.gz")
    out = tmp_path / "mu.nii.gz"
    assert main(["attenuation", "--ct", str(src), "--out", str(out)]) == 0
    mu = read_volume(out)
    assert mu.units == "cm-1" and mu.same_grid(read_volume(src))
    assert mu.array[0, 0, 0] == pytest.approx(0.0, abs=1e-7)
    assert mu.array[1, 1, 1] == pytest.approx(0.096, rel=1e-4)  # water
    assert mu.array[2, 2, 2] == pytest.approx(5.10e-5 * 2000 + 4.71e-2, rel=1e-4)  # Carney 120 kVp


def test_attenuation_refuses_pet_as_ct(tmp_path, capsys):
    assert main(["attenuation", "--ct", str(pet(tmp_path)), "--out", str(tmp_path / "mu.nii.gz")]) == 2
    assert "not a CT" in capsys.readouterr().err


BAD = {
    "nan": lambda: np.where(np.arange(960).reshape(8, 10, 12) == 5, np.nan, 1.0).astype(np.float32),
    "two_d": lambda: np.ones((1, 10, 12), np.float32),
    "zeros": lambda: np.zeros((8, 10, 12), np.float32),
}


@pytest.mark.parametrize("kind,match", [("nan", "NaN"), ("two_d", "2-D"), ("zeros", "zero")])
def test_bad_volumes_are_refused_in_one_line(tmp_path, capsys, kind, match):
    src = pet(tmp_path, name="pet.nrrd", array=BAD[kind]())
    out = tmp_path / "out.nii.gz"
    assert main(["denoise", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("name", ["pet.nii.gz", "pet.nii"])
def test_nan_in_nifti_is_seen_although_itk_reads_it_as_zero(tmp_path, capsys, name):
    src = pet(tmp_path, name=name, array=BAD["nan"]())
    assert np.isnan(read_volume(src).array).sum() == 1
    assert main(["denoise", str(src), "--out", str(tmp_path / "out.nii.gz")]) == 2
    assert "1 voxels are NaN" in capsys.readouterr().err


def test_non_pet_input_is_refused(tmp_path, capsys):
    src = pet(tmp_path, units="HU", modality="CT", array=np.full((8, 10, 12), -1000, np.float32))
    assert main(["denoise", str(src), "--out", str(tmp_path / "o.nii.gz")]) == 2
    assert "not PET" in capsys.readouterr().err


def test_subprocess_error_has_no_traceback_and_nonzero_exit(tmp_path):
    bad = tmp_path / "garbage.nii.gz"
    bad.write_bytes(b"\x00garbage")
    proc = subprocess.run([sys.executable, "-m", "nmai", "info", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "cannot read image" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_jsonl_protocol(tmp_path):
    src = pet(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "nmai", "--jsonl", "denoise", str(src), "--out",
                           str(tmp_path / "d.nii.gz")], capture_output=True, text=True)
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    fractions = [e["fraction"] for e in events if e["type"] == "progress"]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1]["type"] == "result"
    assert events[-1]["result"]["outputs"]["denoised"].endswith("d.nii.gz")


def test_help_lists_every_command():
    proc = subprocess.run([sys.executable, "-m", "nmai", "--help"], capture_output=True, text=True)
    from nmai.cli import COMMANDS
    for name in COMMANDS:
        assert name in proc.stdout


def test_output_never_overwrites_the_input_or_its_sidecar(tmp_path, capsys):
    src = pet(tmp_path)
    before = src.read_bytes()
    assert main(["denoise", str(src), "--out", str(src)]) == 2
    assert "would overwrite the input" in capsys.readouterr().err
    assert main(["convert", str(src), "--out", str(tmp_path / "pet.nrrd")]) == 2  # pet.json is the input's
    assert "sidecar" in capsys.readouterr().err
    assert src.read_bytes() == before and not (tmp_path / "pet.nrrd").exists()


def test_sidecar_of_another_image_is_neither_used_nor_replaced(tmp_path, capsys):
    a = pet(tmp_path, name="x.nrrd", units="SUVbw", suv_bw_factor=1.0)
    with pytest.raises(Exception, match="describes x.nrrd"):
        write_volume(read_volume(a), tmp_path / "x.nii.gz")
    import shutil
    shutil.copy(pet(tmp_path, name="y.nii.gz"), tmp_path / "x.nii.gz")  # a NIfTI beside x.nrrd's sidecar
    assert read_volume(tmp_path / "x.nii.gz").units == "1"  # x.json says nothing about x.nii.gz


@pytest.mark.parametrize("content,match", [('["a list"]', "JSON object"), ('{"units": "mCi"}', "units 'mCi'"),
                                           ('{"metadata": {"suv_bw_factor": "abc"}}', "positive number")])
def test_bad_sidecars_are_one_line_errors(tmp_path, capsys, content, match):
    src = pet(tmp_path)
    sidecar_path(src).write_text(content)
    assert main(["info", str(src), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert match in err and len(err.splitlines()) == 1


def test_unwritable_output_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["denoise", str(pet(tmp_path)), "--out", str(blocker / "sub" / "d.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    (tmp_path / "dir.nii.gz").mkdir()
    assert main(["denoise", str(pet(tmp_path)), "--out", str(tmp_path / "dir.nii.gz")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_jsonl_info_keeps_the_protocol(tmp_path):
    src = pet(tmp_path, suv_unavailable_reason="PatientWeight missing")
    proc = subprocess.run([sys.executable, "-m", "nmai", "--jsonl", "info", str(src), "--json"],
                          capture_output=True, text=True)
    events = [json.loads(line) for line in proc.stdout.splitlines()]  # every line is one JSON object
    result = events[-1]["result"]
    assert result["suv_bw_factor"] is None and result["suv_unavailable_reason"] == "PatientWeight missing"
