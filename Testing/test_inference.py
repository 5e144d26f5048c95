"""Sliding-window inference, z-slabs, 2.5-D, resampling, normalisation and unit invariance."""

import copy
import os
import threading

import numpy as np
import pytest
import torch

from nmai.errors import CancelledError, NMAIError
from nmai.inference import predict_volume, predict_volumes, resample_to_reference, resample_to_spacing
from nmai.models import LoadedModel, build_network, validate_card
from nmai.models.normalisation import compute_stats, denormalise, normalise
from nmai.models.sliding import _Executor, default_threads, plan_slabs, torch_threads, window_starts
from nmai.progress import Progress
from nmai.volume import Volume

PET_IN = {"channels": 1, "modality": "PT", "units": "Bq/ml", "normalisation": {"method": "robust_scale"}}
PET_OUT = {"channels": 1, "modality": "PT", "units": "Bq/ml",
           "normalisation": {"method": "same_as_input", "input": "pet"}}
RAW = {"method": "none"}


def model_for(network, *, dims=3, roi=(16, 16, 16), context=0, spacing=None, inputs=None, outputs=None, seed=0):
    """A LoadedModel around a randomly initialised allowlisted network (no file involved)."""
    fmt = {"dims": dims, "context_slices": context, "roi_size": list(roi), "spacing_mm": spacing,
           "inputs": inputs or {"pet": dict(PET_IN, normalisation=RAW)},
           "outputs": outputs or {"pet": dict(PET_OUT, normalisation=RAW)}}
    card = {"nmai_card_version": 1, "name": "test", "version": "0", "monai_version": "1", "pytorch_version": "2",
            "task": "denoise", "description": "d", "intended_use": "tests", "data_source": "random",
            "network": network, "network_data_format": fmt, "metrics": {},
            "training": {"command": "none", "seed": 0, "steps": 0, "duration_s": 0, "device": "cpu"}}
    card = validate_card(card, require_sha=False)
    torch.manual_seed(seed)
    module = build_network(card["network"]).eval()
    return LoadedModel(module=module, card=card, sha256="0" * 64, name="test", version="0", device="cpu")


def res_cnn(dims=3, in_ch=1, out_ch=1, k=1, blocks=1, skip=False, features=4):
    return {"name": "residual_cnn", "kwargs": {"spatial_dims": dims, "in_channels": in_ch, "out_channels": out_ch,
                                               "features": features, "blocks": blocks, "kernel_size": k,
                                               "global_skip": skip}}


def direct(model, x):
    with torch.no_grad():
        return model.module(torch.from_numpy(x)[None])[0].numpy()


@pytest.fixture(scope="module")
def rng():
    return np.random.default_rng(7)


# ------------------------------------------------------------------------------------------- windows
def test_window_starts_match_monai():
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    for size, roi, overlap in [(40, 16, 0.25), (16, 16, 0.5), (10, 16, 0.25), (33, 8, 0.0), (97, 32, 0.5)]:
        if roi > size:
            assert window_starts(size, roi, overlap) == [0]
            continue
        interval = _get_scan_interval((size,), (roi,), 1, (overlap,))
        expected = [s[0].start for s in dense_patch_slices((size,), (roi,), interval)]
        assert window_starts(size, roi, overlap) == expected


@pytest.mark.parametrize("size, roi, overlap, per", [(40, 16, 0.25, 2), (100, 16, 0.5, 3), (64, 8, 0.0, 2),
                                                     (57, 12, 0.75, 5), (30, 16, 0.25, 1), (20, 16, 0.5, 9)])
def test_slab_plan_tiles_the_volume(size, roi, overlap, per):
    slabs = plan_slabs(size, roi, overlap, per)
    assert slabs[0][2] == 0 and slabs[-1][3] == size
    starts = window_starts(size, roi, overlap)
    for (z0, z1, w0, w1), nxt in zip(slabs, slabs[1:] + [None]):
        assert z0 <= w0 < w1 <= z1 and z0 in starts and z1 - roi in starts
        if nxt:
            assert nxt[2] == w1
    if len(starts) > per + 3:
        assert len(slabs) > 1


