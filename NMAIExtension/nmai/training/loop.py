"""A generic, resumable, deterministic training loop (supervised by default; GANs through ``step_fn``).

Determinism: the batch of step ``s`` comes from ``make_batch(s, rng)`` with ``rng`` seeded by
``(seed, s)``, and torch's global RNG (dropout, noise) is reseeded from ``(seed, s)`` before every step, so
a step does not depend on how the run got there. Build the network after :func:`seed_everything`.

Checkpoints (every ``checkpoint_every`` steps and at the end) are two files in ``checkpoint_dir``:
``ckpt-<step>.safetensors`` with every module's weights *and* every optimizer's state (AdamW moments and
step counts, flattened to tensors; nothing is pickled) and ``ckpt-<step>.json`` with the step, the run's
settings, the loss history, the elapsed time and the tensors file's sha256. The JSON is written last, each
file atomically, so a crash leaves either a complete checkpoint or none; the last two are kept. A new call
with the same ``checkpoint_dir`` resumes from the newest complete checkpoint and, since optimizer state and
learning-rate schedule are restored exactly, ends with the same weights as an uninterrupted run (bitwise on
the same machine; on a GPU ``deterministic=True``, the default, makes cuDNN choose deterministic kernels).
Changing the seed, steps, learning rate or schedule of a run with checkpoints is refused: use a new folder.

GANs: pass ``model={"generator": g, "discriminator": d}`` and ``step_fn(batch, step, state) -> {loss: float}``
which uses ``state.modules[...]`` and ``state.optimizers[...]`` (one AdamW per module, learning rates set
by the loop) and does its own backward/step. The default step is supervised: ``loss_fn(model(x), y)``.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import NMAIError
from ..progress import as_progress

_CKPT = re.compile(r"^ckpt-(\d{8})\.json$")


@dataclass
class TrainState:
    """What a ``step_fn`` sees: modules and their AdamW optimizers (by name), device, current lr factor."""
    modules: dict
    optimizers: dict
    device: Any
    lr_factor: float = 1.0
    grad_clip: float | None = None


def seed_everything(seed: int) -> None:
    """Seed numpy's legacy RNG and torch (call before building a network)."""
    import torch

    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1, dtype=np.uint64)[0] % 2**63)


def lr_factor(step: int, steps: int, schedule: str, warmup_steps: int = 0, min_factor: float = 0.0) -> float:
    """Learning-rate multiplier at ``step``: linear warm-up, then constant or cosine decay."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def _to_device(batch, device):
    import torch

    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


def supervised_step(loss_fn) -> Callable:
    """The default step: ``batch = (x, y, *more)``; minimise ``loss_fn(model(x), y, *more)`` with the single
    optimizer."""
    def step_fn(batch, step, state: TrainState) -> dict:  # noqa: ARG001
        import torch

        (name, module), = state.modules.items()
        optimizer = state.optimizers[name]
        x, *targets = batch
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(module(x), *targets)
        loss.backward()
        if state.grad_clip:
            torch.nn.utils.clip_grad_norm_(module.parameters(), state.grad_clip)
        optimizer.step()
        return {"loss": float(loss.detach())}
    return step_fn


# ------------------------------------------------------------------------------------------- checkpoints
def _flatten(modules, optimizers) -> tuple[dict, dict]:
    tensors, extra = {}, {}
    for name, module in modules.items():
        for key, t in module.state_dict().items():
            tensors[f"model/{name}/{key}"] = t.detach().cpu().clone().contiguous()
    for name, opt in optimizers.items():
        sd = opt.state_dict()
        scalars = {}
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                if hasattr(value, "detach"):
                    tensors[f"optim/{name}/{pid}/{key}"] = value.detach().cpu().clone().contiguous()
                else:
                    scalars.setdefault(str(pid), {})[key] = value
        extra[name] = {"param_groups": sd["param_groups"], "scalars": scalars}
    return tensors, extra


def _restore(modules, optimizers, tensors: dict, extra: dict, device) -> None:
    for name, module in modules.items():
        prefix = f"model/{name}/"
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)
    for name, opt in optimizers.items():
        prefix = f"optim/{name}/"
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith(prefix):
                pid, key = k[len(prefix):].split("/", 1)
                state.setdefault(int(pid), {})[key] = v.to(device) if key != "step" else v
        for pid, values in extra[name]["scalars"].items():
            state.setdefault(int(pid), {}).update(values)
        opt.load_state_dict({"state": state, "param_groups": extra[name]["param_groups"]})


def _save_checkpoint(folder: Path, step: int, modules, optimizers, info: dict, keep: int) -> Path:
    from safetensors.torch import save_file

    from ..io import atomic_path, write_json
    from ..models.card import sha256_file

    tensors, extra = _flatten(modules, optimizers)
    weights = folder / f"ckpt-{step:08d}.safetensors"
    with atomic_path(weights) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "step": str(step)})
    write_json(folder / f"ckpt-{step:08d}.json",
               {**info, "step": step, "optimizers": extra, "sha256": sha256_file(weights)})
    for old in _checkpoints(folder)[:-keep]:
        for suffix in (".json", ".safetensors"):
            old.with_suffix(suffix).unlink(missing_ok=True)
    return weights


def _checkpoints(folder: Path) -> list[Path]:
    """Checkpoint JSON files, oldest first."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if _CKPT.match(p.name))


