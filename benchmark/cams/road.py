"""ROAD (Rong et al. 2022) on the model's device: pytorch-grad-cam's noisy linear imputer in torch, batched.

pytorch-grad-cam's `NoisyLinearImputer` builds one sparse system per image and percentile with
scipy (a `lil_matrix` filled in Python) and solves it with SuperLU on the CPU, even when the
model is on a GPU: seconds per image at 224 px for 4 percentiles x MoRF/LeRF (bench/RESULTS.md,
"Faithfulness cost"). This module solves the same systems with torch, for every image x percentile x
order x channel of a chunk at once, on whatever device the images are on.

The system (pytorch-grad-cam's, with the sign flipped). Each removed pixel i gets the value x_i with

    S_i x_i - sum_{j removed, j ~ i} w_ij x_j = sum_{j kept, j ~ i} w_ij v_j

over its 8 neighbours j inside the image, w = 1/6 for the 4 edge neighbours and 1/12 for the 4
corner ones, S_i = sum of w_ij over the neighbours inside the image, v the image. The matrix is
symmetric; it is positive definite when at least one pixel is kept (every connected removed
region then touches a kept pixel, which makes it irreducibly diagonally dominant). It is applied
matrix-free as a 3 x 3 stencil and solved by conjugate gradients in float64, preconditioned by one
float32 multigrid V-cycle (damped Jacobi, 2 x 2 aggregation, the same stencil on each coarser grid):
about 15 iterations at 224 px instead of hundreds. float64 matters: in float32 the fill of an 80 %
cut at 224 px stays 3e-4 away from scipy's, in float64 2e-6. CG runs until the residual of every
system is below `tol` times its right-hand side's norm; the preconditioner changes only how many
iterations that takes, not the solution.

Percentile cuts equal pytorch-grad-cam's bit for bit: its `np.percentile` (linear interpolation
in the map's float32, with numpy's two-sided lerp) is reproduced in torch, and pixels are kept
where `map < threshold` (MoRF) or `1 - map < threshold` (LeRF). A mask that keeps no pixel has
no unique fill; its pixels come back NaN (scipy warns that the matrix is singular).

Noise: pytorch-grad-cam adds 0.01 x N(0, 1) to each filled pixel, drawn from torch's global CPU
generator. Here the noise comes from a caller's `torch.Generator` on the CPU (so CPU and GPU
runs of the same seed see the same noise, and the global RNG is not touched), or is passed in.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from benchmark.errors import BenchmarkError

log = logging.getLogger(__name__)

NOISE = 0.01  # pytorch-grad-cam's NoisyLinearImputer default
TOL = 1e-6  # relative residual; bench/road_speed.py and tests/test_road_torch.py show the fill error it leaves
COARSEST = 4  # the multigrid hierarchy stops at this side
SWEEPS, COARSE_SWEEPS, OMEGA = 1, 20, 0.8  # damped Jacobi sweeps per level and on the coarsest grid


def _stencil(x: torch.Tensor) -> torch.Tensor:
    """12 x sum_j w_ij x_j + 4 x_i over the 8 neighbours inside the image (zero outside), per field:
    the weights 1/6 (edges) and 1/12 (corners) are ([1 2 1] x [1 2 1] - 4 delta) / 12, applied as two
    1-D passes (a float64 conv2d on the CPU is several times slower)."""
    p = F.pad(x, (1, 1, 1, 1))
    v = p[..., :-2, :] + p[..., 2:, :]
    v.add_(p[..., 1:-1, :], alpha=2)
    h = v[..., :-2] + v[..., 2:]
    return h.add_(v[..., 1:-1], alpha=2)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(dim=(1, 2, 3))


@dataclass
class _Level:
    """One grid of the multigrid hierarchy: which pixels are unknown, and the operator's diagonal."""

    free: torch.Tensor  # F x 1 x h x w, 1 where the value is solved for
    shifted: torch.Tensor  # 1 x 1 x h x w: S_i + 1/3, so that A x = free (shifted x - stencil(x) / 12)
    step: torch.Tensor  # F x 1 x h x w: OMEGA free / S_i, the damped Jacobi step

    @classmethod
    def of(cls, free: torch.Tensor) -> _Level:
        ones = torch.ones_like(free[:1])
        diag = (_stencil(ones) - 4 * ones) / 12  # S_i: the weights of the neighbours inside the image
        return cls(free, diag + 1 / 3, OMEGA * free / diag)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The system matrix on the unknowns (x is zero on kept pixels)."""
        return self.free * _stencil(x).mul_(-1 / 12).addcmul_(self.shifted, x)

    def smooth(self, x: torch.Tensor, r: torch.Tensor, sweeps: int) -> torch.Tensor:
        for _ in range(sweeps):
            x = x.addcmul(self.step, r - self.apply(x))
        return x


def _levels(free: torch.Tensor) -> list[_Level]:
    """Fine to coarse: each coarser grid halves the sides (ceil); a coarse pixel is unknown when all
    its children are, so coarse problems keep the fine kept pixels as boundaries."""
    levels = []
    while True:
        levels.append(_Level.of(free))
        if min(free.shape[-2:]) <= COARSEST:
            return levels
        free = 1.0 - F.max_pool2d(1.0 - free, 2, ceil_mode=True)


def _vcycle(levels: list[_Level], r: torch.Tensor, depth: int = 0) -> torch.Tensor:
    """One V-cycle from zero: a symmetric positive definite approximation of A^-1 r (the preconditioner).

    Damped Jacobi before and after (the same sweeps, so the cycle is symmetric), restriction R = P^T
    (sum of the 2 x 2 children) and piecewise-constant prolongation P; with R = P^T, P^T A P is close
    to the same stencil rediscretised on the coarse grid, which is what the coarse level applies."""
    level = levels[depth]
    if depth == len(levels) - 1:
        return level.smooth(level.step * r, r, COARSE_SWEEPS - 1)
    x = level.smooth(level.step * r, r, SWEEPS - 1)  # the first sweep from zero is a plain scaling
    coarse = levels[depth + 1]
    rc = coarse.free * F.avg_pool2d(r - level.apply(x), 2, ceil_mode=True, divisor_override=1)
    ec = _vcycle(levels, rc, depth + 1)
    h, w = r.shape[-2:]
    x = x.addcmul(level.free, ec.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :h, :w])
    return level.smooth(x, r, SWEEPS)


def _solve(values: torch.Tensor, keep: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    """The full field (kept pixels as given, removed pixels solved) for each F x 1 x H x W field:
    conjugate gradients (in `values`' dtype, float64 by default: float32 leaves errors of 3e-4 at
    224 px) preconditioned by one float32 multigrid V-cycle per iteration."""
    free = 1.0 - keep
    fine = _Level.of(free)
    levels = _levels(free.float())
    b = free * (_stencil(keep * values) / 12)
    x = torch.zeros_like(values)
    r = b.clone()

    def precondition(res):
        return _vcycle(levels, res.float()).to(values.dtype)

    z = precondition(r)
    p = z.clone()
    rz = _dot(r, z)
    goal = (tol ** 2) * _dot(b, b)
    tiny = torch.finfo(values.dtype).tiny
    iters = 0
    for _ in range(max_iter):
        active = _dot(r, r) > goal
        if not bool(active.any()):
            break
        iters += 1
        ap = fine.apply(p)
        alpha = torch.where(active, rz / _dot(p, ap).clamp_min(tiny), torch.zeros_like(rz)).view(-1, 1, 1, 1)
        x.add_(alpha * p)
        r.sub_(alpha * ap)
        z = precondition(r)
        rz_new = _dot(r, z)
        beta = torch.where(active, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz)).view(-1, 1, 1, 1)
        p = z.add_(p * beta)
        rz = rz_new
    else:
        worst = float((_dot(r, r) / _dot(b, b).clamp_min(tiny)).max().sqrt())
        if worst > tol:
            log.warning("ROAD imputer: %d iterations left a relative residual of %.1e (asked %.0e)",
                        max_iter, worst, tol)
    log.debug("ROAD imputer: %d fields of %s, %d PCG iterations", values.shape[0], tuple(values.shape[-2:]), iters)
    return keep * values + free * x


def linear_fill(images: torch.Tensor, keep: torch.Tensor, *, tol: float = TOL, max_iter: int | None = None,
                dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Noise-free linear imputation of B x C x H x W images where B x H x W `keep` is False.

    Returns B x C x H x W in `images`' dtype on its device; kept pixels are unchanged, and an image
    with no kept pixel comes back all NaN where removed (its system is singular).
    """
    if images.ndim != 4 or keep.shape != (images.shape[0], *images.shape[-2:]):
        raise BenchmarkError(f"need B x C x H x W images and B x H x W masks, got {tuple(images.shape)} "
                             f"and {tuple(keep.shape)}")
    b, c, h, w = images.shape
    if images.numel() == 0:
        return images.clone()
    max_iter = max_iter or 200
    kept = keep.to(images.device, torch.bool)
    fields = images.to(dtype).reshape(b * c, 1, h, w)
    keep_f = kept[:, None].expand(b, c, h, w).reshape(b * c, 1, h, w).to(dtype)
    filled = _solve(fields * keep_f, keep_f, tol, max_iter).reshape(b, c, h, w).to(images.dtype)
    filled = torch.where(kept[:, None], images, filled)  # kept pixels bit-exact
    empty = ~kept.flatten(1).any(dim=1)
    if bool(empty.any()):
        filled[empty] = float("nan")
    return filled


