"""The generic training loop: learning, deterministic resume, GAN hooks, and train -> save -> load -> predict."""

import json
import threading

import numpy as np
import pytest
import torch

from nmai.errors import CancelledError, NMAIError
from nmai.inference import predict_volume
from nmai.models import build_network, load_model, new_card, register_model, save_model
from nmai.progress import Progress
from nmai.training import card_training, lr_factor, seed_everything, train

TRUE_W = torch.tensor([[1.5, -2.0, 0.5]])


def regression_batch(step, rng):  # noqa: ARG001 - the batch depends only on the rng (seeded by seed, step)
    x = torch.from_numpy(rng.standard_normal((16, 3)).astype(np.float32))
    return x, x @ TRUE_W.T + 0.3


def mlp(seed=0):
    seed_everything(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.ReLU(), torch.nn.Dropout(0.1), torch.nn.Linear(16, 1))


def mse(pred, target):
    return torch.mean((pred - target) ** 2)


def test_loss_decreases_on_toy_regression():
    result = train(mlp(), regression_batch, mse, steps=150, lr=1e-2, seed=3, log_every=25, device="cpu")
    losses = [h["loss"] for h in result["history"]]
    assert len(losses) == 6 and losses[-1] < 0.1 * losses[0]
    assert result["steps"] == 150 and result["seed"] == 3 and result["device"] == "cpu"
    assert result["duration_s"] > 0 and result["resumed_from"] is None and result["optimizer"] == "AdamW"


def test_lr_schedule():
    assert lr_factor(0, 100, "cosine") == 1.0 and lr_factor(100, 100, "cosine") == pytest.approx(0.0)
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(0, 100, "cosine", warmup_steps=10) == pytest.approx(0.1)
    assert lr_factor(70, 100, "constant") == 1.0


def _weights(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(tmp_path):
    kw = dict(steps=24, lr=5e-3, seed=11, log_every=2, checkpoint_every=5, device="cpu")
    reference = mlp(0)
    full = train(reference, regression_batch, mse, checkpoint_dir=tmp_path / "a", **kw)

    cancel = threading.Event()

    def sink(fraction, message):
        if fraction >= 12 / 24:
            cancel.set()  # the user presses Cancel after step 12

    with pytest.raises(CancelledError):
        train(mlp(0), regression_batch, mse, checkpoint_dir=tmp_path / "b",
              progress=Progress(sink, cancel_event=cancel), **kw)
    names = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert names == ["ckpt-00000005.json", "ckpt-00000005.safetensors",
                     "ckpt-00000010.json", "ckpt-00000010.safetensors"]  # the last two are kept

    resumed_model = mlp(99)  # different initial weights: they must come from the checkpoint
    messages = []
    resumed = train(resumed_model, regression_batch, mse, checkpoint_dir=tmp_path / "b",
                    progress=lambda f, m: messages.append(m), **kw)
    assert resumed["resumed_from"] == 10 and "resumed from step 10" in messages[0]
    assert resumed["history"] == full["history"]
    for key, value in _weights(reference).items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key  # bitwise: optimizer state restored

    again = train(mlp(5), regression_batch, mse, checkpoint_dir=tmp_path / "b", **kw)
    assert again["resumed_from"] == 24  # already finished: nothing left to do
    with pytest.raises(NMAIError, match="seed=11, not 12"):
        train(mlp(0), regression_batch, mse, checkpoint_dir=tmp_path / "b", **dict(kw, seed=12))


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path):
    kw = dict(steps=10, lr=5e-3, seed=1, checkpoint_every=5, log_every=5, device="cpu")
    reference = mlp(0)
    train(reference, regression_batch, mse, checkpoint_dir=tmp_path / "a", **kw)
    train(mlp(0), regression_batch, mse, checkpoint_dir=tmp_path / "b", **kw)
    (tmp_path / "b" / "ckpt-00000010.safetensors").write_bytes(b"garbage")
    info = json.loads((tmp_path / "b" / "ckpt-00000005.json").read_text())
    assert info["step"] == 5 and "optimizers" in info
    messages = []
    model = mlp(3)
    result = train(model, regression_batch, mse, checkpoint_dir=tmp_path / "b",
                   progress=lambda f, m: messages.append(m), **kw)
    assert result["resumed_from"] == 5 and any("skipping damaged checkpoint" in m for m in messages)
    for key, value in _weights(reference).items():
        assert torch.equal(value, model.state_dict()[key])


