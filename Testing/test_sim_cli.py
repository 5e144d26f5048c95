"""CLI of the PET/MR simulator: nmai phantom / simulate / reconstruct / bench, end to end on tiny grids."""

import json

import numpy as np
import pytest

from nmai.cli import main
from nmai.errors import NMAIError
from nmai.io import read_volume, write_volume
from nmai.volume import Volume


@pytest.fixture(scope="module")
def simdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "nema"
    rc = main(["simulate", "--phantom", "nema", "--voxel", "8", "--supersample", "1", "--seed", "7",
               "--duration", "120", "--iterations", "2", "--subsets", "8", "--out", str(out)])
    assert rc == 0
    return out


def test_simulate_writes_documented_files(simdir):
    for name in ("activity", "mumap", "ct", "labels", "mr_water", "mr_fat", "mr_in_phase", "mr_opposed_phase",
                 "mr_t1", "recon"):
        assert (simdir / f"{name}.nii.gz").exists(), name
        assert (simdir / f"{name}.json").exists(), name
    act = read_volume(simdir / "activity.nii.gz")
    assert (act.units, act.modality) == ("Bq/ml", "PT") and act.spacing == (8.0, 8.0, 8.0)
    assert read_volume(simdir / "mumap.nii.gz").units == "cm-1"
    assert read_volume(simdir / "ct.nii.gz").units == "HU"
    labels = read_volume(simdir / "labels.nii.gz")
    assert (labels.units, labels.modality) == ("label", "SEG")
    assert labels.metadata["label_table"]["water"] == 30
    recon = read_volume(simdir / "recon.nii.gz")
    assert (recon.units, recon.modality) == ("Bq/ml", "PT") and recon.same_grid(act)
    assert recon.suv_factor("bw") == pytest.approx(1 / 5300.0)
    # acquisition: plain arrays (no pickle) plus JSON with what a reconstruction needs
    with np.load(simdir / "acquisition.npz", allow_pickle=False) as z:
        assert z["prompts"].shape[1:] == (act.shape[0], 224, 344) and z["prompts"].dtype.kind == "u"
        assert z["background_f16"].shape == z["prompts"].shape[1:] and z["background_scale"] > 0
    acq = json.loads((simdir / "acquisition.json").read_text())
    assert acq["scanner"]["derived"]["n_views"] == 224 and acq["grid"]["nx"] == act.shape[2]
    summary = json.loads((simdir / "simulation.json").read_text())
    assert summary["labels"]["sphere_37mm"] == 45
    assert summary["truth_mean_bq_ml"]["water"] == pytest.approx(5300.0, rel=0.02)
    assert summary["acquisition"]["prompts"] > 1e6 and summary["suv_bw_factor"] == pytest.approx(1 / 5300.0)
    # background uptake is reconstructed close to the truth (2 iterations, 8 mm voxels)
    bg = labels.array == 30
    assert recon.array[bg].mean() == pytest.approx(5300.0, rel=0.1)


def test_reconstruct_with_another_mumap_on_another_grid(simdir, tmp_path):
    mu = read_volume(simdir / "mumap.nii.gz")
    # the same μ-map scaled by 0.8 on a 4 mm grid: under-corrected attenuation -> lower activity everywhere
    fine = np.repeat(np.repeat(np.repeat(mu.array, 2, 0), 2, 1), 2, 2) * np.float32(0.8)
    origin = tuple(o - 2.0 for o in mu.origin)
    write_volume(Volume(fine, (4.0, 4.0, 4.0), origin, units="cm-1"), tmp_path / "mu08.nii.gz")
    out = tmp_path / "r.nii.gz"
    args = ["reconstruct", str(simdir), "--iterations", "2", "--subsets", "8"]
    assert main(args + ["--out", str(tmp_path / "true")]) == 0
    assert main(args + ["--mumap", str(tmp_path / "mu08.nii.gz"), "--out", str(out)]) == 0
    true_ac = read_volume(tmp_path / "true" / "recon.nii.gz").array
    low_ac = read_volume(out).array
    labels = read_volume(simdir / "labels.nii.gz").array
    bg = labels == 30
    assert low_ac[bg].mean() < 0.9 * true_ac[bg].mean()
    assert read_volume(out).metadata["reconstruction"]["attenuation_map"].endswith("mu08.nii.gz")


