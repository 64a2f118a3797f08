"""Opening results.duckdb: a short-lived writer, read-only readers that retry on a lock.

DuckDB lets one process write: a writer blocks every other process from opening the file, and a
reader blocks a writer (tests/test_store.py, two processes). So the benchmark holds its write
connection only for one run's transaction, and readers open briefly and retry.

A file that is not a usable results database (truncated, corrupt, not DuckDB, or written by a
newer schema version) raises `ResultsDatabaseError` with what to do, never a DuckDB traceback.

A file written by an older version is brought up to date when it is opened, by a writer and by a
reader alike: every missing table and column is added (empty), nothing else changes. So no query
branches on the file's age. A reader does it with a brief write connection, the one write it makes;
a file it cannot write (read-only) stops with a message that says so.
"""
from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import duckdb

from benchmark import faults
from benchmark.errors import ResultsDatabaseError
from benchmark.store import schema

log = logging.getLogger(__name__)

# Lowercase fragments of DuckDB's "another process holds the file" errors. Not a bare "lock":
# "Could not read block ..." (a corrupt file) must not be retried as if it were busy.
LOCK_MARKERS = ("could not set lock", "conflicting lock", "being used by another process")

# Errors that mean the file's bytes are bad, also when they surface at a query after opening.
CORRUPTION_ERRORS = (duckdb.IOException, duckdb.SerializationException, duckdb.InternalException,
                     duckdb.FatalException)


def is_lock_error(exc: Exception) -> bool:
    """True for DuckDB's "file is held by another process" errors (worth a retry)."""
    return any(m in str(exc).lower() for m in LOCK_MARKERS)


def unreadable_message(path: Path, exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (f"{path} cannot be read as a results database ({first}); it may be truncated or corrupt. "
            "Restore it from a copy, or write new results with --db NEW.duckdb")


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


def _open(path: Path, read_only: bool, timeout_s: float) -> duckdb.DuckDBPyConnection:
    """A connection whose file is a DuckDB file of a schema version this code knows."""
    try:
        con = _connect_retrying(path, read_only=read_only, timeout_s=timeout_s)
    except duckdb.Error as exc:
        if is_lock_error(exc):
            raise
        raise ResultsDatabaseError(unreadable_message(path, exc)) from exc
    try:
        newer = schema.newer_version_message(path, schema.stored_version(con))
    except duckdb.Error as exc:
        con.close()
        raise ResultsDatabaseError(unreadable_message(path, exc)) from exc
    if newer:
        con.close()
        raise ResultsDatabaseError(newer)
    return con


@contextlib.contextmanager
def writer(path: str | Path, *, timeout_s: float = 120.0):
    """A write connection with the schema in place; closed on exit so readers can get in."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    con = _open(path, read_only=False, timeout_s=timeout_s)
    try:
        try:
            schema.create_all(con)
        except CORRUPTION_ERRORS as exc:
            raise ResultsDatabaseError(unreadable_message(path, exc)) from exc
        yield con
    finally:
        con.close()


def _upgrade(path: Path, missing: list[str], timeout_s: float) -> None:
    """Add what an older version's file lacks (writer() creates every missing table and column)."""
    log.info("%s was written by an older cxr-audit: adding %s", path, ", ".join(missing))
    try:
        with writer(path, timeout_s=timeout_s):
            pass
    except (duckdb.Error, OSError) as exc:
        if isinstance(exc, duckdb.Error) and is_lock_error(exc):
            raise
        raise ResultsDatabaseError(
            f"{path} was written by an older cxr-audit and lacks {', '.join(missing)}; it could not be brought up "
            f"to date in place ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}). "
            "Copy it somewhere writable and open the copy, or run any `cxr-audit` command on it with write "
            "access once") from exc


@contextlib.contextmanager
def reader(path: str | Path, *, timeout_s: float = 30.0):
    """A read-only connection, retried while a writer holds the file.

    Bad bytes met by a query inside the block raise ResultsDatabaseError too.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"no results database at {path}: run `python -m benchmark run --db {path}` first"
        )
    con = _open(path, read_only=True, timeout_s=timeout_s)
    try:
        missing = schema.missing_parts(con)
    except duckdb.Error as exc:
        con.close()
        raise ResultsDatabaseError(unreadable_message(path, exc)) from exc
    if missing:
        con.close()
        _upgrade(path, missing, timeout_s)
        con = _open(path, read_only=True, timeout_s=timeout_s)
    try:
        faults.pause_point("read")
        yield con
    except CORRUPTION_ERRORS as exc:
        raise ResultsDatabaseError(unreadable_message(path, exc)) from exc
    finally:
        con.close()
