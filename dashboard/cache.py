"""The one thin caching layer between the pages and the store, models and files.

Why no long-lived DB connection in st.cache_resource: DuckDB lets one process write, and a
read-only connection held by this server would block every benchmark run from writing its
results (docs/contract.md, "DuckDB and two processes"). So the cached *resource* is the database handle's state (the
last good result of every query), and each query opens a read-only connection for the moment
it runs. Query results go through st.cache_data keyed by the DB file's modification stamp: a
finished run shows at once, an unchanged DB is never re-read within the TTL, and while a writer
holds the file the pages show the last results they had instead of failing.
"""
from __future__ import annotations

import copy
import datetime as dt
import functools
import logging
import os
import sys
import threading
from pathlib import Path

import duckdb
import streamlit as st

from benchmark import paths
from benchmark.store import queries, reader
from benchmark.store.connection import is_lock_error
from dashboard import images, render, views
from dashboard.settings import DashboardSettings, resolve_settings

log = logging.getLogger(__name__)

_SNAPSHOTS_LOCK = threading.Lock()
STALE_KEY = "_results_stale_since"
MAX_SNAPSHOTS = 512  # last-good results kept for locked-DB fallback (oldest dropped first)
BUSY_MESSAGE = ("A benchmark run is writing to the results database right now; this view will show "
                "results once the run has committed. Rerun the page (R) in a few seconds.")


class DatabaseBusy(Exception):
    """A benchmark run holds the results file (raised inside the cached query, so never cached)."""


def settings() -> DashboardSettings:
    """The settings for the current arguments and environment (tests change the environment
    between apps). Resolved once per distinct (argv, CXR_* variables): building the argument
    parser on every query was 4% of the server's CPU under 10 sessions."""
    return _settings(tuple(sys.argv[1:]), paths.project_environment(), os.getcwd())  # relative paths: the cwd


@functools.lru_cache(maxsize=32)
def _settings(argv: tuple[str, ...], env: tuple[tuple[str, str], ...], cwd: str) -> DashboardSettings:
    return resolve_settings(list(argv), dict(env))  # frozen dataclass: safe to share


def db_stamp(db: Path) -> tuple[int, int, int] | None:
    """(mtime_ns, size, wal mtime_ns) of the results file, None if it does not exist."""
    try:
        st_db = db.stat()
    except OSError:
        return None
    wal = db.with_name(db.name + ".wal")
    wal_mtime = wal.stat().st_mtime_ns if wal.exists() else 0
    return st_db.st_mtime_ns, st_db.st_size, wal_mtime


@st.cache_resource(show_spinner=False)
def _last_results() -> dict:
    """Last good result per (db, query, args): what a page shows while a writer holds the file."""
    return {}


# How long a query result is reused while the DB file is unchanged (cache keys also carry the
# file's modification time, so a finished run shows at once).
QUERY_TTL_S = 600


@st.cache_data(ttl=QUERY_TTL_S, max_entries=512, show_spinner=False)
def _cached_query(db: str, stamp: tuple, name: str, args: tuple, lock_wait_s: float, kwargs: tuple = ()):
    try:
        with reader(db, timeout_s=lock_wait_s) as con:
            return getattr(queries, name)(con, *args, **dict(kwargs))
    except duckdb.Error as exc:
        if is_lock_error(exc):
            raise DatabaseBusy(str(exc)) from exc
        raise


def query(name: str, *args, stop_when_busy: bool = True, **kwargs):
    """Result of `benchmark.store.queries.<name>(con, *args, **kwargs)` on the configured DB, cached
    by the DB's stamp and every argument (keyword values must be hashable: str, number, tuple).

    While a writer holds the file it returns this query's last good result (and marks the page
    stale); with none, it shows a notice and stops the page's run (or, with
    `stop_when_busy=False`, raises DatabaseBusy for the caller to handle). Callers may treat the
    result as their own: st.cache_data hands each caller a copy, and so does the fallback.
    """
    cfg = settings()
    db = str(cfg.db_path)
    kw = tuple(sorted(kwargs.items()))
    key = (db, name, args, kw)
    snapshots = _last_results()
    try:
        value = _cached_query(db, db_stamp(cfg.db_path), name, args, cfg.lock_wait_s, kw)
    except DatabaseBusy:
        if key not in snapshots and not stop_when_busy:
            raise
        if key not in snapshots:  # nothing to fall back on: say so and end this page's run
            st.info(BUSY_MESSAGE, icon=":material/hourglass_top:")
            st.stop()
        st.session_state[STALE_KEY] = snapshots[key][1]
        return copy.deepcopy(snapshots[key][0])  # shared by every session: never hand out the object itself
    with _SNAPSHOTS_LOCK:  # sessions are threads: two evicting the same oldest key must not collide
        snapshots.pop(key, None)  # re-insert: dict order is then least recently refreshed first
        snapshots[key] = (value, dt.datetime.now())
        while len(snapshots) > MAX_SNAPSHOTS:
            snapshots.pop(next(iter(snapshots)))
    return value


