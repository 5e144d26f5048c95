"""`nmai demo` end to end: DICOM with SUV tags written, re-imported, filtered, written back."""

import json

import numpy as np

from nmai.cli import main
from nmai.io import read_volume


def test_demo_runs_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert str(out.resolve()) in capsys.readouterr().out
    summary = json.loads((out / "demo.json").read_text())
    assert abs(summary["suv_bw_factor"] / summary["suv_bw_factor_expected"] - 1) < 1e-6
    bq, suv, filt = (read_volume(summary["outputs"][k]) for k in ("pet_bqml", "pet_suv", "pet_gaussian6mm_suv"))
    assert (bq.units, suv.units, filt.units) == ("Bq/ml", "SUVbw", "SUVbw")
    assert bq.same_grid(suv) and bq.same_grid(filt)
    np.testing.assert_allclose(suv.array, bq.array * summary["suv_bw_factor"], rtol=1e-5)
    assert summary["suv_max_gaussian6mm"] < summary["suv_max_raw"]
    assert len(list((out / "pet_dicom").iterdir())) == bq.shape[0]
    att = summary["attenuation"]  # the shipped U-Net finds bone, Dixon 4-class cannot
    assert att["unet"]["bone_dice"] > 0.7 and att["dixon4"]["bone_dice"] == 0.0
    assert read_volume(summary["outputs"]["mumap_unet"]).same_grid(read_volume(summary["outputs"]["mr_water"]))


def test_demo_runs_twice_into_the_same_folder(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out)]) == 0
    assert main(["demo", "--out", str(out), "--seed", "1"]) == 0
