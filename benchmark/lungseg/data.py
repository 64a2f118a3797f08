"""Training data for the lung segmenter: cohen ground-truth masks split by patient, plus phantoms.

Held-out images are cohen images with human (v7labs) masks only, so the reported Dice measures
agreement with people, not with another model (lungVAE masks are generated and used for
training only). Patients, not images, are split: the same patient's follow-up films look alike
and would inflate the held-out Dice.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from benchmark.data.imageio import read_image, read_mask
from benchmark.data.phantom import generate_image, phantom_config
from benchmark.errors import ImageRejected

log = logging.getLogger(__name__)

COHEN_MANIFEST = Path("cohen") / "manifest.csv"
HELDOUT_MASK_SOURCE = "v7labs"
TRAIN_MASK_SOURCES = ("v7labs", "lungVAE")


# --- resizing: one implementation for training and prediction -------------------------

def resize_float(batch: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of N x C x H x W floats, antialiased when shrinking.

    Training and prediction both resize with this function so the network never sees a
    different resampling at inference time than it learned on.
    """
    if tuple(batch.shape[-2:]) == tuple(size):
        return batch
    return F.interpolate(batch, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_gray(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 H x W -> uint8 size x size (squashes the aspect ratio, as the classifiers do)."""
    t = torch.tensor(np.asarray(image), dtype=torch.float32)[None, None]
    return resize_float(t, (size, size))[0, 0].round().clamp(0, 255).to(torch.uint8).numpy()


def resize_bool(mask: np.ndarray, size: int) -> np.ndarray:
    """bool H x W -> bool size x size: area-weighted, then at least half lung counts as lung."""
    t = torch.tensor(np.asarray(mask), dtype=torch.float32)[None, None]
    return (resize_float(t, (size, size))[0, 0] >= 0.5).numpy()


# --- phantom ------------------------------------------------------------------------

def phantom_samples(n: int, size: int, *, seed: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n phantom images (uint8) and their exact lung masks (bool), both n x size x size,
    drawn at `size` by the project's phantom; `offset` is the first phantom index drawn."""
    cfg = phantom_config("phantom", seed=seed, size=size)
    images = np.zeros((n, size, size), np.uint8)
    masks = np.zeros((n, size, size), bool)
    for i in range(n):
        sample = generate_image(cfg, offset + i)
        images[i], masks[i] = sample.image, sample.lung_mask
    return images, masks


# --- cohen --------------------------------------------------------------------------

def cohen_masked_rows(cxr_root: Path) -> list[dict]:
    """Manifest rows of cohen images that have a mask, with absolute image and mask paths."""
    root = Path(cxr_root) / COHEN_MANIFEST.parent
    rows = []
    with open(root / COHEN_MANIFEST.name, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("mask") and row.get("mask_source") in TRAIN_MASK_SOURCES:
                rows.append({**row, "image": str(root / row["image"]), "mask": str(root / row["mask"])})
    return rows


def split_cohen_patients(rows: list[dict], *, seed: int, heldout_fraction: float = 0.2
                         ) -> tuple[list[dict], list[dict]]:
    """(train rows, held-out rows), disjoint by patient_id.

    Held-out patients are drawn only among patients with a v7labs mask; the held-out side keeps
    only their v7labs images, and their other images are dropped rather than trained on.
    """
    eligible = sorted({r["patient_id"] for r in rows if r["mask_source"] == HELDOUT_MASK_SOURCE})
    rng = np.random.default_rng(seed)
    n_held = int(round(heldout_fraction * len(eligible)))
    held = set(rng.permutation(np.array(eligible, dtype=object))[:n_held].tolist()) if n_held else set()
    train = [r for r in rows if r["patient_id"] not in held]
    heldout = [r for r in rows if r["patient_id"] in held and r["mask_source"] == HELDOUT_MASK_SOURCE]
    return train, heldout


def _load_rows(rows: list[dict], size: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    images, masks, kept = [], [], []
    for row in rows:
        try:
            image, mask = read_image(row["image"]), read_mask(row["mask"])
        except ImageRejected as exc:
            log.warning("skipping %s: %s", row["image"], exc.reason)
            continue
        if image.shape != mask.shape:
            log.warning("skipping %s: mask %s does not match image %s", row["image"], mask.shape, image.shape)
            continue
        images.append(resize_gray(image, size))
        masks.append(resize_bool(mask, size))
        kept.append(row)
    shape = (0, size, size)
    return (np.stack(images) if images else np.zeros(shape, np.uint8),
            np.stack(masks) if masks else np.zeros(shape, bool), kept)


def build_training_set(cxr_root: Path | None, size: int, *, n_phantom: int, seed: int,
                       n_phantom_val: int | None = None, heldout_fraction: float = 0.2,
                       use_lungvae: bool = True):
    """Arrays to train the segmenter: (train_x, train_m, val_x, val_m, info).

    Images are uint8 N x size x size, masks bool. Train = cohen images of non-held-out patients
    (v7labs, plus lungVAE when `use_lungvae`) + `n_phantom` phantoms. Val = held-out cohen
    v7labs images, then `n_phantom_val` phantoms drawn with seed + 1 (default n_phantom // 5, at least 4 when
    there are phantoms). `info["val_groups"]` names each val image's group ("cohen"/"phantom")
    so Dice can be reported per group; `info["heldout_rows"]` keeps the held-out manifest rows
    for a native-resolution check. With `cxr_root=None` (or no pack there) it is phantom only.
    """
    if n_phantom_val is None:
        n_phantom_val = max(4, n_phantom // 5) if n_phantom else 0
    train_rows: list[dict] = []
    held_rows: list[dict] = []
    manifest = Path(cxr_root) / COHEN_MANIFEST if cxr_root is not None else None
    if manifest is not None and manifest.is_file():
        rows = cohen_masked_rows(Path(cxr_root))
        train_rows, held_rows = split_cohen_patients(rows, seed=seed, heldout_fraction=heldout_fraction)
        if not use_lungvae:
            train_rows = [r for r in train_rows if r["mask_source"] == HELDOUT_MASK_SOURCE]
    elif cxr_root is not None:
        log.warning("no cohen manifest at %s; training on phantoms only", manifest)
    cohen_x, cohen_m, train_rows = _load_rows(train_rows, size)
    held_x, held_m, held_rows = _load_rows(held_rows, size)
    ph_x, ph_m = phantom_samples(n_phantom, size, seed=seed)
    # Another phantom seed: phantom "patients" share anatomy across images, as real ones do.
    phv_x, phv_m = phantom_samples(n_phantom_val, size, seed=seed + 1)
    info = {
        "size": size,
        "seed": seed,
        "n_cohen_train": len(cohen_x),
        "n_cohen_heldout": len(held_x),
        "n_phantom_train": n_phantom,
        "n_phantom_val": n_phantom_val,
        "cohen_train_mask_sources": sorted({r["mask_source"] for r in train_rows}),
        "train_patients": sorted({r["patient_id"] for r in train_rows}),
        "heldout_patients": sorted({r["patient_id"] for r in held_rows}),
        "heldout_rows": held_rows,
        "val_groups": ["cohen"] * len(held_x) + ["phantom"] * n_phantom_val,
    }
    log.info("lung training set: %d cohen + %d phantom train, %d cohen + %d phantom val",
             len(cohen_x), n_phantom, len(held_x), n_phantom_val)
    return (np.concatenate([cohen_x, ph_x]), np.concatenate([cohen_m, ph_m]),
            np.concatenate([held_x, phv_x]), np.concatenate([held_m, phv_m]), info)
