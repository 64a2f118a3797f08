"""How much of a CAM lies on the lungs: the shortcut-learning audit's central number.

A classifier that decides from the lungs should put its CAM there; one that learned a shortcut
(text markers, borders, the source's scanner) puts it outside. Three measures per map, each
computed after bilinear upsampling of the layer-resolution map to the mask's shape:

- lung_mass: positive CAM mass inside the mask / total positive mass (energy-based pointing
  game). A uniform map scores `uniform_baseline(mask)`, the lung's share of the image, so
  read lung_mass against that baseline, not against 0.5.
- pointing_hit: the map's maximum lies in the mask. Bilinear upsampling makes exact ties at
  the maximum common (a peak cell on the border becomes a flat block), so the hit is decided
  by the tied maxima as a whole: hit when at least half of them lie in the mask.
  (First-argmax would favour the top-left of every block, a positional bias.)
- lung_iou: IoU of the top-20 % CAM pixels with the mask. The top set is every pixel at or
  above the k-th largest value (k = ceil(20 % of the pixels)), so ties at the cut are all in or
  all out rather than split by raster order; pixels with no positive CAM are never in it.
  "Tied" allows 1e-6 of the peak: resampling in float32 leaves noise of that order on flat maps.

A map with no positive value (zero map) or an empty mask has no defined measure: None, never
NaN. Masks: bool; integer masks are lung where > 0 (the pack's 0/255 PNGs), float masks where
>= 0.5 (predicted probabilities).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from benchmark.cams.fast import upsample_maps
from benchmark.errors import BenchmarkError

TOP_FRACTION = 0.2
_TIE_RTOL = 1e-6  # values this close (relative to the peak) count as tied: float32 resampling noise
_CHUNK = 64  # maps per vectorised step: bounds memory at N x H x W float64


@dataclass(frozen=True)
class LungFocus:
    lung_mass: float | None
    pointing_hit: bool | None
    lung_iou: float | None


def _as_tensor(array) -> torch.Tensor:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu()
    return torch.from_numpy(np.ascontiguousarray(array))


def _as_mask(mask) -> torch.Tensor:
    mask = _as_tensor(mask)
    if mask.dtype == torch.bool:
        return mask
    if mask.is_floating_point():
        return mask >= 0.5
    return mask > 0


def uniform_baseline(lung_mask) -> float:
    """lung_mass of a uniform map: the lung's share of the image."""
    mask = _as_mask(lung_mask)
    return float(mask.double().mean()) if mask.numel() else float("nan")


def lung_focus(cam, lung_mask, *, top_fraction: float = TOP_FRACTION) -> LungFocus:
    """Measures for one map (h x w, any resolution) against one mask (H x W, image resolution)."""
    cam_t, mask_t = _as_tensor(cam), _as_mask(lung_mask)
    if cam_t.ndim != 2 or mask_t.ndim != 2:
        raise BenchmarkError(f"lung_focus takes one h x w map and one H x W mask, got "
                             f"{tuple(cam_t.shape)} and {tuple(mask_t.shape)}")
    return lung_focus_batch(cam_t[None], mask_t[None], top_fraction=top_fraction)[0]


def lung_focus_batch(cams, masks, *, top_fraction: float = TOP_FRACTION) -> list[LungFocus]:
    """Vectorised `lung_focus` over N maps (N x h x w) and their masks (N x H x W)."""
    cams_t, masks_t = _as_tensor(cams), _as_mask(masks)
    if cams_t.ndim != 3 or masks_t.ndim != 3 or cams_t.shape[0] != masks_t.shape[0]:
        raise BenchmarkError(f"need N x h x w maps and N x H x W masks, got "
                             f"{tuple(cams_t.shape)} and {tuple(masks_t.shape)}")
    if not 0.0 < top_fraction <= 1.0:
        raise BenchmarkError(f"top_fraction must be in (0, 1], got {top_fraction}")
    results: list[LungFocus] = []
    for start in range(0, cams_t.shape[0], _CHUNK):
        results.extend(_chunk(cams_t[start:start + _CHUNK], masks_t[start:start + _CHUNK], top_fraction))
    return results


def _chunk(cams: torch.Tensor, masks: torch.Tensor, top_fraction: float) -> list[LungFocus]:
    if cams.shape[0] == 0:
        return []
    maps = upsample_maps(cams.float(), tuple(masks.shape[-2:])).double()
    maps = torch.nan_to_num(maps, nan=0.0, posinf=0.0, neginf=0.0).flatten(1)
    lung = masks.flatten(1)
    n_pixels = maps.shape[1]

    positive = maps.clamp_min(0.0)
    total = positive.sum(dim=1)
    inside = (positive * lung).sum(dim=1)
    defined = (total > 0) & lung.any(dim=1)

    peak = maps.amax(dim=1, keepdim=True)
    at_peak = maps >= peak - _TIE_RTOL * peak.abs()
    peak_hits = 2 * (at_peak & lung).sum(dim=1) >= at_peak.sum(dim=1)

    k = min(n_pixels, max(1, math.ceil(top_fraction * n_pixels)))
    cut = torch.topk(maps, k, dim=1).values[:, -1:]
    top = (maps >= cut - _TIE_RTOL * peak.abs()) & (maps > 0)
    union = (top | lung).sum(dim=1).double()
    iou = (top & lung).sum(dim=1).double() / union.clamp_min(1.0)

    out = []
    for i in range(maps.shape[0]):
        if not bool(defined[i]):
            out.append(LungFocus(None, None, None))
            continue
        out.append(LungFocus(
            lung_mass=float(inside[i] / total[i]),
            pointing_hit=bool(peak_hits[i]),
            lung_iou=float(iou[i]),
        ))
    return out
