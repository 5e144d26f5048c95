"""Model cards, registry, allowlisted networks, and verified safetensors save/load."""

import copy
import json
import pickle
import re

import numpy as np
import pytest
import torch

from nmai.errors import NMAIError
from nmai.models import (NETWORKS, LoadedModel, ModelFileError, build_network, list_models, load_model,
                         new_card, read_registry, register_model, save_model, validate_card)
from nmai.models.card import CardError, sha256_file

UNET = {"name": "unet", "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1, "channels": [4, 8],
                                   "strides": [2], "num_res_units": 1}}
FMT = {"dims": 3, "roi_size": [16, 16, 16], "spacing_mm": None,
       "inputs": {"pet": {"channels": 1, "modality": "PT", "units": "Bq/ml",
                          "normalisation": {"method": "robust_scale", "percentile": 99.5}}},
       "outputs": {"pet": {"channels": 1, "modality": "PT", "units": "Bq/ml",
                           "normalisation": {"method": "same_as_input", "input": "pet"}}}}
TRAINING = {"command": "nmai train denoise --preset tiny", "seed": 0, "preset": "tiny", "duration_s": 1.5,
            "device": "cpu", "steps": 10}


def make_card(network=UNET, fmt=FMT, name="tiny-unet", **extra):
    return new_card(name=name, task="denoise", network=copy.deepcopy(network),
                    network_data_format=copy.deepcopy(fmt), training=dict(TRAINING),
                    metrics={"nrmse": 0.1, "psnr": {"liver": 30.0}}, **extra)


def saved(tmp_path, network=UNET, name="tiny-unet", seed=0):
    torch.manual_seed(seed)
    net = build_network(network)
    card = save_model(net, tmp_path / name, make_card(network, name=name))
    return net, card, tmp_path / name


def rewrite_card(folder, **changes):
    card = json.loads((folder / "metadata.json").read_text())
    card.update(changes)
    (folder / "metadata.json").write_text(json.dumps(card))


# ------------------------------------------------------------------------------------------- round trip
def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    net, card, folder = saved(tmp_path)
    model = load_model(folder, device="cpu")
    assert isinstance(model, LoadedModel)
    assert (model.name, model.version, model.device, model.task) == ("tiny-unet", "0.1.0", "cpu", "denoise")
    assert model.sha256 == card["sha256"] == sha256_file(folder / "model.safetensors")
    assert not model.module.training and not any(p.requires_grad for p in model.module.parameters())
    x = torch.rand(1, 1, 16, 16, 16)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), model.module(x))
    assert model.provenance()["model_sha256"] == card["sha256"]
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_save_replaces_model_folder_but_not_foreign_folder(tmp_path):
    _, first, folder = saved(tmp_path, seed=0)
    _, second, _ = saved(tmp_path, seed=1)
    assert first["sha256"] != second["sha256"]
    assert load_model(folder).sha256 == second["sha256"]
    other = tmp_path / "notes"
    other.mkdir()
    (other / "thesis.docx").write_text("precious")
    with pytest.raises(NMAIError, match="not an NMAI model folder"):
        save_model(build_network(UNET), other, make_card())
    assert (other / "thesis.docx").read_text() == "precious"


def test_save_refuses_module_that_does_not_match_card(tmp_path):
    other = copy.deepcopy(UNET)
    other["kwargs"]["channels"] = [8, 16]
    with pytest.raises(NMAIError, match="does not match the card's network 'unet'"):
        save_model(build_network(other), tmp_path / "m", make_card())
    assert not (tmp_path / "m").exists()


def test_monai_bundle_layout_loads(tmp_path):
    _, _, folder = saved(tmp_path)
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (folder / "metadata.json").rename(bundle / "configs" / "metadata.json")
    (folder / "model.safetensors").rename(bundle / "models" / "model.safetensors")
    assert load_model(str(bundle)).name == "tiny-unet"


# ------------------------------------------------------------------------------------------- bad weights
def test_sha_mismatch_is_reported_before_parsing(tmp_path):
    _, card, folder = saved(tmp_path)
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(ModelFileError) as err:
        load_model(folder)
    msg = str(err.value)
    assert "is corrupt or not an NMAI model (sha256 mismatch: expected " + card["sha256"] in msg
    assert "reinstall the extension or retrain with `nmai train denoise`" in msg and "\n" not in msg


