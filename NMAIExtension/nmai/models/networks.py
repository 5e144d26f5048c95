"""The network allowlist: the only way a model card turns into a ``torch.nn.Module``.

A card names a builder (``network.name``) and its keyword arguments (``network.kwargs``). Both are checked
here against a fixed table; nothing from a card is imported, evaluated or passed through unchecked (a MONAI
bundle's ``_target_``/``$`` expressions are code and are never executed). Layer names (``act``, ``norm``)
are restricted to MONAI's built-in factories with scalar arguments, so no option reaches an import.

Builders (MONAI networks are composed, not rewritten):

==========================  =================================================================
``unet``                    ``monai.networks.nets.UNet`` (attenuation / denoising U-Net)
``basic_unet``              ``monai.networks.nets.BasicUNet``
``residual_cnn``            :class:`nmai.models.layers.ResidualCNN` (denoising CNN, 2-D or 3-D)
``residual_unet``           :class:`nmai.models.layers.ResidualUNet`: MONAI ``UNet`` + global skip from
                            the centre input slice (2.5-D PET denoising / super-resolution)
``patch_discriminator``     ``monai.networks.nets.PatchDiscriminator`` (GAN critic; returns a list
                            of feature maps, the last one is the patch logits)
``densenet121``             ``monai.networks.nets.DenseNet121`` (classifier; ``pretrained`` refused)
``small_cnn_classifier``    :class:`nmai.models.layers.SmallCNNClassifier`
==========================  =================================================================
"""

from __future__ import annotations

from typing import Any

from ..errors import NMAIError
from .card import CardError, _check_value, _fail

_ACTS = ("RELU", "LEAKYRELU", "PRELU", "ELU", "CELU", "SELU", "GELU", "TANH", "SIGMOID", "SWISH", "MISH")
_NORMS = ("INSTANCE", "BATCH", "GROUP", "LAYER")

_COMMON = {"spatial_dims": ((2, 3), True, None), "in_channels": ("pos_int", True, None),
           "out_channels": ("pos_int", True, None)}
# name -> {kwarg: (kind, required, default)}; kinds: see _check_kwarg
NETWORKS: dict[str, dict[str, tuple[Any, bool, Any]]] = {
    "unet": {**_COMMON, "channels": ("int_list", True, None), "strides": ("int_list", True, None),
             "kernel_size": ("int_or_list", False, 3), "up_kernel_size": ("int_or_list", False, 3),
             "num_res_units": ("nonneg_int", False, 0), "act": ("act", False, "PRELU"),
             "norm": ("norm", False, "INSTANCE"), "dropout": ("fraction", False, 0.0),
             "bias": ("bool", False, True)},
    "basic_unet": {**_COMMON, "features": ("int_list6", False, [32, 32, 64, 128, 256, 32]),
                   "act": ("act", False, ["LEAKYRELU", {"negative_slope": 0.1, "inplace": True}]),
                   "norm": ("norm", False, ["INSTANCE", {"affine": True}]), "bias": ("bool", False, True),
                   "dropout": ("fraction", False, 0.0),
                   "upsample": (("deconv", "pixelshuffle", "nontrainable"), False, "deconv")},
    "residual_cnn": {**_COMMON, "features": ("pos_int", False, 32), "blocks": ("nonneg_int", False, 4),
                     "kernel_size": ("odd_int", False, 3), "global_skip": ("bool", False, True)},
    "residual_unet": {**_COMMON, "channels": ("int_list", True, None), "strides": ("int_list", True, None),
                      "num_res_units": ("nonneg_int", False, 2), "act": ("act", False, "PRELU"),
                      "norm": ("norm_or_null", False, None)},
    "patch_discriminator": {**_COMMON, "channels": ("pos_int", True, None),
                            "num_layers_d": ("pos_int", False, 3), "kernel_size": ("pos_int", False, 4),
                            "activation": ("act", False, ["LEAKYRELU", {"negative_slope": 0.2}]),
                            "norm": ("norm", False, "BATCH"), "bias": ("bool", False, False),
                            "padding": ("nonneg_int", False, 1), "dropout": ("fraction", False, 0.0),
                            "last_conv_kernel_size": ("pos_int_or_null", False, None)},
    "densenet121": {**_COMMON, "init_features": ("pos_int", False, 64), "growth_rate": ("pos_int", False, 32),
                    "block_config": ("int_list", False, [6, 12, 24, 16]), "dropout_prob": ("fraction", False, 0.0),
                    "act": ("act", False, ["RELU", {"inplace": True}]), "norm": ("norm", False, "BATCH")},
    "small_cnn_classifier": {**_COMMON, "features": ("int_list", False, [16, 32, 64]),
                             "dropout": ("fraction", False, 0.0)},
}


