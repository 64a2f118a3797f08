"""One call that builds the data, trains, checks held-out cohen Dice at native size, and saves.

This is what `python -m benchmark lungs train` and bench/train_lung_segmenter.py run.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmark.config import device_option, option
from benchmark.data.imageio import read_image, read_mask
from benchmark.lungseg.data import build_training_set
from benchmark.lungseg.model import LungUNet, dice_per_image
from benchmark.lungseg.predict import predict_lung_mask, save_segmenter
from benchmark.lungseg.train import train_lung_segmenter
from benchmark.training.device import resolve_device

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LungTrainConfig:
    """Defaults chosen on the cohen masks: 128 px is enough for lung-level masks and trains on a
    CPU in minutes; the shipped segmenter was trained with them."""

    size: int = option(128, "training size (multiple of 16)")
    epochs: int = option(10, "training epochs (the shipped segmenter was trained with 10)")
    batch_size: int = option(16, "batch size", cli=False)
    lr: float = option(2e-3, "learning rate", cli=False)
    n_phantom: int = option(48, "phantom images (exact masks) added to the cohen masks")
    seed: int = option(0, "seed of the held-out split, the phantoms and training")
    device: str = device_option()
    base_channels: int = option(16, "U-Net width", cli=False)
    use_lungvae: bool = option(True, "train on the pack's lungVAE masks too, not only V7", cli=False)
    heldout_fraction: float = option(0.2, "share of cohen patients held out for Dice", cli=False)
    augment: bool = option(True, "flip-free affine and exposure augmentation", cli=False)

    def __post_init__(self):
        if self.size % 16 or self.size < 32:
            raise ValueError(f"size must be a multiple of 16 and >= 32, got {self.size}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


def heldout_native_dice(model: LungUNet, rows: list[dict], *, device: str = "cpu") -> np.ndarray:
    """Per-image Dice against the held-out masks at each image's own resolution.

    The training-size Dice flatters the model (both masks are downsampled); downstream
    lung-focus measures use native-size masks, so this is the number that matters.
    """
    scores = []
    for row in rows:
        image, truth = read_image(row["image"]), read_mask(row["mask"])
        scores.append(dice_per_image(predict_lung_mask(model, image, device=device), truth)[0])
    return np.asarray(scores)


def machine_description(device: str) -> dict:
    """Where a segmenter was trained, for its sidecar: wall times mean little without it."""
    import torch

    info = {"device": device, "platform": platform.platform(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def fit_lung_segmenter(cxr_root: Path | None, config: LungTrainConfig = LungTrainConfig(), *,
                       out_stem: Path | None, progress: bool = True, command: str = ""
                       ) -> tuple[LungUNet, dict]:
    """Train on cohen (+ phantom), report Dice per group and at native size, save if out_stem.

    `command` (the command line that trained it) goes into the report and the sidecar, so a
    shipped segmenter says how to reproduce it.
    """
    t0 = time.perf_counter()
    config = replace(config, device=str(resolve_device(config.device)))
    train_x, train_m, val_x, val_m, info = build_training_set(
        cxr_root, config.size, n_phantom=config.n_phantom, seed=config.seed,
        heldout_fraction=config.heldout_fraction, use_lungvae=config.use_lungvae)
    model, report = train_lung_segmenter(
        train_x, train_m, val_images=val_x, val_masks=val_m, epochs=config.epochs,
        batch_size=config.batch_size, lr=config.lr, device=config.device, seed=config.seed,
        augment=config.augment, progress=progress, val_groups=info["val_groups"],
        base_channels=config.base_channels)
    heldout = info["heldout_rows"]
    if heldout:
        native = heldout_native_dice(model, heldout, device=config.device)
        report["heldout_cohen_dice_native"] = float(native.mean())
        report["heldout_cohen_dice_native_min"] = float(native.min())
    report["wall_seconds"] = round(time.perf_counter() - t0, 1)
    report["machine"] = machine_description(config.device)
    if command:
        report["command"] = command
    report["config"] = asdict(config)
    report["data"] = {k: v for k, v in info.items() if k not in ("heldout_rows", "val_groups", "train_patients")}
    report["data"]["cxr_root"] = str(cxr_root) if cxr_root is not None else None
    log.info("lung segmenter: val dice by group %s, native held-out cohen %s, %.0fs",
             report["val_dice_by_group"], report.get("heldout_cohen_dice_native"), report["wall_seconds"])
    if out_stem is not None:
        meta = {k: v for k, v in report.items() if k != "val_dice_per_image"}
        save_segmenter(model, out_stem, meta)
    return model, report
