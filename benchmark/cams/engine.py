"""One entry point for CAMs: `compute_cams(model, images, targets, method, layer=...)`.

Fast methods (cam, gradcam, hirescam) run batched on the model's device (fast.py); every method can run
through pytorch-grad-cam (the reference path, `fast=False`). Maps come back at the target
layer's resolution; `upsample_cam` is for display and the lung-focus measures.

A model may be shared between threads (the dashboard caches one per checkpoint for every
session), so computing a map never changes it: the layer explained is an argument, not a
change to the model's spec; hooks are registered and removed within the call and see only its
own thread's forwards (hooks.py); pytorch-grad-cam gets a view whose `eval()`/`zero_grad()`
do nothing. The one write left is pytorch-grad-cam's `backward()` into the parameters' `.grad`
when they require gradients: that path then holds a lock per model and restores `.grad`.
Frozen models (the dashboard's) and the fast path take no lock.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterator

import numpy as np
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from benchmark.cams.fast import (
    _check_target_range,
    check_batch_args,
    normalise_maps,
    prepare_images,
    shared_gradient_cams,
    upsample_maps,
)
from benchmark.cams.layers import target_module
from benchmark.cams.methods import CamMethod, resolve_cam_method
from benchmark.errors import BenchmarkError

log = logging.getLogger(__name__)


def compute_cams(
    model,
    images: torch.Tensor,
    targets: torch.Tensor,
    method: str,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    fast: bool = True,
    amp: bool = False,
    layer: str | None = None,
) -> torch.Tensor:
    """Maps N x h x w (float32, CPU, each in [0,1], never NaN) of `method` for `targets`.

    `layer` explains at another layer than the registry's: a dotted path inside `model.net`
    or a stride alias such as `stride16` (layers.py); GAP-head methods (`cam`) then do not apply.

    `images` is N x 1 x H x W float in [0,1] (uint8 is scaled) on any device; batches are moved
    to the model's device. `device`, if given, must be the model's device: the model is never
    moved. The caller sets train/eval mode (eval for explanations); it is left unchanged.
    `amp` runs the fast path's forward under bf16 autocast on CUDA (maps still in fp32; see
    fast._autocast for why it is off by default). N == 0 gives an empty 0 x 0 x 0 tensor.
    """
    entry = resolve_cam_method(method, model, layer)
    target_layer = target_module(model, layer)
    if fast and entry.fast is not None:
        return entry.fast(model, images, targets, batch_size=batch_size, device=device, amp=amp,
                          target_layer=target_layer)
    return _pytorch_grad_cam_maps(model, entry, images, targets, target_layer, batch_size=batch_size, device=device)


def compute_cams_many(model, images: torch.Tensor, targets: torch.Tensor, methods: list[tuple[str, str | None]], *,
                      batch_size: int = 32, device: torch.device | str | None = None,
                      amp: bool = False) -> list[torch.Tensor]:
    """compute_cams for several (method, layer) pairs at once, maps in the same order.

    The gradient methods among them (registry `from_gradients`: Grad-CAM, HiResCAM, at any
    layers) share one forward and one backward per batch (fast.shared_gradient_cams); the
    others run one by one. Each map equals its own compute_cams call.
    """
    entries = [(resolve_cam_method(m, model, layer), target_module(model, layer)) for m, layer in methods]
    shared = [i for i, (entry, _) in enumerate(entries) if entry.from_gradients is not None]
    out: list[torch.Tensor | None] = [None] * len(entries)
    if len(shared) > 1:
        parts = [(entries[i][0].from_gradients, entries[i][1]) for i in shared]
        for i, maps in zip(shared, shared_gradient_cams(model, images, targets, parts, batch_size=batch_size,
                                                        device=device, amp=amp)):
            out[i] = maps
    for i, (method, layer) in enumerate(methods):
        if out[i] is None:
            out[i] = compute_cams(model, images, targets, method, batch_size=batch_size, device=device, amp=amp,
                                  layer=layer)
    return out


def explain_predictions(
    model,
    images: torch.Tensor,
    method: str,
    *,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    layer: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps N x h x w of each image's predicted class, logits N x K), as compute_cams gives maps.

    A fast method takes the prediction and its map from one forward pass (fast.py,
    `targets=None`); a pytorch-grad-cam method needs a forward for the logits first, then its own.
    The caller sets eval mode, as for compute_cams.
    """
    entry = resolve_cam_method(method, model, layer)
    target_layer = target_module(model, layer)
    if entry.fast is not None:
        return entry.fast(model, images, None, batch_size=batch_size, device=device, target_layer=target_layer,
                          return_logits=True)
    dev, _ = check_batch_args(model, images, None, batch_size, device)
    with torch.no_grad():
        batches = [model(prepare_images(images[i:i + batch_size], dev)).float().cpu()
                   for i in range(0, images.shape[0], batch_size)]
    logits = torch.cat(batches) if batches else torch.zeros((0, 0))
    predicted = logits.argmax(dim=1) if batches else torch.zeros(0, dtype=torch.int64)
    maps = _pytorch_grad_cam_maps(model, entry, images, predicted, target_layer, batch_size=batch_size, device=device)
    return maps, logits


