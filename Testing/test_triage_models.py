"""Image-domain triage: lesion candidates (rules + CNN score) and the artifact slice classifier."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nmai.errors import NMAIError
from nmai.volume import Volume


def sphere_phantom(direction=np.eye(3), spacing=(4.0, 4.0, 4.0), seed=0):
    """A noisy warm cylinder (SUV 1) with a 16 mm sphere at SUV 5 and a second one at SUV 3."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = 40, 48, 48
    k, j, i = np.mgrid[:nz, :ny, :nx].astype(float)
    body = ((j - 24) ** 2 + (i - 24) ** 2) * spacing[0] ** 2 < 80.0 ** 2
    img = body * 1.0
    centres = [(20, 24, 14), (12, 30, 30)]
    for (c, v) in zip(centres, (5.0, 3.0)):
        img[((k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2) * spacing[0] ** 2 <= 8.0 ** 2] = v
    img = np.maximum(img + rng.normal(0, 0.05, img.shape) * body, 0).astype(np.float32)
    vol = Volume(img, spacing, (-96.0, 20.0, -300.0), direction, modality="PT", units="SUVbw")
    return vol, centres


def test_candidates_find_spheres_and_describe_them_exactly():
    from nmai.triage.lesions import detect_lesions

    vol, centres = sphere_phantom()
    found = detect_lesions(vol)
    assert found["units"] == "SUVbw" and found["model"] is None
    idx = [tuple(le["index_kji"]) for le in found["lesions"]]
    for c in centres:
        assert min(np.abs(np.subtract(c, i)).max() for i in idx) <= 1
    top = found["lesions"][0]
    assert top["suv_max"] == pytest.approx(float(vol.array.max()), rel=1e-4)
    # the 50 %-of-max region of the SUV-5 sphere is the sphere: 16 mm diameter -> ~2.1 ml
    assert top["volume_ml"] == pytest.approx(4 / 3 * np.pi * 0.8 ** 3, rel=0.3)
    assert top["tlg"] == pytest.approx(top["suv_mean"] * top["volume_ml"], rel=1e-3)
    ijk = np.array([*top["index_kji"][::-1], 1.0])
    np.testing.assert_allclose(top["position_lps"], (vol.index_to_lps() @ ijk)[:3], atol=0.01)
    assert len(found["lesions"]) <= 4  # noise in a uniform cylinder does not make candidates


def test_candidate_positions_follow_oblique_geometry():
    from geometry_cases import GEOMETRIES

    from nmai.triage.lesions import detect_lesions

    axial, _ = sphere_phantom()
    oblique, _ = sphere_phantom(direction=GEOMETRIES["oblique"]["direction"])
    a, o = detect_lesions(axial)["lesions"][0], detect_lesions(oblique)["lesions"][0]
    assert a["index_kji"] == o["index_kji"]
    ijk = np.array([*o["index_kji"][::-1], 1.0])
    np.testing.assert_allclose(o["position_lps"], (oblique.index_to_lps() @ ijk)[:3], atol=0.01)
    assert not np.allclose(o["position_lps"], a["position_lps"], atol=1.0)


def test_bq_ml_converts_with_its_suv_factor_and_stays_bq_ml_without():
    from nmai.triage.lesions import detect_lesions

    vol, _ = sphere_phantom()
    bq = vol.derive(vol.array * 5000.0, units="Bq/ml", suv_bw_factor=1 / 5000.0)
    res = detect_lesions(bq)
    assert res["units"] == "SUVbw" and res["lesions"][0]["suv_max"] == pytest.approx(float(vol.array.max()), rel=1e-4)
    raw = vol.derive(vol.array * 5000.0, units="Bq/ml")
    raw.metadata.pop("suv_bw_factor", None)
    res = detect_lesions(raw)
    assert res["units"] == "Bq/ml" and res["lesions"][0]["suv_max"] == pytest.approx(5000 * float(vol.array.max()),
                                                                                       rel=1e-4)


@pytest.fixture(scope="module")
def triage_models(quick_triage_models):
    return quick_triage_models


def test_scored_candidates_and_artifact_report(triage_models):
    from nmai.triage.classifier import ARTIFACTS, classify_artifacts
    from nmai.triage.lesions import detect_lesions

    vol, _ = sphere_phantom()
    scored = detect_lesions(vol, triage_models["lesions"], threshold=0.0)
    assert scored["model"]["name"] == "triage-lesions"
    assert all(0.0 <= le["probability"] <= 1.0 for le in scored["lesions"])
    none = detect_lesions(vol, triage_models["lesions"], threshold=1.01)
    assert none["lesions"] == [] and none["candidates_considered"] == scored["candidates_considered"]
    mu = vol.derive((vol.array > 0.5) * 0.096, units="cm-1", modality="OT")
    report = classify_artifacts(vol, mu, triage_models["artifacts"])
    assert report["alarm"] in ("ok", "check", "repeat") and report["with_mumap"]
    assert sorted(a["type"] for a in report["artifacts"]) == sorted(ARTIFACTS)
    for a in report["artifacts"]:
        assert 0 <= a["probability"] <= 1 and 0 <= a["slice_range"][0] <= a["slice_range"][1] < vol.shape[0]
    far = Volume(mu.array, mu.spacing, (5000.0, 0.0, 0.0), mu.direction, modality="OT", units="cm-1")
    with pytest.raises(NMAIError, match="does not overlap"):
        classify_artifacts(vol, far, triage_models["artifacts"])
    with pytest.raises(NMAIError, match="not an artifact triage model"):
        classify_artifacts(vol, mu, triage_models["lesions"])
    with pytest.raises(NMAIError, match="not a lesion-candidate scorer"):
        detect_lesions(vol, triage_models["artifacts"])
    from nmai.triage.image import triage_image

    with pytest.raises(NMAIError, match="not μ at 511 keV"):  # cm-1 x 10000, as some vendors store it
        triage_image(vol, mumap=mu.derive(mu.array * 10000), classifier=None, lesion_model=None)


def test_classifier_helpers():
    from nmai.triage.classifier import alarm_level, scan_probabilities, slice_range

    p = np.array([0.1, 0.6, 0.9, 0.7, 0.2, 0.95])
    assert slice_range(p) == [5, 5]
    assert slice_range(np.array([0.1, 0.6, 0.9, 0.7, 0.2])) == [1, 3]
    assert scan_probabilities(p[:, None])[0] == pytest.approx((0.95 + 0.9 + 0.7) / 3)
    assert alarm_level([0.1, 0.3]) == "ok" and alarm_level([0.55]) == "check" and alarm_level([0.85]) == "repeat"


def test_calibration_maps_each_threshold_to_half_and_keeps_the_order():
    from nmai.triage.classifier import calibrated
    from nmai.triage.training import threshold_between

    for t in (0.5, 0.7, 0.9):
        assert calibrated(t, t) == pytest.approx(0.5) and calibrated(0.0, t) == 0 and calibrated(1.0, t) == 1
        p = np.linspace(0, 1, 101)
        assert np.all(np.diff([calibrated(x, t) for x in p]) > 0)
    assert calibrated(0.3, 0.5) == pytest.approx(0.3) and calibrated(0.8, 0.5) == pytest.approx(0.8)
    # separated: midway; overlapping: just above the clean maximum; never below 0.5 or above 0.99
    assert threshold_between([0.2, 0.6], [0.9, 0.95]) == pytest.approx(0.75)
    assert threshold_between([0.2, 0.7], [0.6, 0.95]) == pytest.approx(0.72)
    assert threshold_between([0.1], [0.3]) == 0.5 and threshold_between([0.995], [0.2]) == 0.99


def test_trained_classifier_carries_its_calibration(triage_models):
    from nmai.models.card import read_card
    from nmai.triage.classifier import ARTIFACTS, calibrated, classify_artifacts

    cal = read_card(triage_models["artifacts"])["calibration"]
    assert cal["seeds"] == [36000, 36000] and set(cal["thresholds"]) == {"with_mumap", "pet_only"}
    assert all(set(t) == set(ARTIFACTS) and all(0.5 <= v <= 0.99 for v in t.values())
               for t in cal["thresholds"].values())
    assert cal["cases"]["none"] == 1 and cal["cases"]["motion"] == 1
    vol, _ = sphere_phantom()
    res = classify_artifacts(vol, None, triage_models["artifacts"])
    assert res["calibrated"]
    for a in res["artifacts"]:
        assert a["threshold"] == pytest.approx(cal["thresholds"]["pet_only"][a["type"]], abs=1e-4)
        assert a["probability"] == pytest.approx(calibrated(a["network_probability"], a["threshold"]), abs=1e-3)


def test_slice_labels_follow_the_truth_through_the_6mm_grid():
    from nmai.triage.classifier import to_grid
    from nmai.triage.training import slice_labels

    vol = Volume(np.ones((50, 8, 8), np.float32), (4.0, 4.0, 3.0), (0.0, 0.0, -20.0), np.eye(3),
                 modality="PT", units="Bq/ml")
    grid = to_grid(vol)
    y = slice_labels({"type": "metal", "slices": [10, 19]}, vol, grid)
    z = -20.0 + 6.0 * np.flatnonzero(y[:, 5])
    assert y[:, [0, 1, 2, 3, 4, 6]].sum() == 0
    assert z.min() >= -20.0 + 3.0 * 10 - 3.0 and z.max() <= -20.0 + 3.0 * 19 + 3.0
    assert slice_labels({"type": "none", "slices": []}, vol, grid).sum() == 0


def test_triage_report_cli_with_ct_and_lesion_segmentation(triage_models, tmp_path):
    import json

    from nmai.cli import main
    from nmai.io import read_volume, write_volume

    vol, centres = sphere_phantom()
    ct = vol.derive(np.where(vol.array > 0.5, 40.0, -1000.0).astype(np.float32), modality="CT", units="HU")
    write_volume(vol, tmp_path / "pet.nii.gz")
    write_volume(ct, tmp_path / "ct.nii.gz")
    report, seg = tmp_path / "report.json", tmp_path / "lesions.nii.gz"
    # the form `nmai triage PET ...` is `nmai triage image PET ...`
    assert main(["triage", str(tmp_path / "pet.nii.gz"), "--ct", str(tmp_path / "ct.nii.gz"), "--out", str(report),
                 "--lesions", str(seg), "--model", triage_models["artifacts"],
                 "--lesion-model", triage_models["lesions"], "--threshold", "0"]) == 0
    rep = json.loads(report.read_text())
    assert rep["alarm"] in ("ok", "check", "repeat") and rep["checked"]["image_classifier"]
    assert rep["classifier"]["with_mumap"] and len(rep["classifier"]["probabilities"]) == 7
    for a in rep["artifacts"]:
        assert {"type", "probability", "slice_range", "alarm", "message"} <= set(a)
    assert rep["lesions"] and rep["lesions_units"] == "SUVbw"
    for le in rep["lesions"]:
        assert {"position_lps", "suv_max", "suv_peak", "volume_ml", "tlg", "probability"} <= set(le)
    labels = read_volume(seg)
    assert labels.units == "label" and labels.same_grid(vol)
    assert labels.array.max() == len(rep["lesions"])
    k, j, i = rep["lesions"][0]["index_kji"]
    assert labels.array[k, j, i] == 1
    # both a μ-map and a CT: refused, nothing written
    out2 = tmp_path / "r2.json"
    with pytest.raises(SystemExit) as exc:
        main(["triage", str(tmp_path / "pet.nii.gz"), "--ct", str(tmp_path / "ct.nii.gz"), "--mumap",
              str(tmp_path / "ct.nii.gz"), "--out", str(out2)])
    assert exc.value.code == 2 and not out2.exists()


def test_evaluate_triage_quick_cli(triage_models, tmp_path):
    import json

    from nmai.cli import main
    from nmai.evaluate.triage import froc, roc_auc

    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0 and roc_auc([0.5], [0.5]) == 0.5 and roc_auc([], [1]) is None
    pts = froc([np.array([0.9, 0.6, 0.2])], [np.array([0, -1, -2])], n_lesions=2, n_scans=1)
    at = {p["threshold"]: (p["sensitivity"], p["fp_per_scan"]) for p in pts}
    assert at[0.9] == (0.5, 0.0) and at[0.6] == (0.5, 1.0) and at[0.2] == (0.5, 1.0)  # the ignored hit is no FP
    out, png = tmp_path / "ev.json", tmp_path / "ev.png"
    assert main(["--threads", "1", "evaluate", "triage", "--quick", "--cases", "1", "--model",
                 triage_models["artifacts"], "--lesion-model", triage_models["lesions"], "--json", str(out),
                 "--figure", str(png)]) == 0
    r = json.loads(out.read_text())
    assert r["quick"] and r["note"] and png.stat().st_size > 1000
    assert set(r["artifacts"]) == {"motion", "respiratory", "misregistration", "truncation", "failed_blocks",
                                   "metal", "low_counts"}
    assert r["secondary"]["respiratory_expiration"]["cases"] == 1  # reported beside the targets, not one
    assert r["lesions"]["scans"] == 1 and 0.0 <= r["lesions"]["sensitivity_at_1fp_per_scan"] <= 1.0
    assert "lesions:sensitivity_at_1fp" in r["targets"]


def test_bench_triage_quick_writes_its_json(tmp_path):
    from nmai.cli import main

    out = tmp_path / "bench.json"
    assert main(["--threads", "1", "bench", "triage", "--quick", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["target"] == "triage" and r["problem"]["quick"] and r["triage_s"] > 0
    assert r["report"]["alarm"] in ("ok", "check", "repeat") and r["models"]["artifacts"]["name"] == "triage-artifacts"
    assert r["goals"]["time_met"] == (r["triage_s"] <= r["goals"]["triage_s_max"])


def test_summary_keeps_expiration_breathing_out_of_the_other_scans():
    from nmai.evaluate.triage import summarise_artifacts
    from nmai.triage.classifier import ARTIFACTS

    def case(kind, resp, alarm="ok"):
        scores = {a: 0.1 for a in ARTIFACTS}
        scores["respiratory"] = resp
        return {"kind": kind, "scores": scores, "classifier_scores": dict(scores), "found": [], "alarm": alarm}

    cases = [case("none", 0.2), case("none", 0.3, "check"), case("respiratory", 0.6), case("respiratory", 0.7),
             case("respiratory_expiration", 0.9), case("motion", 0.25), {"kind": "truncation", "skipped": "no arms"}]
    artifacts, secondary, alarms = summarise_artifacts(cases)
    r = artifacts["respiratory"]
    assert r["cases"] == 2 and r["auc_vs_clean"] == 1.0
    assert r["auc_vs_all_others"] == 1.0  # the 0.9 expiration scan would have been an "other" ranked above them
    e = secondary["respiratory_expiration"]
    assert e["cases"] == 1 and e["auc_vs_clean"] == 1.0 and e["auc_vs_all_others"] == 1.0
    assert artifacts["truncation"]["cases"] == 0 and artifacts["truncation"]["auc_vs_clean"] is None
    assert alarms == {"ok": 1, "check": 1, "repeat": 0}
