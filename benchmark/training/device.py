"""Device choice and the per-device numerics (bf16 autocast + channels_last on CUDA, fp32 on CPU)."""
from __future__ import annotations

import contextlib

import torch

from benchmark.config import DEVICES
from benchmark.errors import BenchmarkError


def resolve_device(name: str = "auto") -> torch.device:
    if name not in DEVICES and not name.startswith("cuda:"):
        raise BenchmarkError(f"unknown device {name!r}; choose one of: {', '.join(DEVICES)}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise BenchmarkError("--device cuda asked for, but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


def autocast(device: torch.device):
    """bf16 autocast on CUDA; a no-op on CPU, where fp32 is both faster and exact."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def memory_format(device: torch.device):
    return torch.channels_last if device.type == "cuda" else torch.contiguous_format


def to_input(batch_u8: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 N x H x W (any device) -> float N x 1 x H x W in [0,1] on `device`, in its memory format."""
    x = batch_u8.to(device, non_blocking=True).unsqueeze(1).float().div_(255.0)
    return x.contiguous(memory_format=memory_format(device))
