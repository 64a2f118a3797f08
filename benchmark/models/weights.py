"""Pretrained ImageNet weights the way torchvision and timm users get them, never a silent random init.

Order: a file in the user's `--weights-dir`, then the libraries' own caches (torch hub's
`checkpoints/`, honouring TORCH_HOME; the Hugging Face hub cache, honouring HF_HUB_CACHE /
HF_HOME). When none holds the file and the network allows, the library's own mechanism fetches
it into that cache: torchvision's `get_weight(...).get_state_dict()` (torch hub's
`load_state_dict_from_url`, hash checked) and timm's `create_model(name, pretrained=True)`
(the Hugging Face hub, or torch hub for url-only weights). $CXR_OFFLINE=1 turns that off. The
file is then loaded from the cache with loaders that cannot run code (`torch.load(weights_only=True)`,
safetensors). When the weights can be neither found nor fetched, WeightsMissingError names the
file, every place looked, why the download failed and where to put the file.
"""
from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
from torch import nn

from benchmark import paths
from benchmark.errors import WeightsMissingError
from benchmark.paths import hf_hub_cache, torch_hub_checkpoints

if TYPE_CHECKING:  # zoo imports this module; only the type is needed here
    from benchmark.models.zoo import ModelSpec

log = logging.getLogger(__name__)

HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader reads, in its order
# Seconds a download may wait on one socket operation (connect, a read): a machine whose
# network drops packets fails with the usual message instead of hanging.
DOWNLOAD_SOCKET_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class WeightsSource:
    """What a spec's pretrained weights are called and where they come from upstream."""

    file_name: str   # canonical file name, e.g. resnet18-f37072fd.pth or model.safetensors
    url: str = ""
    hf_hub_id: str = ""


def weights_source(spec: ModelSpec) -> WeightsSource:
    """Look up the upstream file of spec.weights in the library's own tables (no network)."""
    if spec.family == "torchvision":
        from torchvision.models import get_weight

        url = get_weight(spec.weights).url
        return WeightsSource(file_name=Path(urlparse(url).path).name, url=url)
    if spec.family == "timm":
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(spec.weights)
        if cfg is None:
            raise WeightsMissingError(f"timm has no pretrained config {spec.weights!r} for {spec.name}")
        hf_hub_id = cfg.hf_hub_id or ""
        url = cfg.url or ""
        name = Path(urlparse(url).path).name if url and not hf_hub_id else HF_FILES[0]
        return WeightsSource(file_name=name, url=url, hf_hub_id=hf_hub_id)
    raise WeightsMissingError(f"{spec.name} ({spec.family}) has no pretrained weights: it is trained from scratch")


def _dir_candidates(spec: ModelSpec, source: WeightsSource, weights_dir: Path) -> list[Path]:
    """File names accepted in --weights-dir: the upstream name and a few obvious renamings."""
    stem = Path(source.file_name).stem
    names = [f"{spec.name}.safetensors", f"{spec.name}.pth"]
    if spec.family == "torchvision":
        names = [source.file_name, f"{stem}.safetensors", *names]
    else:  # timm: arch name and full pretrained tag, e.g. legacy_xception / legacy_xception.tf_in1k
        arch = spec.weights.split(".")[0]
        names += [f"{arch}.safetensors", f"{spec.weights}.safetensors", f"{arch}.pth", f"{spec.weights}.pth"]
        if source.url and not source.hf_hub_id:
            names.insert(0, source.file_name)
    paths = [weights_dir / n for n in dict.fromkeys(names)]
    if source.hf_hub_id:  # a copied hub snapshot: weights_dir/timm/<model>.<tag>/model.safetensors
        paths += [weights_dir / source.hf_hub_id / f for f in HF_FILES]
    return paths


def _hf_cached(hf_hub_id: str) -> tuple[Path | None, str]:
    """(file, description of where looked) for a repo in the Hugging Face cache."""
    cache = hf_hub_cache()
    where = f"Hugging Face cache {cache} (repo {hf_hub_id}, {' or '.join(HF_FILES)})"
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None, where + " [huggingface_hub not installed]"
    if not cache.is_dir():
        return None, where
    for file_name in HF_FILES:
        found = try_to_load_from_cache(hf_hub_id, file_name, cache_dir=str(cache))
        if isinstance(found, str) and Path(found).is_file():  # else None or the 'known missing' sentinel
            return Path(found), where
    return None, where


def _find_local(spec: ModelSpec, source: WeightsSource, weights_dir: Path | None) -> tuple[Path | None, list[str]]:
    """(the first local file holding the weights or None, every place looked)."""
    looked: list[str] = []
    if weights_dir is not None:
        for path in _dir_candidates(spec, source, Path(weights_dir)):
            if path.is_file():
                return path, looked
            looked.append(str(path))
    if source.hf_hub_id:
        found, where = _hf_cached(source.hf_hub_id)
        if found is not None:
            return found, looked
        looked.append(where)
    if source.url:  # torchvision's, and timm's url downloads, land in torch hub's checkpoints/
        path = torch_hub_checkpoints() / source.file_name
        if path.is_file():
            return path, looked
        looked.append(str(path))
    return None, looked


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Give the libraries' downloaders (urllib without a timeout) one, for the download only."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def _download_host_url(source: WeightsSource) -> str:
    if source.hf_hub_id:
        try:
            from huggingface_hub import constants
        except ImportError:
            return "https://huggingface.co"
        return constants.ENDPOINT
    return source.url