def _check_layer(source, path, value, allowed):
    if isinstance(value, str):
        name, args = value, {}
    elif isinstance(value, list) and len(value) == 2:
        name, args = value
    else:
        name, args = None, None
    if not isinstance(name, str) or name.upper() not in allowed or not isinstance(args, dict):
        _fail(source, path, f"is {value!r}, expected a name from {', '.join(allowed)} or [name, {{options}}]")
    for key, v in args.items():
        if not key.isidentifier() or not isinstance(v, (int, float, bool)):
            _fail(source, f"{path}.{key}", f"is {v!r}, expected a number or true/false")
    return name.upper() if not args else (name.upper(), dict(args))


def _check_kwarg(source, path, value, kind):
    def is_int(v, minimum=1):
        return isinstance(v, int) and not isinstance(v, bool) and v >= minimum

    if kind == "act":
        return _check_layer(source, path, value, _ACTS)
    if kind == "norm":
        return _check_layer(source, path, value, _NORMS)
    if kind == "norm_or_null":
        return None if value is None else _check_layer(source, path, value, _NORMS)
    if kind == "bool":
        if not isinstance(value, bool):
            _fail(source, path, f"is {value!r}, expected true or false")
        return value
    if kind in ("int_list", "int_list6"):
        if not (isinstance(value, list) and value and all(is_int(v) for v in value)) or \
                (kind == "int_list6" and len(value) != 6):
            _fail(source, path, f"is {value!r}, expected a list of {'6 ' if kind == 'int_list6' else ''}"
                                "positive integers")
        return list(value)
    if kind == "int_or_list":
        if not (is_int(value) or (isinstance(value, list) and value and all(is_int(v) for v in value))):
            _fail(source, path, f"is {value!r}, expected a positive integer or a list of them")
        return value
    if kind == "odd_int":
        if not (is_int(value) and value % 2 == 1):
            _fail(source, path, f"is {value!r}, expected an odd positive integer")
        return value
    if kind == "pos_int_or_null":
        if value is not None and not is_int(value):
            _fail(source, path, f"is {value!r}, expected null or a positive integer")
        return value
    return _check_value(source, path, value, kind)


def validate_network(name, kwargs, source="model card") -> dict:
    """Check ``{"name", "kwargs"}`` against the allowlist; return it with defaults filled in."""
    if name not in NETWORKS:
        raise CardError(f"{source}: model card field 'network.name' is {name!r}, which is not an allowed "
                        f"network (allowed: {', '.join(NETWORKS)}); NMAI builds networks only from this list")
    if not isinstance(kwargs, dict):
        _fail(source, "network.kwargs", "must be an object")
    spec = NETWORKS[name]
    for key in kwargs:
        if key not in spec:
            _fail(source, f"network.kwargs.{key}",
                  f"is not an option of network '{name}' (options: {', '.join(spec)})")
    checked = {}
    for key, (kind, required, default) in spec.items():
        if key not in kwargs:
            if required:
                _fail(source, f"network.kwargs.{key}", f"is missing (required by network '{name}')")
            checked[key] = default
            continue
        _check_kwarg(source, f"network.kwargs.{key}", kwargs[key], kind)
        checked[key] = kwargs[key]
    if name in ("unet", "residual_unet") and len(checked["channels"]) != len(checked["strides"]) + 1:
        _fail(source, "network.kwargs.strides", "must have one entry fewer than 'channels'")
    if name == "residual_unet" and checked["out_channels"] != 1:
        _fail(source, "network.kwargs.out_channels", "must be 1 (the centre slice gets the residual)")
    if name == "densenet121" and len(checked["block_config"]) != 4:
        _fail(source, "network.kwargs.block_config", "must have 4 entries")
    if name == "residual_cnn" and checked["global_skip"] and \
            checked["out_channels"] not in (1, checked["in_channels"]):
        _fail(source, "network.kwargs.global_skip", "needs out_channels 1 (centre input channel added) or "
                                                    "out_channels == in_channels")
    return {"name": name, "kwargs": checked}


def build_network(network: dict, source="model card"):
    """Build the module for a card's ``network`` entry (validated again here). Randomly initialised."""
    spec = validate_network(network.get("name"), network.get("kwargs", {}), source)
    name = spec["name"]
    kw = {k: _check_kwarg(source, f"network.kwargs.{k}", v, NETWORKS[name][k][0])
          for k, v in spec["kwargs"].items()}  # layer specs become MONAI (name, {args}) tuples
    try:
        if name in ("residual_cnn", "small_cnn_classifier", "residual_unet"):
            from . import layers

            return {"residual_cnn": layers.ResidualCNN, "small_cnn_classifier": layers.SmallCNNClassifier,
                    "residual_unet": layers.ResidualUNet}[name](**kw)
        from monai.networks import nets

        if name == "unet":
            return nets.UNet(**kw)
        if name == "basic_unet":
            return nets.BasicUNet(**kw)
        if name == "patch_discriminator":
            return nets.PatchDiscriminator(**kw)
        if name == "densenet121":
            return nets.DenseNet121(pretrained=False, **kw)
    except (ValueError, TypeError, AssertionError, KeyError, RuntimeError) as exc:
        raise NMAIError(f"{source}: network '{name}' cannot be built from network.kwargs ({exc}); "
                        "fix the card") from None
    raise AssertionError(name)  # pragma: no cover - NETWORKS and this function disagree
