"""Bring your own model: any torchvision or timm architecture with the user's weights, behind XrayClassifier.

The registry (zoo.py) holds the study's architectures; an imported model is any other one a
user trained elsewhere. It gets a ModelSpec built from its checkpoint sidecar instead of a
registry entry: the library that builds it, the input channels its first convolution takes
(1 for a model trained on grayscale, 3 for the usual RGB-shaped one, which XrayClassifier
feeds the grayscale channel repeated), its normalisation, and the CAM layer and classifier
found by `benchmark.cams.layers.find_net_layers` when it was imported. Building never
downloads: only `weights=None` / `pretrained=False` architectures are built here.
"""
from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import BenchmarkError, UnknownNameError
from benchmark.models.statedict import KeyDiff, align_prefixes, key_diff, load_strict
from benchmark.models.zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    ModelSpec,
    XrayClassifier,
)

LIBRARIES = ("torchvision", "timm")
ORIGIN = "imported"  # the sidecar's `origin` for these checkpoints
IMPORTED_DIR = "imported"  # their default folder, under the checkpoint folder
DEFAULT_INPUT_SIZE = 224

#: --normalization NAME -> (mean, std, help); per RGB channel, averaged for a model with one channel.
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...], str]] = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD, "ImageNet mean/std, as torchvision's and most timm weights"),
    "inception": (INCEPTION_MEAN, INCEPTION_STD, "pixels scaled to [-1, 1] (TF-ported weights)"),
    "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "pixels in [0, 1] as they are"),
}
DEFAULT_NORMALIZATION = "imagenet"

# torchvision builders whose defaults add auxiliary heads the tool never uses (and state dicts often lack)
_TV_KWARGS = {"googlenet": {"aux_logits": False, "init_weights": False},
              "inception_v3": {"aux_logits": False, "init_weights": False}}
_AUX_PREFIXES = ("aux1.", "aux2.", "AuxLogits.")


# ----------------------------------------------------------------------------- libraries

@functools.cache
def _torchvision_names() -> frozenset[str]:
    from torchvision import models as tvm
    return frozenset(tvm.list_models(module=tvm))


def has_arch(library: str, arch: str) -> bool:
    if library == "torchvision":
        return arch in _torchvision_names()
    if library == "timm":
        import timm
        return timm.is_model(arch)
    raise UnknownNameError("model library", library, LIBRARIES)


def libraries_for(arch: str, library: str = "auto") -> list[str]:
    """The libraries to try for `arch`: the one given, or (auto) those that know it, torchvision first."""
    if library != "auto":
        if library not in LIBRARIES:
            raise UnknownNameError("model library", library, (*LIBRARIES, "auto"))
        if not has_arch(library, arch):
            raise BenchmarkError(f"{library} has no architecture {arch!r}{_suggest(arch)}")
        return [library]
    found = [lib for lib in LIBRARIES if has_arch(lib, arch)]
    if not found:
        raise BenchmarkError(f"neither torchvision nor timm has an architecture {arch!r}{_suggest(arch)}")
    return found


def _suggest(arch: str) -> str:
    import timm
    close = difflib.get_close_matches(arch, sorted(_torchvision_names() | set(timm.list_models())), n=4, cutoff=0.7)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def build_net(arch: str, library: str, num_classes: int, in_chans: int = 3) -> nn.Module:
    """A randomly initialised `arch` from `library` with `num_classes` outputs and `in_chans` inputs."""
    if library == "torchvision":
        from torchvision import models as tvm
        net = tvm.get_model(arch, weights=None, num_classes=num_classes, **_TV_KWARGS.get(arch, {}))
        if in_chans != 3:
            _replace_first_conv(net, in_chans)
        return net
    if library == "timm":
        import timm
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)
    raise UnknownNameError("model library", library, LIBRARIES)


def first_conv(net: nn.Module) -> tuple[str, nn.Conv2d] | None:
    """The first Conv2d in module order: the stem, whose input channels are the image's."""
    return next(((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)), None)


def _replace_first_conv(net: nn.Module, in_chans: int) -> None:
    found = first_conv(net)
    if found is None:
        raise BenchmarkError(f"{type(net).__name__} has no convolution to take {in_chans}-channel images")
    name, conv = found
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode)
    parent, _, child = name.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, child, new)


def _head(net: nn.Module, num_classes: int) -> str | None:
    """The last Linear / Conv2d in module order with `num_classes` outputs: the classifier head."""
    last = None
    for name, module in net.named_modules():
        out = module.out_features if isinstance(module, nn.Linear) else \
            module.out_channels if isinstance(module, nn.Conv2d) else None
        if out == num_classes:
            last = name
    return last


# ----------------------------------------------------------------------------- normalisation

