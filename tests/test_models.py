"""The model zoo: every registered net trains, exposes its CAM layer, and loads ImageNet weights from local files
(downloads: tests/test_pretrained_weights.py)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file
from torch import nn

from benchmark.errors import UnknownNameError, WeightsMissingError
from benchmark.models import (
    ROSTERS,
    XrayClassifier,
    create_model,
    find_weights,
    get_spec,
    list_models,
    register_model,
    resolve_models,
)
from benchmark.models.weights import remap_densenet_keys
from tests.conftest import zoo_params

PAPER = ["alexnet", "vgg16", "vgg19", "googlenet", "resnet18", "resnet50", "resnet101", "inception_v3",
         "inception_resnet_v2", "densenet201", "xception", "mobilenet_v2", "squeezenet1_1", "shufflenet_v2_x1_0"]


@pytest.fixture(autouse=True)
def one_thread_no_caches(tmp_path, monkeypatch):
    """One core, and empty library caches so no test can see weights a developer has lying around."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield
    torch.set_num_threads(threads)


def _capture(module: nn.Module, store: list):
    """Keep a copy: a later in-place op (as torchvision DenseNet's F.relu) must not change what we saw."""
    return module.register_forward_hook(lambda _m, _i, out: store.append(out.detach().clone()))


# ------------------------------------------------------------------ registry


def test_registry_holds_the_paper_roster_and_shallow():
    assert set(list_models()) == set(PAPER) | {"shallow"}
    assert ROSTERS["paper"] == [*PAPER, "shallow"]
    assert ROSTERS["default"] == ["shallow", "resnet18"]
    assert list_models("resnet*") == ["resnet101", "resnet18", "resnet50"]
    assert list_models("nothing*") == []


def test_specs_are_consistent():
    for name in list_models():
        spec = get_spec(name)
        assert spec.name == name
        assert spec.input_size == (299 if name in {"inception_v3", "inception_resnet_v2", "xception"} else 224)
        assert spec.min_input_size <= spec.input_size
        assert spec.gap_head == (name not in {"alexnet", "vgg16", "vgg19", "squeezenet1_1"})
        assert spec.family == ("scratch" if name == "shallow" else "timm" if name in {"xception", "inception_resnet_v2"}
                               else "torchvision")
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_spec("resnet18").input_size = 64


def test_timm_specs_use_the_pretrained_configs_normalisation():
    from timm.models import get_pretrained_cfg

    for name in ("xception", "inception_resnet_v2"):
        spec = get_spec(name)
        cfg = get_pretrained_cfg(spec.weights)
        assert tuple(cfg.mean) == spec.mean and tuple(cfg.std) == spec.std
        assert cfg.input_size[-1] == spec.input_size


def test_unknown_name_lists_choices_and_close_matches():
    with pytest.raises(UnknownNameError) as info:
        get_spec("resnet181")
    message = str(info.value)
    assert all(name in message for name in list_models())
    assert "did you mean resnet18" in message
    assert info.value.suggestions[0] == "resnet18"
    with pytest.raises(KeyError):  # UnknownNameError is a KeyError too
        create_model("lenet", 2)


def test_resolve_models():
    assert resolve_models("paper") == ROSTERS["paper"]
    assert resolve_models("default") == ["shallow", "resnet18"]
    assert resolve_models(" ResNet18 , shallow,resnet18") == ["resnet18", "shallow"]
    assert resolve_models("vgg*,default") == ["vgg16", "vgg19", "shallow", "resnet18"]
    with pytest.raises(UnknownNameError, match="alexnett"):
        resolve_models("resnet18,alexnett")
    with pytest.raises(UnknownNameError):
        resolve_models(" , ")
    with pytest.raises(UnknownNameError):
        resolve_models("nothing*")


def test_register_model_rejects_duplicates_and_bad_specs():
    with pytest.raises(ValueError, match="twice"):
        register_model(name="shallow", family="scratch", input_size=32, min_input_size=16,
                       cam_target_layer="features", classifier="classifier", gap_head=True, weights="",
                       in_chans=1, mean=(0.5,), std=(0.25,))(lambda n, w: None)
    with pytest.raises(ValueError, match="family"):
        register_model(family="keras", input_size=32, min_input_size=16, cam_target_layer="x",
                       classifier="y", gap_head=True, weights="w")(lambda n, w: None)
    with pytest.raises(ValueError, match="min_input_size"):
        register_model(family="scratch", input_size=32, min_input_size=64, cam_target_layer="x",
                       classifier="y", gap_head=True, weights="")(lambda n, w: None)


