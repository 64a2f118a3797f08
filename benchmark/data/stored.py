"""Finding and measuring the image and mask files a results DB points at, after the run.

`images.path` is where a benchmark run read the file; a DB opened on another machine still
finds real-data images through `images.key` (the path inside its source folder) under
$CXR_DATA. Both the dashboard and the report (`benchmark/report/`) read stored images, so the
lookup lives here, below both, rather than in the dashboard.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark import paths
from benchmark.data.imageio import read_mask
from benchmark.errors import ImageRejected

log = logging.getLogger(__name__)

#: masks read at most for one dataset's uniform-map baseline (a seeded sample beyond that)
BASELINE_MASK_LIMIT = 300


def resolve_image_path(path: str | None, key: str | None = None, source: str | None = None,
                       data_root: str | os.PathLike | None = None) -> Path | None:
    """The stored path if it exists, else `<data_root or $CXR_DATA>/<source>/<key>`, else None."""
    if path and isinstance(path, str | os.PathLike) and Path(path).is_file():
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


def lung_share(mask_paths, limit: int = BASELINE_MASK_LIMIT, seed: int = 0) -> tuple[float | None, int]:
    """Uniform-map baseline: the lungs' share of the image, averaged over up to `limit` masks.

    A CAM spread evenly over the image puts exactly this share of its mass on the lungs, so it
    is the number a model's mean lung_mass must beat. Computed from the mask files (not stored
    in the DB); over `limit` masks a seeded sample is used. Returns (share, masks read).
    """
    found = [p for p in mask_paths if isinstance(p, str) and p]
    if len(found) > limit:
        rng = np.random.default_rng(seed)
        found = [found[i] for i in sorted(rng.choice(len(found), size=limit, replace=False))]
    shares = []
    cache: dict[str, float] = {}
    for p in found:
        if p not in cache:
            try:
                cache[p] = float(read_mask(p).mean())
            except (ImageRejected, OSError) as exc:
                log.warning("mask %s skipped for the uniform baseline: %s", p, exc)
                continue
        shares.append(cache[p])
    return (float(np.mean(shares)) if shares else None), len(shares)
