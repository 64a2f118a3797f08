"""CAM throughput: the batched on-device path (benchmark.cams.fast) vs pytorch-grad-cam, same maps.

For each model (names or a roster: `--models paper`) and method (cam, gradcam, hirescam, each
optionally `@layer`, e.g. hirescam@stride16) times compute_cams(fast=True) and (fast=False, the
pytorch-grad-cam path that copies each batch's maps to the CPU), checks the maps agree (max abs
difference after normalisation, `ok` when <= --tol, 1e-3 by default) and prints a markdown table
for bench/RESULTS.md. Methods that do not apply to an architecture (cam without a GAP head) are
listed as skipped. Exits 1 if any pair of maps differs by more than --tol.

    python bench/cam_throughput.py --models paper --n 512 --batch-size 64   # GPU, every roster architecture
    python bench/cam_throughput.py --models shallow,resnet18 --n 32 --batch-size 16     # CPU
"""
from __future__ import annotations

import argparse
import functools
import platform
import time

import torch

from benchmark.audit.cam_rows import method_applicability
from benchmark.cams.engine import compute_cams
from benchmark.cams.names import split_method
from benchmark.models import create_model, get_spec, resolve_models
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
    ap.add_argument("--methods", default="cam,gradcam,hirescam,hirescam@stride16")
    ap.add_argument("--image-size", type=int, default=None, help="override each model's input size")
    ap.add_argument("--tol", type=float, default=1e-3, help="largest max abs difference counted as equal")
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
    print("| model | input | method | fast img/s | pytorch-grad-cam img/s | speed-up | max abs diff | equal |")
    print("|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for name in resolve_models(args.models):
        spec = get_spec(name)
        size = args.image_size or spec.input_size
        model = create_model(name, num_classes=3).to(device).eval()
        x = torch.rand((n, 1, size, size), generator=gen).to(device)
        targets = torch.randint(0, 3, (n,), generator=gen)
        methods, skipped = method_applicability(model, args.methods.split(","))
        for method, why in skipped:
            print(f"| {name} | {size} | {method} | skipped: {why} | | | | |", flush=True)
        for method in methods:
            base, layer = split_method(method)
            run_fast = functools.partial(compute_cams, model, x, targets, base, batch_size=bs, device=device,
                                         fast=True, layer=layer)
            run_ref = functools.partial(compute_cams, model, x, targets, base, batch_size=bs, device=device,
                                        fast=False, layer=layer)
            timed(run_fast, device)  # warm-up (cudnn autotune, allocator)
            t_fast = min(timed(run_fast, device)[0] for _ in range(args.repeats))
            timed(run_ref, device)
            t_ref = min(timed(run_ref, device)[0] for _ in range(args.repeats))
            diff = (run_fast() - run_ref()).abs().max().item()
            worst = max(worst, diff)
            print(f"| {name} | {size} | {method} | {n / t_fast:.1f} | {n / t_ref:.1f} | {t_ref / t_fast:.2f}x | "
                  f"{diff:.2e} | {'ok' if diff <= args.tol else 'NO'} |", flush=True)
    if worst > args.tol:
        print(f"maps differ by up to {worst:.2e} > {args.tol:g}")
        raise SystemExit(1)


if __name__ == "__main__":
    main()