# ------------------------------------------------------------------ every net trains


@pytest.mark.parametrize("name", zoo_params())
@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_builds_and_takes_one_training_step(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3)
    spec = model.spec
    assert isinstance(model, XrayClassifier) and model.num_classes == 3 and model.pretrained is False
    size = spec.min_input_size
    x = torch.rand(2, 1, size, size)
    y = torch.tensor([0, 2])
    features: list = []
    handle = _capture(model.cam_target_layer, features)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    logits = model(x)
    handle.remove()
    assert logits.shape == (2, 3)
    assert len(features) == 1 and features[0].dim() == 4 and features[0].shape[0] == 2
    loss = nn.functional.cross_entropy(logits, y)
    loss.backward()
    optimizer.step()
    after = list(model.parameters())
    head = next(i for i, p in enumerate(after) if p is model.classifier_layer.weight)
    assert not torch.equal(before[0], after[0]), "the first layer did not learn"
    assert not torch.equal(before[head], after[head]), "the head did not learn"
    assert model.classifier_layer.weight.shape[0] == 3


@pytest.mark.parametrize("name", zoo_params([n for n in list_models() if get_spec(n).gap_head]))
def test_gap_heads_are_exactly_linear_of_the_pooled_cam_layer(name):
    """What makes the original CAM method exact; also guards DenseNet's moved ReLU."""
    torch.manual_seed(1)
    model = create_model(name, num_classes=3).eval()
    features: list = []
    handle = _capture(model.cam_target_layer, features)
    with torch.no_grad():
        logits = model(torch.rand(1, 1, 96, 96))
        handle.remove()
        pooled = features[0].float().mean(dim=(2, 3))
        head = model.classifier_layer
        assert isinstance(head, nn.Linear)
        torch.testing.assert_close(head(pooled), logits, rtol=1e-4, atol=1e-4)


def test_forward_normalises_inside_the_model():
    torch.manual_seed(2)
    model = create_model("resnet18", 2).eval()
    x = torch.rand(2, 1, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.net((x.repeat(1, 3, 1, 1) - mean) / std))
        torch.testing.assert_close(model(x.repeat(1, 3, 1, 1)), model(x))  # 3-channel input also accepted
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()  # spec-derived, not saved
    assert model.normalization == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "in_chans": 3}
    with pytest.raises(ValueError, match="N x 1 x H x W"):
        model(torch.rand(1, 2, 32, 32))

    shallow = create_model("shallow", 2).eval()
    assert shallow.net.features[0][0].in_channels == 1
    assert shallow.normalization == {"mean": [0.5], "std": [0.25], "in_chans": 1}
    with torch.no_grad():
        torch.testing.assert_close(shallow(x), shallow.net((x - 0.5) / 0.25))
    assert sum(p.numel() for p in shallow.parameters()) < 500_000


