"""--pretrained as torchvision and timm users expect: the libraries' own caches and downloads, and
offline a clear stop naming the file and the folder, never a random init. Nothing is downloaded:
the network is cut (name resolution fails) or the downloader is replaced by a fake."""
from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
import torchvision.models as tvm
from torchvision.models import get_weight

from benchmark import paths
from benchmark.errors import WeightsMissingError
from benchmark.models import create_model, find_weights, get_spec, weights


@pytest.fixture(autouse=True)
def one_thread_private_caches(tmp_path, monkeypatch):
    """One core; torch hub and the Hugging Face cache in tmp_path (nothing a developer has is seen)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))  # what torch.hub.set_dir sets
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def online(monkeypatch):
    """Downloads allowed, as on a user's machine ($CXR_OFFLINE unset; conftest sets it for every test)."""
    monkeypatch.delenv(paths.ENV_OFFLINE, raising=False)


@pytest.fixture
def no_network(monkeypatch):
    """Every host name fails to resolve, as on a machine without a network."""
    def fail(*_args, **_kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "network cut by the test")

    monkeypatch.setattr(socket, "getaddrinfo", fail)


def _hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_file(weights: str) -> str:
    """The cache file name torchvision itself expects for a weights enum (from its URL)."""
    return Path(urlparse(get_weight(weights).url).path).name


def _random_resnet18_state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {k: v.clone() for k, v in tvm.resnet18(weights=None).state_dict().items()}


def _assert_backbone_is(model, saved: dict, head: str = "fc") -> None:
    state = model.net.state_dict()
    for key, value in saved.items():
        if not key.startswith(head + "."):
            torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=key)
    assert model.pretrained is True and model.classifier_layer.weight.shape[0] == 3


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_a_file_in_torch_hubs_cache_is_used_without_network(online, no_network):
    assert _hub_checkpoints() == paths.torch_hub_checkpoints()
    saved = _random_resnet18_state(seed=11)
    name = _torchvision_file("ResNet18_Weights.IMAGENET1K_V1")
    assert name == "resnet18-f37072fd.pth"
    _hub_checkpoints().mkdir(parents=True)
    torch.save(saved, _hub_checkpoints() / name)

    model = create_model("resnet18", 3, pretrained=True)
    _assert_backbone_is(model, saved)
    # torchvision's own mechanism reads the same cached file without a network: the same weights
    theirs = tvm.resnet18(weights=tvm.ResNet18_Weights.DEFAULT).state_dict()
    for key, value in model.net.state_dict().items():
        if not key.startswith("fc."):
            torch.testing.assert_close(value, theirs[key], rtol=0, atol=0, msg=key)


def test_a_missing_file_is_downloaded_by_torchvision_into_torch_hubs_cache(online, monkeypatch):
    saved = _random_resnet18_state(seed=12)
    calls = []

    def fake_download(url, dst, hash_prefix=None, progress=True):  # torch.hub's downloader, network-free
        calls.append((url, Path(dst), hash_prefix))
        torch.save(saved, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setattr(weights, "unreachable", lambda url: "")  # as on a machine with a network
    model = create_model("resnet18", 3, pretrained=True)
    _assert_backbone_is(model, saved)
    url = get_weight("ResNet18_Weights.IMAGENET1K_V1").url
    assert calls == [(url, _hub_checkpoints() / "resnet18-f37072fd.pth", "f37072fd")]  # hash checked
    # the next run finds it in the cache and does not download again
    create_model("resnet18", 3, pretrained=True)
    assert len(calls) == 1


@pytest.mark.parametrize("name,file_name,folder", [
    ("resnet18", "resnet18-f37072fd.pth", "torch-hub"),                         # torchvision
    ("xception", "xception-43020ad28.pth", "torch-hub"),                        # timm, weights by URL
    ("inception_resnet_v2", "inception_resnet_v2.safetensors", "hf-cache"),     # timm, Hugging Face hub
])
def test_offline_stops_naming_the_file_and_where_to_put_it(name, file_name, folder, online, no_network, tmp_path):
    with pytest.raises(WeightsMissingError) as info:
        create_model(name, 3, pretrained=True)
    message = str(info.value)
    where = _hub_checkpoints() if folder == "torch-hub" else tmp_path / "hf-cache"
    assert file_name in message and str(where) in message, message
    assert "no network (cannot resolve" in message and "--weights-dir" in message and "without --pretrained" in message
    leftovers = list(_hub_checkpoints().rglob("*")) if _hub_checkpoints().is_dir() else []
    assert leftovers == []  # no partial file that a later run would take for the weights


@pytest.mark.parametrize("name,file_name", [("resnet18", "resnet18-f37072fd.pth"),    # torchvision -> torch hub
                                            ("xception", "xception-43020ad28.pth")])  # timm -> torch hub
def test_a_failing_library_download_stops_with_the_same_message(name, file_name, online, no_network, monkeypatch):
    """The host resolves (a proxy, a DNS cache) but the library's own download fails."""
    monkeypatch.setattr(weights, "unreachable", lambda url: "")
    with pytest.raises(WeightsMissingError) as info:
        create_model(name, 3, pretrained=True)
    message = str(info.value)
    assert file_name in message and str(_hub_checkpoints()) in message
    assert "the download failed (URLError" in message and "--weights-dir" in message
    assert not (_hub_checkpoints() / file_name).exists()


def test_cxr_offline_never_tries_to_download(monkeypatch):
    monkeypatch.setenv(paths.ENV_OFFLINE, "1")
    tried = []
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: tried.append(a))
    with pytest.raises(WeightsMissingError) as info:
        find_weights(get_spec("resnet18"))
    assert tried == []
    assert "resnet18-f37072fd.pth" in str(info.value) and paths.ENV_OFFLINE in str(info.value)
    assert str(_hub_checkpoints()) in str(info.value)


def test_network_check_resolves_the_host_or_the_proxy(monkeypatch):
    asked = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: asked.append(host) or [])
    for var in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    assert weights.unreachable("https://download.pytorch.org/models/resnet18-f37072fd.pth") == ""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert weights.unreachable("https://huggingface.co") == ""
    assert asked == ["download.pytorch.org", "proxy.example"]


def test_offline_switch_reads_common_spellings():
    assert not paths.offline({}) and not paths.offline({paths.ENV_OFFLINE: "0"})
    assert not paths.offline({paths.ENV_OFFLINE: "false"})
    assert paths.offline({paths.ENV_OFFLINE: "1"}) and paths.offline({paths.ENV_OFFLINE: "yes"})
