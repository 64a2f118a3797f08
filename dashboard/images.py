"""Finding and reading the stored images and lung masks that the results DB points at.

Where a stored file is found (`images.path`, else `images.key` under $CXR_DATA) and the
uniform-map baseline live in benchmark.data.stored, shared with the report. Everything is read
through benchmark.data.imageio, the project's one reader, so the dashboard shows exactly the
pixels the model saw (DICOM windowing, EXIF rotation included).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from benchmark.data.imageio import read_image, read_mask
from benchmark.data.stored import fit_within, lung_share, resolve_image_path  # noqa: F401 (lung_share: cache.py)
from benchmark.errors import ImageRejected

log = logging.getLogger(__name__)


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
