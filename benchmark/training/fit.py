"""Fit one model on one dataset: class-weighted CE, AdamW, cosine schedule, early stopping on val loss.

Data are decoded uint8 tensors kept on the training device (decoded once, see data/decode.py), so
an epoch is index shuffling plus light on-device augmentation, with no loader processes.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from benchmark.config import TrainConfig
from benchmark.training.device import autocast, memory_format, to_input

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    history: list[dict]
    seconds: float
    images_per_s: float


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights (mean 1): rare classes such as covid count as much as common ones."""
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    w = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / n_classes, 0.0)
    return torch.tensor(w, dtype=torch.float32)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small affine jitter and exposure change on the device. No flips: heart side and the
    laterality markers are anatomy and evidence, not noise."""
    n = x.shape[0]
    dev = x.device
    r = lambda lo, hi: (torch.rand(n, generator=gen, device="cpu") * (hi - lo) + lo).to(dev)
    ang = r(-0.09, 0.09)
    scale = r(0.93, 1.07)
    tx, ty = r(-0.05, 0.05), r(-0.05, 0.05)
    cos, sin = torch.cos(ang) / scale, torch.sin(ang) / scale
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    gain, bias = r(0.85, 1.15).view(n, 1, 1, 1), r(-0.06, 0.06).view(n, 1, 1, 1)
    return (x * gain + bias).clamp_(0, 1).contiguous(memory_format=memory_format(dev))


def train_step(model, x_u8: torch.Tensor, y: torch.Tensor, opt, criterion, device: torch.device,
               gen: torch.Generator | None) -> torch.Tensor:
    """One optimisation step on a uint8 batch (augmented when a generator is given); returns the loss."""
    x = to_input(x_u8, device)
    if gen is not None:
        x = augment(x, gen)
    with autocast(device):
        logits = model(x)
    loss = criterion(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()


def _epoch_loss(model, images, labels, idx, criterion, device, batch_size) -> float:
    model.eval()
    total, n = 0.0, 0
    with torch.no_grad(), autocast(device):
        for s in range(0, len(idx), batch_size):
            b = idx[s:s + batch_size]
            logits = model(to_input(images[b], device))
            total += criterion(logits.float(), labels[b]).item() * len(b)
            n += len(b)
    return total / max(n, 1)


def fit(model: torch.nn.Module, train_x: torch.Tensor, train_y: torch.Tensor,
        val_x: torch.Tensor, val_y: torch.Tensor, n_classes: int, cfg: TrainConfig,
        device: torch.device, *, desc: str = "train", progress: bool = True) -> TrainResult:
    """Train in place; the model ends holding the weights of the epoch with the lowest val loss.

    train_x/val_x: uint8 N x H x W on `device`; labels: int64 on `device`.
    """
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.to(device).to(memory_format=memory_format(device))
    weights = class_weights(train_y.cpu().numpy(), n_classes).to(device)
    criterion = torch.nn.CrossEntropyLoss(weight=weights)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_x) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    best = (math.inf, 0, copy.deepcopy(model.state_dict()))
    history, bad_epochs, seen = [], 0, 0
    t0 = time.perf_counter()
    val_idx = torch.arange(len(val_x), device=device)
    bar = tqdm(range(1, cfg.epochs + 1), desc=desc, unit="epoch", disable=not progress, leave=False)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(train_x), generator=gen).to(device)
        running, n = 0.0, 0
        for s in range(0, len(perm), cfg.batch_size):
            b = perm[s:s + cfg.batch_size]
            if len(b) < 2 and len(perm) > 1:  # BatchNorm cannot train on one image
                continue
            loss = train_step(model, train_x[b], train_y[b], opt, criterion, device,
                              gen if cfg.augment else None)
            sched.step()
            running += loss.item() * len(b)
            n += len(b)
        seen += n
        val_loss = _epoch_loss(model, val_x, val_y, val_idx, criterion, device, cfg.batch_size * 2) \
            if len(val_x) else running / max(n, 1)
        history.append({"epoch": epoch, "train_loss": running / max(n, 1), "val_loss": val_loss})
        bar.set_postfix(train=f"{running / max(n, 1):.3f}", val=f"{val_loss:.3f}")
        log.info("%s epoch %d: train loss %.4f, val loss %.4f", desc, epoch, running / max(n, 1), val_loss)
        if val_loss < best[0] - 1e-4:
            best, bad_epochs = (val_loss, epoch, copy.deepcopy(model.state_dict())), 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                log.info("%s: early stop at epoch %d (best %d)", desc, epoch, best[1])
                break
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    model.load_state_dict(best[2])
    return TrainResult(best_epoch=best[1], epochs_run=len(history), best_val_loss=best[0],
                       history=history, seconds=seconds, images_per_s=seen / max(seconds, 1e-9))


@torch.no_grad()
def predict_probs(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                  batch_size: int = 64, *, progress: bool = False, desc: str = "evaluate") -> np.ndarray:
    """Softmax probabilities (N x C, float64 numpy) for uint8 N x H x W images."""
    model.eval()
    out = []
    for s in tqdm(range(0, len(images), batch_size), desc=desc, disable=not progress, leave=False):
        with autocast(device):
            logits = model(to_input(images[s:s + batch_size], device))
        out.append(torch.softmax(logits.float(), 1).cpu())
    if not out:
        return np.zeros((0, 0))
    return torch.cat(out).double().numpy()
