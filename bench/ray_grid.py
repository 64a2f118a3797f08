"""The same grid in-process and on a local Ray instance: wall time of `python -m benchmark run` each.

Each variant runs the CLI in a subprocess from a fresh state (its own results DB, checkpoint folder
and decode cache), so the times include imports, the phantom, decoding and, for Ray, starting and
stopping the local instance. Prints a markdown table for bench/RESULTS.md.

    python bench/ray_grid.py                                   # CPU box: shallow,resnet18 x seeds 0,1
    python bench/ray_grid.py --models shallow,resnet18,squeezenet1_1,mobilenet_v2 --device cuda
        --gpus-per-job 1,0.5,0.25                              # GPU machine: fractional GPUs
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_variant(label: str, grid: list[str], extra: list[str], workdir: Path) -> dict:
    work = workdir / label.replace(" ", "_").replace("/", "_")
    work.mkdir(parents=True)
    env = {**os.environ, "CXR_CACHE": str(work / "cache")}
    cmd = [sys.executable, "-m", "benchmark", "run", *grid, "--db", str(work / "r.duckdb"),
           "--checkpoint-dir", str(work / "ckpt"), *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
        raise SystemExit(f"{label}: exit {done.returncode}")
    return {"variant": label, "wall_s": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="shallow,resnet18")
    ap.add_argument("--seed", default="0,1", help="comma list: one run per seed and model")
    ap.add_argument("--data", default="phantom")
    ap.add_argument("--epochs", default="1")
    ap.add_argument("--image-size", default="64")
    ap.add_argument("--n-phantom", default="120")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cpus-per-job", default="1")
    ap.add_argument("--gpus-per-job", default="0", help="comma list: one Ray variant per value")
    ap.add_argument("--json", default=None, help="also write results here")
    args = ap.parse_args()
    grid = ["--data", args.data, "--models", args.models, "--seed", args.seed, "--epochs", args.epochs,
            "--image-size", args.image_size, "--n-phantom", args.n_phantom, "--device", args.device, "--no-progress"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ray-grid-") as tmp:
        rows.append(run_variant("inprocess", grid, [], Path(tmp)))
        for gpus in args.gpus_per_job.split(","):
            rows.append(run_variant(f"ray gpus/job={gpus}", grid, ["--executor", "ray", "--gpus-per-job", gpus,
                                                                    "--cpus-per-job", args.cpus_per_job], Path(tmp)))
    n_jobs = len(args.models.split(",")) * len(args.seed.split(","))
    base = rows[0]["wall_s"]
    print(f"{platform.node()}: {os.cpu_count()} CPUs, {n_jobs} jobs ({args.models} x seeds {args.seed}, "
          f"{args.data} n={args.n_phantom}, {args.image_size}px, {args.epochs} epoch(s), --device {args.device})\n")
    print("| variant | wall s | jobs/min | vs in-process |\n|---|---|---|---|")
    for r in rows:
        r["jobs_per_min"] = 60 * n_jobs / r["wall_s"]
        print(f"| {r['variant']} | {r['wall_s']:.1f} | {r['jobs_per_min']:.2f} | {base / r['wall_s']:.2f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