def normalization(in_chans: int, name: str | None = None, mean: list[float] | None = None,
                  std: list[float] | None = None) -> dict:
    """The sidecar's `normalization`: a named one, or explicit per-channel lists (one value or in_chans)."""
    if (mean is None) != (std is None):
        raise BenchmarkError("--mean and --std go together")
    if mean is not None:
        if name:
            raise BenchmarkError("give --normalization or --mean/--std, not both")
        values = []
        for what, given in (("mean", mean), ("std", std)):
            if len(given) not in (1, in_chans):
                raise BenchmarkError(f"--{what} needs 1 or {in_chans} values (the model takes {in_chans} channels), "
                                     f"got {len(given)}")
            values.append([float(v) for v in given] * (in_chans if len(given) == 1 else 1))
        if any(s <= 0 for s in values[1]):
            raise BenchmarkError("--std values must be positive")
        return {"name": "custom", "mean": values[0], "std": values[1], "in_chans": in_chans}
    name = name or DEFAULT_NORMALIZATION
    if name not in NORMALIZATIONS:
        raise UnknownNameError("normalization", name, NORMALIZATIONS)
    rgb_mean, rgb_std, _ = NORMALIZATIONS[name]
    if in_chans == 3:
        m, s = list(rgb_mean), list(rgb_std)
    else:  # one grey channel (or another count): the mean over RGB, repeated
        m, s = [sum(rgb_mean) / 3] * in_chans, [sum(rgb_std) / 3] * in_chans
    return {"name": name, "mean": m, "std": s, "in_chans": in_chans}


# ----------------------------------------------------------------------------- fitting the weights

@dataclass
class FittedNet:
    """A net holding the user's weights, and what it took to fit them."""

    net: nn.Module
    library: str
    in_chans: int
    prefix: str                 # removed from every key ('' when none)
    dropped: list[str]          # auxiliary-head keys left out (googlenet, inception_v3)


def _try_library(arch: str, library: str, state: dict[str, torch.Tensor], classes: list[str]
                 ) -> FittedNet | tuple[KeyDiff, str]:
    n = len(classes)
    net = build_net(arch, library, n)
    state, prefix = align_prefixes(state, set(net.state_dict()))
    dropped = []
    if library == "torchvision" and arch in _TV_KWARGS:
        dropped = sorted(k for k in state if k.startswith(_AUX_PREFIXES))
        state = {k: v for k, v in state.items() if k not in dropped}
    in_chans = 3
    found = first_conv(net)
    stem = state.get(f"{found[0]}.weight") if found else None
    if stem is not None and stem.ndim == 4 and stem.shape[1] != 3:
        in_chans = int(stem.shape[1])
        net = build_net(arch, library, n, in_chans)
    head = _head(net, n)
    weight = state.get(f"{head}.weight") if head else None
    if weight is not None and weight.shape[0] != n:
        raise BenchmarkError(
            f"the weights' classifier head `{head}` has {weight.shape[0]} outputs, but --classes names {n} "
            f"({', '.join(classes)}): give one class per output, in the order the model was trained with")
    diff = key_diff(state, net)
    if not diff.ok:
        return diff, prefix
    load_strict(net, state)
    return FittedNet(net.eval(), library, in_chans, prefix, dropped)


def fit_weights(arch: str, state: dict[str, torch.Tensor], classes: list[str], library: str = "auto") -> FittedNet:
    """Build `arch` for len(classes) outputs and load `state` strictly; the first library it fits wins.

    A head whose size is not len(classes) and keys or shapes that do not match stop with a
    clear error (the keys on each side, the shapes that differ); nothing is resized or dropped
    silently, except auxiliary training heads of googlenet/inception_v3, which are reported.
    """
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise BenchmarkError(f"--classes needs two or more distinct class names, got {classes}")
    failures = []
    for lib in libraries_for(arch, library):
        result = _try_library(arch, lib, state, classes)
        if isinstance(result, FittedNet):
            return result
        failures.append((lib, *result))
    failures.sort(key=lambda f: f[1].size)
    text = " | ".join(f"{lib} {arch}: {diff.describe()}" + (f" (after removing the prefix '{prefix}')" if prefix
                                                            else "") for lib, diff, prefix in failures)
    raise BenchmarkError(f"the weights do not fit the architecture: {text}. Check --arch (the architecture the "
                         "weights were trained with) and --library")


# ----------------------------------------------------------------------------- from a sidecar

_SIDECAR_KEYS = ("library", "cam_target_layer", "classifier", "gap_head", "normalization")


def imported_spec(meta: dict) -> ModelSpec:
    """The ModelSpec an imported checkpoint's sidecar describes (not registered: names may clash)."""
    missing = [k for k in _SIDECAR_KEYS if k not in meta]
    if missing:
        raise BenchmarkError(f"imported checkpoint sidecar lacks {', '.join(missing)}")
    norm, arch, library = meta["normalization"], meta["architecture"], meta["library"]
    in_chans, size = int(norm["in_chans"]), int(meta["input_size"])
    return ModelSpec(
        name=arch, family=library, input_size=size, min_input_size=min(32, size),
        cam_target_layer=meta["cam_target_layer"], classifier=meta["classifier"], gap_head=bool(meta["gap_head"]),
        weights=f"{ORIGIN}:{Path(str(meta.get('source_file', ''))).name}",
        builder=lambda num_classes, _weights_file: build_net(arch, library, num_classes, in_chans),
        description=f"{library} {arch}, imported", in_chans=in_chans,
        mean=tuple(float(v) for v in norm["mean"]), std=tuple(float(v) for v in norm["std"]))


def model_from_sidecar(meta: dict) -> XrayClassifier:
    """An imported checkpoint's model, untrained: load_checkpoint then loads its weights."""
    spec = imported_spec(meta)
    num_classes = len(meta["classes"])
    try:
        net = spec.builder(num_classes, None)
    except (RuntimeError, KeyError, ValueError) as exc:  # e.g. an architecture this timm version lacks
        raise BenchmarkError(f"cannot build {meta.get('library')} {meta['architecture']}: {exc}") from None
    return XrayClassifier(spec, net, num_classes, pretrained=False)

