"""Training-data details of the denoisers: where lesions are, and windows centred on them."""

import numpy as np

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
