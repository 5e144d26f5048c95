"""`nmai train attenuation --preset quick`: the training code runs end to end and writes a loadable model.

This proves the code path CI can afford (a few steps on two tiny phantoms); it never trains a shipped model.
"""

import json

import numpy as np
import pytest

from nmai.attenuation.training import BONE_MU, MU_SCALE, SliceSampler, mu_metrics
from nmai.cli import main
from nmai.models import load_model


def test_quick_training_writes_a_loadable_model_with_its_card(tmp_path):
    ckpt = tmp_path / "ckpt"
    assert main(["train", "attenuation", "--inputs", "t1", "--preset", "quick", "--out", str(tmp_path),
                 "--checkpoints", str(ckpt)]) == 0
    folder = tmp_path / "attenuation-t1-unet"
    card = json.loads((folder / "metadata.json").read_text())
    assert card["training"]["steps"] == 4 and card["training"]["preset"] == "quick"
    assert card["training"]["data"]["phantoms"] == 2
    assert 0.0 <= card["metrics"]["validation"]["bone_dice"] <= 1.0
    model = load_model(folder)  # sha256 checked, safetensors only
    assert model.card["network_data_format"]["inputs"].keys() == {"t1"}
    assert any(ckpt.iterdir())  # resumable checkpoints were written


def test_sampler_windows_are_channel_major_with_repeated_edges():
    import torch

    nz, n = 3, 130
    x = np.stack([np.arange(nz, dtype=np.float32)[:, None, None] * np.ones((nz, n, n), np.float32) + 10 * c
                  for c in range(2)])
    cases = [{"x": x, "y": np.ones((nz, n, n), np.float32)}]
    xb, yb = SliceSampler(cases, 4, "cpu")(0, np.random.default_rng(0))
    assert tuple(xb.shape) == (4, 10, 128, 128) and tuple(yb.shape) == (4, 1, 128, 128)
    for sample in xb:
        per_slice = sample[:, 0, 0].reshape(2, 5)
        assert torch.equal(per_slice[1] - per_slice[0], torch.full((5,), 10.0))  # channel-major blocks
        centre = int(per_slice[0, 2])
        expected = [min(max(centre + d, 0), nz - 1) for d in range(-2, 3)]
        assert per_slice[0].tolist() == expected


def test_mu_metrics_against_hand_values():
    true = np.zeros((2, 4, 4), np.float32)
    true[:, :2] = 0.1
    true[0, 0, :2] = 0.15  # 2 bone voxels
    pred = true.copy()
    pred[0, 0, 0] = 0.1  # one bone voxel missed
    pred[1, 1, 1] = 0.12  # one false bone voxel
    m = mu_metrics(pred, true)
    assert m["bone_dice"] == pytest.approx(2 * 1 / (2 + 2))
    assert m["mu_mae_body_cm-1"] == pytest.approx((0.05 + 0.02) / 16)
    assert BONE_MU > 0.101 and MU_SCALE == 0.1


def test_dixon_loss_is_minimised_by_the_mean_and_t1_loss_by_the_median():
    """Line integrals of μ are linear in μ: an uncertain voxel must get the mean μ (squared error), not the
    median (L1), or every edge is biased. Checked on a voxel that is body (μ 0.1, target 1.0) in 1 of 3
    training cases, and the bone weights (x3 squared, x5 L1) on a bone/soft-tissue voxel."""
    import torch

    from nmai.attenuation.training import LOSSES, PRESETS

    def best(loss, targets):
        p = torch.linspace(0, 2, 2001)
        t = torch.tensor(targets)
        values = torch.stack([loss(q.expand_as(t), t) for q in p])
        return float(p[int(torch.argmin(values))])

    mse, l1 = LOSSES["mse"][0], LOSSES["l1"][0]
    assert best(mse, [0.0, 0.0, 1.0]) == pytest.approx(1 / 3, abs=1e-3)
    assert best(l1, [0.0, 0.0, 1.0]) == pytest.approx(0.0, abs=1e-3)
    bone = 1.6  # μ 0.16 cm⁻¹ / MU_SCALE: weighted x3 (squared) -> (1 + 3 x 1.6) / 4; x5 (L1) -> the bone value
    assert best(mse, [1.0, bone]) == pytest.approx((1.0 + 3 * bone) / 4, abs=1e-3)
    assert best(l1, [1.0, 1.0, 1.0, bone]) == pytest.approx(bone, abs=1e-3)  # weight 5 outweighs 3
    assert PRESETS["shipped"].loss == {"dixon": "mse", "t1": "l1"}