def noisy_linear_impute(images: torch.Tensor, keep: torch.Tensor, *, noise: float = NOISE,
                        generator: torch.Generator | None = None, noise_fields: torch.Tensor | None = None,
                        tol: float = TOL) -> torch.Tensor:
    """pytorch-grad-cam's NoisyLinearImputer for a batch: linear fill plus `noise` x N(0, 1) on
    the removed pixels. The N(0, 1) draws are `noise_fields` (B x C x H x W) if given, else drawn
    on the CPU from `generator` (torch's global CPU generator if None, as pytorch-grad-cam does)."""
    filled = linear_fill(images, keep, tol=tol)
    if noise == 0:
        return filled
    if noise_fields is None:
        noise_fields = torch.randn(tuple(images.shape), generator=generator, dtype=torch.float32)
    eps = noise_fields.to(images.device, images.dtype)
    return torch.where(keep.to(images.device, torch.bool)[:, None], filled, filled + noise * eps)


def percentile_threshold(maps: torch.Tensor, percentile: float) -> torch.Tensor:
    """np.percentile(map, percentile) of each float32 map (N x ...) -> N float32, as numpy computes it
    (linear method: (n-1) q in float64, then a + (b - a) t, or b - (b - a)(1 - t) for t >= 0.5, in float32)."""
    flat = maps.reshape(maps.shape[0], -1).float()
    n = flat.shape[1]
    virtual = (n - 1) * (percentile / 100)
    if not 0 <= percentile <= 100:
        raise BenchmarkError(f"percentiles must be in [0, 100], got {percentile}")
    below = math.floor(virtual)
    above = below + 1
    if virtual >= n - 1:
        below = above = n - 1
    gamma = virtual - below
    ordered = flat.sort(dim=1).values
    a, b = ordered[:, below], ordered[:, above]
    diff = b - a
    if gamma >= 0.5:
        return b - diff * torch.tensor(np.float32(1 - gamma), device=flat.device)
    return a + diff * torch.tensor(np.float32(gamma), device=flat.device)


