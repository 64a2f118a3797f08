"""CAM throughput: the batched on-device path (benchmark.cams.fast) vs pytorch-grad-cam, same maps.

For each model and method (cam, gradcam, hirescam) times compute_cams(fast=True) and (fast=False, the
pytorch-grad-cam path that copies each batch's maps to the CPU), checks the maps agree (max abs
difference after normalisation) and prints a markdown table for bench/RESULTS.md.

    python bench/cam_throughput.py --models resnet18,resnet50 --n 512 --batch-size 64   # GPU
    python bench/cam_throughput.py --models shallow,resnet18 --n 32 --batch-size 16     # CPU
"""
from __future__ import annotations

import argparse
import functools
import platform
import time

import torch

from benchmark.cams.engine import compute_cams
from benchmark.models import create_model, get_spec
from benchmark.training.device import resolve_device


def timed(fn, device) -> tuple[float, torch.Tensor]:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="shallow,resnet18")
    ap.add_argument("--methods", default="cam,gradcam,hirescam")
    ap.add_argument("--n", type=int, default=None, help="images (default 512 on CUDA, 32 on CPU)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    n = args.n or (512 if cuda else 32)
    bs = args.batch_size or (64 if cuda else 16)
    threads = torch.get_num_threads()
    where = torch.cuda.get_device_name(device) if cuda else f"CPU {platform.machine()}, {threads} threads"
    print(f"device: {where}; torch {torch.__version__}; {n} images, batch {bs}, best of {args.repeats}")
    print("| model | method | fast img/s | pytorch-grad-cam img/s | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for name in args.models.split(","):
        spec = get_spec(name)
        model = create_model(name, num_classes=3).to(device).eval()
        x = torch.rand((n, 1, spec.input_size, spec.input_size), generator=gen).to(device)
        targets = torch.randint(0, 3, (n,), generator=gen)
        for method in args.methods.split(","):
            if method == "cam" and not spec.gap_head:
                continue
            run_fast = functools.partial(compute_cams, model, x, targets, method, batch_size=bs, device=device,
                                         fast=True)
            run_ref = functools.partial(compute_cams, model, x, targets, method, batch_size=bs, device=device,
                                        fast=False)
            timed(run_fast, device)  # warm-up (cudnn autotune, allocator)
            t_fast = min(timed(run_fast, device)[0] for _ in range(args.repeats))
            timed(run_ref, device)
            t_ref = min(timed(run_ref, device)[0] for _ in range(args.repeats))
            diff = (run_fast() - run_ref()).abs().max().item()
            print(f"| {name} | {method} | {n / t_fast:.1f} | {n / t_ref:.1f} | {t_ref / t_fast:.2f}x | {diff:.2e} |",
                  flush=True)


if __name__ == "__main__":
    main()
