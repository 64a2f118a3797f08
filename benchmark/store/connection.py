"""Opening results.duckdb: a short-lived writer, read-only readers that retry on a lock.

DuckDB lets one process write, and (measured, duckdb 2.0) a writer blocks every other process
from opening the file, and a reader blocks a writer. So the benchmark holds its write
connection only for one run's transaction, and readers open briefly and retry.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import duckdb

from benchmark.store import schema

log = logging.getLogger(__name__)

LOCK_MARKERS = ("lock", "Conflicting lock", "being used by another process")


def is_lock_error(exc: Exception) -> bool:
    """True for DuckDB's "file is held by another process" errors (worth a retry)."""
    return any(m.lower() in str(exc).lower() for m in LOCK_MARKERS)


def _connect_retrying(path: Path, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.Error as exc:  # IOException for locks
            if not is_lock_error(exc) or time.monotonic() > deadline:
                raise
            log.debug("database %s locked, retrying in %.2fs", path, delay)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


@contextlib.contextmanager
def writer(path: str | Path, *, timeout_s: float = 120.0):
    """A write connection with the schema in place; closed on exit so readers can get in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _connect_retrying(path, read_only=False, timeout_s=timeout_s)
    try:
        schema.create_all(con)
        yield con
    finally:
        con.close()


@contextlib.contextmanager
def reader(path: str | Path, *, timeout_s: float = 30.0):
    """A read-only connection, retried while a writer holds the file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no results database at {path}: run `python -m benchmark run --db {path}` first"
        )
    con = _connect_retrying(path, read_only=True, timeout_s=timeout_s)
    try:
        yield con
    finally:
        con.close()
