"""Which layer a CAM explains: the registry's own, a named one, or one picked by its stride.

`METHOD@LAYER` explains at another layer than the registry's `cam_target_layer`. LAYER is a
dotted path inside the net (`layer3`) or a stride alias, `strideN`: the last layer, in forward
order, whose output is N times smaller than the input. Stride aliases make one method string
mean the same resolution on every architecture (`hirescam@stride16` is resnet18's `layer3`,
vgg16's last conv block before its final pool, shallow's `features`), so runs of different
models stay comparable in one leaderboard column.

Why a finer layer at all: a map is upsampled before the lung measures, so its resolution caps
lung_mass. Even a perfect lungs-only map scores far below 1 at 4 x 4 (resnet18's last block at
128 px) and closer to 1 on each finer grid; `audit.cam_rows.lung_mass_ceiling` stores that cap
with every map (the phantom's figures: bench/RESULTS.md, "Proving the measure").
"""
from __future__ import annotations

import copy
import math
import re
import weakref

import torch

from benchmark.cams.fast import resolve_device
from benchmark.cams.hooks import remove_hooks, scoped_forward_hook
from benchmark.errors import BenchmarkError

STRIDE_ALIAS = re.compile(r"^stride(\d+)$")
_PROBE_SIZE = 256  # divisible by every stride up to 256; strides are read as input / output size
# per net instance, not per registry name: a stand-in or user-built net may reuse a zoo name
_cache: weakref.WeakKeyDictionary[torch.nn.Module, dict[int, str]] = weakref.WeakKeyDictionary()


def stride_of(name: str) -> int | None:
    """'stride16' -> 16; any other layer name -> None."""
    match = STRIDE_ALIAS.match(name)
    return int(match.group(1)) if match else None


def _on_main_path(name: str, modules: dict[str, torch.nn.Module]) -> bool:
    """True when every container above the layer is an nn.Sequential: its output then feeds the
    rest of the net as a whole, unlike a conv inside a residual or inception block, whose
    output is only one branch (resnet50's `layer4.0.bn1` sits at stride 16 but inside a
    stride-32 block)."""
    parts = name.split(".")
    return all(isinstance(modules[".".join(parts[:i])], torch.nn.Sequential) for i in range(1, len(parts)))


def layer_strides(model, size: int = _PROBE_SIZE) -> list[tuple[str, float]]:
    """(dotted name, stride) of the layers a stride alias may pick, in the order the forward
    pass finishes them, up to and including the registry's CAM layer: layers on the main path
    (see `_on_main_path`), called once per forward (a hook on a shared ReLU would see several
    tensors), with a 4-D output. One no-grad forward of a blank image, hooked for this thread
    only; the model is not changed: one in train mode (whose batch-norm layers would update
    their running statistics) is probed through a copy in eval mode."""
    device = resolve_device(model)
    size = max(size, int(getattr(model.spec, "min_input_size", 0) or 0))
    if any(module.training for module in model.modules()):
        model = copy.deepcopy(model).eval()
    modules = dict(model.net.named_modules())
    seen: list[tuple[str, float]] = []
    calls: dict[str, int] = {}
    handles = []
    for name, module in modules.items():
        if not name:
            continue

        def hook(module, inputs, output, name=name):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.ndim == 4 and output.shape[-1] > 0:
                seen.append((name, size / output.shape[-1]))

        handles.append(scoped_forward_hook(module, hook))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, size, size, device=device))
    finally:
        remove_hooks(handles)
    names = [name for name, _ in seen]
    target = model.spec.cam_target_layer
    end = names.index(target) + 1 if target in names else len(seen)
    return [(name, stride) for name, stride in seen[:end]
            if calls[name] == 1 and _on_main_path(name, modules)]


def layer_at_stride(model, stride: int) -> str:
    """The last layer whose output is `stride` times smaller than the input (within a factor
    sqrt(2), so inception's 17 x 17 grid at 299 px counts as stride 16). Cached per net: the
    answer depends on its layers, not on its weights, so one probe forward serves every call."""
    known = _cache.setdefault(model.net, {})
    if stride in known:
        return known[stride]
    if stride < 1:
        raise BenchmarkError(f"a stride alias needs a stride >= 1, got stride{stride}")
    strides = layer_strides(model)
    near = [name for name, s in strides if abs(math.log2(s / stride)) <= 0.5]
    if not near:
        found = sorted({round(s) for _, s in strides})
        raise BenchmarkError(f"{model.spec.name} has no layer at stride {stride}; "
                             f"its layers' strides: {', '.join(map(str, found))}")
    known[stride] = near[-1]
    return near[-1]


def resolve_layer(model, layer: str) -> str:
    """A dotted layer path inside `model.net`, from a path or a stride alias; clear error otherwise."""
    stride = stride_of(layer)
    if stride is not None:
        return layer_at_stride(model, stride)
    try:
        model.net.get_submodule(layer)
    except AttributeError:
        children = [n for n, _ in model.net.named_children()]
        raise BenchmarkError(f"{model.spec.name} has no layer {layer!r}; its top-level layers: "
                             f"{', '.join(children)} (or a stride alias such as stride16)") from None
    return layer


def target_module(model, layer: str | None) -> torch.nn.Module:
    """The module a CAM explains: the registry's CAM layer, or `layer` (a path or stride alias)."""
    if layer is None:
        return model.cam_target_layer
    return model.net.get_submodule(resolve_layer(model, layer))
