"""Batched CAM, Grad-CAM and HiResCAM that stay on the model's device.

Why not pytorch-grad-cam here: it copies activations, gradients and every map to the CPU per
batch and calls model.eval() on the caller's model; on a GPU the copies dominate (bench/RESULTS.md,
"CAM throughput"). This path keeps activations and gradients on the device, takes
gradients with `torch.autograd.grad` w.r.t. the hooked activation only (so the parameters'
`.grad` are never touched and no backward runs past the CAM layer), normalises per image on the
device and copies the maps to the CPU once at the end. The caller owns the model's mode.

Safe on a model shared between threads: the layer explained is an argument (`target_layer`),
never a change to the model, and its hook sees only the calling thread's forwards (hooks.py).
Nothing here writes to the model, so no lock is taken.

The maps equal pytorch-grad-cam's (ReLU, then `scale_cam_image`'s min-max: cam - min,
/ (1e-7 + max)) at the target layer's own resolution; tests compare them.

`targets=None` explains each image's predicted class, taken from the same forward pass that the
map uses, and `return_logits=True` returns that forward's logits with the maps: a prediction
and its explanation then cost one forward (the dashboard's live CAM), not a forward for the
prediction and another for the map.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmark.cams.hooks import capture_layer_output
from benchmark.errors import BenchmarkError

log = logging.getLogger(__name__)


def resolve_device(model: torch.nn.Module, device: torch.device | str | None = None) -> torch.device:
    """The device the CAMs run on: the model's own. An explicit `device` must agree with it.

    The engine never moves the caller's model (that would be a hidden side effect on a shared
    object); it moves only the images.
    """
    param = next(model.parameters(), None)
    model_device = param.device if param is not None else torch.device("cpu")
    if device is None:
        return model_device
    device = torch.device(device)
    same_index = device.index is None or model_device.index is None or device.index == model_device.index
    if device.type != model_device.type or not same_index:
        raise BenchmarkError(f"CAMs asked on {device} but the model is on {model_device}; move the model first")
    return model_device


def _autocast(device: torch.device, amp: bool):
    """bf16 autocast for the forward on CUDA only; maps are always computed in fp32.

    Off by default: bf16 moves normalised maps away from fp32's and saves little time on the
    roster's nets (bench/RESULTS.md), too little to trade the audit's fidelity for.
    """
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_images(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """N x 1 x H x W float in [0,1] on `device`; uint8 (the decode cache's dtype) is scaled."""
    if images.ndim != 4 or images.shape[1] != 1:
        raise BenchmarkError(f"images must be N x 1 x H x W, got shape {tuple(images.shape)}")
    images = images.to(device, non_blocking=True)
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    elif images.dtype != torch.float32:
        images = images.float()
    return images.clone() if images.is_inference() else images


def check_targets(targets: torch.Tensor, n_images: int) -> None:
    if targets.ndim != 1 or targets.shape[0] != n_images:
        raise BenchmarkError(f"targets must have shape ({n_images},), got {tuple(targets.shape)}")
    if targets.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise BenchmarkError(f"targets must be integer class indices, got {targets.dtype}")
    if n_images and int(targets.min()) < 0:
        raise BenchmarkError(f"target classes must be >= 0, got {int(targets.min())}")


def check_batch_args(model, images, targets, batch_size: int, device) -> tuple[torch.device, torch.Tensor | None]:
    """Validate a CAM call's arguments once: (the model's device, targets as CPU int64, or None:
    the predicted classes)."""
    device = resolve_device(model, device)
    if targets is not None:
        check_targets(targets, images.shape[0])
    if batch_size < 1:
        raise BenchmarkError(f"batch_size must be >= 1, got {batch_size}")
    return device, None if targets is None else targets.detach().to("cpu", torch.int64)


def _check_target_range(targets: torch.Tensor, num_classes: int) -> None:
    """Checked on the CPU before indexing: an out-of-range index on CUDA is a device assert."""
    if targets.numel() and int(targets.max()) >= num_classes:
        raise BenchmarkError(f"target class {int(targets.max())} out of range for a model with {num_classes} classes")


def _scale(flat: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's scale_cam_image per row: cam - min, then / (1e-7 + max)."""
    flat = flat - flat.amin(dim=1, keepdim=True)
    return flat / (1e-7 + flat.amax(dim=1, keepdim=True))


def normalise_maps(maps: torch.Tensor) -> torch.Tensor:
    """ReLU and min-max per image exactly as pytorch-grad-cam does it; never NaN (constant -> 0).

    pytorch-grad-cam scales twice: once per target layer (compute_cam_per_layer) and again
    after averaging the layers (aggregate_multi_layers). The second pass matters: untrained or
    deep nets give raw maps of 1e-10..1e-6, which one pass with its 1e-7 epsilon would leave
    at a maximum far below 1 (as untrained mobilenet_v2 and googlenet do at 64 px).
    """
    maps = torch.nan_to_num(maps.float(), nan=0.0, posinf=0.0, neginf=0.0).relu()
    return _scale(_scale(maps.flatten(1))).view_as(maps)


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """N x h x w -> N x H x W, bilinear with half-pixel centres (as cv2.resize, which pgc uses)."""
    size = (int(size[0]), int(size[1]))
    if tuple(maps.shape[-2:]) == size:
        return maps.float()
    return F.interpolate(maps[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _layer_output(outputs: list[torch.Tensor]) -> torch.Tensor:
    if not outputs:
        raise BenchmarkError("the CAM target layer was not called during the forward pass")
    act = outputs[-1]
    if not isinstance(act, torch.Tensor) or act.ndim != 4:
        raise BenchmarkError(f"the CAM target layer must output N x C x h x w, got {getattr(act, 'shape', type(act))}")
    return act


def classifier_layer(model) -> torch.nn.Module:
    """The final Linear (or 1x1 conv) named by `spec.classifier`, inside `model.net`."""
    try:
        return model.net.get_submodule(model.spec.classifier)
    except AttributeError as exc:
        raise BenchmarkError(
            f"model {model.spec.name!r}: spec.classifier {model.spec.classifier!r} is not a "
            f"submodule of .net ({exc})"
        ) from None


def classifier_weight(model, channels: int) -> torch.Tensor:
    """The final layer's weights as classes x channels, checked against the CAM layer's channels."""
    classifier = classifier_layer(model)
    weight = classifier.weight.detach().float().reshape(classifier.weight.shape[0], -1)
    if weight.shape[1] != channels:
        raise BenchmarkError(f"classifier has {weight.shape[1]} inputs but the CAM layer has "
                             f"{channels} channels: spec.gap_head must be wrong")
    return weight


def _run_batched(model, images, targets, batch_size, device, amp, one_batch, target_layer, return_logits):
    """Shared loop: hook once (this thread's forwards only), run `one_batch` per slice, one copy
    to the CPU at the end. `target_layer` is the module explained (None: the registry's).
    `one_batch` returns (raw maps, logits) of its slice; the logits come back with the maps
    when `return_logits`."""
    device, targets_cpu = check_batch_args(model, images, targets, batch_size, device)
    maps: list[torch.Tensor] = []
    logits: list[torch.Tensor] = []
    nonfinite = torch.zeros((), dtype=torch.int64, device=device)
    layer = model.cam_target_layer if target_layer is None else target_layer
    with capture_layer_output(layer) as outputs:
        for start in range(0, images.shape[0], batch_size):
            x = prepare_images(images[start:start + batch_size], device)
            t_cpu = None if targets_cpu is None else targets_cpu[start:start + batch_size]
            outputs.clear()
            raw, batch_logits = one_batch(x, t_cpu, outputs, device, amp)
            nonfinite += (~torch.isfinite(raw)).flatten(1).any(dim=1).sum()
            maps.append(normalise_maps(raw))
            if return_logits:
                logits.append(batch_logits.detach().float())
            outputs.clear()
    if not maps:
        empty = torch.zeros((0, 0, 0), dtype=torch.float32)
        return (empty, torch.zeros((0, 0), dtype=torch.float32)) if return_logits else empty
    result = torch.cat(maps).cpu()
    if int(nonfinite):
        log.warning("%d CAM(s) had non-finite values (NaN/inf activations); those entries were set to 0",
                    int(nonfinite))
    return (result, torch.cat(logits).cpu()) if return_logits else result


def _targets_on_device(t_cpu: torch.Tensor | None, logits: torch.Tensor) -> torch.Tensor:
    """The classes to explain on the logits' device: the given ones, or each row's argmax."""
    if t_cpu is None:
        return logits.detach().argmax(dim=1)
    _check_target_range(t_cpu, logits.shape[1])
    return t_cpu.to(logits.device, non_blocking=True)


def _target_gradients(model, x, t_cpu, outputs, dev, amp) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(activation, d(target logit)/d(activation), logits) of the hooked layer for one batch."""
    # detach(): requires_grad on a view of the caller's tensor, never on the tensor itself;
    # input grad on means frozen (requires_grad=False) models still give a graph.
    x = x.detach().requires_grad_(True)
    with torch.enable_grad(), _autocast(dev, amp):
        logits = model(x)
    act = _layer_output(outputs)
    t = _targets_on_device(t_cpu, logits)
    score = logits.float().gather(1, t[:, None]).sum()
    (grads,) = torch.autograd.grad(score, act)
    return act.detach().float(), grads.float(), logits.detach()


def grad_cams(model, images: torch.Tensor, targets: torch.Tensor | None, *, batch_size: int = 32,
              device: torch.device | str | None = None, amp: bool = False,
              target_layer: torch.nn.Module | None = None, return_logits: bool = False):
    """Grad-CAM (Selvaraju et al.): weights = spatial mean of d(target logit)/d(activation)."""

    def one_batch(x, t_cpu, outputs, dev, amp):
        act, grads, logits = _target_gradients(model, x, t_cpu, outputs, dev, amp)
        return gradcam_map(act, grads), logits

    return _run_batched(model, images, targets, batch_size, device, amp, one_batch, target_layer, return_logits)


def gradcam_map(act: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """Grad-CAM's raw map from one layer's activation and gradient (N x C x h x w each)."""
    return torch.einsum("nk,nkhw->nhw", grads.mean(dim=(2, 3)), act)


def hirescam_map(act: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """HiResCAM's raw map from one layer's activation and gradient."""
    return (grads * act).sum(dim=1)


def shared_gradient_cams(model, images: torch.Tensor, targets: torch.Tensor | None,
                         parts: list[tuple[Callable, torch.nn.Module]], *, batch_size: int = 32,
                         device: torch.device | str | None = None, amp: bool = False) -> list[torch.Tensor]:
    """Maps of several gradient methods at once: `parts` is [(raw map from (activation, gradient),
    layer)], for example Grad-CAM at the last block and HiResCAM at stride 16. Each batch takes
    one forward and one backward (to the earliest layer) for all of them, where separate calls take
    one of each per method; every map equals its own method's call (same forward, same gradient).
    Returns one N x h x w map tensor per part, in order."""
    device, targets_cpu = check_batch_args(model, images, targets, batch_size, device)
    layers = list(dict.fromkeys(layer for _, layer in parts))
    maps: list[list[torch.Tensor]] = [[] for _ in parts]
    nonfinite = torch.zeros((), dtype=torch.int64, device=device)
    with contextlib.ExitStack() as stack:
        captured = [stack.enter_context(capture_layer_output(layer)) for layer in layers]
        for start in range(0, images.shape[0], batch_size):
            x = prepare_images(images[start:start + batch_size], device).detach().requires_grad_(True)
            t_cpu = None if targets_cpu is None else targets_cpu[start:start + batch_size]
            for outputs in captured:
                outputs.clear()
            with torch.enable_grad(), _autocast(device, amp):
                logits = model(x)
            acts = [_layer_output(outputs) for outputs in captured]
            t = _targets_on_device(t_cpu, logits)
            score = logits.float().gather(1, t[:, None]).sum()
            grads = torch.autograd.grad(score, acts)
            by_layer = {id(layer): (a.detach().float(), g.float()) for layer, a, g in zip(layers, acts, grads)}
            for out, (combine, layer) in zip(maps, parts):
                raw = combine(*by_layer[id(layer)])
                nonfinite += (~torch.isfinite(raw)).flatten(1).any(dim=1).sum()
                out.append(normalise_maps(raw))
            for outputs in captured:
                outputs.clear()
    if int(nonfinite):
        log.warning("%d CAM(s) had non-finite values (NaN/inf activations); those entries were set to 0",
                    int(nonfinite))
    return [torch.cat(m).cpu() if m else torch.zeros((0, 0, 0), dtype=torch.float32) for m in maps]


def hires_cams(model, images: torch.Tensor, targets: torch.Tensor | None, *, batch_size: int = 32,
               device: torch.device | str | None = None, amp: bool = False,
               target_layer: torch.nn.Module | None = None, return_logits: bool = False):
    """HiResCAM (Draelos & Carin): sum over channels of gradient x activation, element-wise, so
    each cell keeps its own gradient instead of the channel's spatial mean."""

    def one_batch(x, t_cpu, outputs, dev, amp):
        act, grads, logits = _target_gradients(model, x, t_cpu, outputs, dev, amp)
        return hirescam_map(act, grads), logits

    return _run_batched(model, images, targets, batch_size, device, amp, one_batch, target_layer, return_logits)


def class_activation_maps(model, images: torch.Tensor, targets: torch.Tensor | None, *, batch_size: int = 32,
                          device: torch.device | str | None = None, amp: bool = False,
                          target_layer: torch.nn.Module | None = None, return_logits: bool = False):
    """CAM (Zhou et al.): weights = classifier row of the target class; no backward at all.

    Valid only for GAP heads (the registry checks `spec.gap_head`); then it equals Grad-CAM up
    to the factor 1/(h*w), which min-max normalisation removes.
    """

    def one_batch(x, t_cpu, outputs, dev, amp):
        with torch.no_grad(), _autocast(dev, amp):
            logits = model(x)
        act = _layer_output(outputs).float()
        rows = classifier_weight(model, act.shape[1]).to(dev)[_targets_on_device(t_cpu, logits)]
        return torch.einsum("nk,nkhw->nhw", rows, act), logits

    return _run_batched(model, images, targets, batch_size, device, amp, one_batch, target_layer, return_logits)
