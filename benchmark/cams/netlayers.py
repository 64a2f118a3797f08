"""The CAM layer and classifier of a net the registry does not know (an imported model).

The registry names them by hand (resnet's `layer4` and `fc`, vgg's `features` and
`classifier.6`); for any other torchvision or timm net they are found from one forward pass:

- classifier: the last Linear (or Conv2d, as squeezenet's) the forward calls, whose outputs
  are the logits;
- CAM layer: the deepest feature map before it, i.e. the last layer, in the order the forward
  finishes them, that is on the main path (`layers._on_main_path`: every container above it a
  Sequential, so its output feeds the rest of the net whole), is called once, and outputs a
  square N x C x h x w map (h > 1) from a square input; global pools and pass-through modules
  (Identity, Dropout) are skipped. Channels-last outputs (Swin's N x H x W x C) are not square
  in their last two dimensions, so transformers without a convolutional map are refused with a
  clear message instead of being explained wrongly;
- gap_head: whether logits == classifier(global average of that map), checked numerically, the
  condition for the original CAM method to be exact.

Stride aliases (`hirescam@stride16`) then work on the net as on the registry's (layers.py).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from benchmark.cams.layers import _PROBE_SIZE, _on_main_path
from benchmark.errors import BenchmarkError

_SKIPPED = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Identity, nn.Dropout, nn.Dropout2d, nn.Flatten)


@dataclass(frozen=True)
class NetLayers:
    cam_layer: str
    classifier: str
    gap_head: bool


def _skipped(module: nn.Module) -> bool:
    # timm's SelectAdaptivePool2d is a global pool too
    return isinstance(module, _SKIPPED) or "AdaptivePool" in type(module).__name__


def find_net_layers(net: nn.Module, in_chans: int, size: int) -> NetLayers:
    """CAM layer, classifier and gap_head of `net` from forwards of a seeded random `size` x `size`
    image with `in_chans` channels in eval mode (the net's train/eval flags are restored)."""
    modules = dict(net.named_modules())
    order: list[tuple[str, tuple | None]] = []  # (name, output shape) in the order modules finish
    calls: dict[str, int] = {}

    def record(module, inputs, output, name):
        calls[name] = calls.get(name, 0) + 1
        order.append((name, tuple(output.shape) if isinstance(output, torch.Tensor) else None))

    x = torch.rand(1, in_chans, size, size, generator=torch.Generator().manual_seed(0))
    handles = [m.register_forward_hook(functools.partial(record, name=n)) for n, m in modules.items() if n]
    try:
        logits = _forward(net, x)
    finally:
        for handle in handles:
            handle.remove()
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
        raise BenchmarkError(f"{type(net).__name__} does not return N x classes logits in eval mode")
    heads = [i for i, (name, _) in enumerate(order) if isinstance(modules[name], (nn.Linear, nn.Conv2d))]
    if not heads:
        raise BenchmarkError(f"{type(net).__name__}: no Linear or Conv2d classifier found")
    classifier = order[heads[-1]][0]
    head = modules[classifier]
    outputs = head.out_features if isinstance(head, nn.Linear) else head.out_channels
    if outputs != logits.shape[1]:
        raise BenchmarkError(f"{type(net).__name__}: its last layer `{classifier}` has {outputs} outputs but the "
                             f"net returns {logits.shape[1]} logits; cannot tell which layer classifies")
    first_head_call = next(i for i, (name, _) in enumerate(order) if name == classifier)
    maps = [name for name, shape in order[:first_head_call]
            if shape is not None and len(shape) == 4 and shape[-1] == shape[-2] and 1 < shape[-1] <= size
            and calls[name] == 1 and not _skipped(modules[name]) and _on_main_path(name, modules)]
    if not maps:
        raise BenchmarkError(f"{type(net).__name__} has no layer with a square N x C x h x w feature map before its "
                             "classifier: CAMs need a convolutional feature map (vision transformers and "
                             "channels-last nets are not supported)")
    cam_layer = maps[-1]
    try:  # stride aliases probe every net at one size (layers.py); nets of one fixed input size cannot take it
        _forward(net, torch.zeros(1, in_chans, _PROBE_SIZE, _PROBE_SIZE))
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise BenchmarkError(f"{type(net).__name__} runs only at a fixed input size ({first}); "
                             "CAMs at other resolutions (stride aliases such as hirescam@stride16) need a "
                             "convolutional net that takes any size") from None
    return NetLayers(cam_layer, classifier, _is_gap_head(net, x, modules[cam_layer], head, logits))


def _forward(net: nn.Module, x: torch.Tensor):
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.eval()
        with torch.no_grad():
            return net(x)
    finally:
        for module, training in modes:
            module.training = training


def _is_gap_head(net: nn.Module, x: torch.Tensor, layer: nn.Module, head: nn.Module, logits: torch.Tensor) -> bool:
    """The head's input is the global average of the layer's output and its output is the logits.

    Compared as tensors rather than through the head's weights, so a zero-initialised head (as
    torchvision's ViT has) cannot make any layer look like a GAP head."""
    maps: list[torch.Tensor] = []
    head_io: list[tuple[torch.Tensor, torch.Tensor]] = []
    handles = [layer.register_forward_hook(lambda module, inputs, output: maps.append(output.detach().clone())),
               head.register_forward_hook(lambda module, inputs, output: head_io.append(
                   (inputs[0].detach().clone(), output.detach().clone())))]
    try:
        _forward(net, x)
    finally:
        for handle in handles:
            handle.remove()
    if not maps or not head_io:
        return False
    pooled = maps[-1].mean(dim=(2, 3))
    head_in, head_out = (t.flatten(1) for t in head_io[-1])
    return _close(head_in, pooled) and _close(head_out, logits)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-3, atol=1e-4 * (1 + float(b.abs().max()))))
