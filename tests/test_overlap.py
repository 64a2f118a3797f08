"""Overlap of CPU-side work with the next job: the background store and the in-memory decoded images."""
from __future__ import annotations

import datetime as dt
import threading
import time

import numpy as np
import pandas as pd
import pytest

from benchmark.data.decode import DecodeCache
from benchmark.data.memo import DecodedMemo
from benchmark.data.records import ImageRecord
from benchmark.pipeline.overlap import BackgroundStore
from benchmark.store import reader, write_run
from benchmark.store.writes import RunBundle
from tests.conftest import write_png


def bundle(run_id: str, n_preds: int = 3) -> RunBundle:
    now = dt.datetime.now()
    run = {"run_id": run_id, "model": "shallow", "dataset": "phantom", "pretrained": False, "epochs": 1,
           "device": "cpu", "status": "done", "started_at": now, "finished_at": now, "config_json": "{}", "seed": 0,
           "lungs_only": False}
    preds = pd.DataFrame({"run_id": run_id, "image_id": [f"i{k}" for k in range(n_preds)], "label": 0, "pred": 0,
                          "confidence": 0.5, "probs": "[0.5, 0.5]", "split": "test"})
    return RunBundle(run=run, tables={"predictions": preds})


def test_runs_are_stored_in_order_on_one_thread_while_the_caller_goes_on(tmp_path):
    threads, order, release = set(), [], threading.Event()

    def slow_write(db, b):
        release.wait(5)
        threads.add(threading.get_ident())
        order.append(b.run["run_id"])
        write_run(db, b)

    with BackgroundStore(tmp_path / "r.duckdb", write=slow_write, max_pending=2) as store:
        t0 = time.perf_counter()
        store.submit(bundle("a"))
        store.submit(bundle("b"))
        assert time.perf_counter() - t0 < 1  # the caller did not wait for the (blocked) writes
        assert order == []
        release.set()
    assert order == ["a", "b"] == store.stored
    assert threads and threading.get_ident() not in threads and len(threads) == 1
    with reader(tmp_path / "r.duckdb") as con:
        runs = con.execute("SELECT run_id, status FROM runs ORDER BY run_id").fetchall()
        n = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
    assert runs == [("a", "done"), ("b", "done")] and n == 6


def test_submit_blocks_while_max_pending_bundles_wait(tmp_path):
    release = threading.Event()
    store = BackgroundStore(tmp_path / "r.duckdb", write=lambda db, b: release.wait(5), max_pending=1)
    store.submit(bundle("a"))  # taken by the writer, which blocks
    done = threading.Event()
    threading.Thread(target=lambda: (store.submit(bundle("b")), done.set()), daemon=True).start()
    assert not done.wait(0.3)  # bounded: the second bundle waits for the first
    release.set()
    assert done.wait(5)
    store.close()
    assert store.stored == ["a", "b"]


def test_the_first_write_error_surfaces_and_stops_later_writes(tmp_path):
    def write(db, b):
        if b.run["run_id"] == "bad":
            raise OSError("disk on fire")
        write_run(db, b)

    store = BackgroundStore(tmp_path / "r.duckdb", write=write, max_pending=3)
    store.submit(bundle("ok"))
    store.submit(bundle("bad"))
    store.submit(bundle("later"))
    with pytest.raises(OSError, match="disk on fire"):
        store.close()
    with pytest.raises(OSError, match="disk on fire"):  # again, on each call
        store.close()
    assert store.stored == ["ok"]
    with reader(tmp_path / "r.duckdb") as con:
        assert con.execute("SELECT run_id FROM runs").fetchall() == [("ok",)]
    with pytest.raises(RuntimeError, match="closed"):
        store.submit(bundle("after"))


def test_an_error_is_raised_by_the_next_submit(tmp_path):
    store = BackgroundStore(tmp_path / "r.duckdb", write=lambda db, b: 1 / 0)
    store.submit(bundle("a"))
    with pytest.raises(ZeroDivisionError):
        store.wait()
    with pytest.raises(ZeroDivisionError):
        store.submit(bundle("b"))
    with pytest.raises(ZeroDivisionError):
        store.close()


