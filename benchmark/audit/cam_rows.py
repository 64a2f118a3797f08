"""CAM rows for a trained model on a set of images: maps at layer resolution plus lung focus.

For every image: the map of the predicted class and, when the prediction is wrong, of the true
class too. Maps are stored as float16 at the target layer's own resolution; lung-focus measures
are computed against the lung mask at input resolution (upsampled maps, see cams/lungfocus.py).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from benchmark.cams.engine import compute_cams, compute_cams_many, explain_predictions
from benchmark.cams.layers import resolve_layer
from benchmark.cams.lungfocus import lung_focus_batch
from benchmark.cams.methods import list_cam_methods
from benchmark.cams.names import split_method
from benchmark.errors import BenchmarkError

log = logging.getLogger(__name__)


def method_applicability(model, methods: Sequence[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """(methods that apply, [(method, why not)] for the rest); names may carry '@layer'. Silent:
    the audit logs and stores the skips once (audit/tables.py)."""
    keep, skipped = [], []
    for name in methods:
        base, layer = split_method(name)
        try:
            if layer is not None:
                resolve_layer(model, layer)  # a clear error for a layer the net does not have
            applies = base in list_cam_methods(model, layer)
        except BenchmarkError as exc:
            skipped.append((name, f"not applicable: {exc}"))
            continue
        if applies:
            keep.append(name)
        else:
            skipped.append((name, "not applicable: needs a global-average-pooling + linear head, explained at "
                                  "that head's own layer"))
    return keep, skipped


def applicable_methods(model, methods: Sequence[str]) -> list[str]:
    """The methods (optionally 'method@layer') that apply to this model; the rest are logged."""
    return method_applicability(model, methods)[0]


def method_maps(model, images: torch.Tensor, targets: torch.Tensor, name: str, device=None, batch_size: int = 32):
    """compute_cams for a method name that may carry a layer ('hirescam@stride16').

    The layer is passed to compute_cams, never set on the model: one model may be explained at
    several layers by several threads at once (the dashboard's live CAMs)."""
    base, layer = split_method(name)
    return compute_cams(model, images, targets, base, batch_size=batch_size, device=device, layer=layer)


def predicted_maps(model, images: torch.Tensor, name: str, device=None,
                   batch_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps of each image's predicted class, logits) for a method name that may carry a layer:
    one forward for a fast method (engine.explain_predictions). Never changes the model."""
    base, layer = split_method(name)
    return explain_predictions(model, images, base, batch_size=batch_size, device=device, layer=layer)


def _cam_targets(preds: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(image index, target class, kind) for every map: pred for all, true where it differs."""
    n = len(preds)
    wrong = np.flatnonzero(preds != labels)
    idx = np.concatenate([np.arange(n), wrong])
    tgt = np.concatenate([preds, labels[wrong]])
    kinds = ["pred"] * n + ["true"] * len(wrong)
    return idx, tgt, kinds


def lung_mass_ceiling(masks: np.ndarray, shape: tuple[int, int]) -> list[float | None]:
    """lung_mass of the best map a CAM of `shape` can draw: the lung mask area-pooled to that grid.

    A layer-resolution map upsampled bilinearly spills over the lung border, so even a perfect
    map cannot score 1, and the coarser its grid the lower its best score (the phantom's figures:
    bench/RESULTS.md).
    Reading lung_mass between the uniform baseline and this ceiling keeps models with
    different map resolutions comparable.
    """
    ideal = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(masks.astype(np.float32)).unsqueeze(1), shape)
    return [f.lung_mass for f in lung_focus_batch(ideal.squeeze(1), masks)]


def marker_region(marker_masks: np.ndarray, cell: float) -> np.ndarray:
    """The planted marker grown by one CAM cell on each side.

    A layer-resolution map (7 x 7 for resnet18 at 224 px) cannot put its mass on a 9-pixel
    marker, only on the cell that holds it; measuring against the exact marker pixels would
    read ~0 even for a model that looks only at the marker.
    """
    k = max(1, int(np.ceil(cell)))
    t = torch.from_numpy(marker_masks.astype(np.float32)).unsqueeze(1)
    grown = torch.nn.functional.max_pool2d(t, kernel_size=2 * k + 1, stride=1, padding=k)
    return grown.squeeze(1).numpy() > 0


def cam_rows(model, images: np.ndarray, masks: np.ndarray, mask_sources: list[str], preds: np.ndarray,
             labels: np.ndarray, image_ids: list[str], classes: list[str], methods: Sequence[str],
             device: torch.device, *, split: str = "test", batch_size: int = 32,
             marker_masks: np.ndarray | None = None) -> pd.DataFrame:
    """Rows of the `cams` table (one per image x method x target); `images` N x H x W uint8."""
    idx, tgt, kinds = _cam_targets(preds, labels)
    x = torch.from_numpy(images[idx]).unsqueeze(1)  # uint8: each batch is scaled on the device
    targets = torch.from_numpy(tgt.astype(np.int64))
    target_masks = masks[idx]
    markers = marker_masks[idx] if marker_masks is not None else None
    by_shape: dict[tuple, tuple] = {}  # (ceilings, marker region) depend on the map shape only
    frames = []
    model.eval()
    keep = applicable_methods(model, methods)
    all_maps = compute_cams_many(model, x, targets, [split_method(m) for m in keep], batch_size=batch_size,
                                 device=device)
    for method, maps in zip(keep, all_maps):
        focus = lung_focus_batch(maps, target_masks)
        maps16 = maps.numpy().astype(np.float16)
        shape = maps16.shape[1:]
        if shape not in by_shape:
            by_shape[shape] = (lung_mass_ceiling(target_masks, shape),
                               None if markers is None else marker_region(markers, cell=images.shape[-1] / shape[-1]))
        ceilings, region = by_shape[shape]
        df = pd.DataFrame({
            "image_id": [image_ids[i] for i in idx], "split": split, "method": method,
            "target_class": [classes[t] for t in tgt], "target_kind": kinds,
            "height": maps16.shape[1], "width": maps16.shape[2], "cam": [m.tobytes() for m in maps16],
            "lung_mass": [f.lung_mass for f in focus], "pointing_hit": [f.pointing_hit for f in focus],
            "lung_iou": [f.lung_iou for f in focus], "mask_source": [mask_sources[i] or None for i in idx],
        })
        df["lung_mass_ceiling"] = ceilings
        if region is not None:
            df["marker_mass"] = [f.lung_mass for f in lung_focus_batch(maps, region)]
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