def _latest_checkpoint(folder: Path, progress):
    """(info, tensors) of the newest complete, uncorrupted checkpoint, or None."""
    from safetensors.torch import load

    from ..models.card import sha256_bytes

    for meta in reversed(_checkpoints(folder)):
        try:
            info = json.loads(meta.read_text())
            data = meta.with_suffix(".safetensors").read_bytes()
            if sha256_bytes(data) != info["sha256"]:
                raise ValueError("sha256 mismatch")
            return info, load(data)
        except (OSError, ValueError, KeyError) as exc:
            progress(0.0, f"skipping damaged checkpoint {meta.name} ({exc})")
    return None


# ------------------------------------------------------------------------------------------- the loop
def train(model, make_batch: Callable, loss_fn: Callable | None = None, steps: int = 1000, lr=1e-3,
          checkpoint_dir=None, seed: int = 0, progress=None, device=None, log_every: int = 50, *,
          checkpoint_every: int | None = None, schedule: str = "cosine", warmup_steps: int = 0,
          min_lr_factor: float = 0.0, weight_decay: float = 1e-2, grad_clip: float | None = None,
          step_fn: Callable | None = None, keep_checkpoints: int = 2, deterministic: bool = True) -> dict:
    """Train ``model`` (a module, or ``{name: module}`` with ``step_fn``) for ``steps`` steps with AdamW.

    ``make_batch(step, rng)`` returns the batch (tensors, tuples/dicts of tensors; moved to ``device``).
    ``lr`` is a float or ``{name: float}``. Returns a dict for the model card: ``seed``, ``steps``,
    ``duration_s`` (all sessions), ``device``, ``lr``, ``schedule``, ``optimizer``, ``final_losses``,
    ``history`` (mean losses every ``log_every`` steps), ``resumed_from`` (step or None).
    Cancelling through ``progress`` raises CancelledError; the last checkpoint stays resumable.
    ``deterministic`` makes cuDNN pick deterministic algorithms (no autotuning) while training, so a GPU
    run resumes to the same weights too.
    """
    import torch

    from ..models.loading import pick_device

    progress = as_progress(progress)
    modules = dict(model) if isinstance(model, dict) else {"model": model}
    if step_fn is None:
        if loss_fn is None or len(modules) != 1:
            raise NMAIError("train needs loss_fn for one module, or a step_fn for several (GAN)")
        step_fn = supervised_step(loss_fn)
    if schedule not in ("cosine", "constant"):
        raise NMAIError(f"unknown schedule {schedule!r}; use cosine or constant")
    if steps < 1:
        raise NMAIError(f"steps must be at least 1, got {steps}")
    dev = pick_device(device)
    lrs = {name: float(lr[name] if isinstance(lr, dict) else lr) for name in modules}
    for m in modules.values():
        m.to(dev)
    optimizers = {name: torch.optim.AdamW(m.parameters(), lr=lrs[name], weight_decay=weight_decay)
                  for name, m in modules.items()}
    settings = {"seed": seed, "steps": steps, "lr": lrs, "schedule": schedule, "warmup_steps": warmup_steps,
                "min_lr_factor": min_lr_factor, "weight_decay": weight_decay, "modules": sorted(modules)}
    folder = Path(checkpoint_dir) if checkpoint_dir else None
    every = checkpoint_every or max(1, min(steps, 1000, max(steps // 10, 1)))
    start, history, elapsed, resumed, window = 0, [], 0.0, None, {}
    if folder is not None:
        found = _latest_checkpoint(folder, progress)
        if found is not None:
            info, tensors = found
            for key, value in settings.items():
                if info["settings"].get(key) != value:
                    raise NMAIError(f"{folder} holds a run with {key}={info['settings'].get(key)!r}, not "
                                    f"{value!r}; use the same settings to resume or a new checkpoint folder")
            _restore(modules, optimizers, tensors, info["optimizers"], dev)
            start, history, elapsed, resumed = info["step"], info["history"], info["elapsed_s"], info["step"]
            window = info.get("window", {})
            progress(start / steps, f"resumed from step {start}")
    state = TrainState(modules, optimizers, dev, grad_clip=grad_clip)
    t0 = time.perf_counter()
    with _cudnn_deterministic(deterministic):
        for step in range(start, steps):
            progress.check()
            state.lr_factor = lr_factor(step, steps, schedule, warmup_steps, min_lr_factor)
            for name, opt in optimizers.items():
                for group in opt.param_groups:
                    group["lr"] = lrs[name] * state.lr_factor
            rng = np.random.default_rng([seed, step])
            torch.manual_seed(_step_seed(seed, step))
            batch = _to_device(make_batch(step, rng), dev)
            for m in modules.values():
                m.train()
            losses = step_fn(batch, step, state)
            for key, value in losses.items():
                if not math.isfinite(value):
                    raise NMAIError(f"training diverged: {key} is {value} at step {step}; lower the learning "
                                    "rate or check the training data")
                window.setdefault(key, []).append(float(value))
            done = step + 1
            if done % log_every == 0 or done == steps:
                means = {k: float(np.mean(v)) for k, v in window.items()}
                history.append({"step": done, **means})
                window = {}
                shown = " ".join(f"{k} {v:.4g}" for k, v in means.items())
                progress(done / steps, f"step {done}/{steps} {shown}")
            if folder is not None and (done % every == 0 or done == steps):
                _save_checkpoint(folder, done, modules, optimizers,
                                 {"settings": settings, "history": history, "window": window,
                                  "elapsed_s": elapsed + time.perf_counter() - t0}, keep_checkpoints)
    for m in modules.values():
        m.eval()
    return {"seed": seed, "steps": steps, "duration_s": round(elapsed + time.perf_counter() - t0, 3),
            "device": str(dev), "lr": lrs if len(lrs) > 1 else next(iter(lrs.values())), "schedule": schedule,
            "optimizer": "AdamW", "final_losses": dict(history[-1]) if history else {},
            "history": history, "resumed_from": resumed}


@contextlib.contextmanager
def _cudnn_deterministic(enabled: bool):
    import torch

    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    if enabled:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def card_training(result: dict, command: str, preset: str | None = None) -> dict:
    """The model card's ``training`` section from :func:`train`'s result."""
    return {"command": command, "seed": result["seed"], "preset": preset, "duration_s": result["duration_s"],
            "device": result["device"], "steps": result["steps"], "lr": result["lr"],
            "schedule": result["schedule"], "optimizer": result["optimizer"],
            "final_losses": {k: v for k, v in result["final_losses"].items() if k != "step"}}
