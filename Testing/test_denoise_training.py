"""Training details of the denoisers: where lesions are, windows centred on them, the hot-sum loss, what the
cards record."""

import numpy as np
import pytest

from nmai.errors import NMAIError
from nmai.denoise.training import CONTEXT, ROI, PairSampler, _pad, lesion_centres
from nmai.sim import make_phantom


def test_lesion_centres_are_inside_their_lesions():
    ph = make_phantom("wholebody", seed=3, voxel_mm=8.0, supersample=1, lesions=5, mr=False,
                      lesion_diameter_mm=(20.0, 30.0))
    centres = lesion_centres(ph)
    labels = ph.labels.array
    assert len(centres) == len(ph.info["lesions"]) > 0
    for (k, j, i), lesion in zip(centres, ph.info["lesions"]):
        assert labels[k, j, i] == lesion["label"]


def test_pad_moves_the_lesion_centres_with_the_image():
    x = np.zeros((1, 4, 40, 50), np.float16)
    x[0, 2, 10, 45] = 1.0
    case = _pad({"x": x, "y": x.copy(), "centres": np.array([[2, 10, 45]], np.int32)})
    assert case["x"].shape[-2:] == (ROI, ROI)
    k, j, i = case["centres"][0]
    assert case["x"][0, k, j, i] == 1.0


def test_lesion_centred_windows_contain_the_lesion():
    rng = np.random.default_rng(0)
    nz, ny, nx = 30, 150, 150
    x = (0.5 * rng.random((1, nz, ny, nx))).astype(np.float16)
    ck, cj, ci = 20, 12, 140  # near a corner: windows must be clipped to the image and still hold it
    x[0, ck, cj, ci] = 100.0
    case = {"x": x, "y": x.copy(), "centres": np.array([[ck, cj, ci]], np.int32)}

    def windows_with_lesion(share):
        xs, ys = PairSampler([case], batch=64, lesion_windows=share)(0, np.random.default_rng(1))
        assert xs.shape == (64, 2 * CONTEXT + 1, ROI, ROI) and ys.shape == (64, 1, ROI, ROI)
        return int(np.sum(xs.numpy().max(axis=(1, 2, 3)) == 100.0)), int(np.sum(ys.numpy().max(axis=(1, 2, 3)) == 100.0))

    inputs, targets = windows_with_lesion(1.0)
    assert inputs == 64  # the centre slice is within ±1 of the lesion, so its 5 input slices hold it
    assert 10 <= targets < 64  # the target slice is the lesion's about a third of the time
    assert windows_with_lesion(0.0)[0] < 16  # uniform windows: rarely


def test_no_lesion_windows_means_the_random_windows_of_a_case_without_lesions():
    """sr trains with lesion_windows 0: its windows must not depend on whether lesion centres are stored
    (old caches have none), or the same command would train different models."""
    rng = np.random.default_rng(0)
    x = rng.random((1, 20, 90, 90)).astype(np.float16)
    with_centres = {"x": x, "y": x, "centres": np.array([[10, 40, 40]], np.int32)}
    without = {"x": x, "y": x}
    a, _ = PairSampler([with_centres], batch=8)(0, np.random.default_rng(3))
    b, _ = PairSampler([without], batch=8)(0, np.random.default_rng(3))
    assert np.array_equal(a.numpy(), b.numpy())


def test_hot_sum_loss_adds_the_relative_error_of_each_windows_hot_sum():
    import torch

    from nmai.denoise.training import HOT_SUM_WEIGHT, hot_sum_loss, hot_weighted_l1

    target = torch.ones(2, 1, 8, 8)
    target[0, 0, 2:4, 2:4] = 10.0                      # window 0: a lesion of 4 hot voxels; window 1: none
    hot = torch.zeros_like(target)
    hot[0, 0, 2:4, 2:4] = 1.0
    pred = target.clone()
    pred[0, 0, 2:4, 2:4] = 8.0                         # lesion read 20 % low
    pred[1, 0, 0, 0] = 5.0                             # a hot error where the truth has no hot voxel
    base = hot_weighted_l1(pred, target, hot)
    # only window 0 has hot voxels: its relative hot-sum error is 8/40 = 0.2
    assert float(hot_sum_loss(pred, target, hot)) == pytest.approx(float(base) + HOT_SUM_WEIGHT * 0.2, rel=1e-6)
    # a lesion whose voxels err both ways but keep their sum costs only the voxel term
    pred[0, 0, 2, 2:4], pred[0, 0, 3, 2:4] = 12.0, 8.0
    assert float(hot_sum_loss(pred, target, hot)) == pytest.approx(float(hot_weighted_l1(pred, target, hot)), rel=1e-6)