def unreachable(url: str) -> str:
    """'' when the host of `url` (or the proxy that would carry the request) resolves, else why not.

    A machine without a network fails here at once; the libraries would retry first (the
    Hugging Face hub for about a minute per file).
    """
    import urllib.request

    proxy = urllib.request.getproxies().get(urlparse(url).scheme)
    host = urlparse(proxy or url).hostname
    if not host:
        return f"no host in {url!r}"
    try:
        socket.getaddrinfo(host, None)
    except OSError as exc:
        return f"cannot resolve {host}: {exc}"
    return ""


def download_weights(spec: ModelSpec) -> None:
    """Fetch spec's ImageNet weights into the library's own cache with the library's own code.

    torchvision: the weights enum's get_state_dict, i.e. torch.hub.load_state_dict_from_url into
    torch hub's checkpoints/ with the hash in the file name checked. timm: create_model with
    pretrained=True, i.e. the Hugging Face hub cache (or torch hub for url-only weights).
    Raises whatever the library raises when it cannot (no network, refused, bad hash).
    """
    log.info("downloading ImageNet weights %s for %s (the library's own cache)", spec.weights, spec.name)
    with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
        if spec.family == "torchvision":
            from torchvision.models import get_weight

            get_weight(spec.weights).get_state_dict(progress=True, check_hash=True, map_location="cpu",
                                                    weights_only=True)
        elif spec.family == "timm":
            import timm

            timm.create_model(spec.weights, pretrained=True)


def find_weights(spec: ModelSpec, weights_dir: Path | None = None, *, download: bool | None = None) -> Path:
    """The file holding spec's pretrained weights: local, else fetched by the library into its cache.

    `download`: None follows $CXR_OFFLINE (downloads allowed unless it is set). When the weights
    can be neither found nor fetched, WeightsMissingError says which file, where it was looked
    for, why it was not downloaded, and where to put it.
    """
    source = weights_source(spec)
    found, looked = _find_local(spec, source, weights_dir)
    if found is not None:
        return found
    if download is None:
        download = not paths.offline()
    if not download:
        raise WeightsMissingError(_missing_message(spec, source, looked, f"downloads are off (${paths.ENV_OFFLINE})"))
    no_network = unreachable(_download_host_url(source))
    if no_network:
        raise WeightsMissingError(_missing_message(spec, source, looked, f"no network ({no_network})"))
    try:
        download_weights(spec)
    except Exception as exc:  # no network, a proxy refusing, a bad hash: each library raises its own types
        reason = f"{type(exc).__name__}: {exc}"
        raise WeightsMissingError(_missing_message(spec, source, looked, f"the download failed ({reason[:300]})")
                                  ) from None
    found, _ = _find_local(spec, source, None)
    if found is None:
        raise WeightsMissingError(_missing_message(
            spec, source, looked, "the download finished but the file is not where the library caches it"))
    log.info("ImageNet weights for %s downloaded to %s", spec.name, found)
    return found


def _missing_message(spec: ModelSpec, source: WeightsSource, looked: list[str], why: str) -> str:
    if spec.family == "torchvision" or not source.hf_hub_id:
        wanted = source.file_name
        fix = (f"put {wanted} (from {source.url}) in --weights-dir DIR or in $TORCH_HOME/hub/checkpoints/ "
               f"(now {torch_hub_checkpoints()})")
    else:
        wanted = f"{spec.name}.safetensors"
        fix = (f"put {wanted} (the {source.file_name} of https://huggingface.co/{source.hf_hub_id}) in "
               f"--weights-dir DIR, or copy a Hugging Face cache holding {source.hf_hub_id} to "
               f"$HF_HUB_CACHE (now {hf_hub_cache()})")
    return (f"pretrained weights {spec.weights} for {spec.name} not found: expected {wanted}. "
            f"Looked in: {'; '.join(looked)}. They were not downloaded: {why}. To use them, {fix}, "
            f"or run without --pretrained.")


_DENSENET_OLD_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def remap_densenet_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision's published DenseNet files use 'norm.1' where the module says 'norm1'.

    torchvision renames them in its own loader, which we bypass to avoid its download.
    """
    out = {}
    for key, value in state_dict.items():
        match = _DENSENET_OLD_KEY.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a .safetensors or .pth file; neither loader can execute code from the file."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt, truncated or pickled-code files raise many types
        raise WeightsMissingError(f"weights file {path} cannot be read: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsMissingError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def load_into(net: nn.Module, path: Path, what: str) -> None:
    """Strictly load a torchvision weights file into a net built with the ImageNet layout.

    Strict, because a file for another architecture or variant would otherwise load partially
    and leave the rest at random init without a word.
    """
    state = remap_densenet_keys(read_state_dict(path))
    problem = _mismatch(net.state_dict(), state)
    if problem:
        raise WeightsMissingError(f"weights file {path} does not fit {what}: {problem}")
    net.load_state_dict(state, strict=True)
    log.info("loaded %s ImageNet weights from %s", what, path)


def _mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], show: int = 4) -> str:
    """A short account of key and shape differences ('' when the file fits).

    BatchNorm's num_batches_tracked may be absent: files saved before PyTorch 0.4.1 lack it and
    BatchNorm fills it in on load.
    """
    missing = [k for k in expected if k not in found and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in found if k not in expected]
    shapes = [f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in found and found[k].shape != v.shape]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if items:
            more = f" and {len(items) - show} more" if len(items) > show else ""
            parts.append(f"{len(items)} {label} ({', '.join(items[:show])}{more})")
    return "; ".join(parts)
