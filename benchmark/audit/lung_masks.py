"""Lung masks for a set of decoded images: ground truth where the source has it, else predicted.

Ground truth: the phantom's exact masks (gt-phantom), the pack's V7 Labs and lungVAE masks
(gt-v7, gt-lungvae). Every other image gets the mask of the project's own segmenter
(`predicted`): the one shipped in the package, or one the user trained or named
(`benchmark.paths.choose_segmenter` holds the rule).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from benchmark import paths
from benchmark.errors import WeightsMissingError

log = logging.getLogger(__name__)


def complete_masks(images: np.ndarray, masks: np.ndarray, has_mask: np.ndarray, gt_sources: list[str],
                   *, segmenter: str | Path | None, device: str = "cpu") -> tuple[np.ndarray, list[str]]:
    """(masks, mask_source per image): ground truth kept, gaps filled by the segmenter if available.

    An image that still has no mask gets an all-False mask and source '' (no lung measures).
    """
    masks = masks.copy()
    sources = [s if h else "" for s, h in zip(gt_sources, has_mask)]
    missing = np.flatnonzero(~has_mask)
    if len(missing) == 0:
        return masks, sources
    from benchmark.lungseg import load_segmenter, predict_lung_masks

    stem = paths.segmenter_stem(segmenter)
    try:
        model, _ = load_segmenter(stem, device=device)
    except WeightsMissingError:
        # Only when a named segmenter (--segmenter, $CXR_LUNG_SEGMENTER) is absent, or the
        # package lost its shipped one: otherwise the shipped segmenter is always there.
        log.warning("%d images have no ground-truth lung mask and there is no lung segmenter at %s: they get no "
                    "lung-focus measures. Fix the path, unset $%s to use the shipped segmenter, or train one: "
                    "python -m benchmark lungs train", len(missing), stem, paths.ENV_SEGMENTER)
        return masks, sources
    masks[missing] = predict_lung_masks(model, images[missing], device=device)
    for i in missing:
        sources[i] = "predicted"
    return masks, sources


def segmenter_row(segmenter: str | Path | None) -> dict | None:
    """The `lung_segmenters` row of the segmenter a run used (None if there is none): its
    held-out Dice travels with the results it produced."""
    import datetime as dt
    import json

    stem = paths.segmenter_stem(segmenter)
    sidecar = stem.with_suffix(".json")
    if not sidecar.is_file():
        return None
    meta = json.loads(sidecar.read_text())
    dice = meta.get("heldout_cohen_dice_native")
    return {"checkpoint_path": str(stem.with_suffix(".safetensors")),
            "created_at": meta.get("saved_at") or dt.datetime.now(),
            "image_size": meta.get("input_size"), "dice_heldout": dice,
            "dice_heldout_source": "cohen gt-v7 (native size)" if dice is not None else None,
            # the images the Dice was measured on (cohen held-out patients), not every val image
            "n_train": meta.get("n_train"),
            "n_heldout": (meta.get("data") or {}).get("n_cohen_heldout", meta.get("n_val")),
            "config_json": json.dumps(meta.get("config", {}), default=str)}
