"""What the class-mean maps and clusters of CAMs cost beside the rest of a run's audit.

    python -m bench.cluster_cost --db results.duckdb [--limit 0.10] [--recompute]

The audit of a run is its CAMs (with the sanity check), their patterns (`runs.cluster_seconds`),
faithfulness and probes (`runs.cam_seconds + cluster_seconds + faithfulness_seconds +
probe_seconds`). The target: the patterns take at most `--limit` (10 %) of it on the CPU. Runs
stored before the patterns existed have no `cluster_seconds`; `--recompute` times
`cxr-audit cams --clusters` on them (the pattern step alone, not the reading of masks) and stores
the tables as that command does. Prints one row per run and the worst share; exits 1 when a run is
over the limit.
"""
from __future__ import annotations

import argparse
import sys

import pandas as pd

from benchmark.store import queries, reader


def shares(db: str, recompute: bool, device: str) -> pd.DataFrame:
    with reader(db) as con:
        runs = queries.runs(con, status="done")
    rows = []
    for run in runs.to_dict("records"):
        cluster = run.get("cluster_seconds")
        if (cluster is None or pd.isna(cluster)) and recompute:
            from benchmark.cli.cams import recluster_run
            from benchmark.training.device import resolve_device

            seconds = recluster_run(db, run, resolve_device(device)).seconds
            cluster = float("nan") if seconds is None else seconds
        other = sum(float(run.get(f"{p}_seconds") or 0) for p in ("cam", "faithfulness", "probe"))
        audit = other + (0 if cluster is None or pd.isna(cluster) else float(cluster))
        rows.append({"run_id": run["run_id"], "model": run["model"], "dataset": run["dataset"],
                     "n_test": run.get("n_test"), "cluster_s": cluster, "audit_s": audit,
                     "share": (cluster / audit) if cluster is not None and not pd.isna(cluster) and audit else None})
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--limit", type=float, default=0.10, help="largest share of the audit (default 0.10)")
    parser.add_argument("--recompute", action="store_true", help="time and store the patterns of runs without them")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    table = shares(args.db, args.recompute, args.device)
    with pd.option_context("display.width", 200, "display.max_rows", 500):
        print(table.round(3).to_string(index=False))
    measured = table.dropna(subset=["share"])
    if measured.empty:
        print("no run has a measured cluster time (rerun with --recompute)")
        return 1
    worst = measured.loc[measured.share.idxmax()]
    total = measured.cluster_s.sum() / measured.audit_s.sum()
    print(f"patterns: {measured.cluster_s.sum():.1f} s of {measured.audit_s.sum():.1f} s of audit over "
          f"{len(measured)} runs ({total:.1%}); worst run {worst.run_id}: {worst.share:.1%} (limit {args.limit:.0%})")
    return 0 if (measured.share <= args.limit).all() else 1


if __name__ == "__main__":
    sys.exit(main())