def test_sliding_window_equals_full_forward_for_pointwise_network(rng):
    model = model_for(res_cnn(k=1, blocks=2), roi=(16, 16, 16))
    x = rng.random((1, 40, 36, 28), dtype=np.float32)
    y = predict_volume(model, x, overlap=0.25)
    assert y.shape == (1, 40, 36, 28) and y.dtype == np.float32
    np.testing.assert_allclose(y, direct(model, x), rtol=1e-5, atol=1e-6)
    # constant blending of a pointwise net is exact as well
    np.testing.assert_allclose(predict_volume(model, x, mode="constant"), direct(model, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("network", [res_cnn(k=3, blocks=1),
                                     {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1,
                                                                 "out_channels": 1, "channels": [4, 8],
                                                                 "strides": [2]}}])
def test_slabs_give_the_same_result_as_one_pass(rng, network):
    model = model_for(network, roi=(8, 16, 16))
    x = rng.random((1, 45, 20, 18), dtype=np.float32)
    whole = predict_volume(model, x, overlap=0.5)
    slabbed = predict_volume(model, x, overlap=0.5, max_windows_per_slab=3)
    assert np.array_equal(slabbed, whole)  # same windows, weights and summation order: bitwise equal
    tiny_budget = predict_volume(model, x, overlap=0.5, memory_limit_mb=0.01)  # memory-derived slabs
    np.testing.assert_allclose(tiny_budget, whole, rtol=0, atol=1e-6)


def test_progress_per_window_and_cancel(rng):
    model = model_for(res_cnn(), roi=(8, 8, 8))
    x = rng.random((1, 24, 16, 16), dtype=np.float32)
    seen = []
    predict_volume(model, x, progress=lambda f, m: seen.append((f, m)), max_windows_per_slab=2)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any("windows" in m for _, m in seen) and len(seen) > 10
    cancel = threading.Event()
    calls = []

    def sink(f, m):
        calls.append(f)
        if "windows" in m:
            cancel.set()

    with pytest.raises(CancelledError):
        predict_volume(model, x, progress=Progress(sink, cancel_event=cancel))
    assert sum("windows" in str(c) for c in calls) <= 1


# ------------------------------------------------------------------------------------------- 2.5-D
def _selector(model, picked_channel):
    """Set a residual_cnn (blocks=0, kernel 1) so that output = relu(input channel ``picked_channel``)."""
    net = model.module
    with torch.no_grad():
        c_in = net.head.weight.shape[1]
        net.head.weight.zero_()
        net.head.bias.zero_()
        for c in range(min(c_in, net.head.weight.shape[0])):
            net.head.weight[c, c] = 1.0
        net.tail.weight.zero_()
        net.tail.bias.zero_()
        net.tail.weight[0, picked_channel] = 1.0


@pytest.mark.parametrize("picked, channel, dz", [(0, 0, -1), (1, 0, 0), (2, 0, 1), (3, 1, -1), (5, 1, 1)])
def test_2p5d_context_channels_geometry(rng, picked, channel, dz):
    k = 1
    inputs = {"pet": dict(PET_IN, normalisation=RAW), "mr": {"channels": 1, "modality": "MR", "units": "a.u.",
                                                             "normalisation": RAW}}
    model = model_for(res_cnn(dims=2, in_ch=6, out_ch=1, k=1, blocks=0, features=6), dims=2, roi=(8, 8),
                      context=k, inputs=inputs)
    _selector(model, picked)
    x = rng.random((2, 7, 12, 10), dtype=np.float32) + 0.1
    y = predict_volume(model, x, max_windows_per_slab=3)  # slices in chunks of 3
    expected = x[channel, np.clip(np.arange(7) + dz, 0, 6)]  # edge slices repeat
    np.testing.assert_allclose(y[0], expected, rtol=1e-6)


def test_2d_network_slice_wise_equals_per_slice_forward(rng):
    model = model_for(res_cnn(dims=2, k=3, blocks=1), dims=2, roi=(24, 20))  # one window per slice
    x = rng.random((1, 5, 24, 20), dtype=np.float32)
    y = predict_volume(model, x)
    with torch.no_grad():
        expected = model.module(torch.from_numpy(x[0][:, None]))[:, 0].numpy()
    np.testing.assert_allclose(y[0], expected, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- resampling
def _oblique(shape=(20, 24, 18), spacing=(1.3, 1.1, 2.4)):
    a = np.deg2rad(20)
    direction = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, -1.0]])
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    blob = np.exp(-(((i - 9) * spacing[0]) ** 2 + ((j - 12) * spacing[1]) ** 2 + ((k - 10) * spacing[2]) ** 2)
                  / (2 * 6.0**2)).astype(np.float32) * 1000
    return Volume(blob, spacing, (-40.5, 12.25, 88.0), direction, "PT", "Bq/ml", {"suv_bw_factor": 0.001})


