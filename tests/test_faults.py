"""Faults: kill -9 while writing, a full disk, a corrupt or newer results DB, stale decode-cache files.

The kill tests start the real command in a subprocess with $CXR_FAULT_PAUSE (benchmark/faults.py)
naming a write point: the process writes a marker file there and sleeps, the test kills it with
SIGKILL at that moment (inside the DB transaction, or with the new checkpoint written to its .tmp
file but not yet renamed), and then checks what a user would find.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from benchmark.cli import main
from benchmark.errors import DiskFullError, ResultsDatabaseError
from benchmark.store import queries, reader, schema, write_run, writer
from benchmark.store import writes as writes_mod
from benchmark.store.writes import RunBundle
from tests.conftest import REPO

SMALL = ["--epochs", "1", "--image-size", "64", "--device", "cpu", "--no-progress"]
RUN_TABLES_AND_RUNS = ("runs", *schema.RUN_TABLES)


def _bundle(run_id: str, n: int = 4) -> RunBundle:
    images = pd.DataFrame({"image_id": [f"{run_id}-i{i}" for i in range(n)], "dataset": "d", "label": "a",
                           "split": "test", "patient_id": [f"p{i}" for i in range(n)]})
    preds = pd.DataFrame({"image_id": images.image_id, "split": "test", "label": "a", "pred": "a",
                          "confidence": 0.9, "probs": [[0.9, 0.1]] * n})
    cam = np.linspace(0, 1, 49, dtype=np.float16).reshape(7, 7)
    cams = pd.DataFrame({"image_id": images.image_id, "split": "test", "method": "gradcam", "target_class": "a",
                         "target_kind": "pred", "height": 7, "width": 7, "cam": [cam.tobytes()] * n,
                         "lung_mass": 0.5, "pointing_hit": True, "lung_iou": 0.3})
    metrics = pd.DataFrame({"split": ["test"], "metric": ["accuracy"], "class_name": [""], "value": [1.0],
                            "ci_low": [0.8], "ci_high": [1.0]})
    return RunBundle(run={"run_id": run_id, "model": "m", "dataset": "d", "pretrained": False, "status": "done"},
                     tables={"predictions": preds, "metrics": metrics, "cams": cams}, images=images)


def _rows_of(db: Path, run_id: str) -> dict[str, int]:
    with reader(db) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchone()[0]
                for t in RUN_TABLES_AND_RUNS}


def _snapshot(db: Path) -> dict[str, str]:
    """A digest of every run-owned table's rows (sorted), to prove a killed write changed nothing."""
    out = {}
    with reader(db) as con:
        for table in RUN_TABLES_AND_RUNS:
            df = con.execute(f"SELECT * EXCLUDE (run_id), run_id FROM {table}").df()
            text = df.astype(str).sort_values(list(df.columns)).to_csv(index=False) if not df.empty else ""
            out[table] = hashlib.sha256(text.encode()).hexdigest()
    return out


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- full disk

@pytest.mark.parametrize("where", ["insert", "commit"])
@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_full_disk_fails_the_run_clearly_and_stores_nothing(tmp_path, monkeypatch, where):
    db = tmp_path / "r.duckdb"
    write_run(db, _bundle("kept"))
    before = _snapshot(db)
    if where == "insert":  # Python's own ENOSPC while rows go in
        real = writes_mod._insert_df

        def insert(con, table, df, **kw):
            if table == "cams":
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(con, table, df, **kw)
        monkeypatch.setattr(writes_mod, "_insert_df", insert)
    else:  # DuckDB's IO error when the commit cannot grow the file
        def commit_fails(point):
            if point == "commit":
                raise duckdb.IOException('Could not write file "r.duckdb.wal": No space left on device')
        monkeypatch.setattr(writes_mod.faults, "pause_point", commit_fails)
    with pytest.raises(DiskFullError, match=r"no space left on device .*nothing stored for run lost"):
        write_run(db, _bundle("lost"))
    monkeypatch.undo()
    assert _rows_of(db, "lost") == dict.fromkeys(RUN_TABLES_AND_RUNS, 0)
    assert _snapshot(db) == before
    with reader(db) as con:  # the shared tables did not keep the failed run's images either
        assert con.execute("SELECT count(*) FROM images WHERE image_id LIKE 'lost-%'").fetchone()[0] == 0
    write_run(db, _bundle("lost"))  # space freed: the same run stores normally
    assert _rows_of(db, "lost")["cams"] == 4


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_full_disk_in_the_cli_is_one_clear_line(tmp_path, cache_env, monkeypatch, capsys):
    real = writes_mod._insert_df

    def insert(con, table, df, **kw):
        if table == "predictions":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(con, table, df, **kw)
    monkeypatch.setattr(writes_mod, "_insert_df", insert)
    db = tmp_path / "r.duckdb"
    rc = main(["run", "--data", "phantom", "--n-phantom", "45", "--models", "shallow", "--cam-methods", "none",
               "--faithfulness-sample", "0", "--db", str(db), "--checkpoint-dir", str(tmp_path / "ck"), *SMALL])
    err = capsys.readouterr().err
    assert rc == 2
    assert "error: no space left on device" in err and "nothing stored for run phantom-shallow-" in err
    assert "Traceback" not in err
    with reader(db) as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM predictions").fetchone()[0] == 0


