"""Training details of the denoisers: where lesions are, windows centred on them, the hot-sum loss, what the
cards record."""

import numpy as np
import pytest

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

    from nmai.denoise.training import HOT, HOT_SUM_WEIGHT, hot_sum_loss, hot_weighted_l1

    target = torch.ones(2, 1, 8, 8)
    target[0, 0, 2:4, 2:4] = 10.0                      # window 0: a lesion of 4 hot voxels; window 1: none
    pred = target.clone()
    pred[0, 0, 2:4, 2:4] = 8.0                         # lesion read 20 % low
    pred[1, 0, 0, 0] = 1.0 + HOT                       # a hot error where the target has no hot voxel
    base = hot_weighted_l1(pred, target)
    # only window 0 has hot voxels: its relative hot-sum error is 8/40 = 0.2
    assert float(hot_sum_loss(pred, target)) == pytest.approx(float(base) + HOT_SUM_WEIGHT * 0.2, rel=1e-6)
    # a lesion whose voxels err both ways but keep their sum costs only the voxel term
    pred[0, 0, 2, 2:4], pred[0, 0, 3, 2:4] = 12.0, 8.0
    assert float(hot_sum_loss(pred, target)) == pytest.approx(float(hot_weighted_l1(pred, target)), rel=1e-6)


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
    assert fine["steps"] == 2 and "hot-voxel sum" in fine["loss"]
