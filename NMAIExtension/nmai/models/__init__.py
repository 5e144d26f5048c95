"""Model infrastructure shared by every deep-learning method: cards, registry, allowlisted networks,
verified safetensors loading and atomic saving.

Shipping a model::

    from nmai.models import build_network, new_card, save_model, register_model, load_model
    from nmai.training import train, card_training
    net = build_network({"name": "unet", "kwargs": {...}})
    result = train(net, make_batch, loss_fn, steps=..., checkpoint_dir=..., seed=...)
    card = new_card(name=..., task=..., network=..., network_data_format=..., training=card_training(result, cmd))
    save_model(net, "NMAIExtension/nmai/models/<name>", card)
    register_model("NMAIExtension/nmai/models/<name>")     # updates models.json
    model = load_model("<name>")                            # then nmai.inference.predict_volume(model, ...)

Importing this package does not import torch or MONAI (they load on first use).
"""

from .card import CARD_FILE, TASKS, WEIGHTS_FILE, new_card, read_card, sha256_file, validate_card  # noqa: F401
from .loading import LoadedModel, ModelFileError, load_model, pick_device, save_model  # noqa: F401
from .networks import NETWORKS, build_network, validate_network  # noqa: F401
from .registry import REGISTRY_FILE, list_models, read_registry, register_model, resolve_model  # noqa: F401