def test_checkpoint_write_failure_leaves_the_old_file_and_no_tmp(tmp_path, monkeypatch):
    from benchmark.training import checkpoints
    from tests.fixtures_db import make_checkpoint

    weights = make_checkpoint(tmp_path, architecture="shallow")
    old = _digest(weights)

    def full(state, filename, *a, **kw):
        Path(filename).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(checkpoints, "save_file", full)
    with pytest.raises(OSError, match="No space left"):
        make_checkpoint(tmp_path, architecture="shallow", seed=1)
    assert _digest(weights) == old
    assert not list(tmp_path.rglob("*.tmp"))
    monkeypatch.undo()
    checkpoints.load_checkpoint(weights)


# ----------------------------------------------------------------------------- unusable DB files

def _newer(db: Path, version: int) -> None:
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(version)])
    con.close()


def test_schema_version_is_recorded_and_a_newer_file_refused(tmp_path):
    db = tmp_path / "r.duckdb"
    write_run(db, _bundle("a"))
    with reader(db) as con:
        assert schema.stored_version(con) == schema.SCHEMA_VERSION
    _newer(db, schema.SCHEMA_VERSION + 1)
    size = db.stat().st_size
    for opener in (reader, writer):
        with pytest.raises(ResultsDatabaseError) as info:
            with opener(db):
                pass
        msg = str(info.value)
        assert f"version {schema.SCHEMA_VERSION + 1}" in msg and f"version {schema.SCHEMA_VERSION} " in msg
    with pytest.raises(ResultsDatabaseError):
        write_run(db, _bundle("b"))
    assert db.stat().st_size == size  # refused before any DDL touched it
    _newer(db, schema.SCHEMA_VERSION)
    with reader(db) as con:
        assert queries.done_run_ids(con) == {"a"}