def _user_volumes(tmp_path, act_array, mu_array=None, mu_spacing=4.0, suffix=".nii.gz"):
    shape = act_array.shape
    act_path, mu_path = tmp_path / f"a{suffix}", tmp_path / f"m{suffix}"
    write_volume(Volume(act_array, (4.0,) * 3, (0.0, 0.0, 0.0), modality="PT", units="Bq/ml"), act_path)
    mu_array = np.full(shape, 0.096, np.float32) if mu_array is None else mu_array
    write_volume(Volume(mu_array, (mu_spacing,) * 3, (0.0, 0.0, 0.0), units="cm-1"), mu_path)
    return ["simulate", "--activity", str(act_path), "--mumap", str(mu_path), "--out", str(tmp_path / "out")]


@pytest.mark.parametrize("case,needle", [("negative", "negative"), ("nan", "NaN"), ("grid", "different grids")])
def test_bad_user_volumes_are_refused(tmp_path, capsys, case, needle):
    act = np.full((3, 16, 16), 1000.0, np.float32)
    mu_spacing = 4.0
    if case == "negative":
        act[1, 5, 5] = -3.0
    elif case == "nan":
        act[0, 2, 2] = np.nan
    else:
        mu_spacing = 5.0
    # NRRD keeps NaN (SimpleITK's NIfTI reader does not), so the NaN case uses NRRD
    rc = main(_user_volumes(tmp_path, act, mu_spacing=mu_spacing, suffix=".nrrd" if case == "nan" else ".nii.gz"))
    err = capsys.readouterr().err
    assert rc == 2
    assert needle in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_user_volumes_are_simulated_as_given(tmp_path):
    act = np.zeros((4, 24, 24), np.float32)
    act[:, 6:18, 6:18] = 2000.0
    mu = (act > 0).astype(np.float32) * np.float32(0.096)
    args = _user_volumes(tmp_path, act, mu) + ["--iterations", "6", "--seed", "1", "--noise-free"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert summary["phantom"]["weight_kg"] == 75.0
    recon = read_volume(tmp_path / "out" / "recon.nii.gz")
    assert recon.array[1:3, 10:14, 10:14].mean() == pytest.approx(2000.0, rel=0.05)


def test_phantom_command(tmp_path):
    rc = main(["phantom", "--phantom", "brain", "--voxel", "6", "--supersample", "1", "--no-mr", "--seed", "3",
               "--out", str(tmp_path / "ph")])
    assert rc == 0
    info = json.loads((tmp_path / "ph" / "phantom.json").read_text())
    assert "brain_grey_matter" in info["labels"] and info["truth_mean_bq_ml"]["brain_grey_matter"] > 0
    assert not (tmp_path / "ph" / "mr_t1.nii.gz").exists()


def test_reconstruct_refuses_a_folder_without_acquisition(tmp_path, capsys):
    assert main(["reconstruct", str(tmp_path), "--out", str(tmp_path / "r.nii.gz")]) == 2
    assert "nmai simulate" in capsys.readouterr().err


def test_bench_quick_writes_json(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "simulate", "--quick", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["target"] == "simulate" and data["osem_3it_8sub_s"] > 0
    assert data["projector_speedup_vs_radon"] > 0 and "skimage_reference" in data


def test_motion_option_parses_one_position_per_frame():
    from nmai.cli.simulate import parse_motion

    assert parse_motion(None, 2) is None
    assert parse_motion(["0,0,0", "5,0,-2,3"], 2) == [
        {"translation_mm": [0.0, 0.0, 0.0], "rotation_deg": 0.0},
        {"translation_mm": [5.0, 0.0, -2.0], "rotation_deg": 3.0}]
    with pytest.raises(NMAIError, match="once per frame"):
        parse_motion(["0,0,0"], 2)
    with pytest.raises(NMAIError, match="expected X,Y,Z"):
        parse_motion(["a,b"], 1)