def test_resample_to_spacing_and_back_restores_the_exact_grid():
    vol = _oblique()
    coarse = resample_to_spacing(vol, (2.0, 2.0, 2.0))
    assert coarse.spacing == (2.0, 2.0, 2.0) and coarse.shape == (24, 13, 12)
    np.testing.assert_array_equal(coarse.direction, vol.direction)
    centre = lambda v: np.array(v.origin) + v.direction @ ((np.array(v.shape[::-1]) - 1) * v.spacing / 2)  # noqa: E731
    np.testing.assert_allclose(centre(coarse), centre(vol), atol=1e-9)
    back = resample_to_reference(coarse, vol)
    assert back.shape == vol.shape and back.spacing == vol.spacing and back.origin == vol.origin
    assert np.array_equal(back.direction, vol.direction) and back.same_grid(vol, tol=0)
    assert (back.modality, back.units, back.metadata["suv_bw_factor"]) == ("PT", "Bq/ml", 0.001)
    interior = (slice(4, -4),) * 3
    # two linear interpolations of a 6 mm blob: a few percent
    assert np.abs(back.array[interior] - vol.array[interior]).max() < 0.08 * vol.array.max()
    labels = vol.derive((vol.array > 500).astype(np.uint8), units="label")
    assert set(np.unique(resample_to_spacing(labels, (2, 2, 2)).array)) <= {0, 1}


def test_model_spacing_round_trip_returns_input_grid(rng):
    vol = _oblique()
    model = model_for(res_cnn(k=1, blocks=0, skip=True), spacing=[2.0, 2.0, 2.0], roi=(8, 8, 8))
    out = predict_volumes(model, [vol])
    assert len(out) == 1 and out[0].same_grid(vol, tol=0) and out[0].units == "Bq/ml"
    assert out[0].metadata["model_name"] == "test" and out[0].metadata["model_output"] == "pet"
    model.card["network_data_format"]["output_grid"] = "model"
    kept = predict_volume(model, [vol])
    assert kept.shape == (1, 24, 13, 12)


# ------------------------------------------------------------------------------------------- normalisation
def test_unit_invariance_with_pet_normalisation(rng):
    unet = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                       "channels": [4, 8], "strides": [2], "num_res_units": 1}}
    model = model_for(unet, inputs={"pet": PET_IN}, outputs={"pet": PET_OUT})
    x = (rng.gamma(2.0, 1.0, (1, 20, 24, 24)) * 3000).astype(np.float32)
    base = predict_volume(model, x)
    for k in (1e-3, 37.0):
        scaled = predict_volume(model, x * np.float32(k))
        err = np.abs(scaled - k * base).max() / np.abs(k * base).max()
        assert err < 1e-5, (k, err)
    # SUV input to a Bq/ml-trained, scale-invariant model: accepted as is, output stays in SUV
    vol = Volume(x[0], (2, 2, 2), modality="PT", units="Bq/ml", metadata={"suv_bw_factor": 1e-4})
    suv = predict_volumes(model, [vol.to_units("SUVbw")])[0]
    assert suv.units == "SUVbw"
    np.testing.assert_allclose(suv.array, base[0] * 1e-4, rtol=1e-4, atol=1e-6 * np.abs(suv.array).max())


def test_normalisation_helpers(rng):
    x = rng.random((10, 12, 12)) * 5 + 3
    for spec in ({"method": "zscore", "body_fraction": 0.05},
                 {"method": "robust_scale", "statistic": "mean_in_body", "body_fraction": 0.05},
                 {"method": "robust_scale", "statistic": "percentile", "percentile": 99.5},
                 {"method": "linear", "offset": -1000.0, "scale": 1000.0, "clip": None}):
        stats = compute_stats(x, spec)
        y = normalise(x, spec, stats)
        atol = 2e-4 if spec["method"] == "linear" else 0  # float32 of (x + 1000) / 1000
        np.testing.assert_allclose(denormalise(y, spec, stats), x, rtol=1e-6, atol=atol)
    z = normalise(x, {"method": "zscore", "body_fraction": 0.0}, compute_stats(x, {"method": "zscore",
                                                                                   "body_fraction": 0.0}))
    assert abs(z.mean()) < 1e-5 and abs(z.std() - 1) < 1e-4
    clipped = normalise(np.array([-2000.0, 0, 5000]), {"method": "linear", "offset": 0, "scale": 1000,
                                                        "clip": [-1000, 3000]}, {})
    np.testing.assert_allclose(clipped, [-1, 0, 3])
    with pytest.raises(NMAIError, match="empty"):
        compute_stats(np.zeros((4, 4, 4)), {"method": "robust_scale", "statistic": "percentile",
                                            "percentile": 99.5})