def test_ctrl_c_in_the_caller_still_stores_what_was_submitted_and_goes_on(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with BackgroundStore(tmp_path / "r.duckdb") as store:
            store.submit(bundle("finished"))
            raise KeyboardInterrupt  # Ctrl-C while the next job computes
    assert store.stored == ["finished"]
    with reader(tmp_path / "r.duckdb") as con:
        assert con.execute("SELECT run_id, status FROM runs").fetchall() == [("finished", "done")]


def test_a_failed_transaction_leaves_no_partial_run(tmp_path):
    """A bundle whose second table cannot be written: the run and its first table are rolled back."""
    bad = bundle("half")
    bad.tables["metrics"] = pd.DataFrame({"no_such_column": [1]})
    with pytest.raises(ValueError, match=r"columns \['no_such_column'\] are not in table metrics"):
        with BackgroundStore(tmp_path / "r.duckdb") as store:
            store.submit(bundle("whole"))
            store.submit(bad)
    with reader(tmp_path / "r.duckdb") as con:
        assert con.execute("SELECT run_id FROM runs").fetchall() == [("whole",)]
        assert con.execute("SELECT DISTINCT run_id FROM predictions").fetchall() == [("whole",)]


# --- decoded images held across the jobs of a grid ---

def test_memo_reads_each_dataset_and_size_once(tmp_path):
    records = [ImageRecord(path=str(write_png(tmp_path / "img" / f"{k}.png", k)), label="a", patient_id=f"p{k}",
                           source="s", dataset="d", split="train") for k in range(4)]
    class NoReads(DecodeCache):
        def load(self, *args, **kwargs):
            raise AssertionError("the memo read the cache again")

    cache = DecodeCache(tmp_path / "cache")
    memo = DecodedMemo()
    first = memo.load(cache, records, 16)
    assert (memo.hits, memo.misses) == (0, 1)
    again = memo.load(NoReads(tmp_path / "cache"), records, 16)
    assert again is first and (memo.hits, memo.misses) == (1, 1)
    np.testing.assert_array_equal(first.decoded.images, cache.load(records, 16).images)
    with pytest.raises(ValueError):
        first.decoded.images[0, 0, 0] = 1  # shared between jobs: read-only
    other = memo.load(cache, records, 24)  # another size is another entry
    assert other.decoded.images.shape == (4, 24, 24) and memo.misses == 2
    memo.load(cache, records[:2], 16)  # another record list too
    assert memo.misses == 3 and len(memo) == 3


def test_memo_is_bounded(tmp_path):
    records = [ImageRecord(path=str(write_png(tmp_path / "a.png", 0)), label="a", patient_id="p", source="s")]
    cache = DecodeCache(tmp_path / "cache")
    memo = DecodedMemo(max_bytes=2 * (32 * 32 * 2 + 1))  # two entries of 32 px (image + mask)
    for size in (32, 32, 32):
        memo.load(cache, records, size)
    assert len(memo) == 1
    memo.load(cache, records, 33)
    memo.load(cache, records, 34)
    assert len(memo) == 1  # each new size pushed out the oldest: 33 px and 34 px do not fit together


def test_prefetch_reads_in_the_background_and_load_takes_its_result(tmp_path):
    records = [ImageRecord(path=str(write_png(tmp_path / f"{k}.png", k)), label="a", patient_id=f"p{k}", source="s")
               for k in range(3)]
    started, release = threading.Event(), threading.Event()

    class SlowCache(DecodeCache):
        def load(self, *args, **kwargs):
            started.set()
            assert threading.current_thread() is not main  # read off the caller's thread
            release.wait(5)
            return super().load(*args, **kwargs)

    main = threading.current_thread()
    memo = DecodedMemo()
    cache = SlowCache(tmp_path / "cache")
    memo.prefetch(cache, records, 16)
    assert started.wait(5)  # reading while the caller goes on
    memo.prefetch(cache, records, 16)  # already coming: not read twice
    release.set()
    entry = memo.load(DecodeCache(tmp_path / "cache"), records, 16)
    assert entry.decoded.images.shape == (3, 16, 16)
    assert memo.load(cache, records, 16) is entry and len(memo) == 1
    memo.close()


def test_a_failed_prefetch_fails_the_load_that_needs_it(tmp_path):
    records = [ImageRecord(path=str(write_png(tmp_path / "a.png", 0)), label="a", patient_id="p", source="s")]

    release = threading.Event()

    class BrokenCache(DecodeCache):
        def load(self, *args, **kwargs):
            release.wait(5)  # still reading when the job asks for it
            raise OSError("cache disk gone")

    memo = DecodedMemo()
    memo.prefetch(BrokenCache(tmp_path / "cache"), records, 16)
    threading.Timer(0.2, release.set).start()
    with pytest.raises(OSError, match="cache disk gone"):
        memo.load(DecodeCache(tmp_path / "cache"), records, 16)
    memo.close()
    assert memo.load(DecodeCache(tmp_path / "cache"), records, 16).decoded.images.shape == (1, 16, 16)  # retried