def test_voxel_draws_keep_the_v01_phantoms():
    """Validation makes no draw, native_fraction 0 makes v0.1's one draw: the arms, noise and other later
    draws of every phantom stay those of v0.1 (T1 model, validation seeds)."""
    from nmai.attenuation.training import SPACING_MM, draw_voxel

    def after(**kw):
        rng = np.random.default_rng(7)
        voxel = draw_voxel(rng, (3.0, 5.0), **kw)
        return voxel, rng.random()

    fresh = np.random.default_rng(7)
    first, second = fresh.uniform(3.0, 5.0), fresh.random()
    assert after(random_resolution=False) == (SPACING_MM, np.random.default_rng(7).random())
    assert after() == (first, second)
    native = [draw_voxel(np.random.default_rng(s), (3.0, 5.0), native_fraction=1 / 3) for s in range(300)]
    assert 0.25 < np.mean(np.array(native) == SPACING_MM) < 0.42


def test_mr_at_a_coarser_voxel_is_blurred_and_a_finer_one_is_the_grid():
    from nmai.attenuation.training import mr_at_resolution

    step = np.zeros((8, 8, 64), np.float32)
    step[..., 32:] = 100.0
    assert np.array_equal(mr_at_resolution(step, 3.0), step) and np.array_equal(mr_at_resolution(step, 4.0), step)
    out = mr_at_resolution(step, 6.0)
    assert out.shape == step.shape
    assert np.allclose(out[..., :20], 0.0, atol=1e-3) and np.allclose(out[..., 44:], 100.0, atol=1e-3)
    width = lambda a: int(((a[4, 4] > 10) & (a[4, 4] < 90)).sum())  # noqa: E731  voxels on the edge
    assert width(step) == 0 and width(out) >= 2      # a 6 mm voxel spans 1.5 grid voxels, plus anti-aliasing


def test_dixon_target_is_the_4mm_phantoms_own_mumap_and_t1_keeps_v01s(monkeypatch):
    """Dixon (v0.3): the μ target is the phantom's μ-map on the 4 mm grid, untouched, and only the MR is
    degraded. T1 (v0.1's recipe): the phantom is made at the drawn voxel size and resampled."""
    import nmai.sim
    from nmai.attenuation import training
    from nmai.volume import Volume

    rng = np.random.default_rng(0)
    mu = rng.uniform(0.0, 0.17, (12, 20, 20)).astype(np.float32)
    made = []

    class Fake:
        mumap = Volume(mu, (4.0,) * 3)
        volumes = {n: Volume(rng.uniform(0.0, 500.0, mu.shape).astype(np.float32), (4.0,) * 3)
                   for n in ("mr_water", "mr_fat", "mr_t1")}

    def fake_phantom(name, seed, voxel_mm, **kw):
        made.append(voxel_mm)
        return Fake()

    monkeypatch.setattr(nmai.sim, "make_phantom", fake_phantom)
    case = training.make_case(3, "dixon", voxel_range=(5.5, 6.0))
    assert made == [training.SPACING_MM] and 5.5 <= case["voxel_mm"] <= 6.0
    assert np.allclose(case["y"] * training.MU_SCALE, mu, rtol=1e-6, atol=0)
    assert case["x"].shape == (2, 12, 20, 20)
    case = training.make_case(3, "t1", voxel_range=(5.5, 6.0))
    zoom = case["voxel_mm"] / training.SPACING_MM                             # the 5.5-6 mm phantom on 4 mm
    assert made[1] == case["voxel_mm"] and case["y"].shape == tuple(round(n * zoom) for n in mu.shape)
    assert training.data_format("dixon")["roi_size"] == [160, 160] and training.data_format("t1")["roi_size"] == [128, 128]