def _corrupt_files(tmp_path: Path) -> dict[str, Path]:
    db = tmp_path / "good.duckdb"
    for i in range(3):
        write_run(db, _bundle(f"r{i}", n=200))
    data = db.read_bytes()
    out = {}
    for name, payload in {"truncated": data[: len(data) // 3], "header-only": data[:4096],
                          "zeroed": data[:4096] + bytes(len(data) - 4096),
                          "text": b"this is not a database\n" * 100, "empty": b""}.items():
        out[name] = tmp_path / f"{name}.duckdb"
        out[name].write_bytes(payload)
    return out


def _read_everything(db: Path) -> None:
    with reader(db) as con:
        queries.db_overview(con)
        queries.summary(con)
        con.execute("SELECT * FROM cams").fetchall()


def test_corrupt_or_truncated_db_is_a_clear_error(tmp_path):
    for name, db in _corrupt_files(tmp_path).items():
        try:
            _read_everything(db)
        except ResultsDatabaseError as exc:
            assert str(db) in str(exc) and "cannot be read as a results database" in str(exc), name
        except FileNotFoundError:
            raise AssertionError(f"{name}: reported as missing") from None
        else:  # an empty file opens as an empty database: nothing to read, but no crash either
            assert name == "empty", f"{name}: read without error"


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_cli_reports_corrupt_and_newer_db_without_traceback(tmp_path, capsys):
    files = _corrupt_files(tmp_path)
    newer = tmp_path / "newer.duckdb"
    write_run(newer, _bundle("a"))
    _newer(newer, 99)
    for db, expect in ((files["truncated"], "cannot be read as a results database"),
                       (files["text"], "cannot be read as a results database"),
                       (newer, "schema version 99")):
        rc = main(["cams", "--db", str(db), "--cam-methods", "gradcam"])
        err = capsys.readouterr().err
        assert rc == 2 and expect in err and "Traceback" not in err, err


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_dashboard_shows_corrupt_and_newer_db_and_keeps_running(tmp_path, monkeypatch):
    from tests.fixtures_db import FakeResultsSpec, build_results_db, open_page, texts

    good = build_results_db(tmp_path / "ok", FakeResultsSpec(datasets=("phantom-shortcut",), models=("shallow",),
                                                             n_test=6))
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(good.read_bytes()[:4096] + b"\0" * 8192)
    newer = tmp_path / "newer.duckdb"
    shutil.copy(good, newer)
    _newer(newer, 7)
    for db, expect in ((bad, "cannot be read as a results database"), (newer, "schema version 7")):
        monkeypatch.setenv("CXR_RESULTS_DB", str(db))
        for page in (None, "pages/compare.py", "pages/misclassifications.py"):
            at = open_page(page)
            assert not at.exception, (db.name, page, at.exception)
            assert any(expect in e.value for e in at.error), (db.name, page, texts(at))
    monkeypatch.setenv("CXR_RESULTS_DB", str(good))  # the same server then reads a good file
    at = open_page()
    assert not at.exception and not at.error and at.dataframe


# ----------------------------------------------------------------------------- stale decode-cache files

def test_stale_decode_cache_tmp_files_are_removed(tmp_path):
    from benchmark.data.decode import STALE_TMP_S, DecodeCache
    from benchmark.data.records import ImageRecord
    from tests.conftest import write_png

    cache = DecodeCache(tmp_path / "cache", workers=1)
    folder = cache.root / "32" / "ab"
    folder.mkdir(parents=True)
    stale = folder / ".abcdef.npy.x1y2.tmp"
    fresh = folder / ".abcdef.npy.z3w4.tmp"
    entry = folder / "abcdef.npy"
    other_size = cache.root / "64" / "cd" / ".old.npy.q.tmp"
    other_size.parent.mkdir(parents=True)
    for f in (stale, fresh, entry, other_size):
        f.write_bytes(b"x")
    old = time.time() - STALE_TMP_S - 60
    for f in (stale, entry, other_size):
        os.utime(f, (old, old))
    png = write_png(tmp_path / "img.png", 1)
    out = cache.load([ImageRecord(path=str(png), label="a", source="s", dataset="d", patient_id="p")], 32)
    assert len(out.images) == 1
    assert not stale.exists()  # a dead writer's leftover
    assert fresh.exists()  # may belong to a process writing now
    assert entry.exists()  # a real entry is never touched, however old
    assert other_size.exists()  # swept when that size is opened
    cache.load([ImageRecord(path=str(png), label="a", source="s", dataset="d", patient_id="p")], 64)
    assert not other_size.exists()


# ----------------------------------------------------------------------------- kill -9 while writing

def _env(**extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CXR_FAULT_PAUSE"}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", **extra)
    return env


def _kill_at(point: str, args: list[str], tmp_path: Path, env: dict[str, str] | None = None,
             timeout: float = 300) -> None:
    """Start `python -m benchmark ARGS` (or `python -c` when args[0] == '-c'), wait until it reaches
    `point`, SIGKILL it there. Fails if it finishes or dies before reaching the point."""
    marker = tmp_path / f"reached-{point}-{time.monotonic_ns()}"
    cmd = [sys.executable, *args] if args[0] == "-c" else [sys.executable, "-m", "benchmark", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**(env or _env()), "CXR_FAULT_PAUSE": f"{point}:{marker}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while not marker.exists():
            if proc.poll() is not None:
                err = proc.stderr.read().decode()[-2000:]
                raise AssertionError(f"exited ({proc.returncode}) before {point}: {err}")
            if time.monotonic() > deadline:
                raise AssertionError(f"did not reach {point} within {timeout} s")
            time.sleep(0.05)
        time.sleep(0.2)  # well inside the pause
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.stderr.close()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A results DB with one done phantom run (gradcam maps) and its checkpoint; copied per test."""
    folder = tmp_path_factory.mktemp("faults")
    env = _env(CXR_CACHE=str(folder / "cache"))
    db, ck = folder / "r.duckdb", folder / "ck"
    subprocess.run([sys.executable, "-m", "benchmark", "run", "--data", "phantom", "--n-phantom", "45",
                    "--models", "shallow", "--cam-methods", "gradcam", "--faithfulness-sample", "0",
                    "--db", str(db), "--checkpoint-dir", str(ck), *SMALL], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    return folder, env


def _copy(trained, tmp_path: Path) -> tuple[Path, Path, dict]:
    folder, env = trained
    db = tmp_path / "r.duckdb"
    shutil.copy(folder / "r.duckdb", db)
    checkpoint = next((folder / "ck").rglob("*.safetensors"))
    return db, checkpoint, env


def _assert_whole(db: Path, before: dict[str, str]) -> None:
    """The DB opens, a writer gets in (no stale lock), and every run-owned row is as before the kill."""
    with reader(db) as con:
        runs = queries.runs(con)
    assert set(runs.status) == {"done"} and runs.finished_at.notna().all()
    assert _snapshot(db) == before
    write_run(db, _bundle("after-kill"))
    assert _rows_of(db, "after-kill")["cams"] == 4


@pytest.mark.slow
def test_kill_during_cams_leaves_the_old_maps(trained, tmp_path):
    db, _, env = _copy(trained, tmp_path)
    before = _snapshot(db)
    _kill_at("commit", ["cams", "--db", str(db), "--cam-methods", "gradcam", "--faithfulness-sample", "0",
                        "--device", "cpu", "--no-progress"], tmp_path, env)
    _assert_whole(db, before)


@pytest.mark.slow
def test_kill_during_evaluate_stores_no_external_rows(trained, tmp_path):
    import json

    from tests.conftest import write_png

    db, checkpoint, env = _copy(trained, tmp_path)
    classes = json.loads(checkpoint.with_suffix(".json").read_text())["classes"]
    folder = tmp_path / "external"  # a few images of the model's classes: evaluate reaches its write quickly
    for c, name in enumerate(classes):
        for i in range(4):
            write_png(folder / name / f"{i}.png", 10 * c + i)
    before = _snapshot(db)
    _kill_at("commit", ["evaluate", "--checkpoint", str(checkpoint), "--data", str(folder), "--db", str(db),
                        "--device", "cpu", "--cam-methods", "gradcam", "--n-boot", "20"], tmp_path, env)
    _assert_whole(db, before)
    with reader(db) as con:
        assert con.execute("SELECT count(*) FROM predictions WHERE split LIKE 'external:%'").fetchone()[0] == 0


@pytest.mark.slow
def test_kill_during_run_commit_and_checkpoint_write(trained, tmp_path):
    """`run --force` killed inside its transaction keeps the earlier run; killed while writing the new
    checkpoint, it keeps the old checkpoint file byte for byte (the new one is only a .tmp)."""
    db, checkpoint, env = _copy(trained, tmp_path)
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint.parents[1], ck)
    weights = next(ck.rglob("*.safetensors"))
    old = _digest(weights), _digest(weights.with_suffix(".json"))
    before = _snapshot(db)
    args = ["run", "--data", "phantom", "--n-phantom", "45", "--models", "shallow", "--cam-methods", "gradcam",
            "--faithfulness-sample", "0", "--force", "--db", str(db), "--checkpoint-dir", str(ck), *SMALL]
    _kill_at("checkpoint", args, tmp_path, env)
    assert (_digest(weights), _digest(weights.with_suffix(".json"))) == old
    from benchmark.training.checkpoints import load_checkpoint
    load_checkpoint(weights)
    _kill_at("commit", args, tmp_path, env)
    _assert_whole(db, before)


@pytest.mark.slow
def test_kill_during_lungs_train_keeps_the_old_segmenter(tmp_path):
    from benchmark.lungseg import load_segmenter
    from tests.fixtures_db import make_segmenter

    stem = tmp_path / "seg" / "lung_unet"
    weights = make_segmenter(stem)
    old = _digest(weights), _digest(stem.with_suffix(".json"))
    env = _env(CXR_CACHE=str(tmp_path / "cache"))
    env.pop("CXR_DATA", None)  # phantom masks only: small and quick
    _kill_at("segmenter", ["lungs", "train", "--out", str(stem), "--size", "64", "--epochs", "1", "--n-phantom", "8",
                           "--device", "cpu"], tmp_path, env)
    assert (_digest(weights), _digest(stem.with_suffix(".json"))) == old
    load_segmenter(stem)


@pytest.mark.slow
def test_kill_during_a_dashboard_read_leaves_no_lock(trained, tmp_path):
    db, _, env = _copy(trained, tmp_path)
    before = _snapshot(db)
    code = "from tests.fixtures_db import open_page; open_page(timeout=120)"
    _kill_at("read", ["-c", code], tmp_path, {**env, "CXR_RESULTS_DB": str(db)})
    _assert_whole(db, before)
