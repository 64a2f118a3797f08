"""Fit the lung U-Net: Dice + BCE, AdamW, cosine schedule, light augmentation, best epoch kept.

No flips in the augmentation: the heart sits on the patient's left, and a flipped chest is an
anatomy the segmenter never meets. Augmentation runs batched on the training device.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from benchmark.lungseg.model import LungUNet, count_parameters, dice_per_image, soft_dice_loss

log = logging.getLogger(__name__)


def _uniform(gen: torch.Generator, n: int, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=gen)


def augment_batch(x: torch.Tensor, m: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Small affine (rotation +-8 deg, scale 0.9-1.1, shift +-6 %) on image and mask alike,
    then gamma / contrast / brightness on the image. x, m: N x 1 x S x S floats on any device.

    Random numbers come from the CPU generator `gen`, so a seed gives the same run on CPU and GPU.
    """
    n = x.shape[0]
    angle = _uniform(gen, n, -8, 8) * math.pi / 180
    scale = _uniform(gen, n, 0.9, 1.1)
    shift = _uniform(gen, 2 * n, -0.06, 0.06).view(n, 2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    m = (F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False) >= 0.5).to(m.dtype)
    gamma = torch.exp(_uniform(gen, n, math.log(0.7), math.log(1.4))).view(n, 1, 1, 1).to(x.device)
    contrast = _uniform(gen, n, 0.8, 1.25).view(n, 1, 1, 1).to(x.device)
    brightness = _uniform(gen, n, -0.08, 0.08).view(n, 1, 1, 1).to(x.device)
    x = x.clamp(0, 1).pow(gamma)
    x = ((x - 0.5) * contrast + 0.5 + brightness).clamp(0, 1)
    return x, m


def warmup_cosine(total_steps: int, warmup_fraction: float = 0.05, floor: float = 0.02):
    """LR factor per step: short linear warm-up (BN statistics settle first), then cosine decay."""
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        t = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))
    return factor


