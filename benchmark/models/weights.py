"""Pretrained ImageNet weights from files already on this machine: never a download.

The benchmark machines have no network, so asking torchvision or timm for `pretrained=True` the
usual way would hang or fail deep inside a download. Instead we look, in order, in the user's
`--weights-dir` and in the libraries' own caches (torch hub's `checkpoints/`, honouring
TORCH_HOME; the Hugging Face hub cache, honouring HF_HUB_CACHE / HF_HOME), and load the first
file found with loaders that cannot run code (`torch.load(weights_only=True)`, safetensors).
When nothing is found, WeightsMissingError names the file, every place looked and where to put
it: a run that asked for ImageNet weights never silently trains from random init.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import torch
from torch import nn

from benchmark.errors import WeightsMissingError
from benchmark.paths import hf_hub_cache, torch_hub_checkpoints

if TYPE_CHECKING:  # zoo imports this module; only the type is needed here
    from benchmark.models.zoo import ModelSpec

log = logging.getLogger(__name__)

HF_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub loader reads, in its order


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


def find_weights(spec: ModelSpec, weights_dir: Path | None = None) -> Path:
    """The local file holding spec's pretrained weights, or WeightsMissingError saying where to put it."""
    source = weights_source(spec)
    looked: list[str] = []
    if weights_dir is not None:
        for path in _dir_candidates(spec, source, Path(weights_dir)):
            if path.is_file():
                return path
            looked.append(str(path))
    if source.hf_hub_id:
        found, where = _hf_cached(source.hf_hub_id)
        if found is not None:
            return found
        looked.append(where)
    if source.url:  # torchvision's, and timm's url downloads, land in torch hub's checkpoints/
        path = torch_hub_checkpoints() / source.file_name
        if path.is_file():
            return path
        looked.append(str(path))
    raise WeightsMissingError(_missing_message(spec, source, looked))


def _missing_message(spec: ModelSpec, source: WeightsSource, looked: list[str]) -> str:
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
            f"Looked in: {'; '.join(looked)}. This machine cannot download them; {fix}, "
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
