"""The grid: which (model, dataset) jobs, in what order, skipping those already done.

An executor (pipeline/executors/: in-process by default, one job after another; or Ray tasks) runs
the jobs not yet done and hands back each one's bundle, or the exception it raised, as it finishes.
This process is the only writer: each bundle is stored in one transaction, and a failed job as a
`runs` row with its reason, so an interrupted grid resumes where it stopped. Storing happens on one
background writer thread (pipeline/overlap.py), so the next job computes while the last is stored.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import traceback
from pathlib import Path

from benchmark.errors import WeightsMissingError
from benchmark.pipeline.executors import Executor
from benchmark.pipeline.executors.inprocess import InProcessExecutor
from benchmark.pipeline.overlap import BackgroundStore
from benchmark.pipeline.spec import JobSpec
from benchmark.store import queries, reader
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


def _status(spec: JobSpec, status: str, **extra) -> dict:
    return {"run_id": spec.run_id, "model": spec.model, "data": spec.data.name, "status": status, **extra}


def run_grid(specs: list[JobSpec], db: str | Path, *, force: bool = False, keep_going: bool = True,
             loaded: dict | None = None, executor: Executor | None = None) -> list[dict]:
    """Run every spec not yet done; return one status dict per spec, in the specs' order. Datasets
    are loaded once per grid (`loaded`, see job.load_job_dataset; pass the caller's dict to share its
    loads). `executor` runs the jobs (default: in this process, one after another)."""
    db = Path(db)
    loaded = {} if loaded is None else loaded
    executor = executor if executor is not None else InProcessExecutor(loaded=loaded)
    done = done_runs(db)
    statuses: list[dict] = [{} for _ in specs]
    jobs = []
    for index, spec in enumerate(specs):
        if spec.run_id in done and not force:
            log.info("%s: already done, skipped (use --force to redo)", spec.run_id)
            statuses[index] = _status(spec, "skipped")
        else:
            jobs.append((index, spec))
    outcomes = executor.run(jobs)
    # closing the outcomes (an error, Ctrl-C) stops the executor's jobs that have not finished; leaving
    # the store's block stores every bundle already submitted (each a whole run) and raises a write error
    with BackgroundStore(db) as store:
        try:
            for index, spec, result in outcomes:
                if isinstance(result, Exception):
                    log.error("%s failed: %s", spec.run_id, result)
                    log.debug("%s", "".join(traceback.format_exception(result)))
                    store.submit(failed_bundle(spec, result))
                    statuses[index] = _status(spec, "failed", error=str(result))
                    if not keep_going or isinstance(result, WeightsMissingError):
                        raise result
                    continue
                store.submit(result)
                statuses[index] = _status(spec, "done")
        finally:
            outcomes.close()
    return statuses


def failed_bundle(spec: JobSpec, exc: Exception) -> RunBundle:
    """A runs row saying why, and nothing else: a failed run leaves no partial results."""
    now = dt.datetime.now()
    return RunBundle(run={
        "run_id": spec.run_id, "model": spec.model, "dataset": spec.data.name, "pretrained": spec.train.pretrained,
        "epochs": spec.train.epochs, "device": spec.device, "status": "failed", "started_at": now,
        "finished_at": now, "config_json": json.dumps(spec.flat(), default=str), "seed": spec.train.seed,
        "lungs_only": spec.data.lungs_only, "error": f"{type(exc).__name__}: {exc}"[:2000]})
