"""results.duckdb: one transaction per run, nothing partial, readers beside a writer."""
from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap

import duckdb
import numpy as np
import pandas as pd
import pytest

from benchmark.store import queries, reader, replace_run_rows, write_run, writer
from benchmark.store import writes as writer_mod
from benchmark.store.writes import RunBundle


def _bundle(run_id: str, n: int = 5) -> RunBundle:
    images = pd.DataFrame({"image_id": [f"{run_id}-i{i}" for i in range(n)], "dataset": "d",
                           "label": "a", "split": "test", "patient_id": [f"p{i}" for i in range(n)]})
    preds = pd.DataFrame({"image_id": images.image_id, "split": "test", "label": "a", "pred": "a",
                          "confidence": 0.9, "probs": [[0.9, 0.1]] * n})
    metrics = pd.DataFrame({"split": ["test"], "metric": ["accuracy"], "class_name": [""],
                            "value": [1.0], "ci_low": [0.8], "ci_high": [1.0]})
    cam = np.linspace(0, 1, 49, dtype=np.float16).reshape(7, 7)
    cams = pd.DataFrame({"image_id": images.image_id, "split": "test", "method": "gradcam",
                         "target_class": "a", "target_kind": "pred", "height": 7, "width": 7,
                         "cam": [cam.tobytes()] * n, "lung_mass": 0.5, "pointing_hit": True, "lung_iou": 0.3})
    return RunBundle(run={"run_id": run_id, "model": "m", "dataset": "d", "pretrained": False,
                          "status": "done", "epochs": 1},
                     tables={"predictions": preds, "metrics": metrics, "cams": cams}, images=images,
                     rejected=pd.DataFrame([{"path": "/x/bad.png", "source": "s", "reason": "empty file",
                                             "dataset": "d"}]))


def _count(db, table, run_id=None):
    with reader(db) as con:
        if run_id is None:
            return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return con.execute(f"SELECT count(*) FROM {table} WHERE run_id = ?", [run_id]).fetchone()[0]


def test_write_and_read_back(tmp_path):
    db = tmp_path / "r.duckdb"
    write_run(db, _bundle("r1"))
    with reader(db) as con:
        assert queries.done_run_ids(con) == {"r1"}
        assert len(queries.predictions(con, "r1")) == 5
        row = con.execute("SELECT * FROM cams LIMIT 1").df().iloc[0]
        cam = queries.cam_array(row)
        assert cam.shape == (7, 7) and cam[0, 0] == 0 and abs(cam[-1, -1] - 1) < 1e-3
        assert len(queries.rejected(con)) == 1


def test_rewrite_replaces_rows_and_shared_rows_not_duplicated(tmp_path):
    db = tmp_path / "r.duckdb"
    write_run(db, _bundle("r1"))
    write_run(db, _bundle("r1"))
    assert _count(db, "predictions", "r1") == 5
    assert _count(db, "runs") == 1
    assert _count(db, "images") == 5
    assert _count(db, "rejected_images") == 1


def test_failure_inside_transaction_leaves_nothing(tmp_path, monkeypatch):
    db = tmp_path / "r.duckdb"
    write_run(db, _bundle("r1"))
    real = writer_mod._insert_df

    def failing(con, table, df, **kw):
        if table == "cams":
            raise RuntimeError("disk full (simulated)")
        return real(con, table, df, **kw)

    monkeypatch.setattr(writer_mod, "_insert_df", failing)
    with pytest.raises(RuntimeError):
        write_run(db, _bundle("r2"))
    for table in ("runs", "predictions", "metrics", "cams"):
        assert _count(db, table, "r2") == 0
    assert _count(db, "images") == 5  # r2's images rolled back too
    assert _count(db, "predictions", "r1") == 5  # earlier run untouched


def test_replace_run_rows_swaps_one_method(tmp_path):
    db = tmp_path / "r.duckdb"
    write_run(db, _bundle("r1"))
    new = _bundle("r1").tables["cams"].head(2).assign(lung_mass=0.9)
    replace_run_rows(db, "r1", "cams", new, where={"method": "gradcam"})
    with reader(db) as con:
        vals = con.execute("SELECT lung_mass FROM cams WHERE run_id='r1'").fetchall()
    assert [v[0] for v in vals] == [0.9, 0.9]