def clear() -> None:
    _cached_query.clear()
    _lung_share.clear()
    _baseline.clear()
    _report_html.clear()
    _performance.clear()
    _leaderboard.clear()
    _checkpoints.clear()
    _leaderboard_scatter.clear()
    _several_seeds.clear()


@st.cache_data(ttl=QUERY_TTL_S, max_entries=2, show_spinner=False)
def _report_html(db: str, stamp: tuple) -> bytes:
    from benchmark.report.build import build_report
    from benchmark.report.html import render

    return render(build_report(db)).encode("utf-8")


def report_html(db: str, stamp: tuple | None) -> bytes:
    """The replication report of `db` as one self-contained HTML file, built in memory.

    Keyed by the DB file's stamp like every query: built once per state of the results (it draws
    figures for seconds), rebuilt when a run commits. Called by the download button when it is
    clicked, so an unchanged page never pays for it.
    """
    return _report_html(db, stamp)


@st.cache_data(ttl=3600, max_entries=64, show_spinner=False)
def _lung_share(mask_paths: tuple[str, ...]) -> tuple[float | None, int]:
    return images.lung_share(list(mask_paths))


@st.cache_data(ttl=QUERY_TTL_S, max_entries=64, show_spinner=False)
def _baseline(db: str, stamp: tuple | None, dataset: str) -> tuple[float | None, int]:
    masks = query("mask_paths", dataset)
    return _lung_share(tuple(masks["mask_path"]) if not masks.empty else ())


def baselines(datasets) -> dict[str, tuple[float | None, int]]:
    """Uniform-map baseline per dataset: the lungs' share of the image over its test masks,
    computed from the mask files the DB points at (not stored in the DB). Keyed by the DB's stamp
    and the dataset, so a rerun neither fetches nor hashes the dataset's mask paths again."""
    cfg = settings()
    stamp = db_stamp(cfg.db_path)
    return {d: _baseline(str(cfg.db_path), stamp, d) for d in datasets}


@st.cache_data(max_entries=2048, show_spinner=False)
def display_image(path: str | None, key: str | None, source: str | None, max_side: int):
    return images.load_display_image(path, key, source, max_side)


@st.cache_data(max_entries=512, show_spinner=False)
def mean_map_picture(mean_map: bytes, lung_map: bytes, grid: int, side: int) -> bytes:
    """JPEG of a stored class-mean or cluster map (its BLOBs, keyed by their bytes) on grey with
    its images' mean lung outline: drawn once, not on every rerun of the Patterns page."""
    return render.picture(render.mean_map_picture(queries.grid_array(mean_map, grid),
                                                  queries.grid_array(lung_map, grid), side))


@st.cache_data(max_entries=512, show_spinner=False)
def display_mask(mask_path: str | None, shape: tuple[int, int]):
    return images.load_display_mask(mask_path, shape)


def _mtime_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except OSError:  # removed while we listed
        return -1


@st.cache_data(ttl=QUERY_TTL_S, max_entries=16, show_spinner=False)
def _checkpoints(folder: str, stamp: tuple, workers: int) -> list[dict]:
    return views.rank_checkpoints(model_worker(workers).checkpoints(folder))


def checkpoints(folder: Path) -> list[dict]:
    """The classifier checkpoints under `folder` (sidecars read and validated, best first), read
    again only when a checkpoint file appears, goes or changes: the live CAM page asks on every
    rerun, and validating every sidecar each time showed up under load. Validated where the models
    run (the model registry needs torch; a server with workers imports none); raises WorkerFailed
    (not cached) when the worker is down."""
    if not folder.is_dir():
        return []
    stamp = tuple(sorted((str(f), _mtime_ns(f)) for f in folder.rglob("*")
                         if f.suffix in (".json", ".safetensors")))
    return _checkpoints(str(folder), stamp, settings().live_workers)


def model_worker(workers: int):
    """The live CAM's model work (dashboard/model_worker.py): the server's one ModelWorker with
    `workers` processes, shared by every session (its requests are thread-safe; it loads each
    checkpoint once per path and mtime). Started at launch by dashboard/serve.py, else here."""
    from dashboard.model_worker import shared

    return shared(workers)


def segmenter_stamp(cfg: DashboardSettings) -> tuple[str, int]:
    """(stem, weights mtime_ns or 0) of the segmenter in use: the key a retrained one reloads by."""
    stem = cfg.segmenter
    weights = stem.with_suffix(".safetensors")
    return str(stem), weights.stat().st_mtime_ns if weights.exists() else 0


