"""One experiment end to end, against its compute floor measured on the same card in the same run.

Runs an experiment (default `paper`; `--experiment NAME|FILE.toml`) as `cxr-audit run --experiment`
does (the grid, then the external matrix) into `--db`, sampling the GPU's utilisation meanwhile,
then measures each architecture's training throughput on the same device at the grid's input size
and batch size (bench/train_throughput.py's synthetic loop), and prints:

- wall time per phase, summed over the grid's runs (`runs.<phase>_seconds`, store/schema.py PHASES),
  plus the external matrix and what no phase accounts for;
- GPU busy share: mean `utilization.gpu` over the grid's wall time (pynvml, else nvidia-smi), or
  "n/a (cpu)";
- the floor: sum over runs of n_train x epochs run / images/s of that architecture, and the
  grid's wall time over it (the issue's target: <= 1.4 on an H200 for `paper`).

Small checks on the CPU: `--experiment paper-cpu --models shallow,resnet18 --seeds 0
--datasets cohen-kermany --max-per-class 3 --epochs 1 --device cpu`. `--profile` prints a
torch.profiler table of each architecture's training steps (what a slow small model waits on).

    python bench/paper_grid.py --data-root ../shared/data/cxr --db /tmp/paper.duckdb   # GPU, whole grid
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import shutil
import subprocess
import threading
import time
from pathlib import Path

import torch
from train_throughput import measure, profile_steps  # bench/train_throughput.py, beside this script

from benchmark.models import resolve_models
from benchmark.pipeline.experiment import load_experiment
from benchmark.pipeline.external import experiment_pairs, run_external_matrix
from benchmark.pipeline.grid import run_grid
from benchmark.store import queries, reader
from benchmark.store.schema import PHASES
from benchmark.training.device import resolve_device


class GpuSampler:
    """utilization.gpu (%) of one CUDA device every `period` s on a thread; mean() over the samples."""

    def __init__(self, index: int, period: float = 0.2):
        self.index, self.period = index, period
        self.samples: list[float] = []
        self.source = ""
        self._stop = threading.Event()
        self._read = self._reader()
        self._thread = threading.Thread(target=self._loop, name="gpu-sampler", daemon=True)

    def _reader(self):
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "pynvml"
            return lambda: float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
        except Exception:  # not installed, or no NVML: fall back to nvidia-smi
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            cmd = ["nvidia-smi", f"--id={self.index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
            return lambda: float(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip())
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append(self._read())
            except Exception:  # a failed read is a missing sample, not a failed grid
                continue

    def __enter__(self):
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def share(self) -> str:
        if self._read is None:
            return "not measured (neither pynvml nor nvidia-smi)"
        if not self.samples:
            return "not measured (no samples)"
        return f"{sum(self.samples) / len(self.samples) / 100:.1%} ({len(self.samples)} samples, {self.source})"


def load(args):
    """The experiment with the command line's overrides applied."""
    exp = load_experiment(args.experiment).with_overrides(data_root=args.data_root, cache_dir=args.cache_dir,
                                                          external_root=args.external_root)
    data = {k: v for k, v in {"max_per_class": args.max_per_class, "image_size": args.image_size,
                              "n_phantom": args.n_phantom}.items() if v is not None}
    train = {k: v for k, v in {"epochs": args.epochs, "batch_size": args.batch_size}.items() if v is not None}
    audit = {k: v for k, v in {"faithfulness_sample": args.faithfulness_sample, "n_boot": args.n_boot}.items()
             if v is not None}
    top = {}
    if args.models:
        top["models"] = tuple(resolve_models(args.models))
    if args.datasets:
        top["datasets"] = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    if args.seeds:
        top["seeds"] = tuple(int(s) for s in args.seeds.split(","))
    return dataclasses.replace(exp, data=dataclasses.replace(exp.data, **data),
                               train=dataclasses.replace(exp.train, **train),
                               audit=dataclasses.replace(exp.audit, **audit), **top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiment", default="paper")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--external-root", default=None)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--db", default="paper_grid.duckdb")
    ap.add_argument("--checkpoint-dir", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--force", action="store_true", help="redo runs already in --db")
    ap.add_argument("--models", default=None, help="override the experiment's models (names or a roster)")
    ap.add_argument("--datasets", default=None, help="override the experiment's datasets (comma list)")
    ap.add_argument("--seeds", default=None, help="override the experiment's seeds (comma list)")
    ap.add_argument("--max-per-class", type=int, default=None)
    ap.add_argument("--image-size", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--faithfulness-sample", type=int, default=None)
    ap.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples per CI (the experiment's by default)")
    ap.add_argument("--n-phantom", type=int, default=None, help="images per phantom dataset (phantom presets only)")
    ap.add_argument("--throughput-steps", type=int, default=None, help="timed steps per architecture "
                    "(default 20 on CUDA, 3 on CPU)")
    ap.add_argument("--profile", action="store_true", help="also print a torch.profiler table per architecture")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()

    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    exp = load(args)
    specs = exp.specs(device=str(device), checkpoint_dir=args.checkpoint_dir, progress=False)
    where = (f"{torch.cuda.get_device_name(device)}, driver {_driver()}, CUDA {torch.version.cuda}" if cuda
             else f"CPU {platform.machine()}, {torch.get_num_threads()} threads")
    print(f"experiment {exp.name}: {len(exp.datasets)} datasets x {len(exp.models)} models x {len(exp.seeds)} seeds "
          f"= {len(specs)} runs on {where}; torch {torch.__version__}; db {args.db}")

    loaded: dict = {}
    t0 = time.perf_counter()
    with GpuSampler(device.index or 0) if cuda else _NoSampler() as sampler:
        statuses = run_grid(specs, args.db, force=args.force, loaded=loaded)
        t_grid = time.perf_counter() - t0
        pairs = experiment_pairs(exp, specs, loaded)
        external = run_external_matrix(pairs, specs, args.db, loaded=loaded, force=args.force)
    wall = time.perf_counter() - t0
    t_external = wall - t_grid

    ran = {s["run_id"] for s in statuses if s["status"] == "done"}
    with reader(args.db) as con:
        runs = queries.runs(con, status="done")
    runs = runs[runs.run_id.isin(ran)]
    failed = [s for s in statuses + external if s["status"] == "failed"]
    print(f"\n{len(ran)} runs done this time, {sum(s['status'] == 'skipped' for s in statuses)} skipped "
          f"(already in the DB: not timed), {len(failed)} failed; {len(external)} external evaluations")

    phases = {p: float(runs[f"{p}_seconds"].fillna(0).sum()) for p in PHASES}
    phases["external matrix"] = t_external
    phases["not in a phase (grid overhead)"] = t_grid - sum(phases[p] for p in PHASES)
    print(f"\nwall time per phase (s), grid + external = {wall:.1f} s:")
    print("| phase | seconds | share |\n|---|---|---|")
    for phase, sec in phases.items():
        print(f"| {phase} | {sec:.1f} | {sec / wall:.1%} |")
    print(f"\nGPU busy share: {sampler.share()}")

    steps = args.throughput_steps or (20 if cuda else 3)
    rates = {}
    for (model, size, batch) in sorted({(r.model, int(r.image_size), int(exp.train.batch_size))
                                        for r in runs.itertuples()}):
        rates[(model, size)] = measure(model, device, batch, steps, 5 if cuda else 1, size)["images_per_s"]
        if args.profile:
            profile_steps(model, device, batch, size)
    if runs.empty:
        print("\nno runs done this time: no floor (use --force to redo stored runs)")
        return
    runs = runs.assign(rate=[rates[(m, int(s))] for m, s in zip(runs.model, runs.image_size)])
    runs = runs.assign(floor_s=runs.n_train * runs.epochs_run / runs.rate,
                       floor_full_s=runs.n_train * runs.epochs / runs.rate)
    floor, floor_full = float(runs.floor_s.sum()), float(runs.floor_full_s.sum())
    print("\ntraining throughput on this device (synthetic loop, the grid's size and batch):")
    print("| model | input | images/s | runs | train s in the grid | floor s |\n|---|---|---|---|---|---|")
    for (model, size), rate in rates.items():
        mine = runs[(runs.model == model) & (runs.image_size == size)]
        print(f"| {model} | {size} | {rate:.1f} | {len(mine)} | {mine.train_seconds.sum():.1f} | "
              f"{mine.floor_s.sum():.1f} |")
    print(f"\nfloor (n_train x epochs run / images/s, summed): {floor:.1f} s "
          f"({floor_full:.1f} s at the configured {exp.train.epochs} epochs)")
    print(f"grid wall / floor: {wall / floor:.2f}x (training phases alone: {phases['train'] / floor:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "experiment": exp.name, "device": where, "runs": len(runs), "wall_s": wall, "phases_s": phases,
            "gpu_busy": sampler.share(), "floor_s": floor, "ratio": wall / floor,
            "images_per_s": {f"{m}@{s}": r for (m, s), r in rates.items()}}, indent=2))


class _NoSampler:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def share(self) -> str:
        return "n/a (cpu)"


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, check=True).stdout.split()
        return out[0] if out else "unknown"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    main()