def test_reader_missing_db_says_how_to_make_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m benchmark run"):
        with reader(tmp_path / "none.duckdb"):
            pass


@contextlib.contextmanager
def _held_in_other_process(db, *, read_only: bool):
    """Another process opens `db` (as a writer or a reader) and holds it for 1.5 s; yields once it has it."""
    script = textwrap.dedent(f"""
        import duckdb, time
        con = duckdb.connect({str(db)!r}, read_only={read_only})
        print("holding", flush=True)
        time.sleep(1.5)
        con.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "holding"
        yield
    finally:
        proc.wait(timeout=20)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_reader_waits_for_writer_in_other_process(tmp_path):
    """A writer in another process holds the file; our reader retries and then reads."""
    db = tmp_path / "r.duckdb"
    write_run(db, _bundle("r1"))
    with _held_in_other_process(db, read_only=False):
        with pytest.raises(duckdb.Error):  # a plain connect fails while the writer holds it
            duckdb.connect(str(db), read_only=True)
        with reader(db, timeout_s=20) as con:
            assert queries.done_run_ids(con) == {"r1"}


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_writer_waits_for_reader_in_other_process(tmp_path):
    db = tmp_path / "r.duckdb"
    write_run(db, _bundle("r1"))
    with _held_in_other_process(db, read_only=True):
        write_run(db, _bundle("r2"))
    assert _count(db, "runs") == 2


def test_unknown_table_rejected(tmp_path):
    b = _bundle("r1")
    b.tables["images"] = b.images
    with pytest.raises(ValueError, match="per-run table"):
        write_run(tmp_path / "r.duckdb", b)
    with writer(tmp_path / "r.duckdb") as con:
        assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def _older_file(path) -> None:
    """A results file as an older version wrote it: no CAM-pattern tables, no phase columns."""
    from benchmark.store import schema

    con = duckdb.connect(str(path))
    for name, ddl in schema.TABLES.items():
        if not name.startswith("cam_c") and name != "cam_cluster_members":
            con.execute(ddl)
    for table, column, _ in schema.ADDED_COLUMNS:
        con.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS {column}")
    con.execute("INSERT INTO runs (run_id, model, dataset, pretrained, status) VALUES ('r1', 'm', 'd', FALSE, 'done')")
    con.close()


def test_a_reader_brings_an_older_file_up_to_date(tmp_path):
    from benchmark.store import schema

    db = tmp_path / "old.duckdb"
    _older_file(db)
    with duckdb.connect(str(db), read_only=True) as con:
        missing = schema.missing_parts(con)
    assert "cam_clusters" in missing and "runs.cluster_seconds" in missing and "cams.marker_mass" in missing
    with reader(db) as con:  # the queries need no branch for the file's age
        assert schema.missing_parts(con) == []
        details = queries.run_details(con)
        assert details.run_id.tolist() == ["r1"] and details.cluster_seconds.isna().all()
        assert queries.class_maps(con, ("r1",)).empty and queries.lung_focus_by_run(con).empty


def test_an_older_file_that_cannot_be_written_says_so(tmp_path, monkeypatch):
    # as on a read-only mount: opening it for writing fails (tests run as root, which chmod cannot stop)
    from benchmark.errors import ResultsDatabaseError
    from benchmark.store import connection

    db = tmp_path / "old.duckdb"
    _older_file(db)

    @contextlib.contextmanager
    def read_only_mount(path, **kwargs):
        raise duckdb.IOException(f'IO Error: Cannot open file "{path}": Read-only file system')
        yield

    monkeypatch.setattr(connection, "writer", read_only_mount)
    with pytest.raises(ResultsDatabaseError, match=r"older cxr-audit and lacks cam_class_maps.*Read-only file "
                                                   r"system.*Copy it somewhere writable"):
        with reader(db):
            pass
