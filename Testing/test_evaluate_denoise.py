"""``nmai evaluate denoise`` and ``nmai bench denoise``: schema, NEMA analysis, matched-noise Gaussian, point-source
FWHM, on tiny random-weight models (the quick mode checks the code path; the real numbers come from the full run
with the shipped models, see the README)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nmai.cli import main
from nmai.volume import Volume


def save_tiny_denoise_model(folder, method: str, seed: int = 0):
    """A model folder with a random network of the quick preset and the denoising models' data format."""
    import torch

    from nmai.denoise.training import NAMES, PRESETS, data_format, network_spec
    from nmai.models import build_network, new_card, save_model

    spec = network_spec(PRESETS["quick"])
    torch.manual_seed(seed)
    card = new_card(name=NAMES[method], task="denoise", network=spec, network_data_format=data_format(),
                    training={"command": "test fixture", "seed": seed, "steps": 0, "duration_s": 0, "device": "cpu",
                              "preset": "quick"})
    save_model(build_network(spec), folder, card)
    return str(folder)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("denoise-models")
    return {m: save_tiny_denoise_model(root / m, m, seed=i) for i, m in enumerate(("cnn", "gan", "sr"))}


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread: on a busy 2-core machine two threads wait on each other (100x slower)."""
    import torch

    import nmai.models.sliding as sliding

    before = torch.get_num_threads()
    monkeypatch.setattr(sliding, "default_threads", lambda: 1)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _finite(v):
    return isinstance(v, (int, float)) and math.isfinite(v)


def test_quick_evaluation_runs_end_to_end_and_writes_the_documented_json(models, one_thread, tmp_path, capsys):
    out, png = tmp_path / "eval.json", tmp_path / "crc_bv.png"
    assert main(["--threads", "1", "evaluate", "denoise", "--quick", "--cases", "1", "--model", models["cnn"],
                 "--gan-model", models["gan"], "--sr-model", models["sr"], "--json", str(out),
                 "--figure", str(png)]) == 0
    text = capsys.readouterr().out
    assert "QUICK MODE" in text and "targets passed" in text
    r = json.loads(out.read_text())
    assert {"command", "quick", "note", "methods", "models", "wholebody", "nema", "sr", "targets", "published",
            "settings", "duration_s"} <= set(r)
    assert r["quick"] is True and "NOT the evaluation" in r["note"] and r["duration_s"] > 0
    assert r["command"].startswith("nmai evaluate denoise --cases 1 --seed-start 100 "
                                   "--methods cnn,gan,gaussian,prior,sr")
    assert "--quick" in r["command"]
    assert set(r["models"]) == {"cnn", "gan", "sr"} and r["models"]["cnn"]["name"] == "denoise-cnn"
    assert r["models"]["gan"]["preset"] == "quick" and len(r["models"]["sr"]["sha256"]) == 64

    wb = r["wholebody"]
    assert wb["seeds"] == [100] and wb["fractions"] == [0.1, 1.0] and wb["off_training_fractions"] == ["1"]
    keys = {"osem", "cnn", "cnn-raw", "cnn-fit", "cnn-nospots", "gan", "prior", "gaussian@cnn", "gaussian@gan",
            "gaussian@prior"}
    assert set(wb["summary"]) == keys
    case = wb["per_case"][0]
    assert case["lesions"] and all(les["diameter_mm"] >= 10 for les in case["lesions"])
    for key in keys:
        for fk in ("0.1", "1"):
            e = wb["summary"][key][fk]
            for metric in ("ssim", "nrmse", "liver_cov", "liver_suvmean_bias_pct"):
                assert _finite(e[metric]["mean"]), (key, fk, metric)
            for kind in ("suvmean", "suvmax", "suvpeak"):
                b = e[f"lesion_{kind}_bias_pct"]
                assert b["n"] == len(case["lesions"]) and _finite(b["mean"]) and _finite(b["mean_abs"])
            # PSNR is infinite (null) only for an image identical to the reference
            assert _finite(e["psnr_db"]["mean"]) or (fk == "1" and e["nrmse"]["mean"] == 0.0), (key, fk)
    # at 100 % the OSEM input IS the reference: no error, PSNR infinite (written as null)
    full = wb["summary"]["osem"]["1"]
    assert full["psnr_db"]["mean"] is None and full["nrmse"]["mean"] == 0.0
    assert full["ssim"]["mean"] == pytest.approx(1.0)
    assert full["lesion_suvmax_bias_pct"]["mean_abs"] == 0.0 and full["liver_suvmean_bias_pct"]["mean"] == 0.0
    # ... so at 100 % a method's change against its OSEM input is its bias against the reference
    assert "lesion_suvmean_vs_osem_pct" not in full
    for key in keys - {"osem"}:
        own, bias = wb["summary"][key]["1"]["lesion_suvmean_vs_osem_pct"], wb["summary"][key]["1"]["lesion_suvmean_bias_pct"]
        assert own["n"] == bias["n"] and own["mean"] == pytest.approx(bias["mean"], abs=1e-6)
    # the matched Gaussian has the method's liver noise (or is clipped at the end of the search range)
    for m in ("cnn", "gan", "prior"):
        for fk in ("0.1", "1"):
            g, own = case["fractions"][fk][f"gaussian@{m}"], case["fractions"][fk][m]
            assert 0.0 <= g["fwhm_mm"] <= 12.0 and g["target_cov"] == pytest.approx(own["liver_cov"])
            if g["matched"]:
                assert g["liver_cov"] == pytest.approx(own["liver_cov"], rel=5e-3)
                assert own["psnr_gain_db"] == pytest.approx(own["psnr_db"] - g["psnr_db"])
    for m in ("cnn", "gan"):
        inv = wb["unit_invariance"][m]
        assert inv["pass"] is True and inv["max_dev_pct_worst"] < 0.01
        assert 1e-4 < inv["k"] < 1e-3  # the SUV factor of the whole-body phantom (Bq/ml -> SUV)

    nema = r["nema"]
    assert nema["fractions"] == [0.1] and nema["realisations"] == 1 and nema["gaussian_fwhms_mm"] == [0.0, 4.0, 8.0]
    entry = nema["results"]["0.1"]
    assert {"osem", "cnn", "gan", "prior", "gaussian_curve"} == set(entry) and len(entry["gaussian_curve"]) == 3
    spheres = ["10mm", "13mm", "17mm", "22mm", "28mm", "37mm"]
    for key in ("osem", "cnn", "gan", "prior"):
        assert list(entry[key]["spheres"]) == spheres
        assert all(_finite(entry[key]["spheres"][s]["crc"]) and entry[key]["spheres"][s]["bv"] > 0 for s in spheres)
    curve_bv = [g["spheres"]["37mm"]["bv"] for g in entry["gaussian_curve"]]
    assert curve_bv == sorted(curve_bv, reverse=True)  # more smoothing, less background variability
    assert len(nema["background_rois"]["positions_xy_mm"]) == 12

    sr = r["sr"]
    for key in ("large_osem", "sr", "small_osem"):
        p = sr["point_source"]["images"][key]
        assert _finite(p["fwhm_mm"]["mean_xy"]) and p["fwhm_mm"]["mean_xy"] > 0 and p["background_cov"] > 0
        assert all(_finite(sr["nema"]["images"][key]["spheres"][s]["crc"]) for s in spheres)
    assert sr["scanners"]["large_osem"]["crystal_mm"] == 8.0 and sr["unit_invariance"]["pass"] is True

    expected = {"cnn:psnr_gain_10pct", "cnn:lesion_suvmean_bias_10pct", "cnn:lesion_suvmax_bias_10pct",
                "gan:lesion_suvmean_bias_10pct", "gan:lesion_suvmax_bias_10pct", "cnn:off_training_suvmean_bias_1",
                "gan:off_training_suvmean_bias_1", "gan:suvmax_bias_below_cnn_10pct", "cnn:unit_invariance",
                "gan:unit_invariance", "sr:point_fwhm", "sr:recovery_10mm", "sr:recovery_13mm", "sr:noise",
                "sr:unit_invariance"}
    assert set(r["targets"]) == expected
    assert all(set(t) == {"criterion", "value", "pass"} and t["pass"] in (True, False) for t in r["targets"].values())
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_refusals_leave_no_file(tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", "denoise", "--seed-start", "9999", "--cases", "2", "--json", str(out)]) == 2
    assert "below 10000" in capsys.readouterr().err
    assert main(["evaluate", "denoise", "--methods", "cnn,bm3d", "--json", str(out)]) == 2
    assert "unknown method 'bm3d'" in capsys.readouterr().err
    assert main(["evaluate", "denoise", "--methods", "gaussian", "--fractions", "0.1,2", "--json", str(out)]) == 2
    assert "(0, 1]" in capsys.readouterr().err
    assert main(["evaluate", "denoise", "--methods", "cnn", "--model", str(tmp_path / "none"), "--json", str(out)]) == 2
    assert "unknown model" in capsys.readouterr().err
    assert main(["evaluate", "attenuation", "--gan-model", "x", "--json", str(out)]) == 2
    assert "evaluate denoise' only" in capsys.readouterr().err
    assert not out.exists()


def test_nema_analysis_of_the_true_and_a_noise_free_reconstructed_phantom(one_thread):
    from nmai.evaluate.denoise import background_roi_centres, nema_image_quality
    from nmai.filters import gaussian_filter
    from nmai.sim import DEFAULT_SCANNER, make_phantom, reconstruct, simulate_acquisition

    centres, clearance = background_roi_centres()
    d = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    assert centres.shape == (12, 2) and d[~np.eye(12, dtype=bool)].min() >= 37.0 and 0 <= clearance <= 15
    ph = make_phantom("nema", voxel_mm=4.0, supersample=2, mr=False)
    # the true activity (4 mm voxels: partial volume at the sphere edge only), background exactly uniform
    truth = nema_image_quality(ph.activity, ph)
    true_crc = [truth["spheres"][s]["crc"] for s in ("10mm", "13mm", "17mm", "22mm", "28mm", "37mm")]
    assert 0.5 < true_crc[0] and 0.85 < true_crc[-1] <= 1.0, true_crc
    assert all(b > a for a, b in zip(true_crc, true_crc[1:])), true_crc
    assert all(s["bv"] < 1e-4 for s in truth["spheres"].values())
    assert truth["spheres"]["37mm"]["c_b"] == pytest.approx(5300.0, rel=1e-3)
    assert truth["lung_residual_pct"] < 1.0
    # a noise-free OSEM (PSF) with a 0 mm Gaussian: CRC sensible and increasing with the sphere size
    acq = simulate_acquisition(ph.activity, ph.mumap, DEFAULT_SCANNER, duration_s=300.0, seed=0, noise=False)
    recon = reconstruct(acq, ph.mumap, iterations=3, subsets=14, psf=True)
    q = nema_image_quality(gaussian_filter(recon, 0.0), ph)
    crc = [q["spheres"][s]["crc"] for s in ("10mm", "13mm", "17mm", "22mm", "28mm", "37mm")]
    print("noise-free OSEM CRC", [round(c, 3) for c in crc], "truth", [round(c, 3) for c in true_crc])
    assert 0.1 < crc[0] < 0.8 and 0.7 < crc[-1] < 1.1, crc
    assert all(b > a for a, b in zip(crc, crc[1:])), crc
    assert all(q["spheres"][s]["bv"] < 0.03 for s in q["spheres"])  # no noise: only residual non-uniformity


def test_matched_noise_gaussian_search_hits_the_target_cov():
    from nmai.evaluate.denoise import cov, match_noise_fwhm
    from nmai.filters import gaussian_filter

    rng = np.random.default_rng(3)
    a = (10.0 + rng.standard_normal((40, 48, 44))).astype(np.float32)
    vol = Volume(a, (4.0, 4.0, 3.0), modality="PT", units="Bq/ml")
    mask = np.zeros(a.shape, bool)
    mask[12:28, 15:33, 14:30] = True
    target = cov(gaussian_filter(vol, 6.3).array, mask)
    m = match_noise_fwhm(vol, mask, target)
    assert m["matched"] and m["fwhm_mm"] == pytest.approx(6.3, abs=0.05)
    assert cov(gaussian_filter(vol, m["fwhm_mm"]).array, mask) == pytest.approx(target, rel=2e-3)
    assert m["cov"] == pytest.approx(target, rel=2e-3)
    noisy = match_noise_fwhm(vol, mask, 2 * cov(a, mask))       # noisier than the unfiltered image
    assert noisy["fwhm_mm"] == 0.0 and noisy["matched"] is False
    smooth = match_noise_fwhm(vol, mask, 1e-6)                  # smoother than 12 mm can make it
    assert smooth["fwhm_mm"] == 12.0 and smooth["matched"] is False


@pytest.mark.parametrize("fwhm_xy", [(7.0, 7.0), (6.0, 10.0)])
def test_point_source_fwhm_of_a_gaussian_blob(fwhm_xy):
    from nmai.evaluate.denoise import point_fwhm_mm, point_source_phantom

    spacing = (2.0, 2.0, 2.5)
    shape = (21, 41, 41)
    origin = (-40.0, -40.0, -25.0)
    centre = (1.3, -0.7, 0.4)                                   # between voxel centres
    z, y, x = (o + np.arange(n) * s for o, n, s in zip(origin[::-1], shape, spacing[::-1]))
    Z, Y, X = np.meshgrid(z, y, x, indexing="ij")
    sx, sy, sz = (f / (2 * math.sqrt(2 * math.log(2))) for f in (*fwhm_xy, 8.0))
    blob = np.exp(-((X - centre[0]) ** 2 / (2 * sx * sx) + (Y - centre[1]) ** 2 / (2 * sy * sy)
                    + (Z - centre[2]) ** 2 / (2 * sz * sz)))
    vol = Volume((100.0 + 1000.0 * blob).astype(np.float32), spacing, origin, modality="PT", units="Bq/ml")
    f = point_fwhm_mm(vol, centre, background=100.0)
    assert f["x"] == pytest.approx(fwhm_xy[0], rel=0.05) and f["y"] == pytest.approx(fwhm_xy[1], rel=0.05)
    assert f["mean_xy"] == pytest.approx(np.mean(fwhm_xy), rel=0.05)
    act, mu, point, bg = point_source_phantom(3.0)
    assert act.same_grid(mu) and act.array.max() == pytest.approx(100 * 5300.0) and bg.sum() > 1000
    ijk = np.unravel_index(int(np.argmax(act.array)), act.shape)
    assert np.allclose(np.asarray(act.origin) + np.asarray(ijk[::-1]) * 3.0, point)


def test_bench_denoise_quick_runs(one_thread, tmp_path):
    out = tmp_path / "bench.json"
    assert main(["--threads", "1", "bench", "denoise", "--quick", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["target"] == "denoise" and r["problem"]["pet_shape_ijk"] == [64, 64, 16]
    assert r["model"]["trained"] is False and r["model"]["preset"] == "quick"
    assert r["total_s"] > 0 and r["peak_rss_gb"] > 0 and r["machine"]["torch_threads"] == 1
    f = r["flops"]
    assert f["per_window_gflop"] > 0 and f["windows"] == 16 and f["matmul_2048_gflops"] > 0
    assert 0 < f["achieved_fraction_of_matmul"] < 2
    assert set(r["goals"]) == {"total_s_max", "peak_rss_gb_max", "time_met", "memory_met"}
    assert "GFLOP/s" in r["summary"] and r["sr"] is None  # sr is timed with the shipped model only