def upsample_cam(cam: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one map (h x w) or a stack (N x h x w) to `size` = (H, W), float32."""
    tensor = torch.as_tensor(np.asarray(cam) if not isinstance(cam, torch.Tensor) else cam)
    tensor = tensor.detach().float().cpu()
    if tensor.ndim == 2:
        return upsample_maps(tensor[None], size)[0].numpy()
    if tensor.ndim == 3:
        return upsample_maps(tensor, size).numpy()
    raise BenchmarkError(f"a CAM is h x w or N x h x w, got shape {tuple(tensor.shape)}")


_model_locks: weakref.WeakKeyDictionary[torch.nn.Module, threading.Lock] = weakref.WeakKeyDictionary()
_model_locks_guard = threading.Lock()


def _model_lock(model: torch.nn.Module) -> threading.Lock:
    with _model_locks_guard:
        return _model_locks.setdefault(model, threading.Lock())


@contextlib.contextmanager
def _gradients_kept(model: torch.nn.Module) -> Iterator[None]:
    """For pytorch-grad-cam on a model whose parameters require gradients: its backward()
    writes their `.grad`. One such call per model at a time, and every `.grad` restored."""
    if not any(param.requires_grad for param in model.parameters()):
        yield  # frozen: backward() writes nothing of the model's, no lock needed
        return
    with _model_lock(model):
        grads = [(param, param.grad) for param in model.parameters()]
        for param, _ in grads:
            param.grad = None  # backward() then makes new tensors instead of adding to the caller's
        try:
            yield
        finally:
            for param, grad in grads:
                param.grad = grad


def _pytorch_grad_cam_maps(model, entry: CamMethod, images, targets, target_layer, *, batch_size,
                           device) -> torch.Tensor:
    """Reference path: pytorch-grad-cam's own classes, maps at layer resolution."""
    device, targets_cpu = check_batch_args(model, images, targets, batch_size, device)
    maps: list[torch.Tensor] = []
    # a frozen model's layer outputs need a graph for pytorch-grad-cam's gradient hooks
    needs_input_grad = not any(param.requires_grad for param in model.parameters())
    with _gradients_kept(model):
        cam = entry.build(model, target_layer)
        cam.batch_size = batch_size  # ScoreCAM's inner batch of masked inputs
        try:
            for start in range(0, images.shape[0], batch_size):
                x = prepare_images(images[start:start + batch_size], device)
                if needs_input_grad:
                    x = x.detach().requires_grad_(True)
                t_cpu = targets_cpu[start:start + batch_size]
                if start == 0:
                    with torch.no_grad():
                        _check_target_range(t_cpu, model(x[:1]).shape[1])
                batch_targets = [ClassifierOutputTarget(int(k)) for k in t_cpu]
                with torch.enable_grad():
                    grayscale = cam(input_tensor=x, targets=batch_targets)
                maps.append(torch.from_numpy(np.ascontiguousarray(grayscale, dtype=np.float32)))
        finally:
            # not `with cam:` -- BaseCAM.__exit__ prints and swallows IndexError
            cam.activations_and_grads.release()
    if not maps:
        return torch.zeros((0, 0, 0), dtype=torch.float32)
    result = torch.cat(maps)
    if not torch.isfinite(result).all():
        log.warning("pytorch-grad-cam (%s) returned non-finite values; set to 0", entry.name)
        result = normalise_maps(result)
    return result
