"""`run`: train, evaluate and audit a grid of (model, dataset) jobs into the results DB."""
from __future__ import annotations

import pandas as pd

from benchmark import paths
from benchmark.cli.options import config_from_args
from benchmark.config import AuditConfig, DataConfig, ExecutorConfig, TrainConfig
from benchmark.data.splits import split_counts
from benchmark.models import resolve_models
from benchmark.pipeline.executors import create_executor
from benchmark.pipeline.experiment import Experiment, load_experiment
from benchmark.pipeline.external import experiment_pairs, run_external_matrix
from benchmark.pipeline.grid import run_grid
from benchmark.pipeline.job import load_job_dataset
from benchmark.pipeline.spec import JobSpec
from benchmark.store import queries, reader

REAL_DATA_HINT = (
    "Real X-rays: python -m benchmark run --data cohen-kermany --data-root ../shared/data/cxr "
    "--models shallow,resnet18 (or set $CXR_DATA); presets: cohen-kermany, cohen-nih, covid-normal; "
    "any folder of class subfolders works too (--data PATH). `python -m benchmark data list` shows them.")


def experiment_from_args(args) -> Experiment:
    """The grid to run: a named or file experiment (--experiment), else the ad-hoc grid of the flags
    (--data and --seed take comma lists). Where the data and the cache are comes from the flags."""
    if args.experiment:
        return load_experiment(args.experiment).with_overrides(data_root=args.data_root, cache_dir=args.cache_dir,
                                                               external_root=args.external_root)
    data, train, audit = (config_from_args(c, args) for c in (DataConfig, TrainConfig, AuditConfig))
    return Experiment(name="cli", datasets=tuple(d.strip() for d in args.name.split(",") if d.strip()),
                      models=tuple(resolve_models(args.models)), seeds=tuple(args.seeds), data=data, train=train,
                      audit=audit, external=())


def specs_from_args(args) -> list[JobSpec]:
    top = {k: getattr(args, k) for k in ("device", "checkpoint_dir", "progress")}
    return experiment_from_args(args).specs(**top)


def _print_datasets(specs: list[JobSpec], loaded: dict) -> None:
    seen = set()
    for spec in specs:
        ds = load_job_dataset(spec, loaded)
        if ds.name in seen:
            continue
        seen.add(ds.name)
        print(f"dataset {ds.name}: {len(ds.records)} images, classes {ds.classes}")
        counts = pd.DataFrame(split_counts(ds.records)).fillna(0).astype(int)
        print("images per class and split (patient-level split):\n" + counts.to_string())


def cmd_run(args) -> int:
    experiment = experiment_from_args(args)
    specs = specs_from_args(args)
    db = paths.results_db(args.db)
    embedded = experiment.datasets == ("phantom",)
    if embedded and paths.data_root(args.data_root) is None:
        print(f"Embedded default: synthetic phantom X-rays. {REAL_DATA_HINT}")
    if args.experiment:
        print(f"experiment {experiment.name}: {experiment.description} ({len(specs)} runs)")
    loaded: dict = {}  # the grid reuses these loads instead of reading the sources again
    executor = create_executor(config_from_args(ExecutorConfig, args), loaded=loaded)
    _print_datasets(specs, loaded)
    statuses = run_grid(specs, db, force=args.force, loaded=loaded, executor=executor)
    external = run_external_matrix(experiment_pairs(experiment, specs, loaded), specs, db, loaded=loaded,
                                   force=args.force)
    with reader(db) as con:
        table = queries.summary(con)
    table = table[table.run_id.isin({s["run_id"] for s in statuses})]
    print_summary(table, statuses + [s for s in external if s["status"] == "failed"])
    if external:
        n = {k: sum(s["status"] == k for s in external) for k in ("done", "skipped", "failed")}
        print(f"external validation: {n['done']} scored, {n['skipped']} already stored, {n['failed']} failed")
    print(f"\nResults in {db}. Dashboard: python -m dashboard --db {db}. "
          f"Report: python -m benchmark report --db {db} --out report.html")
    if all(d.startswith("phantom") for d in experiment.datasets):
        print(REAL_DATA_HINT)
    return 1 if any(s["status"] == "failed" for s in statuses + external) else 0


def print_summary(table: pd.DataFrame, statuses: list[dict]) -> None:
    failed = [s for s in statuses if s["status"] == "failed"]
    if not table.empty:
        def ci(v, lo, hi):
            return "n/a" if pd.isna(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else f"{v:.3f}"
        show = pd.DataFrame({
            "dataset": table.dataset, "model": table.model, "seed": table.seed, "pretrained": table.pretrained,
            "epochs": table.epochs_run, "n_test": table.n_test,
            "accuracy [95% CI]": [ci(*r) for r in zip(table.accuracy, table.accuracy_ci_low, table.accuracy_ci_high)],
            "macro AUC [95% CI]": [ci(*r) for r in zip(table.macro_auc, table.macro_auc_ci_low,
                                                       table.macro_auc_ci_high)],
        })
        print("\nSummary (test split, CIs by patient bootstrap):")
        print(show.to_string(index=False))
    for s in failed:
        on = f"{s['data']}" + (f" (external {s['external']})" if s.get("external") else "")
        print(f"FAILED {s['model']} on {on}: {s['error']}")