def _to_device(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 N x S x S -> N x 1 x S x S on the device; kept as uint8 (4x less memory than floats)."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device)[:, None]


@torch.no_grad()
def _val_dice(model: LungUNet, x_u8: torch.Tensor, m: np.ndarray, batch_size: int, autocast) -> np.ndarray:
    if len(x_u8) == 0:
        return np.zeros(0)
    preds = []
    for i in range(0, len(x_u8), batch_size):
        with autocast():
            logits = model(x_u8[i:i + batch_size].float() / 255)
        preds.append((logits.float() > 0)[:, 0].cpu().numpy())
    return dice_per_image(np.concatenate(preds), m)


def _group_means(scores: np.ndarray, groups: Sequence[str]) -> dict[str, float]:
    out = {}
    for g in dict.fromkeys(groups):
        sel = np.array([gg == g for gg in groups])
        out[g] = float(scores[sel].mean())
    return out


def _checked_inputs(images, masks, val_images, val_masks, val_groups, select_group):
    """(val groups, mask of the val images that choose the epoch, the choosing group); ValueError on bad shapes."""
    if images.shape != masks.shape or images.ndim != 3 or images.shape[1] != images.shape[2]:
        raise ValueError(f"need N x S x S images and masks, got {images.shape} and {masks.shape}")
    if len(images) < 2:
        raise ValueError(f"need at least 2 training images, got {len(images)}")
    if len(val_images) == 0 or np.shape(val_images) != np.shape(val_masks):
        raise ValueError(f"need matching val images and masks (at least one), got "
                         f"{np.shape(val_images)} and {np.shape(val_masks)}")
    groups = list(val_groups) if val_groups is not None else ["all"] * len(val_images)
    if len(groups) != len(val_images):
        raise ValueError(f"val_groups has {len(groups)} names for {len(val_images)} val images")
    if select_group is None and "cohen" in groups:
        select_group = "cohen"
    select = np.array([select_group is None or g == select_group for g in groups])
    if not select.any():
        raise ValueError(f"select_group {select_group!r} not in val_groups {sorted(set(groups))}")
    return groups, select, select_group


def _train_epoch(model: LungUNet, x_all: torch.Tensor, m_all: torch.Tensor, batches: list[torch.Tensor],
                 opt, sched, gen: torch.Generator | None, autocast) -> float:
    """One pass over `batches` (index tensors on the device); augmented when `gen` is given; mean loss."""
    model.train()
    losses = []
    for idx in batches:
        x = x_all[idx].float() / 255
        m = m_all[idx].float()
        if gen is not None:
            x, m = augment_batch(x, m, gen)
        x = x.contiguous(memory_format=torch.channels_last)
        with autocast():
            logits = model(x)
        logits = logits.float()
        loss = F.binary_cross_entropy_with_logits(logits, m) + soft_dice_loss(logits, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    model.eval()
    return float(torch.stack(losses).mean())


def train_lung_segmenter(images: np.ndarray, masks: np.ndarray, *, val_images: np.ndarray,
                         val_masks: np.ndarray, epochs: int, batch_size: int = 16, lr: float = 1e-3,
                         device: str = "cpu", seed: int = 0, augment: bool = True, progress: bool = False,
                         val_groups: Sequence[str] | None = None, select_group: str | None = None,
                         base_channels: int = 16, weight_decay: float = 1e-4) -> tuple[LungUNet, dict]:
    """Train a LungUNet at the images' size; returns (model at its best val epoch, report).

    images uint8 N x S x S, masks bool N x S x S (S divisible by 16). Val Dice is the mean per-
    image Dice; with `val_groups` (one name per val image) the report adds it per group, and
    the best epoch is chosen on `select_group` (default: "cohen" when present, so phantoms,
    which are easy, cannot pick the epoch), else on all val images. The model comes back in
    eval mode on `device`. The global RNG is left untouched: init and batches use `seed`.
    """
    groups, select, select_group = _checked_inputs(images, masks, val_images, val_masks, val_groups, select_group)
    size = int(images.shape[1])
    dev = torch.device(device)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LungUNet(base_channels=base_channels, input_size=size)
    model = model.to(dev).to(memory_format=torch.channels_last)
    gen = torch.Generator().manual_seed(seed)
    x_all = _to_device(images, dev)
    m_all = _to_device(masks.astype(np.uint8), dev)
    val_x = _to_device(val_images, dev)

    n = len(images)
    steps_per_epoch = max(1, n // batch_size if n > batch_size else 1)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(epochs * steps_per_epoch))
    use_bf16 = dev.type == "cuda"

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_bf16)

    best = {"dice": -1.0, "epoch": 0, "state": None, "scores": None}
    history = []
    t0 = time.perf_counter()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(n, generator=gen)
        batches = [order[step * batch_size:(step + 1) * batch_size].to(dev) for step in range(steps_per_epoch)]
        loss = _train_epoch(model, x_all, m_all, batches, opt, sched, gen if augment else None, autocast)
        scores = _val_dice(model, val_x, val_masks, max(batch_size, 32), autocast)
        chosen = float(scores[select].mean())
        row = {"epoch": epoch, "loss": loss, "val_dice": chosen,
               "seconds": round(time.perf_counter() - t0, 1)}
        history.append(row)
        if chosen > best["dice"]:
            best = {"dice": chosen, "epoch": epoch, "scores": scores,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        (log.info if progress else log.debug)("lung epoch %d/%d loss %.4f val dice %.4f (%.0fs)",
                                              epoch, epochs, row["loss"], chosen, row["seconds"])
    model.load_state_dict(best["state"])
    model.eval()
    report = {
        "best_val_dice": best["dice"], "best_epoch": best["epoch"], "select_group": select_group or "all",
        "val_dice_by_group": _group_means(best["scores"], groups), "val_dice_per_image": best["scores"].tolist(),
        "epochs": epochs, "n_train": n, "n_val": len(val_images), "size": size, "batch_size": batch_size,
        "lr": lr, "seed": seed, "augment": augment, "device": str(dev), "bf16": use_bf16,
        "parameters": count_parameters(model), "train_seconds": round(time.perf_counter() - t0, 1),
        "history": history,
    }
    return model, report
