"""Volume type and NIfTI/NRRD I/O: geometry and units survive a round trip exactly; writes are atomic."""

import json

import numpy as np
import pytest

from geometry_cases import GEOMETRIES
from nmai import NMAIError, Volume
from nmai.io import read_volume, sidecar_path, write_volume


def make(case, units="Bq/ml", modality="PT"):
    rng = np.random.default_rng(1)
    return Volume(rng.random((5, 6, 7)).astype(np.float32) * 1000, modality=modality, units=units,
                  metadata={"suv_bw_factor": 2.5e-4}, **GEOMETRIES[case])


@pytest.mark.parametrize("case", sorted(GEOMETRIES))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_round_trip_keeps_geometry_units_and_values(tmp_path, case, suffix):
    v = make(case)
    path = write_volume(v, tmp_path / f"pet{suffix}")
    back = read_volume(path)
    assert back.shape == v.shape
    np.testing.assert_array_equal(back.array, v.array)
    np.testing.assert_allclose(back.spacing, v.spacing, atol=1e-5)
    np.testing.assert_allclose(back.origin, v.origin, atol=1e-4)
    np.testing.assert_allclose(back.direction, v.direction, atol=1e-5)
    assert (back.modality, back.units) == ("PT", "Bq/ml")
    assert back.suv_factor("bw") == pytest.approx(2.5e-4)


def test_index_to_lps_maps_voxels_like_itk(tmp_path):
    import SimpleITK as sitk

    v = make("oblique")
    image = sitk.ReadImage(str(write_volume(v, tmp_path / "v.nrrd")))
    for ijk in [(0, 0, 0), (6, 5, 4), (3, 1, 2)]:
        expected = image.TransformIndexToPhysicalPoint(ijk)
        got = (v.index_to_lps() @ np.array([*ijk, 1.0]))[:3]
        np.testing.assert_allclose(got, expected, atol=1e-4)
    ras = (v.index_to_ras() @ np.array([6, 5, 4, 1.0]))[:3]
    np.testing.assert_allclose(ras, np.array(image.TransformIndexToPhysicalPoint((6, 5, 4))) * [-1, -1, 1],
                               atol=1e-4)


def test_from_index_to_ras_inverts_index_to_ras():
    v = make("oblique")
    w = Volume.from_index_to_ras(v.array, v.index_to_ras())
    np.testing.assert_allclose(w.spacing, v.spacing)
    np.testing.assert_allclose(w.origin, v.origin)
    np.testing.assert_allclose(w.direction, v.direction, atol=1e-12)


def test_suv_conversion_uses_recorded_factor():
    v = make("lps")
    suv = v.to_units("SUVbw")
    np.testing.assert_allclose(suv.array, v.array * 2.5e-4, rtol=1e-6)
    np.testing.assert_allclose(suv.to_units("Bq/ml").array, v.array, rtol=1e-6)
    v.metadata = {"suv_unavailable_reason": "PatientWeight missing"}
    with pytest.raises(NMAIError, match="PatientWeight missing"):
        v.to_units("SUVbw")


def test_sidecar_records_units_and_bare_nifti_reads_as_unknown(tmp_path):
    v = make("lps", units="cm-1", modality="OT")
    path = write_volume(v, tmp_path / "mu.nii.gz")
    side = json.loads(sidecar_path(path).read_text())
    assert side["units"] == "cm-1" and side["quantity"] == "linear_attenuation"
    sidecar_path(path).unlink()
    bare = read_volume(path)
    assert (bare.modality, bare.units) == ("OT", "1")
    assert read_volume(path, units="cm-1").units == "cm-1"


def test_declared_units_never_override_the_file(tmp_path):
    path = write_volume(make("lps", units="HU", modality="CT"), tmp_path / "ct.nii.gz")
    with pytest.raises(NMAIError, match="file says units is 'HU'"):
        read_volume(path, units="Bq/ml")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import SimpleITK as sitk

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(sitk, "WriteImage", boom)
    with pytest.raises(RuntimeError):
        write_volume(make("lps"), tmp_path / "out.nii.gz")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content,match", [(b"not an image at all", "cannot read image"),
                                           (None, "no such file")])
def test_unreadable_files_give_one_line_errors(tmp_path, content, match):
    path = tmp_path / "broken.nii.gz"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(NMAIError, match=match) as err:
        read_volume(path)
    assert "\n" not in str(err.value)


def test_unknown_units_are_refused():
    with pytest.raises(NMAIError, match="unknown units"):
        Volume(np.zeros((2, 2, 2)), units="mCi")


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    path = write_volume(make("lps"), tmp_path / "pet.nii.gz")
    mask = os.umask(0o022)
    os.umask(mask)
    for p in (path, sidecar_path(path)):
        assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_atomic_folder_is_all_or_nothing(tmp_path):
    from nmai.io import atomic_folder

    target = tmp_path / "sim"
    with pytest.raises(RuntimeError):
        with atomic_folder(target) as tmp:
            (tmp / "half.nii.gz").write_text("partial")
            raise RuntimeError("crash while writing")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary folder is left
    with atomic_folder(target) as tmp:
        (tmp / "simulation.json").write_text("{}")
        (tmp / "stale.nii.gz").write_text("old")
    with atomic_folder(target, replaceable=lambda f: (f / "simulation.json").exists()) as tmp:
        (tmp / "simulation.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["simulation.json"]  # the rerun left no stale file
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(NMAIError, match="not an empty folder"):
        with atomic_folder(mine, replaceable=lambda f: (f / "simulation.json").exists()):
            pass
    assert (mine / "notes.txt").read_text() == "keep me"
