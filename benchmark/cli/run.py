"""`run`: train, evaluate and audit a grid of (model, dataset) jobs into the results DB."""
from __future__ import annotations

import pandas as pd

from benchmark import paths
from benchmark.cli.options import config_from_args
from benchmark.config import AuditConfig, DataConfig, TrainConfig
from benchmark.pipeline.spec import JobSpec

REAL_DATA_HINT = (
    "Real X-rays: python -m benchmark run --data cohen-kermany --data-root ../shared/data/cxr "
    "--models shallow,resnet18 (or set $CXR_DATA); presets: cohen-kermany, cohen-nih, covid-normal; "
    "any folder of class subfolders works too (--data PATH). `python -m benchmark data list` shows them.")


def specs_from_args(args) -> list[JobSpec]:
    from benchmark.models import resolve_models

    data, train, audit = (config_from_args(c, args) for c in (DataConfig, TrainConfig, AuditConfig))
    top = {k: getattr(args, k) for k in ("device", "checkpoint_dir", "progress")}
    return [JobSpec.for_model(m, data, train=train, audit=audit, **top) for m in resolve_models(args.models)]


def cmd_run(args) -> int:
    from benchmark.data.splits import split_counts
    from benchmark.pipeline.grid import run_grid
    from benchmark.pipeline.job import load_job_dataset
    from benchmark.store import queries, reader

    specs = specs_from_args(args)
    db = paths.results_db(args.db)
    if args.name == "phantom" and paths.data_root(args.data_root) is None:
        print(f"Embedded default: synthetic phantom X-rays. {REAL_DATA_HINT}")
    loaded: dict = {}  # the grid reuses this load instead of reading the sources again
    ds = load_job_dataset(specs[0], loaded)
    print(f"dataset {ds.name}: {len(ds.records)} images, classes {ds.classes}")
    counts = pd.DataFrame(split_counts(ds.records)).fillna(0).astype(int)
    print("images per class and split (patient-level split):\n" + counts.to_string())
    statuses = run_grid(specs, db, force=args.force, loaded=loaded)
    with reader(db) as con:
        table = queries.summary(con)
    ids = {s["run_id"] for s in statuses}
    table = table[table.run_id.isin(ids)]
    print_summary(table, statuses)
    print(f"\nResults in {db}. Dashboard: python -m dashboard --db {db}")
    if args.name.startswith("phantom"):
        print(REAL_DATA_HINT)
    return 1 if any(s["status"] == "failed" for s in statuses) else 0


def print_summary(table: pd.DataFrame, statuses: list[dict]) -> None:
    failed = [s for s in statuses if s["status"] == "failed"]
    if not table.empty:
        def ci(v, lo, hi):
            return "n/a" if pd.isna(v) else f"{v:.3f} [{lo:.3f}, {hi:.3f}]" if pd.notna(lo) else f"{v:.3f}"
        show = pd.DataFrame({
            "dataset": table.dataset, "model": table.model, "pretrained": table.pretrained,
            "epochs": table.epochs_run, "n_test": table.n_test,
            "accuracy [95% CI]": [ci(*r) for r in zip(table.accuracy, table.accuracy_ci_low, table.accuracy_ci_high)],
            "macro AUC [95% CI]": [ci(*r) for r in zip(table.macro_auc, table.macro_auc_ci_low,
                                                       table.macro_auc_ci_high)],
        })
        print("\nSummary (test split, CIs by patient bootstrap):")
        print(show.to_string(index=False))
    for s in failed:
        print(f"FAILED {s['model']} on {s['data']}: {s['error']}")