def test_truncated_file(tmp_path):
    _, _, folder = saved(tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelFileError, match="sha256 mismatch"):
        load_model(folder)
    rewrite_card(folder, sha256=sha256_file(weights))  # a user card that vouches for the broken file
    with pytest.raises(ModelFileError, match="is corrupt or not a safetensors file"):
        load_model(folder)


def test_missing_weights(tmp_path):
    _, _, folder = saved(tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelFileError, match="model.safetensors is missing; reinstall"):
        load_model(folder)


def test_foreign_safetensors_other_keys_and_shapes(tmp_path):
    from safetensors.torch import save_file

    _, _, folder = saved(tmp_path)
    weights = folder / "model.safetensors"
    save_file({"encoder.weight": torch.zeros(3, 3)}, str(weights))
    rewrite_card(folder, sha256=sha256_file(weights))
    with pytest.raises(ModelFileError, match=r"does not fit network 'unet' \(missing: .*unexpected: encoder.weight"):
        load_model(folder)
    wider = copy.deepcopy(UNET)
    wider["kwargs"]["channels"] = [8, 8]
    save_file(build_network(wider).state_dict(), str(weights))
    rewrite_card(folder, sha256=sha256_file(weights))
    with pytest.raises(ModelFileError, match="mismatched: .* network wants"):
        load_model(folder)


class _Evil:
    marker = None

    def __reduce__(self):
        return (_mark, (str(self.marker),))


def _mark(path):
    open(path, "w").write("pwned")
    return "pwned"


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickle_renamed_to_safetensors_is_never_executed(tmp_path, writer):
    _, _, folder = saved(tmp_path)
    weights = folder / "model.safetensors"
    evil = _Evil()
    evil.marker = tmp_path / "executed"
    if writer == "pickle":
        weights.write_bytes(pickle.dumps({"weight": evil}))
    else:
        torch.save({"weight": evil}, str(weights))
    with pytest.raises(ModelFileError, match="sha256 mismatch"):
        load_model(folder)
    rewrite_card(folder, sha256=sha256_file(weights))
    with pytest.raises(ModelFileError, match="is corrupt or not a safetensors file"):
        load_model(folder)
    assert not evil.marker.exists()


def test_unknown_model_and_bad_json(tmp_path):
    with pytest.raises(NMAIError, match="unknown model 'no-such-model'"):
        load_model("no-such-model")
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(NMAIError, match="no metadata.json"):
        load_model(folder)
    (folder / "metadata.json").write_text("{not json")
    with pytest.raises(NMAIError, match="not valid JSON"):
        load_model(folder)


# ------------------------------------------------------------------------------------------- registry
def test_every_shipped_model_loads_with_its_recorded_sha256():
    entries = read_registry()
    assert {e["name"] for e in entries} >= {"attenuation-dixon-unet", "attenuation-t1-unet"}
    for entry in entries:
        model = load_model(entry["name"])  # sha256 of the file checked against registry and card
        assert model.sha256 == entry["sha256"] == model.card["sha256"]
        measured = model.card["metrics"].get("validation") or model.card["metrics"].get("evaluation")
        assert model.card["training"]["steps"] > 0 and measured["cases"] > 0


def test_register_then_load_by_name(tmp_path):
    registry = tmp_path / "models.json"
    _, card, folder = saved(tmp_path)
    entry = register_model(folder, registry=registry)
    assert entry == {"name": "tiny-unet", "folder": "tiny-unet", "task": "denoise", "version": "0.1.0",
                     "sha256": card["sha256"]}
    assert list_models(registry, task="denoise") == [entry] and list_models(registry, task="triage") == []
    assert load_model("tiny-unet", registry=registry).sha256 == card["sha256"]
    data = json.loads(registry.read_text())
    data["models"][0]["sha256"] = "0" * 64
    registry.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="sha256 mismatch: expected " + "0" * 64):
        load_model("tiny-unet", registry=registry)
    with pytest.raises(NMAIError, match="must live inside"):
        register_model(folder, registry=tmp_path / "elsewhere" / "models.json")