def test_gan_step_fn_with_two_modules_resumes_exactly(tmp_path):
    def gan_nets(seed):
        seed_everything(seed)
        return {"generator": torch.nn.Linear(4, 4), "discriminator": torch.nn.Linear(4, 1)}

    def make_batch(step, rng):  # noqa: ARG001
        return torch.from_numpy(rng.standard_normal((8, 4)).astype(np.float32) + 2)

    bce = torch.nn.BCEWithLogitsLoss()

    def step_fn(real, step, state):  # noqa: ARG001
        g, d = state.modules["generator"], state.modules["discriminator"]
        og, od = state.optimizers["generator"], state.optimizers["discriminator"]
        fake = g(torch.randn_like(real))  # torch RNG: reseeded per step by the loop
        od.zero_grad()
        loss_d = bce(d(real), torch.ones(len(real), 1)) + bce(d(fake.detach()), torch.zeros(len(real), 1))
        loss_d.backward()
        od.step()
        og.zero_grad()
        loss_g = bce(d(fake), torch.ones(len(real), 1))
        loss_g.backward()
        og.step()
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach())}

    kw = dict(steps=8, lr={"generator": 1e-3, "discriminator": 2e-3}, seed=4, log_every=2, checkpoint_every=3,
              step_fn=step_fn, device="cpu")
    full_nets = gan_nets(0)
    full = train(full_nets, make_batch, checkpoint_dir=tmp_path / "a", **kw)
    assert set(full["final_losses"]) == {"step", "loss_d", "loss_g"} and full["lr"]["discriminator"] == 2e-3
    cancel = threading.Event()
    with pytest.raises(CancelledError):
        train(gan_nets(0), make_batch, checkpoint_dir=tmp_path / "b",
              progress=Progress(lambda f, m: cancel.set() if f >= 0.5 else None, cancel_event=cancel), **kw)
    nets = gan_nets(7)
    assert train(nets, make_batch, checkpoint_dir=tmp_path / "b", **kw)["resumed_from"] == 3
    for name in nets:
        for key, value in full_nets[name].state_dict().items():
            assert torch.equal(value, nets[name].state_dict()[key]), (name, key)


def test_divergence_and_argument_errors():
    def bad_loss(pred, target):  # noqa: ARG001
        return torch.tensor(float("nan"), requires_grad=True)

    with pytest.raises(NMAIError, match="training diverged: loss is nan at step 0"):
        train(mlp(), regression_batch, bad_loss, steps=3)
    with pytest.raises(NMAIError, match="needs loss_fn"):
        train(mlp(), regression_batch, steps=3)
    with pytest.raises(NMAIError, match="unknown schedule"):
        train(mlp(), regression_batch, mse, steps=3, schedule="step")


def test_train_save_register_load_predict(tmp_path):
    """The path every method will follow to ship a model."""
    network = {"name": "residual_cnn", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                                  "features": 4, "blocks": 1, "global_skip": True}}
    fmt = {"dims": 3, "roi_size": [8, 8, 8], "spacing_mm": [2.0, 2.0, 2.0],
           "inputs": {"pet": {"channels": 1, "modality": "PT", "units": "Bq/ml",
                              "normalisation": {"method": "robust_scale"}}},
           "outputs": {"pet": {"channels": 1, "modality": "PT", "units": "Bq/ml",
                               "normalisation": {"method": "same_as_input", "input": "pet"}}}}
    seed_everything(0)
    net = build_network(network)

    def make_batch(step, rng):  # noqa: ARG001 - denoise a noisy constant
        clean = np.ones((2, 1, 8, 8, 8), np.float32)
        noisy = clean + 0.2 * rng.standard_normal(clean.shape).astype(np.float32)
        return torch.from_numpy(noisy), torch.from_numpy(clean)

    result = train(net, make_batch, mse, steps=20, lr=1e-3, seed=0, log_every=10,
                   checkpoint_dir=tmp_path / "ckpt")
    card = new_card(name="pet-denoise-test", task="denoise", network=network, network_data_format=fmt,
                    training=card_training(result, "nmai train denoise --preset test", preset="test"),
                    metrics={"val_mse": result["final_losses"]["loss"]})
    saved = save_model(net, tmp_path / "models" / "pet-denoise-test", card)
    assert saved["training"]["steps"] == 20 and saved["training"]["device"] == "cpu"
    register_model(tmp_path / "models" / "pet-denoise-test", registry=tmp_path / "models" / "models.json")
    model = load_model("pet-denoise-test", registry=tmp_path / "models" / "models.json")
    x = np.random.default_rng(1).random((1, 12, 10, 10), dtype=np.float32) * 5000
    y = predict_volume(model, x)
    assert y.shape == x.shape and np.isfinite(y).all()


def test_cudnn_flags_restored_after_training():
    before = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    train(mlp(), regression_batch, mse, steps=2, device="cpu")
    assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == before
