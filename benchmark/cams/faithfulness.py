"""Does a CAM point at what the model uses? Perturbation scores, per image, on the model's device.

Lung focus says where a map lies; these say whether the map is faithful to the model, so that
"the CAM is off the lungs" can be read as "the model looks off the lungs" (and not as a poor
explanation method). Run on a sample of images.

- road_combined: ROAD (Rong et al. 2022) with noisy linear imputation, (LeRF - MoRF) / 2 of
  the target's softmax probability averaged over the percentiles. Higher is more faithful:
  removing the most relevant pixels hurts more than removing the least relevant ones.
- confidence_drop: target probability on the image minus on the image multiplied by the map
  (pytorch-grad-cam's CamMultImageConfidenceChange, sign flipped so a drop is positive).

Both are pytorch-grad-cam's metrics computed in torch, batched, on the images' device
(`cams/road.py`; tests/test_road_torch.py holds them equal to pytorch-grad-cam's). Adapted: ROAD
only uses the map's order (percentile cuts), and maps with large tied regions (a ReLU'd map is
often zero on most of the image) make a cut remove every pixel or none; so ROAD receives the
map's ranks with ties broken by a seeded random order. For maps without ties the ranks give
exactly pytorch-grad-cam's cuts. The imputer's noise comes from a CPU generator seeded here, so
results repeat, are the same on CPU and GPU up to float rounding, and the caller's RNG is untouched.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from benchmark.cams.engine import upsample_cam
from benchmark.cams.fast import check_targets, prepare_images, resolve_device
from benchmark.cams.road import confidence_drop, road_scores, target_probability
from benchmark.errors import BenchmarkError

log = logging.getLogger(__name__)

DEFAULT_PERCENTILES = (20, 40, 60, 80)


def rank_maps(cams: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each map replaced by its pixel ranks scaled to [0, 1]; ties broken at random (seeded)."""
    n, h, w = cams.shape
    flat = cams.reshape(n, -1)
    ranks = np.empty_like(flat, dtype=np.float32)
    scale = max(flat.shape[1] - 1, 1)
    for i in range(n):
        order = np.lexsort((rng.random(flat.shape[1]), flat[i]))
        ranks[i, order] = np.arange(flat.shape[1], dtype=np.float64) / scale
    return ranks.reshape(n, h, w)


def faithfulness_scores(
    model,
    images: torch.Tensor,
    targets: torch.Tensor,
    cams_at_input_res,
    *,
    device: torch.device | str | None = None,
    percentiles: Sequence[int] = DEFAULT_PERCENTILES,
    batch_size: int = 16,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """{"road_combined": (N,), "confidence_drop": (N,)} float32 for N images and their maps.

    Maps at layer resolution are upsampled to the images' size first. The model's mode is the
    caller's (use eval); it is not changed here. Everything after the ranking runs on the
    model's device, `batch_size` images (x 2 x percentiles imputations) at a time.
    """
    device = resolve_device(model, device)
    check_targets(targets, images.shape[0])
    cams = np.asarray(cams_at_input_res.detach().cpu() if isinstance(cams_at_input_res, torch.Tensor)
                      else cams_at_input_res, dtype=np.float32)
    if cams.ndim != 3 or cams.shape[0] != images.shape[0]:
        raise BenchmarkError(f"need one map per image (N x H x W), got {cams.shape} for {tuple(images.shape)}")
    size = tuple(images.shape[-2:])
    if cams.shape[-2:] != size:
        cams = upsample_cam(cams, size)
    cams = np.nan_to_num(cams, nan=0.0, posinf=0.0, neginf=0.0)
    if images.shape[0] == 0:
        return {"road_combined": np.zeros(0, np.float32), "confidence_drop": np.zeros(0, np.float32)}

    ranks = torch.from_numpy(rank_maps(cams, np.random.default_rng(seed)))
    noise = torch.Generator().manual_seed(seed)  # CPU draws: the same noise on every device
    targets = targets.detach().to("cpu", torch.int64)
    road, drops = [], []
    for start in range(0, images.shape[0], batch_size):
        x = prepare_images(images[start:start + batch_size], device)
        t = targets[start:start + batch_size]
        before = target_probability(model, x, t.to(device), batch_size)  # shared by both scores
        road.append(road_scores(model, x, ranks[start:start + batch_size], t, percentiles=list(percentiles),
                                generator=noise, batch_size=batch_size, chunk=batch_size,
                                before=before)["combined"].cpu())
        drops.append(confidence_drop(model, x, torch.from_numpy(cams[start:start + batch_size]), t,
                                     batch_size=batch_size, before=before).cpu())
    result = {"road_combined": torch.cat(road).numpy().astype(np.float32),
              "confidence_drop": torch.cat(drops).numpy().astype(np.float32)}
    for name, values in result.items():
        if not np.isfinite(values).all():
            log.warning("%s: %d non-finite score(s)", name, int((~np.isfinite(values)).sum()))
    return result
