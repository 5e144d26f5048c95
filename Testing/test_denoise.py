"""PET denoising engine: networks, thinning, learned denoisers (quick-trained), CNN-prior reconstruction."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nmai.errors import NMAIError
from nmai.volume import Volume


@pytest.fixture(scope="module")
def models(quick_denoise_models):
    """Tiny cnn, gan and sr models (quick preset, trained once per session in conftest)."""
    return quick_denoise_models


@pytest.fixture(scope="module")
def small_sim():
    from nmai.sim import make_phantom, simulate

    ph = make_phantom("wholebody", seed=3, voxel_mm=8.0, mr=False)
    return ph, simulate(ph, seed=3, duration_s=60.0, iterations=1, subsets=7)


def test_residual_unet_adds_centre_slice():
    import torch

    from nmai.models.networks import build_network

    net = build_network({"name": "residual_unet", "kwargs": {"spatial_dims": 2, "in_channels": 5, "out_channels": 1,
                                                             "channels": [4, 8], "strides": [2]}})
    for p in net.unet.parameters():
        torch.nn.init.zeros_(p)
    x = torch.randn(2, 5, 16, 16)
    assert torch.equal(net(x), x[:, 2:3])  # a zero U-Net leaves the centre slice: the net learns the residual
    with pytest.raises(NMAIError, match="out_channels"):
        build_network({"name": "residual_unet", "kwargs": {"spatial_dims": 2, "in_channels": 5, "out_channels": 2,
                                                           "channels": [4, 8], "strides": [2]}})


def test_thinned_equals_simulated_count_fraction():
    from nmai.sim import make_phantom, simulate_acquisition, thinned

    ph = make_phantom("wholebody", seed=1, voxel_mm=10.0, mr=False)
    full = simulate_acquisition(ph.activity, ph.mumap, duration_s=30.0, seed=9)
    direct = simulate_acquisition(ph.activity, ph.mumap, duration_s=30.0, seed=9, count_fraction=0.2)
    thin = thinned(full, 0.2)
    np.testing.assert_array_equal(thin.prompts, direct.prompts)  # a list-mode subsample of the same scan
    assert thin.count_fraction == 0.2 and full.count_fraction == 1.0
    assert thin.prompts.sum() == pytest.approx(0.2 * full.prompts.sum(), rel=0.01)
    with pytest.raises(NMAIError, match="full-count"):
        thinned(thin, 0.5)


def test_metrics_against_analytic_values():
    from nmai.denoise.metrics import nrmse, psnr_db, region_stats, ssim

    rng = np.random.default_rng(0)
    ref = np.full((20, 20, 20), 4.0)
    mask = np.ones(ref.shape, bool)
    noisy = ref + rng.normal(0, 0.4, ref.shape)
    rmse = np.sqrt(np.mean((noisy - ref) ** 2))
    assert psnr_db(noisy, ref, mask) == pytest.approx(20 * np.log10(4.0 / rmse))
    assert nrmse(noisy, ref, mask) == pytest.approx(rmse / 4.0)
    assert ssim(ref, ref, mask) == pytest.approx(1.0)
    assert ssim(noisy, ref, mask) < 0.9
    img = np.zeros((30, 30, 30))
    img[10:20, 10:20, 10:20] = 5.0
    img[15, 15, 15] = 50.0
    stats = region_stats(img, img > 0, (2.0, 2.0, 2.0))
    assert stats["max"] == 50.0 and stats["volume_ml"] == pytest.approx(1000 * 8 / 1000.0)
    # 1 ml sphere at 2 mm voxels: radius 6.2 mm -> 3 voxels: 123 voxels; peak = (50 + 122 * 5) / 123
    assert stats["peak"] == pytest.approx((50 + 122 * 5) / 123)


def test_gaussian_and_learned_methods_keep_geometry_units_and_scale(models, small_sim):
    from geometry_cases import GEOMETRIES

    from nmai.denoise.apply import denoise_volume

    _, sim = small_sim
    pet = sim.recon
    geo = GEOMETRIES["oblique"]
    oblique = Volume(pet.array.copy(), (3.1, 3.3, 3.7), geo["origin"], geo["direction"],
                     modality="PT", units="Bq/ml")
    before = oblique.array.copy()
    for method in ("cnn", "gan", "sr"):
        out, info = denoise_volume(oblique, method, model=models[method])
        assert out.same_grid(oblique) and np.allclose(out.direction, oblique.direction)
        assert out.units == "Bq/ml" and out.modality == "PT"
        # the quick sr model was trained on 6-7 mm voxels: these 3.1 mm ones are finer, and sr says so
        assert (info["note"] is None) == (method != "sr")
        # network outputs are refitted to the input locally (the cards say so); sr then deconvolves
        assert info["local_fit_voxels"] == [3, 3, 3]
        assert (info["resolution_recovery"] is not None) == (method == "sr")
        assert np.all(out.array >= 0) and np.isfinite(out.array).all()
        assert out.metadata["denoising"]["model_sha256"] == json.load(
            open(f"{models[method]}/metadata.json"))["sha256"]
        # unit invariance: kBq/ml (and SUV) in, the same image x k out
        suv = oblique.derive(oblique.array * 1e-3, units="SUVbw")
        scaled, _ = denoise_volume(suv, method, model=models[method])
        assert scaled.units == "SUVbw"
        np.testing.assert_allclose(scaled.array * 1e3, out.array, rtol=1e-3, atol=1e-4 * out.array.max())
    np.testing.assert_array_equal(oblique.array, before)  # the input is never modified
    g, info = denoise_volume(oblique, "gaussian", fwhm_mm=8.0)
    assert info["fwhm_mm"] == 8.0 and g.array.std() < oblique.array.std() and g.same_grid(oblique)
    assert g.array.sum() == pytest.approx(oblique.array.sum(), rel=1e-3)  # the filter keeps the activity


def test_far_voxel_size_is_resampled_and_said(models, small_sim):
    from nmai.denoise.apply import denoise_volume

    _, sim = small_sim
    fine = Volume(sim.recon.array[:12], (1.0, 1.0, 1.0), (0, 0, 0), np.eye(3), modality="PT", units="Bq/ml")
    out, info = denoise_volume(fine, "cnn", model=models["cnn"])
    assert out.same_grid(fine) and "far from the training voxel size" in info["note"]
    assert out.metadata["denoising"]["note"] == info["note"]


def test_bad_inputs_are_refused(models, small_sim, tmp_path):
    import shutil

    from nmai.denoise.apply import denoise_volume

    _, sim = small_sim
    pet = sim.recon
    with pytest.raises(NMAIError, match="not PET"):
        denoise_volume(pet.derive(pet.array, modality="CT", units="HU"), "cnn", model=models["cnn"])
    nan = pet.array.copy()
    nan[3, 4, 5] = np.nan
    with pytest.raises(NMAIError, match="NaN"):
        denoise_volume(pet.derive(nan), "cnn", model=models["cnn"])
    with pytest.raises(NMAIError, match="difference image|negative"):
        denoise_volume(pet.derive(pet.array - pet.array.max()), "cnn", model=models["cnn"])
    with pytest.raises(NMAIError, match="gaussian and sr methods, not to cnn"):
        denoise_volume(pet, "cnn", fwhm_mm=4.0, model=models["cnn"])
    with pytest.raises(NMAIError, match="finite number of mm"):
        denoise_volume(pet, "sr", fwhm_mm=-2.0, model=models["sr"])
    with pytest.raises(NMAIError, match="no-local-fit"):
        denoise_volume(pet, "sr", fwhm_mm=4.0, local_fit=False, model=models["sr"])
    with pytest.raises(NMAIError, match="unknown denoising method"):
        denoise_volume(pet, "median")
    broken = tmp_path / "broken"
    shutil.copytree(models["cnn"], broken)
    data = bytearray((broken / "model.safetensors").read_bytes())
    data[-10:] = b"0123456789"
    (broken / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(NMAIError, match="sha256|corrupt"):
        denoise_volume(pet, "cnn", model=str(broken))


def test_the_model_card_sets_the_default_local_fit(models, small_sim, tmp_path):
    import shutil

    from nmai.denoise.apply import denoise_volume

    _, sim = small_sim
    folder = tmp_path / "no-fit-cnn"
    shutil.copytree(models["cnn"], folder)
    card = json.load(open(folder / "metadata.json"))
    card["local_fit"] = False                      # the sha256 covers the weights, not the card
    (folder / "metadata.json").write_text(json.dumps(card))
    raw, info = denoise_volume(sim.recon, "cnn", model=str(folder))
    assert info["local_fit_voxels"] is None
    explicit, _ = denoise_volume(sim.recon, "cnn", model=models["cnn"], local_fit=False)
    np.testing.assert_array_equal(raw.array, explicit.array)
    assert denoise_volume(sim.recon, "cnn", model=str(folder), local_fit=True)[1]["local_fit_voxels"] == [3, 3, 3]


def test_local_fit_restores_what_a_smoothing_network_takes_from_a_lesion(models, small_sim):
    from nmai.denoise.apply import FIT_WINDOW, denoise_volume
    from nmai.denoise.prior import hot_spot_fit, local_linear_fit
    from nmai.denoise.training import FIT_SIGNIFICANCE, HOT_SPOT_FIT

    _, sim = small_sim
    pet = sim.recon
    raw, _ = denoise_volume(pet, "cnn", model=models["cnn"], local_fit=False)
    fitted, info = denoise_volume(pet, "cnn", model=models["cnn"])
    assert info["local_fit_voxels"] == list(FIT_WINDOW)
    assert info["local_fit_significance"] == FIT_SIGNIFICANCE["cnn"]   # the card says how strict the fit is
    spots = HOT_SPOT_FIT["cnn"]
    assert info["hot_spot_fit"] == {"ratio": spots["ratio"], "window": spots["window"]}
    tol = dict(rtol=1e-5, atol=1e-6 * float(pet.array.max()))
    np.testing.assert_allclose(fitted.array, np.maximum(hot_spot_fit(
        raw.array, pet.array, window=FIT_WINDOW, significance=FIT_SIGNIFICANCE["cnn"], ratio=spots["ratio"],
        spot_window=spots["window"]), 0), **tol)
    strict, info = denoise_volume(pet, "cnn", model=models["cnn"], fit_significance=3, hot_spots=False)
    assert info["local_fit_significance"] == 3.0 and info["hot_spot_fit"] is None
    np.testing.assert_allclose(strict.array, np.maximum(local_linear_fit(
        raw.array, pet.array, window=FIT_WINDOW, significance=3.0), 0), **tol)
    assert not np.allclose(strict.array, fitted.array, **tol)
    plain, info = denoise_volume(pet, "cnn", model=models["cnn"], fit_significance=0)   # nothing to keep apart
    assert info["hot_spot_fit"] is None
    np.testing.assert_allclose(plain.array, np.maximum(local_linear_fit(raw.array, pet.array, window=FIT_WINDOW), 0),
                               **tol)
    with pytest.raises(NMAIError, match="no-local-fit"):
        denoise_volume(pet, "cnn", model=models["cnn"], local_fit=False, hot_spots=True)
    with pytest.raises(NMAIError, match="no hot-spot fit"):
        denoise_volume(pet, "sr", model=models["sr"], hot_spots=True)
    with pytest.raises(NMAIError, match="fit-significance"):
        denoise_volume(pet, "cnn", model=models["cnn"], local_fit=False, fit_significance=3.0)
    with pytest.raises(NMAIError, match="fit-significance"):
        denoise_volume(pet, "cnn", model=models["cnn"], fit_significance=-1.0)
    # a guide that is a blurred copy of a hot cube: the fit gives back the cube's level
    img = np.ones((12, 24, 24), np.float32)
    img[5:8, 10:13, 10:13] = 5.0
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(img, 1.5)
    fit = local_linear_fit(smooth, img, eps_rel=1e-6)
    assert abs(fit[5:8, 10:13, 10:13].mean() - 5.0) < abs(smooth[5:8, 10:13, 10:13].mean() - 5.0) / 2


def test_sr_is_the_fitted_network_output_deconvolved_with_its_cards_psf(models, small_sim):
    from nmai.denoise.apply import FIT_WINDOW, denoise_volume
    from nmai.denoise.prior import local_linear_fit
    from nmai.denoise.training import sr_resolution_recovery
    from nmai.filters import richardson_lucy

    _, sim = small_sim
    pet = sim.recon
    card = json.load(open(f"{models['sr']}/metadata.json"))
    assert card["resolution_recovery"] == sr_resolution_recovery()  # training writes what inference reads
    raw, raw_info = denoise_volume(pet, "sr", model=models["sr"], local_fit=False)
    assert raw_info["local_fit_voxels"] is None and raw_info["resolution_recovery"] is None
    out, info = denoise_volume(pet, "sr", model=models["sr"])
    rec = card["resolution_recovery"]
    assert info["resolution_recovery"] == {"psf_fwhm_mm": rec["psf_fwhm_mm"], "iterations": rec["iterations"]}
    fitted = pet.derive(np.maximum(local_linear_fit(raw.array, pet.array, window=FIT_WINDOW), 0))
    expected = richardson_lucy(fitted, rec["psf_fwhm_mm"], rec["iterations"]).array
    tol = dict(rtol=1e-4, atol=1e-5 * float(pet.array.max()))
    np.testing.assert_allclose(out.array, expected, **tol)
    # --fwhm: another scanner's resolution to recover; 0 keeps the fitted network output
    other, other_info = denoise_volume(pet, "sr", model=models["sr"], fwhm_mm=3.0)
    assert other_info["resolution_recovery"] == {"psf_fwhm_mm": 3.0, "iterations": rec["iterations"]}
    np.testing.assert_allclose(other.array, richardson_lucy(fitted, 3.0, rec["iterations"]).array, **tol)
    none, none_info = denoise_volume(pet, "sr", model=models["sr"], fwhm_mm=0.0)
    assert none_info["resolution_recovery"] is None
    np.testing.assert_allclose(none.array, fitted.array, **tol)
    # voxels finer than sr's training inputs: probably a sharper scanner, where deconvolution over-sharpens
    fine = Volume(pet.array, (2.5, 2.5, 3.0), pet.origin, pet.direction, modality="PT", units="Bq/ml")
    _, fine_info = denoise_volume(fine, "sr", model=models["sr"])
    assert "finer than sr's training inputs" in fine_info["note"] and "--fwhm" in fine_info["note"]
    assert denoise_volume(fine, "sr", model=models["sr"], fwhm_mm=0.0)[1]["note"] is None


def test_significant_fit_keeps_the_guide_where_the_data_agree_and_corrects_where_they_do_not():
    from scipy.ndimage import gaussian_filter

    from nmai.denoise.prior import local_linear_fit

    rng = np.random.default_rng(7)
    truth = np.full((24, 40, 40), 10.0)
    truth[9:15, 17:23, 17:23] = 40.0                       # a 6-voxel hot cube
    # Poisson-like noise (variance ∝ mean), correlated like a reconstruction's
    noise = gaussian_filter(rng.standard_normal(truth.shape), 0.8)
    image = (truth + 0.35 * np.sqrt(truth) * noise / noise.std()).astype(np.float32)
    guide = truth.copy()
    guide[9:15, 17:23, 17:23] = 25.0                       # a network that reads the lesion 37 % low
    guide = guide.astype(np.float32)
    flat = np.zeros(truth.shape, bool)
    flat[2:7, 4:36, 4:36] = True
    cube = truth == 40.0
    plain, strict = local_linear_fit(guide, image, window=(3, 3, 3)), local_linear_fit(
        guide, image, window=(3, 3, 3), significance=3.0)
    # where the guide agrees with the data, the plain fit gives back noise; the 3σ fit keeps the guide
    assert plain[flat].std() > 0.15
    assert strict[flat].std() < plain[flat].std() / 2
    # the lesion the guide under-reads stands far out of the noise: both fits give back the data's level
    for fit in (plain, strict):
        assert abs(fit[cube].mean() - image[cube].mean()) < 0.1 * abs(guide[cube].mean() - image[cube].mean())
    # z → ∞: the guide; scale-free: k × (guide, image) → k × output
    np.testing.assert_allclose(local_linear_fit(guide, image, window=(3, 3, 3), significance=1e6), guide, rtol=1e-3)
    np.testing.assert_allclose(local_linear_fit(1e-3 * guide, 1e-3 * image, window=(3, 3, 3), significance=3.0),
                               1e-3 * strict, rtol=1e-4, atol=1e-6)


def test_hot_spots_take_the_plain_fit_and_the_rest_the_significant_fit():
    """A small lesion that the guide reads 30 % low, in noise like 2.5 % counts' (CoV 0.47): the z 4 fit keeps part
    of the guide's under-read, the hot-spot fit gives the lesion the data's level and is the z fit everywhere
    away from it."""
    from scipy.ndimage import gaussian_filter

    from nmai.denoise.prior import hot_spot_fit, hot_spot_weight, local_linear_fit

    rng = np.random.default_rng(3)
    truth = np.full((24, 40, 40), 10.0)
    truth[11:14, 19:22, 19:22] = 40.0                      # a 3-voxel hot cube
    noise = gaussian_filter(rng.standard_normal(truth.shape), 0.8)
    image = (truth + 1.5 * np.sqrt(truth) * noise / noise.std()).astype(np.float32)
    guide = np.where(truth == 40.0, 28.0, 10.0).astype(np.float32)
    cube = truth == 40.0
    w = hot_spot_weight(guide, (1.5, 2.5), 9)
    assert np.all(w[cube] == 1.0) and np.all(w[guide == 10.0] == 0.0)   # 28 against a 9^3 mean of 10.7
    assert not hot_spot_weight(np.full_like(guide, 10.0)).any()          # a flat guide has no hot spot
    strict = local_linear_fit(guide, image, window=(3, 3, 3), significance=4.0)
    plain = local_linear_fit(guide, image, window=(3, 3, 3))
    spots = hot_spot_fit(guide, image, window=(3, 3, 3), significance=4.0, ratio=(1.5, 2.5), spot_window=9)
    data = image[cube].mean()
    assert abs(strict[cube].mean() - data) > 0.2 * abs(guide[cube].mean() - data)   # z 4 keeps some under-read
    np.testing.assert_allclose(spots[cube], plain[cube], rtol=1e-6)
    assert abs(spots[cube].mean() - data) < 0.05 * abs(strict[cube].mean() - data)
    np.testing.assert_allclose(spots[w == 0], strict[w == 0], rtol=1e-6)          # away from it: the z fit
    np.testing.assert_allclose(hot_spot_fit(1e-3 * guide, 1e-3 * image, window=(3, 3, 3), significance=4.0),
                               1e-3 * spots, rtol=1e-4, atol=1e-6)                   # scale-free
    with pytest.raises(NMAIError, match="ratio"):
        hot_spot_weight(guide, (2.5, 1.5))


def test_local_linear_fit_and_map_update_are_exact_where_they_should_be():
    import torch

    from nmai.denoise.prior import local_linear_fit, map_update

    rng = np.random.default_rng(1)
    guide = rng.uniform(1, 5, (8, 12, 12)).astype(np.float32)
    # an image that is a linear function of the guide is reproduced exactly (up to the ridge term)
    np.testing.assert_allclose(local_linear_fit(guide, 2.0 * guide + 3.0, eps_rel=1e-9), 2 * guide + 3, rtol=1e-4)
    x_em = torch.rand(50, 4) + 0.5
    u = torch.rand(50, 4) + 0.5
    assert torch.equal(map_update(x_em, u, 0.0), x_em)                    # no prior: plain OSEM
    torch.testing.assert_close(map_update(u, u, 0.7), u)                  # data agree with the prior
    x = map_update(x_em, u, 0.5)
    # the update solves γ/u x² + (1 − γ) x − x_em = 0 (stationary point of the penalised surrogate)
    torch.testing.assert_close(0.5 / u * x * x + 0.5 * x - x_em, torch.zeros_like(x), atol=1e-5, rtol=0)
    lo, hi = torch.minimum(x_em, u), torch.maximum(x_em, u)
    assert bool(((x >= lo - 1e-5) & (x <= hi + 1e-5)).all())               # between the data and the prior


def test_prior_reconstruction_cli(models, small_sim, tmp_path):
    from nmai.cli import main
    from nmai.io import read_volume
    from nmai.sim import write_simulation

    ph, sim = small_sim
    folder = tmp_path / "sim"
    write_simulation(sim, folder)
    out = tmp_path / "prior.nii.gz"
    assert main(["reconstruct", str(folder), "--prior", "cnn", "--prior-model", models["cnn"], "--iterations", "2",
                 "--subsets", "7", "--out", str(out)]) == 0
    img = read_volume(out)
    assert img.units == "Bq/ml" and img.same_grid(sim.recon)
    assert img.metadata["reconstruction"]["algorithm"] == "OSEM + CNN prior + LLF"
    truth = sim.summary["truth_mean_bq_ml"]
    liver = read_volume(folder / "labels.nii.gz").array == sim.label_table["liver"]
    assert img.array[liver].mean() == pytest.approx(truth["liver"], rel=0.25)  # quantitative, in Bq/ml
    assert main(["reconstruct", str(folder), "--prior-weight", "0.2", "--out", str(tmp_path / "x.nii.gz")]) == 2


def test_prior_reconstruction_without_pull_is_osem_of_start_plus_outer_iterations(models, small_sim):
    from nmai.denoise.prior import reconstruct_with_prior
    from nmai.errors import NMAIError
    from nmai.sim import reconstruct

    ph, sim = small_sim
    acq = sim.acquisition
    osem = reconstruct(acq, ph.mumap, iterations=3, subsets=7, psf=True).array
    prior = reconstruct_with_prior(acq, ph.mumap, models["cnn"], outer=1, start_iterations=2, subsets=7, weight=0.0)
    assert prior.metadata["reconstruction"]["iterations"] == 3
    assert prior.metadata["reconstruction"]["start_iterations"] == 2
    np.testing.assert_allclose(prior.array, osem, rtol=1e-3, atol=1e-3 * float(osem.max()))
    with pytest.raises(NMAIError, match="start iterations"):
        reconstruct_with_prior(acq, ph.mumap, models["cnn"], start_iterations=0)


def test_train_and_denoise_cli(models, small_sim, tmp_path, capsys):
    from nmai.cli import main
    from nmai.io import read_volume, write_volume

    _, sim = small_sim
    src = tmp_path / "low.nii.gz"
    write_volume(sim.recon, src)
    for method, extra in (("cnn", ["--model", models["cnn"], "--fit-significance", "2", "--no-hot-spots"]),
                          ("gaussian", ["--fwhm", "5"])):
        out = tmp_path / f"{method}.nii.gz"
        assert main(["--jsonl", "denoise", str(src), "--method", method, *extra, "--out", str(out)]) == 0
        img = read_volume(out)
        assert img.same_grid(sim.recon) and img.units == "Bq/ml"
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["result"]
        if method == "cnn":
            assert result["parameters"]["local_fit_significance"] == 2.0
            assert result["parameters"]["hot_spot_fit"] is None
    assert main(["denoise", str(src), "--method", "gaussian", "--model", models["cnn"],
                 "--out", str(tmp_path / "bad.nii.gz")]) == 2
    assert main(["denoise", str(src), "--method", "gaussian", "--fit-significance", "3",
                 "--out", str(tmp_path / "bad.nii.gz")]) == 2
    assert main(["denoise", str(src), "--method", "gaussian", "--hot-spots",
                 "--out", str(tmp_path / "bad.nii.gz")]) == 2
    assert not (tmp_path / "bad.nii.gz").exists()