@st.cache_resource(max_entries=4, show_spinner=False)
def _live_offer(workers: int, stem: str, mtime_ns: int):
    return model_worker(workers).describe((stem, mtime_ns))


def live_offer(cfg: DashboardSettings):
    """The live CAM page's methods and segmenter status (`live.LiveOffer`, frozen, shared), asked
    once per (worker count, segmenter stamp) of the process that runs the models, so a server whose
    models run in workers never imports torch. A worker that fails raises WorkerFailed (not cached)."""
    return _live_offer(cfg.live_workers, *segmenter_stamp(cfg))


@st.cache_data(ttl=QUERY_TTL_S, max_entries=64, show_spinner=False)
def _performance(db: str, stamp: tuple | None, run_ids: tuple[str, ...], n_bins: int, _preds, _details):
    import pandas as pd

    from benchmark.analysis import performance as perf

    details = _details.set_index("run_id")
    classes = perf.classes_of(details.at[run_ids[0], "classes_json"])
    by_split: dict[str, list] = {}
    for (run_id, split), rows in _preds.groupby(["run_id", "split"], sort=True):
        seed = details.at[run_id, "seed"] if run_id in details.index else 0
        by_split.setdefault(split, []).append(perf.scored(
            rows, classes, run_id=run_id, split=split, seed=int(seed) if pd.notna(seed) else 0))
    measured = {split: perf.performance(runs, n_bins=n_bins) for split, runs in by_split.items()}
    return measured, perf.per_source([r for runs in by_split.values() for r in runs])


def performance(run_ids: tuple[str, ...], n_bins: int):
    """({split: Performance}, per-source table) of a run or seed group, from its stored predictions.

    Keyed like every query by the DB's stamp (and the runs and bins): the bootstrap ROC bands cost
    a fraction of a second per run and class, paid once per state of the results.
    """
    cfg = settings()
    preds = query("performance_predictions", tuple(run_ids))
    details = query("run_details")
    return _performance(str(cfg.db_path), db_stamp(cfg.db_path), tuple(run_ids), n_bins, preds, details)


@st.cache_data(ttl=QUERY_TTL_S, max_entries=256, show_spinner=False)
def _leaderboard(db: str, stamp: tuple | None, choice: views.LeaderboardChoice) -> views.LeaderboardView:
    return views.leaderboard_view(
        summary=query("summary"), class_metrics=query("class_metrics"), focus=query("lung_focus_by_run"),
        probes=query("probe_results"), sanity=query("cam_sanity"), details=query("run_details"),
        datasets=choice.datasets, method=choice.method, class_choice=choice.class_choice, by_group=choice.by_group,
        sort_label=choice.sort_label, baselines=dict(choice.baselines), external=query("external_metrics"))


def leaderboard(choice: views.LeaderboardChoice) -> views.LeaderboardView:
    """views.leaderboard_view of the configured DB for these widget values, built once per DB state
    and choice: composing the board is pandas work per run that every session would otherwise
    repeat on every rerun, and its seven queries are read only then.
    Each caller gets its own copy (cache_data)."""
    cfg = settings()
    return _leaderboard(str(cfg.db_path), db_stamp(cfg.db_path), choice)


@st.cache_data(ttl=QUERY_TTL_S, max_entries=16, show_spinner=False)
def _several_seeds(db: str, stamp: tuple | None) -> bool:
    return views.several_seeds(views.seed_groups(query("run_details")))


def several_seeds() -> bool:
    """Whether any runs of the configured DB differ only by their seed (the leaderboard then offers
    one row per seed group); worked out once per DB state."""
    cfg = settings()
    return _several_seeds(str(cfg.db_path), db_stamp(cfg.db_path))


@st.cache_resource(ttl=QUERY_TTL_S, max_entries=64, show_spinner=False)
def _leaderboard_scatter(db: str, stamp: tuple | None, choice: views.LeaderboardChoice, focus: str, _board):
    return render.accuracy_focus_scatter(_board, dict(choice.baselines), focus)


def leaderboard_scatter(choice: views.LeaderboardChoice, focus: str, board):
    """render.accuracy_focus_scatter of `board` (cache.leaderboard(choice).board), one Figure per
    (DB state, choice, focus measure).

    A cache_resource, so every session is handed the same Figure: building one costs ~0.1 s of
    plotly validation, and a copy (what cache_data would hand out) as much again. Safe because
    nothing mutates it: st.plotly_chart only serialises the Figure it is given, and pages must not
    update it."""
    cfg = settings()
    return _leaderboard_scatter(str(cfg.db_path), db_stamp(cfg.db_path), choice, focus, board)
