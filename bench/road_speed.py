"""ROAD imputer speed: pytorch-grad-cam's NoisyLinearImputer (scipy, CPU, one system at a time) vs
benchmark.cams.road (torch, batched, on --device), per image = 4 percentiles x MoRF/LeRF = 8 fills.

Images are smooth synthetic X-ray-like fields, the maps CAM-like bumps ranked as the audit ranks
them; both imputers run with their noise off so the fills can be compared (max abs difference).

    python bench/road_speed.py --sizes 80,224 --n 4                # CPU
    python bench/road_speed.py --sizes 80,224 --n 32 --device cuda  # GPU
"""
from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import NoisyLinearImputer

from benchmark.cams.faithfulness import DEFAULT_PERCENTILES, rank_maps
from benchmark.cams.road import linear_fill, road_masks
from benchmark.training.device import resolve_device


def inputs(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n x 1 x size x size images in [0, 1] and their n x size x size ranked maps."""
    rng = np.random.default_rng(size)
    yy, xx = np.mgrid[0:size, 0:size] / size
    imgs, maps = [], []
    for _ in range(n):
        img = 0.3 + 0.3 * xx + 0.05 * rng.random((size, size))
        m = np.zeros((size, size))
        for _ in range(3):
            cy, cx, cy2, cx2 = rng.random(4)
            img = img + 0.3 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.05)
            m = m + rng.random() * np.exp(-((yy - cy2) ** 2 + (xx - cx2) ** 2) / 0.03)
        imgs.append(np.clip(img, 0, 1))
        maps.append(m)
    ranks = rank_maps(np.stack(maps).astype(np.float32), rng)
    return torch.from_numpy(np.stack(imgs)[:, None].astype(np.float32)), torch.from_numpy(ranks)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(batch: torch.Tensor, keep: torch.Tensor, device: torch.device) -> torch.Tensor:
    out = linear_fill(batch.to(device), keep.to(device))
    sync(device)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="80,224")
    ap.add_argument("--n", type=int, default=4, help="images per size")
    ap.add_argument("--ref-n", type=int, default=None, help="images for pytorch-grad-cam (default: --n, at most 4)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2, help="best of, for the torch imputer")
    args = ap.parse_args()
    device = resolve_device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    print(f"torch imputer on {where}; pytorch-grad-cam on the CPU; torch {torch.__version__}; "
          f"percentiles {list(DEFAULT_PERCENTILES)} x MoRF/LeRF = {2 * len(DEFAULT_PERCENTILES)} fills per image")
    print("| size | images (torch / pgc) | pytorch-grad-cam s/image | torch s/image | speed-up | max abs fill diff |")
    print("|---|---|---|---|---|---|")
    for size in (int(s) for s in args.sizes.split(",")):
        images, ranks = inputs(args.n, size)
        morf, lerf = road_masks(ranks, DEFAULT_PERCENTILES)
        keep = torch.cat([lerf, morf], dim=1)  # n x 2P x H x W
        p2 = keep.shape[1]
        batch = images[:, None].expand(-1, p2, -1, -1, -1).reshape(-1, 1, size, size)
        flat_keep = keep.reshape(-1, size, size)

        run(batch, flat_keep, device)  # warm-up
        best = float("inf")
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            mine = run(batch, flat_keep, device)
            best = min(best, time.perf_counter() - t0)
        mine = mine.cpu().view(args.n, p2, 1, size, size)

        ref_n = min(args.n, args.ref_n or 4)
        imputer = NoisyLinearImputer(noise=0.0)
        t0 = time.perf_counter()
        diff = 0.0
        for i in range(ref_n):
            for j in range(p2):
                ref = imputer(images[i], keep[i, j].float())
                diff = max(diff, float((ref - mine[i, j]).abs().max()))
        t_ref = (time.perf_counter() - t0) / ref_n
        t_mine = best / args.n
        print(f"| {size} | {args.n} / {ref_n} | {t_ref:.3f} | {t_mine:.4f} | {t_ref / t_mine:.1f}x | {diff:.1e} |",
              flush=True)


if __name__ == "__main__":
    main()