def road_masks(maps: torch.Tensor, percentiles: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """(MoRF keep, LeRF keep), each N x P x H x W bool, as pytorch-grad-cam's RemoveMostRelevantFirst
    and RemoveLeastRelevantFirst cut N x H x W float32 maps: keep map < its p-th percentile (MoRF:
    the most relevant 100 - p % go), keep 1 - map < the p-th percentile of 1 - map (LeRF)."""
    maps = maps.float()
    inverse = 1 - maps
    morf = [maps < percentile_threshold(maps, p).view(-1, 1, 1) for p in percentiles]
    lerf = [inverse < percentile_threshold(inverse, p).view(-1, 1, 1) for p in percentiles]
    return torch.stack(morf, dim=1), torch.stack(lerf, dim=1)


@torch.no_grad()
def target_probability(model, images: torch.Tensor, targets: torch.Tensor, batch_size: int) -> torch.Tensor:
    """softmax(model(x))[target] per image (pytorch-grad-cam's ClassifierOutputSoftmaxTarget), float32."""
    out = []
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start:start + batch_size]).float()
        probs = torch.softmax(logits, dim=-1)
        out.append(probs.gather(1, targets[start:start + batch_size].view(-1, 1))[:, 0])
    return torch.cat(out) if out else torch.zeros(0, device=images.device)


