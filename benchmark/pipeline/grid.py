"""The grid: which (model, dataset) jobs, in what order, skipping those already done.

Jobs run in-process one after another; each finished job's bundle is stored in one transaction,
so an interrupted grid resumes where it stopped.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import traceback
from pathlib import Path

from benchmark.errors import WeightsMissingError
from benchmark.pipeline.job import load_job_dataset, run_job
from benchmark.pipeline.spec import JobSpec
from benchmark.store import queries, reader, write_run
from benchmark.store.writes import RunBundle

log = logging.getLogger(__name__)


def done_runs(db: Path) -> set[str]:
    if not Path(db).exists():
        return set()
    with reader(db) as con:
        try:
            return queries.done_run_ids(con)
        except Exception:  # a file without our tables yet
            return set()


def run_grid(specs: list[JobSpec], db: str | Path, *, force: bool = False,
             keep_going: bool = True, loaded: dict | None = None) -> list[dict]:
    """Run every spec not yet done; return one status dict per spec. Datasets are loaded once per
    grid (`loaded`, see job.load_job_dataset; pass the caller's dict to share its loads)."""
    db = Path(db)
    loaded = {} if loaded is None else loaded
    done = done_runs(db)
    statuses = []
    for spec in specs:
        if spec.run_id in done and not force:
            log.info("%s: already done, skipped (use --force to redo)", spec.run_id)
            statuses.append({"run_id": spec.run_id, "model": spec.model, "data": spec.data.name, "status": "skipped"})
            continue
        try:
            bundle = run_job(spec, load_job_dataset(spec, loaded))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            log.error("%s failed: %s", spec.run_id, exc)
            log.debug("%s", traceback.format_exc())
            write_run(db, failed_bundle(spec, exc))
            statuses.append({"run_id": spec.run_id, "model": spec.model, "data": spec.data.name,
                             "status": "failed", "error": str(exc)})
            if not keep_going or isinstance(exc, WeightsMissingError):
                raise
            continue
        write_run(db, bundle)
        statuses.append({"run_id": spec.run_id, "model": spec.model, "data": spec.data.name, "status": "done"})
    return statuses


def failed_bundle(spec: JobSpec, exc: Exception) -> RunBundle:
    """A runs row saying why, and nothing else: a failed run leaves no partial results."""
    now = dt.datetime.now()
    return RunBundle(run={
        "run_id": spec.run_id, "model": spec.model, "dataset": spec.data.name, "pretrained": spec.train.pretrained,
        "epochs": spec.train.epochs, "device": spec.device, "status": "failed", "started_at": now,
        "finished_at": now, "config_json": json.dumps(spec.flat(), default=str), "seed": spec.train.seed,
        "lungs_only": spec.data.lungs_only, "error": f"{type(exc).__name__}: {exc}"[:2000]})
