"""Writes: every run's rows go in one transaction, so a crash or kill never leaves part of a run."""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pandas as pd

from benchmark import faults
from benchmark.errors import DiskFullError
from benchmark.store import schema
from benchmark.store.connection import writer

log = logging.getLogger(__name__)


@dataclass
class RunBundle:
    """Everything one (model, dataset) job produced; built without any DB connection.

    `run` is the runs row; `tables` maps a table name of the schema to a DataFrame of rows
    (run_id columns are filled in by the store). Images and rejections are shared across runs
    and inserted if new.
    """

    run: dict
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    images: pd.DataFrame | None = None
    rejected: pd.DataFrame | None = None
    segmenter: dict | None = None  # lung_segmenters row of the segmenter whose masks the run used


def _insert_df(con, table: str, df: pd.DataFrame, *, or_ignore: bool = False) -> None:
    if df is None or df.empty:
        return
    cols = [c for c in df.columns if c in schema.columns(con, table)]
    unknown = set(df.columns) - set(cols)
    if unknown:
        raise ValueError(f"columns {sorted(unknown)} are not in table {table}")
    con.register("_bundle_df", df[cols])
    try:
        verb = "INSERT OR IGNORE INTO" if or_ignore else "INSERT INTO"
        con.execute(f"{verb} {table} BY NAME SELECT * FROM _bundle_df")
    finally:
        con.unregister("_bundle_df")


def _insert_images(con, images: pd.DataFrame | None, rejected: pd.DataFrame | None) -> None:
    if images is not None and not images.empty:
        _insert_df(con, "images", images, or_ignore=True)
    if rejected is not None and not rejected.empty:
        con.register("_rej", rejected[["path", "source", "reason", "dataset"]])
        try:
            con.execute(
                """INSERT INTO rejected_images (path, source, reason, dataset)
                   SELECT r.* FROM _rej r WHERE NOT EXISTS (
                     SELECT 1 FROM rejected_images x
                     WHERE x.path = r.path AND x.dataset IS NOT DISTINCT FROM r.dataset)"""
            )
        finally:
            con.unregister("_rej")


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC from Python, or DuckDB's IO error that carries the same text."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return True
    return "no space left on device" in str(exc).lower()


@contextlib.contextmanager
def transaction(db_path: str | Path, run_id: str | None = None):
    """A write connection inside BEGIN ... COMMIT, rolled back on any exception (or a kill).

    A full disk, whenever it strikes (opening, inserting, committing), becomes a DiskFullError
    that says nothing of `run_id` was stored.
    """
    try:
        with writer(db_path) as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
                faults.pause_point("commit")  # test-only: a kill -9 here must leave the DB whole
                con.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):  # a failed COMMIT has already rolled back
                    con.execute("ROLLBACK")
                raise
    except DiskFullError:
        raise
    except Exception as exc:
        if is_disk_full(exc):
            raise DiskFullError(f"no space left on device while writing {db_path}: the transaction was rolled "
                                f"back, nothing stored for run {run_id or '(none)'}; free some space and "
                                "rerun (finished runs are skipped)") from exc
        raise


def write_run(db_path: str | Path, bundle: RunBundle) -> None:
    """Replace any earlier rows of this run_id and write the bundle, all in one transaction."""
    run = dict(bundle.run)
    run_id = run["run_id"]
    run.setdefault("finished_at", dt.datetime.now())
    started = time.perf_counter()
    with transaction(db_path, run_id) as con:
        _delete_run_rows(con, run_id)
        _insert_images(con, bundle.images, bundle.rejected)
        if bundle.segmenter and not con.execute("SELECT 1 FROM lung_segmenters WHERE checkpoint_path = ?",
                                                [bundle.segmenter["checkpoint_path"]]).fetchone():
            _insert_df(con, "lung_segmenters", pd.DataFrame([bundle.segmenter]))
        for table, df in bundle.tables.items():
            if table not in schema.RUN_TABLES:
                raise ValueError(f"{table} is not a per-run table; choose from {schema.RUN_TABLES}")
            if df is not None and not df.empty:
                _insert_df(con, table, df.assign(run_id=run_id))
        run["store_seconds"] = time.perf_counter() - started  # the runs row last, so it can say this
        _insert_df(con, "runs", pd.DataFrame([run]))
    log.info("stored run %s (%s)", run_id, run.get("status"))


def _delete_run_rows(con, run_id: str) -> None:
    con.execute("DELETE FROM runs WHERE run_id = ?", [run_id])
    for table in schema.RUN_TABLES:
        con.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])


def replace_run_rows(db_path: str | Path, run_id: str, table: str, df: pd.DataFrame,
                     *, where: dict | None = None) -> None:
    """Swap one table's rows of a finished run (e.g. CAMs recomputed) in one transaction."""
    replace_run_tables(db_path, run_id, {table: (df, where or {})})


def replace_run_tables(db_path: str | Path, run_id: str, tables: dict[str, tuple[pd.DataFrame, dict]], *,
                       images: pd.DataFrame | None = None, rejected: pd.DataFrame | None = None,
                       run_row: dict | None = None) -> None:
    """Delete each table's rows of `run_id` matching its `where` (column -> value, or a tuple of
    values) and insert the new ones, plus new images, and the runs row if the run is not in the DB
    yet, all in one transaction."""
    for table in tables:
        if table not in schema.RUN_TABLES:
            raise ValueError(f"{table} is not a per-run table; choose from {schema.RUN_TABLES}")
    with transaction(db_path, run_id) as con:
        _insert_images(con, images, rejected)
        if run_row is not None and not con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone():
            _insert_df(con, "runs", pd.DataFrame([run_row]))
        for table, (df, where) in tables.items():
            # a `where` value is one value, or a tuple of values any of which matches
            values = {k: v if isinstance(v, tuple) else (v,) for k, v in where.items()}
            clause = " AND ".join(["run_id = ?"] + [f"{k} IN ({', '.join('?' * len(v))})" for k, v in values.items()])
            con.execute(f"DELETE FROM {table} WHERE {clause}", [run_id, *(x for v in values.values() for x in v)])
            if df is not None and not df.empty:
                _insert_df(con, table, df.assign(run_id=run_id))


def write_segmenter(db_path: str | Path, row: dict) -> None:
    with writer(db_path) as con:
        _insert_df(con, "lung_segmenters", pd.DataFrame([row]))