def test_googlenet_without_transform_input_matches_torchvisions_pretrained_preprocessing():
    """Our [-1, 1] scaling of raw pixels equals torchvision's ImageNet-normalise + transform_input."""
    torch.manual_seed(3)
    ours = create_model("googlenet", 1000).eval()
    assert ours.net.aux1 is None and ours.net.aux_logits is False and ours.net.transform_input is False
    theirs = tvm.googlenet(weights=None, aux_logits=False, transform_input=True, init_weights=False).eval()
    theirs.load_state_dict(ours.net.state_dict())
    x = torch.rand(1, 1, 64, 64)
    imagenet = (x.repeat(1, 3, 1, 1) - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(imagenet), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ pretrained weights: local files ($CXR_OFFLINE=1)


@pytest.mark.parametrize("name,file_name", [("resnet18", "resnet18-f37072fd.pth"),
                                            ("xception", "xception-43020ad28.pth")])
def test_pretrained_without_files_raises_naming_the_file_and_places(name, file_name, tmp_path):
    with pytest.raises(WeightsMissingError) as info:
        create_model(name, 3, pretrained=True)
    message = str(info.value)
    assert file_name in message
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in message
    assert "--weights-dir" in message
    with pytest.raises(WeightsMissingError) as info:
        create_model(name, 3, pretrained=True, weights_dir=tmp_path / "weights")
    assert str(tmp_path / "weights" / file_name) in str(info.value)


def test_pretrained_hf_model_missing_names_the_hub_repo(tmp_path):
    with pytest.raises(WeightsMissingError) as info:
        find_weights(get_spec("inception_resnet_v2"), tmp_path / "weights")
    message = str(info.value)
    assert "timm/inception_resnet_v2.tf_in1k" in message and "inception_resnet_v2.safetensors" in message
    assert str(tmp_path / "hf-cache") in message


def _assert_loaded(model, saved: dict, head: str):
    state = model.net.state_dict()
    for key, value in saved.items():
        if key.startswith(head + "."):
            continue
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert model.pretrained is True
    assert model.classifier_layer.weight.shape[0] == 3


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_torchvision_weights_from_weights_dir(suffix, tmp_path):
    torch.manual_seed(4)
    saved = {k: v.clone() for k, v in tvm.resnet18(weights=None).state_dict().items()}
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    path = weights_dir / f"resnet18-f37072fd{suffix}"
    torch.save(saved, path) if suffix == ".pth" else save_file(saved, str(path))
    model = create_model("resnet18", 3, pretrained=True, weights_dir=weights_dir)
    _assert_loaded(model, saved, "fc")


def test_torchvision_weights_from_torch_hub_cache_drop_aux_heads(tmp_path):
    torch.manual_seed(5)
    net = tvm.googlenet(weights=None, aux_logits=True, init_weights=False)
    saved = net.state_dict()
    cache = tmp_path / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(saved, cache / "googlenet-1378be20.pth")
    model = create_model("googlenet", 3, pretrained=True)
    _assert_loaded(model, {k: v for k, v in saved.items() if not k.startswith("aux")}, "fc")
    assert model.net.aux1 is None and model.net.aux2 is None
    assert not any(k.startswith("aux") for k in model.state_dict())
    logits = model.train()(torch.rand(2, 1, 32, 32))
    assert isinstance(logits, torch.Tensor) and logits.shape == (2, 3)  # no aux outputs in training


def test_a_weights_file_for_another_net_fails_loudly(tmp_path):
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    save_file({"conv.weight": torch.zeros(2, 2)}, str(weights_dir / "resnet18-f37072fd.safetensors"))
    with pytest.raises(WeightsMissingError, match="does not fit resnet18"):
        create_model("resnet18", 3, pretrained=True, weights_dir=weights_dir)
    (weights_dir / "resnet50-0676ba61.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsMissingError, match="cannot be read"):
        create_model("resnet50", 3, pretrained=True, weights_dir=weights_dir)


def test_timm_weights_from_weights_dir_safetensors(tmp_path):
    import timm

    torch.manual_seed(6)
    saved = {k: v.clone().contiguous() for k, v in timm.create_model("legacy_xception").state_dict().items()}
    weights_dir = tmp_path / "weights"
    weights_dir.mkdir()
    save_file(saved, str(weights_dir / "xception.safetensors"))
    model = create_model("xception", 3, pretrained=True, weights_dir=weights_dir)
    _assert_loaded(model, saved, "fc")


def test_shallow_has_no_pretrained_weights_and_says_so(caplog):
    model = create_model("shallow", 2, pretrained=True)
    assert model.pretrained is False
    assert "from scratch" in caplog.text


def test_densenet_published_key_names_are_remapped():
    old = {"features.denseblock1.denselayer1.norm.1.weight": torch.ones(1),
           "features.denseblock1.denselayer1.conv.2.weight": torch.zeros(1),
           "features.denseblock1.denselayer1.norm.2.num_batches_tracked": torch.zeros(()),
           "features.norm5.weight": torch.ones(2)}
    assert set(remap_densenet_keys(old)) == {"features.denseblock1.denselayer1.norm1.weight",
                                             "features.denseblock1.denselayer1.conv2.weight",
                                             "features.denseblock1.denselayer1.norm2.num_batches_tracked",
                                             "features.norm5.weight"}
