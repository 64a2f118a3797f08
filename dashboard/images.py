"""Finding and reading the stored images and lung masks that the results DB points at.

`images.path` is where a benchmark run read the file; a DB opened on another machine still
finds real-data images through `images.key` (the path inside its source folder) under
$CXR_DATA. Everything is read through benchmark.data.imageio, the project's one reader, so the
dashboard shows exactly the pixels the model saw (DICOM windowing, EXIF rotation included).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark import paths
from benchmark.data.imageio import read_image, read_mask
from benchmark.errors import ImageRejected

log = logging.getLogger(__name__)


def resolve_image_path(path: str | None, key: str | None = None, source: str | None = None,
                       data_root: str | os.PathLike | None = None) -> Path | None:
    """The stored path if it exists, else `<data_root or $CXR_DATA>/<source>/<key>`, else None."""
    if path and Path(path).is_file():
        return Path(path)
    root = paths.data_root(data_root)
    if root and key and source and isinstance(key, str) and isinstance(source, str):
        candidate = Path(root) / source / key
        if candidate.is_file():
            return candidate
    return None


def fit_within(image: np.ndarray, max_side: int) -> np.ndarray:
    """Downscale (never upscale) so the longest side is at most max_side, keeping the aspect."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))


def load_display_image(path: str | None, key: str | None = None, source: str | None = None,
                       max_side: int = 384) -> np.ndarray | None:
    """uint8 H x W picture of a stored image at display size, or None if it cannot be found/read."""
    found = resolve_image_path(path, key, source)
    if found is None:
        return None
    try:
        return fit_within(read_image(found), max_side)
    except ImageRejected as exc:
        log.warning("stored image %s cannot be shown: %s", found, exc.reason)
        return None


def load_display_mask(mask_path: str | None, shape: tuple[int, int]) -> np.ndarray | None:
    """bool mask resized (nearest) to `shape`, or None where there is no readable mask."""
    if not mask_path or not isinstance(mask_path, str) or not Path(mask_path).is_file():
        return None
    try:
        return read_mask(mask_path, shape=shape)
    except ImageRejected as exc:
        log.warning("lung mask %s cannot be read: %s", mask_path, exc.reason)
        return None


def lung_share(mask_paths, limit: int = 300, seed: int = 0) -> tuple[float | None, int]:
    """Uniform-map baseline: the lungs' share of the image, averaged over up to `limit` masks.

    A CAM spread evenly over the image puts exactly this share of its mass on the lungs, so it
    is the number a model's mean lung_mass must beat. Computed from the mask files (not stored
    in the DB); over `limit` masks a seeded sample is used. Returns (share, masks read).
    """
    paths = [p for p in mask_paths if isinstance(p, str) and p]
    if len(paths) > limit:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in sorted(rng.choice(len(paths), size=limit, replace=False))]
    shares = []
    cache: dict[str, float] = {}
    for p in paths:
        if p not in cache:
            try:
                cache[p] = float(read_mask(p).mean())
            except (ImageRejected, OSError) as exc:
                log.warning("mask %s skipped for the uniform baseline: %s", p, exc)
                continue
        shares.append(cache[p])
    return (float(np.mean(shares)) if shares else None), len(shares)