@pytest.mark.parametrize("models, field", [
    ([{"name": "a", "folder": "/etc", "task": "denoise", "sha256": "0" * 64}], "models[0].folder"),
    ([{"name": "a", "folder": "../a", "task": "denoise", "sha256": "0" * 64}], "models[0].folder"),
    ([{"name": "a", "folder": "a", "task": "cooking", "sha256": "0" * 64}], "models[0].task"),
    ([{"name": "a", "folder": "a", "task": "denoise", "sha256": "xyz"}], "models[0].sha256"),
    ([{"name": "a", "folder": "a", "task": "denoise"}], "models[0].sha256"),
    ([{"name": "a", "folder": "a", "task": "denoise", "sha256": "0" * 64, "url": "http://x"}], "models[0].url"),
])
def test_registry_validation(tmp_path, models, field):
    path = tmp_path / "models.json"
    path.write_text(json.dumps({"nmai_registry_version": 1, "models": models}))
    with pytest.raises(NMAIError, match=re.escape(f"field '{field}'")):
        read_registry(path)


# ------------------------------------------------------------------------------------------- card checks
def _with(card, path, value):
    card = copy.deepcopy(card)
    *parents, last = path.split(".")
    node = card
    for p in parents:
        node = node[p]
    if value is KeyError:
        del node[last]
    else:
        node[last] = value
    return card


@pytest.mark.parametrize("path, value, field", [
    ("task", KeyError, "task"),
    ("task", "cooking", "task"),
    ("version", "", "version"),
    ("nmai_card_version", 99, "nmai_card_version"),
    ("sha256", "abc", "sha256"),
    ("training.seed", KeyError, "training.seed"),
    ("training.steps", -1, "training.steps"),
    ("metrics.nrmse", "good", "metrics.nrmse"),
    ("network_data_format.roi_size", [16, 16], "network_data_format.roi_size"),
    ("network_data_format.dims", 4, "network_data_format.dims"),
    ("network_data_format.context_slices", 2, "network_data_format.context_slices"),
    ("network_data_format.spacing_mm", [2, 2], "network_data_format.spacing_mm"),
    ("network_data_format.inputs.pet.units", "mCi", "network_data_format.inputs.pet.units"),
    ("network_data_format.inputs.pet.normalisation.method", "magic",
     "network_data_format.inputs.pet.normalisation.method"),
    ("network_data_format.inputs.pet.normalisation.percentile", 150,
     "network_data_format.inputs.pet.normalisation.percentile"),
    ("network_data_format.outputs.pet.normalisation.input", "ct",
     "network_data_format.outputs.pet.normalisation.input"),
    ("network_data_format.inputs.pet.normalisation",
     {"method": "same_as_input", "input": "pet"}, "network_data_format.inputs.pet.normalisation.method"),
    ("network.name", "os.system", "network.name"),
    ("network._target_", "monai.networks.nets.UNet", "network._target_"),
    ("network.kwargs.in_channels", 2, "network.kwargs.in_channels"),
    ("network.kwargs.spatial_dims", 2, "network.kwargs.spatial_dims"),
    ("network.kwargs.strides", [2, 2], "network.kwargs.strides"),
    ("network.kwargs.act", "$__import__('os').system('x')", "network.kwargs.act"),
    ("network.kwargs.act", ["PRELU", {"init": "$eval"}], "network.kwargs.act.init"),
    ("network.kwargs.norm", "torch.nn.Identity", "network.kwargs.norm"),
    ("network.kwargs.channels", [4, True], "network.kwargs.channels"),
    ("network.kwargs.evil", 1, "network.kwargs.evil"),
    ("local_fit", "yes", "local_fit"),
    ("local_fit_significance", -1.0, "local_fit_significance"),
    ("hot_spot_fit", {"ratio": [2.5, 1.5], "window": 9}, "hot_spot_fit.ratio"),
    ("hot_spot_fit", {"ratio": [0, 1.5], "window": 9}, "hot_spot_fit.ratio"),
    ("hot_spot_fit", {"ratio": [1.5, 2.5], "window": 0}, "hot_spot_fit.window"),
    ("hot_spot_fit", {"ratio": [1.5, 2.5]}, "hot_spot_fit.window"),
    ("resolution_recovery", "sharp", "resolution_recovery"),
    ("resolution_recovery", {"psf_fwhm_mm": -1.0, "iterations": 20}, "resolution_recovery.psf_fwhm_mm"),
    ("resolution_recovery", {"psf_fwhm_mm": 5.9, "iterations": 0}, "resolution_recovery.iterations"),
    ("resolution_recovery", {"psf_fwhm_mm": 5.9}, "resolution_recovery.iterations"),
    ("resolution_recovery", {"psf_fwhm_mm": 5.9, "iterations": 20, "sigma": 1}, "resolution_recovery.sigma"),
])
def test_card_validation_names_the_field(path, value, field):
    card = dict(make_card(), sha256="0" * 64)
    validate_card(card)  # the base card is valid
    with pytest.raises(CardError) as err:
        validate_card(_with(card, path, value), "m/metadata.json")
    msg = str(err.value)
    assert f"'{field}'" in msg and msg.startswith("m/metadata.json: model card field") and "\n" not in msg


