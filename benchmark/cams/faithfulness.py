"""Does a CAM point at what the model uses? Perturbation scores from pytorch-grad-cam, per image.

Lung focus says where a map lies; these say whether the map is faithful to the model, so that
"the CAM is off the lungs" can be read as "the model looks off the lungs" (and not as a poor
explanation method). Run on a sample: ROAD solves one sparse system per image and percentile.

- road_combined: ROAD (Rong et al. 2022) with noisy linear imputation, (LeRF - MoRF) / 2 of
  the target's softmax probability averaged over the percentiles. Higher is more faithful:
  removing the most relevant pixels hurts more than removing the least relevant ones.
- confidence_drop: target probability on the image minus on the image multiplied by the map
  (pytorch-grad-cam's CamMultImageConfidenceChange, sign flipped so a drop is positive).

Checked for 1-channel inputs: NoisyLinearImputer takes (C, H, W) with C = 1 (scipy returns a
vector for a one-column right-hand side, which broadcasts back into the image). Adapted: ROAD
only uses the map's order (percentile cuts), and maps with large tied regions (a ReLU'd map is
often zero on most of the image) make a cut remove every pixel or none; so ROAD receives the
map's ranks with ties broken by a seeded random order. For maps without ties the ranks give
exactly pytorch-grad-cam's result. The imputer's noise uses torch's CPU generator, forked and
seeded here so results repeat and the caller's RNG state is untouched.
"""
from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.road import ROADCombined
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

from benchmark.cams.engine import upsample_cam
from benchmark.cams.fast import check_targets, prepare_images, resolve_device
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
    caller's (use eval); it is not changed here.
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

    road = ROADCombined(percentiles=list(percentiles))
    mult = CamMultImageConfidenceChange()
    rng = np.random.default_rng(seed)
    road_scores, drops = [], []
    targets_cpu = targets.detach().to("cpu", torch.int64)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # pytorch-grad-cam calls np.float32(tensor): a NumPy 2 deprecation, not ours to fix
        warnings.filterwarnings("ignore", message=".*__array_wrap__.*", category=DeprecationWarning)
        torch.manual_seed(seed)
        for start in range(0, images.shape[0], batch_size):
            x = prepare_images(images[start:start + batch_size], device)
            maps = cams[start:start + batch_size]
            batch_targets = [ClassifierOutputSoftmaxTarget(int(k)) for k in targets_cpu[start:start + batch_size]]
            road_scores.append(np.asarray(road(x, rank_maps(maps, rng), batch_targets, model), dtype=np.float32))
            change = mult(x, maps, batch_targets, model)
            drops.append(-np.asarray(change, dtype=np.float32))
    if not road_scores:
        return {"road_combined": np.zeros(0, np.float32), "confidence_drop": np.zeros(0, np.float32)}
    result = {"road_combined": np.concatenate(road_scores), "confidence_drop": np.concatenate(drops)}
    for name, values in result.items():
        if not np.isfinite(values).all():
            log.warning("%s: %d non-finite score(s)", name, int((~np.isfinite(values)).sum()))
    return result
