"""Compact U-Net for lung masks, and the Dice score used to train and judge it.

The lung-focus measures need a lung mask for every image, but ground truth exists only for the
phantom and for most cohen images; this network fills the gap for kermany and nih. It is kept
small (about 0.5M parameters at base 16) so it trains on a CPU in minutes.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

LEVELS = 4  # downsamplings: input sides must be divisible by 2**LEVELS


class _DoubleConv(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _Up(nn.Module):
    """Bilinear upsampling (no checkerboard artefacts, no weights) then a double conv."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv = _DoubleConv(in_channels + skip_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


class LungUNet(nn.Module):
    """U-Net with 4 levels, batch norm and bilinear upsampling.

    Input N x 1 x S x S floats in [0, 1] (S divisible by 16), output lung logits N x 1 x S x S.
    Each image is standardised to zero mean and unit spread inside the network: sources differ
    in exposure and windowing, and the classifiers' shortcut study must not let the mask
    quality depend on which source an image came from. A constant image maps to zeros, so
    all-black or all-white inputs give finite logits.

    `input_size` is the side the network was trained at; `predict_lung_masks` resizes to it.
    """

    def __init__(self, in_channels: int = 1, base_channels: int = 16, input_size: int = 128):
        super().__init__()
        if input_size % (2**LEVELS):
            raise ValueError(f"input_size must be divisible by {2**LEVELS}, got {input_size}")
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.input_size = input_size
        widths = [base_channels * 2**i for i in range(LEVELS)]  # 16, 32, 64, 128
        self.stem = _DoubleConv(in_channels, widths[0])
        self.downs = nn.ModuleList(_DoubleConv(widths[i], widths[i + 1]) for i in range(LEVELS - 1))
        # The bottleneck keeps the last width (as bilinear U-Nets do) to stay well under 2M params.
        self.bottleneck = _DoubleConv(widths[-1], widths[-1])
        ups = []
        below = widths[-1]
        for width in reversed(widths):
            out = max(width // 2, base_channels)
            ups.append(_Up(below, width, out))
            below = out
        self.ups = nn.ModuleList(ups)
        self.head = nn.Conv2d(below, 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        side = 2**LEVELS
        if x.shape[-1] % side or x.shape[-2] % side:
            raise ValueError(f"image sides must be divisible by {side}, got {tuple(x.shape[-2:])}")
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True, unbiased=False)
        x = (x - mean) / (std + 1e-3)
        skips = [self.stem(x)]
        for down in self.downs:
            skips.append(down(F.max_pool2d(skips[-1], 2)))
        x = self.bottleneck(F.max_pool2d(skips[-1], 2))
        for up, skip in zip(self.ups, reversed(skips)):
            x = up(x, skip)
        return self.head(x)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def dice_per_image(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Dice of each mask pair (N x H x W, or one H x W pair); 1.0 where both masks are empty.

    Averaging per image (rather than pooling all pixels) keeps small lungs from counting less,
    which is what the lung-focus measures, computed per image, need.
    """
    pred = np.asarray(pred, dtype=bool)
    target = np.asarray(target, dtype=bool)
    if pred.shape != target.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {target.shape}")
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    axes = tuple(range(1, pred.ndim))
    inter = np.logical_and(pred, target).sum(axis=axes).astype(np.float64)
    total = pred.sum(axis=axes).astype(np.float64) + target.sum(axis=axes)
    out = np.ones(len(pred), dtype=np.float64)
    nonempty = total > 0
    out[nonempty] = 2.0 * inter[nonempty] / total[nonempty]
    return out


def dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean per-image Dice (a single H x W pair gives that pair's Dice)."""
    return float(dice_per_image(pred, target).mean())


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice per image, averaged; eps keeps empty masks from dividing by zero."""
    prob = torch.sigmoid(logits).flatten(1)
    target = target.flatten(1)
    inter = (prob * target).sum(1)
    return (1 - (2 * inter + eps) / (prob.sum(1) + target.sum(1) + eps)).mean()
