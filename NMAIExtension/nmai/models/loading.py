"""Saving and loading model folders: safetensors weights checked by sha256 before they are parsed.

Loading never unpickles anything: the weights are read once into memory, hashed, compared with the
registry's and the card's sha256, and only then parsed by ``safetensors`` (a plain header + raw tensors
format with no code path). The network comes from the allowlist (:mod:`.networks`) and the file must match
its parameters exactly (same names and shapes; floating dtypes may differ, e.g. half-precision weights).
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import NMAIError
from .card import CARD_FILE, CARD_VERSION, WEIGHTS_FILE, read_card, sha256_bytes, sha256_file, validate_card, \
    weights_path
from .networks import build_network
from .registry import resolve_model

_MODEL_FILES = {CARD_FILE, WEIGHTS_FILE, "README.md"}


class ModelFileError(NMAIError):
    """The weights file is missing, corrupt, or belongs to another model."""


@dataclass
class LoadedModel:
    """A model ready for inference: ``module`` in eval mode on ``device``, with its validated card."""
    module: Any
    card: dict
    sha256: str
    name: str
    version: str
    device: str
    folder: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def task(self) -> str:
        return self.card["task"]

    @property
    def data_format(self) -> dict:
        return self.card["network_data_format"]

    def provenance(self) -> dict:
        """Metadata to attach to every output (Slicer node attributes, JSON sidecars)."""
        return {"model_name": self.name, "model_version": self.version, "model_sha256": self.sha256,
                "model_task": self.task}


def pick_device(device=None):
    """``None``/``"auto"``: the GPU when one is usable, else the CPU."""
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise NMAIError(f"unknown device {device!r}; use cpu, cuda or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NMAIError("a GPU (cuda) was requested but none is usable here; use --device cpu")
    return dev


def _retrain(card) -> str:
    return f"reinstall the extension or retrain with `nmai train {card.get('task', '<task>')}`"


def _dedup(state: dict) -> dict:
    """Drop tied duplicates (same storage, offset, shape and stride): keep the first name, as safetensors."""
    seen, out = set(), {}
    for name, t in state.items():
        if t.numel():
            key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()))
            if key in seen:
                continue
            seen.add(key)
        out[name] = t
    return out


def _mismatch(expected: dict, found: dict) -> str:
    """Empty when ``found`` fits ``expected`` (names, shapes, compatible dtypes); else a short description."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    bad = []
    for k in expected.keys() & found.keys():
        e, f = expected[k], found[k]
        dtype_ok = e.dtype == f.dtype or (e.dtype.is_floating_point and f.dtype.is_floating_point)
        if tuple(e.shape) != tuple(f.shape) or not dtype_ok:
            bad.append(f"{k} is {tuple(f.shape)} {f.dtype}, network wants {tuple(e.shape)} {e.dtype}")
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", sorted(bad))):
        if items:
            shown = ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")
            parts.append(f"{label}: {shown}")
    return "; ".join(parts)


def _parse_weights(data: bytes, path, card) -> dict:
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as exc:  # SafetensorError and friends: the file is not a valid safetensors file
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise ModelFileError(f"weights file {path} is corrupt or not a safetensors file ({reason}); "
                             f"{_retrain(card)}") from None
    return tensors


def load_weights_into(module, data: bytes, path, card) -> None:
    """Parse safetensors ``data`` and load it into ``module`` with a strict name/shape check."""
    tensors = _parse_weights(data, path, card)
    problem = _mismatch(_dedup(module.state_dict()), tensors)
    if problem:
        raise ModelFileError(f"weights file {path} does not fit network '{card['network']['name']}' "
                             f"({problem}); it belongs to another model; {_retrain(card)}")
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    untied = set(missing) - (set(module.state_dict()) - set(_dedup(module.state_dict())))
    if untied or unexpected:  # pragma: no cover - _mismatch already caught these
        raise ModelFileError(f"weights file {path} does not fit the network; {_retrain(card)}")


def load_model(name_or_path, device=None, *, registry=None) -> LoadedModel:
    """Load a built-in model by name or a user model folder by path, verified, in eval mode on ``device``."""
    ref = resolve_model(name_or_path, registry)
    card = read_card(ref.folder)
    entry = ref.entry
    if entry is not None and (card["name"] != entry["name"] or card["task"] != entry["task"]):
        raise NMAIError(f"built-in model '{entry['name']}': its card says name {card['name']!r}, task "
                        f"{card['task']!r}, but the registry says task {entry['task']!r}; reinstall the extension")
    path = weights_path(ref.folder)
    if not path.is_file():
        raise ModelFileError(f"weights file {path} is missing; {_retrain(card)}")
    data = path.read_bytes()  # hashed and parsed from the same bytes: no swap in between
    digest = sha256_bytes(data)
    for expected in ([entry["sha256"]] if entry else []) + [card["sha256"]]:
        if digest != expected:
            raise ModelFileError(f"weights file {path} is corrupt or not an NMAI model (sha256 mismatch: "
                                 f"expected {expected}, got {digest}); {_retrain(card)}")
    module = build_network(card["network"], str(ref.folder))
    load_weights_into(module, data, path, card)
    dev = pick_device(device)
    module.to(dev).eval()
    module.requires_grad_(False)
    return LoadedModel(module=module, card=card, sha256=digest, name=card["name"], version=card["version"],
                       device=str(dev), folder=ref.folder)


def save_model(module, folder, card: dict) -> dict:
    """Write ``model.safetensors`` + ``metadata.json`` to ``folder`` atomically; return the final card.

    The card is validated (``sha256`` is computed and recorded here; library versions are filled in when
    absent) and the module must match the card's ``network`` exactly, so what is saved always loads.
    Files are written to a temporary folder beside ``folder`` which then replaces it in one rename; an
    existing ``folder`` is replaced only when it holds nothing but model files.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    card = copy.deepcopy(card)
    card.pop("sha256", None)
    card.setdefault("nmai_card_version", CARD_VERSION)
    card.setdefault("name", folder.name)
    if "monai_version" not in card or "pytorch_version" not in card:
        import monai
        import torch

        card.setdefault("monai_version", monai.__version__)
        card.setdefault("pytorch_version", torch.__version__.split("+")[0])
    card = validate_card(card, f"card for {folder}", require_sha=False)
    state = {k: v.detach().cpu().clone().contiguous() for k, v in _dedup(module.state_dict()).items()}
    problem = _mismatch(_dedup(build_network(card["network"]).state_dict()), state)
    if problem:
        raise NMAIError(f"the module does not match the card's network '{card['network']['name']}' "
                        f"({problem}); build it with nmai.models.build_network(card['network'])")
    from ..io import _umask, atomic_folder

    def only_model_files(f):
        return all(p.name in _MODEL_FILES for p in f.iterdir())

    try:
        with atomic_folder(folder, replaceable=only_model_files) as tmp:
            save_file(state, str(tmp / WEIGHTS_FILE),
                      metadata={"format": "pt", "nmai_model": card["name"], "nmai_network": card["network"]["name"]})
            card["sha256"] = sha256_file(tmp / WEIGHTS_FILE)
            validate_card(card, f"card for {folder}")
            (tmp / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
            os.chmod(tmp / WEIGHTS_FILE, 0o666 & ~_umask())  # safetensors writes it private
    except NMAIError as exc:
        if "not an empty folder" in str(exc):
            raise NMAIError(f"{folder} exists and is not an NMAI model folder; choose a new folder") from None
        raise
    return card