@torch.no_grad()
def road_scores(model, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, *,
                percentiles: Sequence[float], noise: float = NOISE, generator: torch.Generator | None = None,
                batch_size: int = 16, chunk: int = 4, tol: float = TOL,
                before: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """ROAD on N images (N x C x H x W, on the model's device) and their N x H x W maps (same size).

    Returns {"morf": P x N, "lerf": P x N} (target probability after imputation minus before, per
    percentile, as pytorch-grad-cam's PerturbationConfidenceMetric) and {"combined": N}:
    (mean_p lerf - mean_p morf) / 2, pytorch-grad-cam's ROADCombined. `chunk` images (x 2P
    imputations) are solved at once; the model sees `batch_size` images per forward. `before`: the
    target probabilities on the intact images, if the caller has them (see `target_probability`).
    """
    n, c, h, w = images.shape
    if maps.shape != (n, h, w):
        raise BenchmarkError(f"need one H x W map per image, got {tuple(maps.shape)} for {tuple(images.shape)}")
    device = images.device
    targets = targets.to(device, torch.int64)
    maps = maps.to(device, torch.float32)
    if before is None:
        before = target_probability(model, images, targets, batch_size)
    p = len(percentiles)
    morf, lerf = [], []
    for start in range(0, n, max(chunk, 1)):
        x, m, t = images[start:start + chunk], maps[start:start + chunk], targets[start:start + chunk]
        k = x.shape[0]
        keep_morf, keep_lerf = road_masks(m, percentiles)
        keep = torch.cat([keep_lerf, keep_morf], dim=1).reshape(k * 2 * p, h, w)
        repeated = x[:, None].expand(k, 2 * p, c, h, w).reshape(k * 2 * p, c, h, w)
        eps = None
        if noise:
            eps = torch.randn((k, 2 * p, c, h, w), generator=generator, dtype=torch.float32).view(-1, c, h, w)
        imputed = noisy_linear_impute(repeated, keep, noise=noise, noise_fields=eps, tol=tol)
        after = target_probability(model, imputed, t.repeat_interleave(2 * p), batch_size).view(k, 2, p)
        change = after - before[start:start + k].view(k, 1, 1)
        lerf.append(change[:, 0].T)
        morf.append(change[:, 1].T)
    if not morf:
        empty = torch.zeros((p, 0), device=device)
        return {"morf": empty, "lerf": empty, "combined": torch.zeros(0, device=device)}
    morf_t, lerf_t = torch.cat(morf, dim=1), torch.cat(lerf, dim=1)
    return {"morf": morf_t, "lerf": lerf_t, "combined": (lerf_t.mean(dim=0) - morf_t.mean(dim=0)) / 2}


@torch.no_grad()
def confidence_drop(model, images: torch.Tensor, maps: torch.Tensor, targets: torch.Tensor, *,
                    batch_size: int = 16, before: torch.Tensor | None = None) -> torch.Tensor:
    """Target probability on the image minus on the image times its map (N x H x W in [0, 1]):
    pytorch-grad-cam's CamMultImageConfidenceChange with the sign flipped, so a drop is positive."""
    targets = targets.to(images.device, torch.int64)
    if before is None:
        before = target_probability(model, images, targets, batch_size)
    after = target_probability(model, images * maps.to(images.device, images.dtype)[:, None], targets, batch_size)
    return before - after
