"""One call that builds the data, trains, checks held-out cohen Dice at native size, and saves.

This is what `python -m benchmark lungs train` and bench/train_lung_segmenter.py run.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.imageio import read_image, read_mask
from .data import build_training_set
from .model import LungUNet, dice_per_image
from .predict import DEFAULT_SEGMENTER_STEM, REPO_ROOT, predict_lung_mask, save_segmenter
from .train import train_lung_segmenter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LungTrainConfig:
    """Defaults measured on the cohen masks: 128 px is enough for lung-level masks and trains
    on two CPU cores within minutes."""

    size: int = 128
    epochs: int = 10
    batch_size: int = 16
    lr: float = 2e-3
    n_phantom: int = 48
    seed: int = 0
    device: str = "cpu"
    base_channels: int = 16
    use_lungvae: bool = True
    heldout_fraction: float = 0.2
    augment: bool = True

    def __post_init__(self):
        if self.size % 16 or self.size < 32:
            raise ValueError(f"size must be a multiple of 16 and >= 32, got {self.size}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError("epochs must be >= 1 and batch_size >= 2")
        if not 0 < self.heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}")


def default_cxr_root() -> Path:
    """$CXR_DATA, else the data pack beside the repository (../shared/data/cxr)."""
    env = os.environ.get("CXR_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data" / "cxr"


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


def fit_lung_segmenter(cxr_root: Path | None, config: LungTrainConfig = LungTrainConfig(), *,
                       out_stem: Path | None = DEFAULT_SEGMENTER_STEM, progress: bool = True
                       ) -> tuple[LungUNet, dict]:
    """Train on cohen (+ phantom), report Dice per group and at native size, save if out_stem."""
    t0 = time.perf_counter()
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
    report["config"] = asdict(config)
    report["data"] = {k: v for k, v in info.items() if k not in ("heldout_rows", "val_groups", "train_patients")}
    report["data"]["cxr_root"] = str(cxr_root) if cxr_root is not None else None
    log.info("lung segmenter: val dice by group %s, native held-out cohen %s, %.0fs",
             report["val_dice_by_group"], report.get("heldout_cohen_dice_native"), report["wall_seconds"])
    if out_stem is not None:
        meta = {k: v for k, v in report.items() if k != "val_dice_per_image"}
        save_segmenter(model, out_stem, meta)
    return model, report