def test_softmax_activation_per_window(rng):
    outputs = {"seg": {"channels": 3, "modality": "SEG", "units": "1", "activation": "softmax",
                       "normalisation": RAW}}
    model = model_for(res_cnn(out_ch=3, k=3), outputs=outputs, roi=(8, 8, 8))
    y = predict_volume(model, rng.random((1, 12, 12, 12), dtype=np.float32))
    assert y.shape == (3, 12, 12, 12)
    np.testing.assert_allclose(y.sum(axis=0), 1.0, rtol=1e-5)


# ------------------------------------------------------------------------------------------- errors & devices
def test_input_errors(rng):
    model = model_for(res_cnn())
    vol = Volume(rng.random((8, 8, 8)), modality="PT", units="Bq/ml")
    with pytest.raises(NMAIError, match=r"needs 1 input volume\(s\) \(pet: 1 x PT in Bq/ml\), got 2"):
        predict_volume(model, [vol, vol])
    with pytest.raises(NMAIError, match="must be PT, got CT"):
        predict_volume(model, [Volume(vol.array, modality="CT", units="HU")])
    with pytest.raises(NMAIError, match="needs a \\(1, Z, Y, X\\) array"):
        predict_volume(model, np.zeros((2, 4, 4, 4), np.float32))
    bad = vol.array.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(NMAIError, match="NaN"):
        predict_volume(model, bad)
    with pytest.raises(NMAIError, match="SUVbw unavailable"):  # not scale-invariant: conversion needed
        predict_volume(model, [vol.derive(vol.array, units="SUVbw")])
    two = model_for(res_cnn(in_ch=2), inputs={"pet": dict(PET_IN, channels=2, normalisation=RAW)})
    shifted = Volume(vol.array, origin=(1, 0, 0), modality="PT", units="Bq/ml")
    with pytest.raises(NMAIError, match="share one grid"):
        predict_volume(two, [vol, shifted])
    classifier = model_for({"name": "small_cnn_classifier", "kwargs": {"spatial_dims": 3, "in_channels": 1,
                                                                       "out_channels": 1, "features": [4]}})
    with pytest.raises(NMAIError, match="needs a dense network"):
        predict_volume(classifier, vol.array.astype(np.float32))


def test_cuda_out_of_memory_falls_back_to_cpu():
    module = torch.nn.Conv3d(1, 1, 1)
    messages = []
    executor = _Executor(module, "cuda", Progress(lambda f, m: messages.append(m)), move=False)

    def job(dev):
        if dev.type == "cuda":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return f"ran on {dev.type}"

    assert executor.run(job) == "ran on cpu" and executor.device.type == "cpu"
    with pytest.raises(NMAIError, match="not enough memory for inference"):
        executor.run(lambda dev: (_ for _ in ()).throw(RuntimeError("DefaultCPUAllocator: not enough memory")))


def test_thread_count_fits_the_machine():
    n = default_threads()
    assert 1 <= n <= (os.cpu_count() or 1)
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_card_roi_and_model_device_recorded(rng):
    model = model_for(res_cnn(), roi=(8, 8, 8))
    card = copy.deepcopy(model.card)
    predict_volume(model, rng.random((1, 8, 8, 8), dtype=np.float32), device="cpu")
    assert model.device == "cpu" and model.card == card


def test_gpu_precision_flags_are_restored():
    from nmai.models.sliding import fp32_precision

    conv = getattr(torch.backends.cudnn, "conv", None)
    read = (lambda: (conv.fp32_precision, torch.backends.cuda.matmul.fp32_precision)) if conv is not None else \
        (lambda: (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
    before = read()
    with fp32_precision(True):
        assert read() in (("ieee", "ieee"), (False, False))
    assert read() == before