def test_card_defaults_and_monai_extras():
    card = dict(make_card(), sha256="a" * 64)
    card["network_data_format"]["inputs"]["pet"]["num_channels"] = 1  # MONAI bundle field: tolerated
    card["authors"] = "NMAI"  # extra top-level bundle fields are kept
    out = validate_card(card)
    assert out["network_data_format"]["context_slices"] == 0
    assert out["network_data_format"]["outputs"]["pet"]["activation"] == "none"
    assert out["network_data_format"]["inputs"]["pet"]["normalisation"]["body_fraction"] == 0.05
    assert out["network"]["kwargs"]["kernel_size"] == 3 and out["authors"] == "NMAI"
    assert "pretrained" not in NETWORKS["densenet121"]


TINY = {
    "unet": ({"channels": [4, 8], "strides": [2]}, (2, 1, 16, 16, 16), (2, 1, 16, 16, 16)),
    "basic_unet": ({"features": [4, 4, 8, 8, 16, 4]}, (1, 1, 32, 32, 32), (1, 1, 32, 32, 32)),
    "residual_cnn": ({"features": 4, "blocks": 1}, (1, 1, 8, 8, 8), (1, 1, 8, 8, 8)),
    "residual_unet": ({"channels": [4, 8], "strides": [2]}, (2, 1, 16, 16, 16), (2, 1, 16, 16, 16)),
    "patch_discriminator": ({"channels": 4, "num_layers_d": 2}, (2, 1, 16, 16, 16), None),
    "densenet121": ({"init_features": 4, "growth_rate": 4, "block_config": [1, 1, 1, 1]}, (2, 1, 32, 32, 32),
                    (2, 1)),
    "small_cnn_classifier": ({"features": [4, 8]}, (2, 1, 16, 16, 16), (2, 1)),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_allowlisted_network_builds_and_runs(name):
    kwargs, in_shape, out_shape = TINY[name]
    net = build_network({"name": name, "kwargs": {"spatial_dims": 3, "in_channels": 1, "out_channels": 1,
                                                  **kwargs}}).eval()
    with torch.no_grad():
        y = net(torch.rand(in_shape))
    y = y[-1] if isinstance(y, list) else y  # PatchDiscriminator returns its feature maps
    if out_shape:
        assert tuple(y.shape) == out_shape
    assert torch.isfinite(y).all()


def test_build_errors_are_nmai_errors():
    with pytest.raises(NMAIError, match="not an allowed network"):
        build_network({"name": "resnet_from_the_internet", "kwargs": {}})
    with pytest.raises(NMAIError, match="network.kwargs.pretrained"):
        build_network({"name": "densenet121", "kwargs": {"spatial_dims": 3, "in_channels": 1,
                                                         "out_channels": 2, "pretrained": True}})
    with pytest.raises(NMAIError, match="global_skip"):
        build_network({"name": "residual_cnn", "kwargs": {"spatial_dims": 2, "in_channels": 3,
                                                          "out_channels": 2}})
    spec = build_network({"name": "residual_cnn", "kwargs": {"spatial_dims": 2, "in_channels": 3,
                                                             "out_channels": 1, "features": 2, "blocks": 0}})
    assert np.isfinite(spec(torch.rand(1, 3, 8, 8)).detach().numpy()).all()
