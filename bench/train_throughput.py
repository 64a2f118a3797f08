"""Training throughput (images/s) per roster model on the current device.

Times the project's own training step (benchmark.training.fit.train_step: on-device augmentation,
bf16 autocast + channels_last on CUDA, fp32 on CPU) on synthetic uint8 batches at each model's
input size, after warm-up. Prints a markdown table for bench/RESULTS.md.

    python bench/train_throughput.py --models paper --batch-size 128 --steps 20   # GPU
    python bench/train_throughput.py --models default --batch-size 16 --steps 5   # CPU
    python bench/train_throughput.py --models alexnet,squeezenet1_1,shallow --profile  # where the time goes
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from benchmark.models import create_model, get_spec, resolve_models
from benchmark.training.device import memory_format, resolve_device
from benchmark.training.fit import train_step


def measure(name: str, device: torch.device, batch: int, steps: int, warmup: int, size: int | None) -> dict:
    spec = get_spec(name)
    size = size or spec.input_size
    model = create_model(name, num_classes=3).to(device).to(memory_format=memory_format(device)).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    crit = torch.nn.CrossEntropyLoss()
    x = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, device=device)
    y = torch.randint(0, 3, (batch,), device=device)
    gen = torch.Generator().manual_seed(0)
    for _ in range(warmup):
        train_step(model, x, y, opt, crit, device, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(model, x, y, opt, crit, device, gen)
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    out = {"model": name, "input": size, "batch": batch, "images_per_s": batch * steps / dt}
    if device.type == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
    return out


def profile_steps(name: str, device: torch.device, batch: int, size: int, steps: int = 5) -> None:
    """torch.profiler over a few training steps of `name`: the top operators by self time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        measure(name, device, batch, steps, 1, size)
    from torch.autograd.profiler_util import FunctionEventAvg

    newer = hasattr(FunctionEventAvg, "self_device_time_total")  # torch renamed the CUDA column
    gpu_key = "self_device_time_total" if newer else "self_cuda_time_total"
    key = gpu_key if device.type == "cuda" else "self_cpu_time_total"
    print(f"\nprofile of {name} ({steps} steps, batch {batch}, {size} px), top 15 by {key}:")
    print(prof.key_averages().table(sort_by=key, row_limit=15))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="default")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=None, help="default: 128 on CUDA, 16 on CPU")
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 20 on CUDA, 3 on CPU)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None, help="override each model's input size")
    ap.add_argument("--json", default=None, help="also write results here")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table per model "
                    "(what a small model's step waits on: augmentation, the optimizer, launches)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    batch = args.batch_size or (128 if cuda else 16)
    steps = args.steps or (20 if cuda else 3)
    warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    cpu = platform.processor() or platform.machine()
    where = torch.cuda.get_device_name(device) if cuda else f"CPU {cpu}, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; batch {batch}; {steps} timed steps")
    print("| model | input | images/s |" + (" peak GiB |" if cuda else ""))
    print("|---|---|---|" + ("---|" if cuda else ""))
    rows = []
    for name in resolve_models(args.models):
        r = measure(name, device, batch, steps, warmup, args.image_size)
        rows.append(r)
        extra = f" {r['peak_mem_gib']:.1f} |" if cuda else ""
        print(f"| {name} | {r['input']} | {r['images_per_s']:.1f} |{extra}", flush=True)
        if args.profile:
            profile_steps(name, device, batch, r["input"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"device": where, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