def test_hot_sum_loss_sums_over_the_truths_hot_voxels_not_the_noisy_targets():
    """A background voxel whose noise came out above the threshold is not a hot voxel: weights and sums follow
    the truth's mask, so an output that reads it at its true (background) level is not pulled up."""
    import torch

    from nmai.denoise.training import HOT, HOT_WEIGHT, hot_sum_loss, hot_weighted_l1

    target = torch.ones(1, 1, 8, 8)
    target[0, 0, 5, 5] = HOT + 2.0                     # noise, not a lesion
    pred = torch.ones_like(target)                     # the truth
    no_hot = torch.zeros_like(target)
    l1 = float((pred - target).abs().mean())
    # with the truth's mask the noise voxel is neither weighted up nor summed: plain L1
    assert float(hot_weighted_l1(pred, target, no_hot)) == pytest.approx(l1, rel=1e-6)
    assert float(hot_sum_loss(pred, target, no_hot)) == pytest.approx(l1, rel=1e-6)
    # chosen on the noisy target it would be both
    assert float(hot_weighted_l1(pred, target)) == pytest.approx(HOT_WEIGHT * l1, rel=1e-6)
    assert float(hot_sum_loss(pred, target, (target > HOT).float())) > float(hot_weighted_l1(pred, target)) + 1.0


def test_truth_hot_mask_holds_the_lesions_and_hot_organs_but_not_the_liver():
    from nmai.denoise.training import HOT, body_scale, truth_hot_mask
    from nmai.sim.tissues import LESION_LABEL_BASE, L

    ph = make_phantom("wholebody", seed=3, voxel_mm=8.0, supersample=1, lesions=5, mr=False,
                      lesion_diameter_mm=(20.0, 30.0))
    hot = truth_hot_mask(ph)
    a, labels = ph.activity.array, ph.labels.array
    assert hot.shape == a.shape and hot.dtype == np.uint8
    assert np.all(hot[labels >= LESION_LABEL_BASE] == 1)
    assert np.array_equal(hot[labels < LESION_LABEL_BASE] == 1, (a / body_scale(a) > HOT)[labels < LESION_LABEL_BASE])
    liver = labels == L("liver")
    assert liver.any() and not hot[liver].any()


def test_hot_masks_travel_with_their_windows():
    rng = np.random.default_rng(0)
    y = rng.random((2, 12, 80, 90)).astype(np.float16)
    hot = (y[0] > 0.9).astype(np.uint8)                 # any pattern tied to the voxels of the first version
    case = {"x": y, "y": np.repeat(y[:1], 2, 0), "hot": hot, "centres": np.array([[5, 40, 40]], np.int32)}
    xs, ys, hs = PairSampler([case], batch=16, lesion_windows=0.5, with_hot=True)(0, np.random.default_rng(4))
    assert hs.shape == ys.shape
    assert np.array_equal(hs.numpy() == 1, ys.numpy() > 0.9)    # same slice, window and flip as the target
    x2, y2 = PairSampler([case], batch=16, lesion_windows=0.5)(0, np.random.default_rng(4))
    assert np.array_equal(xs.numpy(), x2.numpy()) and np.array_equal(ys.numpy(), y2.numpy())
    with pytest.raises(NMAIError, match="truth hot mask"):
        PairSampler([{"x": y, "y": y}], batch=2, with_hot=True)


def test_a_cached_case_without_its_truth_mask_gets_the_mask_of_its_phantom(quick_denoise_models, tmp_path):
    """Caches written before the truth masks stay usable: the mask is made from the re-made phantom."""
    from pathlib import Path

    from nmai.denoise.training import PRESETS, TRAIN_SEED_BASE, build_cases

    cached = Path(quick_denoise_models["cnn"]).parent / "cache" / f"lowcount-lesions3-9-{TRAIN_SEED_BASE}.npz"
    with np.load(cached) as z:
        made = {k: z[k] for k in z}
    assert made["hot"].any() and made["hot"].shape == made["x"].shape[1:]
    old = tmp_path / cached.name
    np.savez(old, x=made["x"], y=made["y"], centres=made["centres"])
    case, = build_cases([TRAIN_SEED_BASE], "cnn", PRESETS["quick"], cache_dir=tmp_path)
    assert np.array_equal(case["hot"], _pad({"x": made["x"], "y": made["y"], "hot": made["hot"]})["hot"])
    with np.load(old) as z:
        assert np.array_equal(z["hot"], made["hot"])     # and the cache now holds it


def test_quick_models_record_their_local_fit_and_the_cnn_fine_tuning(quick_denoise_models):
    import json

    from nmai.denoise.training import FIT_SIGNIFICANCE, LOCAL_FIT

    for method, folder in quick_denoise_models.items():
        card = json.load(open(f"{folder}/metadata.json"))
        assert card["local_fit"] is LOCAL_FIT[method]
        assert card["local_fit_significance"] == FIT_SIGNIFICANCE[method]
        fine = card["training"]["fine_tune"]
        assert (fine is not None) == (method == "cnn")
    fine = json.load(open(f"{quick_denoise_models['cnn']}/metadata.json"))["training"]["fine_tune"]
    assert fine["steps"] == 2 and "truth's hot voxels" in fine["loss"]


def test_the_shipped_cards_are_what_the_shipped_preset_writes():
    """The registered denoisers carry the version and default fit significance that training writes now."""
    import json

    from nmai.denoise.training import FIT_SIGNIFICANCE, LOCAL_FIT, NAMES, VERSIONS
    from nmai.models.registry import resolve_model

    for method, name in NAMES.items():
        card = json.load(open(resolve_model(name).folder / "metadata.json"))
        assert card["version"] == VERSIONS[method]
        assert card["local_fit"] is LOCAL_FIT[method]
        assert card["local_fit_significance"] == FIT_SIGNIFICANCE[method]
