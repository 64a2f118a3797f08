"""Storing a finished run while the next one computes: one background writer thread.

A grid's jobs keep the device busy; storing a bundle (DuckDB inserts of the predictions, maps and
tables, then the commit) is CPU and disk work that used to sit between two jobs. `BackgroundStore`
hands each bundle to a single writer thread and returns at once, so job i+1 trains while job i is
stored. What stays as before:

- every DuckDB write happens on that one thread, one transaction per run (`store.write_run`), in
  the order submitted; a run is `done` only once its transaction has committed;
- errors surface: the first failed write is raised by the next `submit` and by `close`, and
  nothing submitted after it is written (the grid stops, as it did when a write failed inline);
- memory stays bounded: `submit` blocks while `max_pending` bundles already wait;
- Ctrl-C (or any exception in the caller) inside `with BackgroundStore(...)`: the bundles already
  submitted are complete runs and are still stored, each in its own transaction, before the
  exception goes on; a second Ctrl-C while they are stored ends the process with the writer (a
  daemon thread) inside at most one transaction, which is never committed and which DuckDB
  discards, so never a partial run.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

from benchmark.store.writes import RunBundle, write_run

log = logging.getLogger(__name__)

_STOP = object()


class BackgroundStore:
    """submit(bundle) returns at once; close() waits for every submitted bundle and raises the first error."""

    def __init__(self, db: str | Path, *, write: Callable[[Path, RunBundle], None] | None = None,
                 max_pending: int = 1):
        self.db = Path(db)
        self._write = write or write_run
        self._queue: queue.Queue = queue.Queue()  # unbounded, so that close() can always post its stop
        self._slots = threading.Semaphore(max(1, max_pending))  # the bound on bundles held
        self._error: BaseException | None = None
        self._closed = False
        self.stored: list[str] = []  # run ids committed, in order
        self._thread = threading.Thread(target=self._loop, name="store-writer", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            bundle = self._queue.get()
            try:
                if bundle is _STOP:
                    return
                try:
                    if self._error is None:  # after a failure nothing more is written
                        self._write(self.db, bundle)
                        self.stored.append(bundle.run["run_id"])
                except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                    log.error("storing %s failed: %s", bundle.run.get("run_id"), exc)
                    self._error = exc
                finally:
                    self._slots.release()
            finally:
                self._queue.task_done()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def submit(self, bundle: RunBundle) -> None:
        """Queue one run for storing (blocks while `max_pending` wait); raises an earlier write's error."""
        if self._closed:
            raise RuntimeError("BackgroundStore is closed")
        self._raise_error()
        self._slots.acquire()
        self._queue.put(bundle)

    def wait(self) -> None:
        """Block until everything submitted so far is stored (or failed); raise the first error."""
        self._queue.join()
        self._raise_error()

    def close(self) -> None:
        """Store what was submitted, stop the thread, raise the first error (once closed, again on each call)."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._thread.join()
        self._raise_error()

    def __enter__(self) -> BackgroundStore:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
            return
        try:
            self.close()
        except Exception as store_exc:  # the caller's exception goes on; the store's is logged
            log.error("while stopping after %s: storing failed too: %s", exc_type.__name__, store_exc)
