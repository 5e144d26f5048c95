"""The shipped model registry (``nmai/models/models.json``) and name-or-path resolution.

``models.json``::

    {"nmai_registry_version": 1,
     "models": [{"name": "pet-denoise-unet", "folder": "pet-denoise-unet", "task": "denoise",
                 "version": "1.0.0", "sha256": "<64 hex digits of model.safetensors>"}]}

``folder`` is relative to ``models.json`` and must stay inside its folder. ``load_model`` checks the weights
against both the registry's and the card's sha256. A user model is any folder with the same card, passed
by path instead of by name. Nothing is ever downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import NMAIError
from .card import TASKS, _SHA, read_card, sha256_file, weights_path

REGISTRY_FILE = Path(__file__).with_name("models.json")
REGISTRY_VERSION = 1
_ENTRY_FIELDS = {"name": True, "folder": True, "task": True, "sha256": True, "version": False}


@dataclass(frozen=True)
class ModelRef:
    """Where a model lives: its folder, and its registry entry (None for a user model given by path)."""
    folder: Path
    entry: dict | None = None


def _bad(path, problem):
    raise NMAIError(f"{path}: model registry {problem}; reinstall the extension or fix models.json")


def read_registry(path=None) -> list[dict]:
    """Read and check a registry file; return its list of entries."""
    path = Path(path or REGISTRY_FILE)
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        _bad(path, f"is not valid JSON ({exc})")
    if not isinstance(data, dict) or data.get("nmai_registry_version") != REGISTRY_VERSION:
        _bad(path, f"field 'nmai_registry_version' must be {REGISTRY_VERSION}")
    models = data.get("models")
    if not isinstance(models, list):
        _bad(path, "field 'models' must be a list")
    seen = set()
    for i, entry in enumerate(models):
        where = f"field 'models[{i}]"
        if not isinstance(entry, dict):
            _bad(path, f"{where}' must be an object")
        for key in entry:
            if key not in _ENTRY_FIELDS:
                _bad(path, f"{where}.{key}' is not a known field ({', '.join(_ENTRY_FIELDS)})")
        for key, required in _ENTRY_FIELDS.items():
            if required and not (isinstance(entry.get(key), str) and entry[key]):
                _bad(path, f"{where}.{key}' is missing or not a string")
        if entry["task"] not in TASKS:
            _bad(path, f"{where}.task' is {entry['task']!r}, expected one of {', '.join(TASKS)}")
        if not _SHA.match(entry["sha256"]):
            _bad(path, f"{where}.sha256' is not 64 lowercase hex digits")
        folder = Path(entry["folder"])
        if folder.is_absolute() or ".." in folder.parts:
            _bad(path, f"{where}.folder' must be a relative path inside {path.parent}")
        if entry["name"] in seen:
            _bad(path, f"{where}.name' {entry['name']!r} is listed twice")
        seen.add(entry["name"])
    return models


def list_models(registry=None, task: str | None = None) -> list[dict]:
    """Built-in models (registry entries), optionally only those for ``task``."""
    return [m for m in read_registry(registry) if task is None or m["task"] == task]


def resolve_model(name_or_path, registry=None) -> ModelRef:
    """A registered name first; otherwise an existing folder given by path."""
    registry = Path(registry or REGISTRY_FILE)
    text = str(name_or_path)
    if not isinstance(name_or_path, Path):
        for entry in read_registry(registry):
            if entry["name"] == text:
                folder = registry.parent / entry["folder"]
                if not folder.is_dir():
                    raise NMAIError(f"built-in model '{text}' is not installed ({folder} is missing); "
                                    "reinstall the extension")
                return ModelRef(folder, entry)
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return ModelRef(path.resolve(), None)
    if path.is_file() and path.name in ("metadata.json", "model.safetensors"):
        return ModelRef(path.parent.resolve(), None)
    names = ", ".join(m["name"] for m in read_registry(registry)) or "none installed"
    raise NMAIError(f"unknown model {text!r} (built-in models: {names}); give a built-in name or the path "
                    "of a model folder containing metadata.json and model.safetensors")


def register_model(folder, registry=None) -> dict:
    """Add or update the registry entry of a saved model folder (inside the registry's folder).

    The card is validated and the weights' sha256 recomputed, so the registry never lists a model that
    would not load. Writes ``models.json`` atomically and returns the entry.
    """
    from ..io import write_json

    registry = Path(registry or REGISTRY_FILE)
    folder = Path(folder).resolve()
    try:
        relative = folder.relative_to(registry.parent.resolve())
    except ValueError:
        raise NMAIError(f"{folder}: a built-in model must live inside {registry.parent}; move it there "
                        "or load it by path as a user model") from None
    card = read_card(folder)
    weights = weights_path(folder)
    if not weights.is_file():
        raise NMAIError(f"weights file {weights} is missing; save the model with nmai.models.save_model")
    digest = sha256_file(weights)
    if digest != card["sha256"]:
        raise NMAIError(f"weights file {weights} does not match its card (sha256 {digest} != "
                        f"{card['sha256']}); re-save the model with nmai.models.save_model")
    entry = {"name": card["name"], "folder": relative.as_posix(), "task": card["task"],
             "version": card["version"], "sha256": digest}
    models = [m for m in read_registry(registry) if m["name"] != entry["name"]] + [entry]
    models.sort(key=lambda m: m["name"])
    write_json(registry, {"nmai_registry_version": REGISTRY_VERSION, "models": models})
    return entry

