"""One entry point for CAMs: `compute_cams(model, images, targets, method)`.

Fast methods (cam, gradcam, hirescam) run batched on the model's device (fast.py); every method can run
through pytorch-grad-cam (the reference path, `fast=False`), wrapped so that it leaves the
caller's model as it found it: pytorch-grad-cam calls `model.eval()` and fills the parameters'
`.grad`, and we restore both. Maps come back at the target layer's resolution; `upsample_cam`
is for display and the lung-focus measures.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import numpy as np
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from benchmark.cams.fast import (
    _check_target_range,
    check_batch_args,
    normalise_maps,
    prepare_images,
    upsample_maps,
)
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
) -> torch.Tensor:
    """Maps N x h x w (float32, CPU, each in [0,1], never NaN) of `method` for `targets`.

    `images` is N x 1 x H x W float in [0,1] (uint8 is scaled) on any device; batches are moved
    to the model's device. `device`, if given, must be the model's device: the model is never
    moved. The caller sets train/eval mode (eval for explanations); it is left unchanged.
    `amp` runs the fast path's forward under bf16 autocast on CUDA (maps still in fp32; see
    fast._autocast for why it is off by default). N == 0 gives an empty 0 x 0 x 0 tensor.
    """
    entry = resolve_cam_method(method, model)
    if fast and entry.fast is not None:
        return entry.fast(model, images, targets, batch_size=batch_size, device=device, amp=amp)
    return _pytorch_grad_cam_maps(model, entry, images, targets, batch_size=batch_size, device=device)


def upsample_cam(cam: np.ndarray | torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one map (h x w) or a stack (N x h x w) to `size` = (H, W), float32."""
    tensor = torch.as_tensor(np.asarray(cam) if not isinstance(cam, torch.Tensor) else cam)
    tensor = tensor.detach().float().cpu()
    if tensor.ndim == 2:
        return upsample_maps(tensor[None], size)[0].numpy()
    if tensor.ndim == 3:
        return upsample_maps(tensor, size).numpy()
    raise BenchmarkError(f"a CAM is h x w or N x h x w, got shape {tuple(tensor.shape)}")


@contextlib.contextmanager
def preserved_model_state(model: torch.nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag and every parameter's .grad on exit."""
    modes = [(module, module.training) for module in model.modules()]
    grads = [(param, param.grad) for param in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, grad in grads:
            param.grad = grad


def _pytorch_grad_cam_maps(model, entry: CamMethod, images, targets, *, batch_size, device) -> torch.Tensor:
    """Reference path: pytorch-grad-cam's own classes, maps at layer resolution."""
    device, targets_cpu = check_batch_args(model, images, targets, batch_size, device)
    maps: list[torch.Tensor] = []
    # a frozen model's layer outputs need a graph for pytorch-grad-cam's gradient hooks
    needs_input_grad = not any(param.requires_grad for param in model.parameters())
    with preserved_model_state(model):
        cam = entry.build(model)
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
