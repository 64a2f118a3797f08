"""Performance page: ROC with bands, confusion matrices, calibration with its ECE and the per-source
table of a run or seed group, checked against the stored predictions; every table's CSV and
Parquet download parses back to the table shown; the leaderboard's and Compare's downloads."""
from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest
import streamlit.testing.v1.app_test as app_test_module
from streamlit.runtime.media_file_manager import MediaFileManager

from benchmark.store import reader, replace_run_tables
from dashboard import render
from tests.fixtures_db import FakeResultsSpec, build_results_db, open_page, texts

PAGE = "pages/performance.py"
CLASSES = FakeResultsSpec().classes
RUN = "phantom-shortcut-resnet18-s0"
TABLES = ("perf_auc", "perf_points", "perf_confusion", "perf_calibration", "perf_sources")


@pytest.fixture(scope="module")
def results_db(tmp_path_factory):
    db = build_results_db(tmp_path_factory.mktemp("perf"), FakeResultsSpec(
        models=("shallow", "resnet18"), seeds=(0, 1), n_test=24, methods=("gradcam",), with_failed_run=False))
    # an external validation of one run: its predictions on the other dataset's test images
    with reader(db) as con:
        other = con.execute("SELECT image_id, label FROM images WHERE dataset = 'phantom-clean' AND split = 'test' "
                            "ORDER BY image_id").df()
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(3), len(other))
    external = other.assign(split="external:phantom-clean", pred=[CLASSES[k] for k in probs.argmax(1)],
                            confidence=probs.max(1), probs=[list(map(float, p)) for p in probs])
    replace_run_tables(db, RUN, {"predictions": (external, {"split": "external:phantom-clean"})})
    return db


class _Recording(MediaFileManager):
    """The AppTest's media manager, kept after the run so a test can click a deferred download."""

    last = None

    def __init__(self, storage):
        super().__init__(storage)
        _Recording.last = self


@pytest.fixture
def media(monkeypatch):
    monkeypatch.setattr(app_test_module, "MediaFileManager", _Recording)
    return _Recording


def _download(media, at, key: str) -> bytes:
    """The bytes the user gets on clicking the download button `key` (its deferred callable run)."""
    button = next(b for b in at.get("download_button") if b.key == key)
    url = media.last.execute_deferred(button.proto.deferred_file_id)
    return media.last.read_file(url.rsplit("/", 1)[-1]).content


def _charts(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def _stored(db, run_ids, split="test") -> pd.DataFrame:
    with reader(db) as con:
        return con.execute("SELECT run_id, label, probs FROM predictions WHERE split = ? AND list_contains(?, run_id) "
                           "ORDER BY run_id, image_id", [split, list(run_ids)]).df()


def _ece_by_hand(conf: np.ndarray, correct: np.ndarray, n_bins: int = 10) -> float:
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (conf > lo) & (conf <= hi) if b else (conf <= hi)
        if inside.any():
            total += inside.sum() / conf.size * abs(correct[inside].mean() - conf[inside].mean())
    return total


def _open_run(run_id: str, dataset: str = "phantom-shortcut"):
    at = open_page(PAGE)
    at.selectbox(key="perf_dataset").set_value(dataset).run()
    at.selectbox(key="perf_run").set_value(run_id).run()
    assert not at.exception, at.exception
    return at


def test_page_shows_roc_confusion_and_calibration_of_one_run(app_env):
    at = _open_run(RUN)
    stored = _stored(app_env, [RUN])
    labels = stored.label.map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    probs = np.stack(stored.probs.map(np.asarray))
    roc, counts, shares, calibration = _charts(at)
    names = [t.get("name") for t in roc["data"]]
    assert "chance" in names
    for cls in CLASSES:
        assert any(n.startswith(f"{cls} (AUC ") for n in names) and f"{cls} 95% band" in names
    expected = np.zeros((3, 3), int)
    np.add.at(expected, (labels, probs.argmax(1)), 1)
    assert np.array(counts["data"][0]["z"]).tolist() == expected.tolist()
    assert np.array(shares["data"][0]["z"], float) == pytest.approx(expected / expected.sum(1, keepdims=True))
    ece = _ece_by_hand(probs.max(1), probs.argmax(1) == labels)
    assert f"ECE {ece:.3f}" in calibration["layout"]["title"]["text"]
    assert {t["name"] for t in calibration["data"]} == {"images", "accuracy", "mean confidence",
                                                         "perfect calibration"}
    assert at.metric[0].label == "ECE" and at.metric[0].value == f"{ece:.3f}"
    keys = {b.key for b in at.get("download_button")}
    assert {f"{table}_{fmt}" for table in TABLES for fmt in ("csv", "parquet")} <= keys
    # external predictions are a second choice of split, with their own per-source rows
    assert at.radio(key="perf_split").options == ["test split", "external: phantom-clean"]
    sources = at.dataframe[-1].value
    assert set(sources.split) == {"test", "external:phantom-clean"}
    test_rows = sources[sources.split == "test"]
    assert test_rows.n_images.sum() == 24
    at.radio(key="perf_split").set_value("external:phantom-clean").run()
    ext = _stored(app_env, [RUN], "external:phantom-clean")
    ext_probs = np.stack(ext.probs.map(np.asarray))
    ext_labels = ext.label.map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    ece = _ece_by_hand(ext_probs.max(1), ext_probs.argmax(1) == ext_labels)
    assert at.metric[0].value == f"{ece:.3f}"


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_seed_group_is_pooled(app_env):
    at = open_page(PAGE)
    at.selectbox(key="perf_dataset").set_value("phantom-shortcut").run()
    group = "group:phantom-shortcut-shallow-s0"
    assert "shallow · 2 seeds (0, 1), pooled" in at.selectbox(key="perf_run").options
    at.selectbox(key="perf_run").set_value(group).run()
    assert not at.exception
    runs = ["phantom-shortcut-shallow-s0", "phantom-shortcut-shallow-s1"]
    stored = _stored(app_env, runs)
    labels = stored.label.map({c: i for i, c in enumerate(CLASSES)}).to_numpy()
    probs = np.stack(stored.probs.map(np.asarray))
    _, counts, _, calibration = _charts(at)
    assert np.array(counts["data"][0]["z"]).sum() == 48  # both seeds' 24 predictions
    ece = _ece_by_hand(probs.max(1), probs.argmax(1) == labels)
    assert f"ECE {ece:.3f}" in calibration["layout"]["title"]["text"]
    assert "ECE per seed" in texts(at) and "over 2 seeds" in texts(at)
    sources = at.dataframe[-1].value
    assert (sources.n_seeds == 2).all()


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_downloads_parse_back_to_the_tables_shown(app_env, media):
    at = _open_run(RUN)
    shown = [d.value for d in at.dataframe]
    assert len(shown) == len(TABLES)
    for table, frame in zip(TABLES, shown):
        csv = pd.read_csv(io.BytesIO(_download(media, at, f"{table}_csv")))
        parquet = pd.read_parquet(io.BytesIO(_download(media, at, f"{table}_parquet")))
        frame = frame.reset_index(drop=True)
        pd.testing.assert_frame_equal(parquet, frame, check_dtype=False, check_index_type=False)
        pd.testing.assert_frame_equal(csv, frame, check_dtype=False, check_index_type=False)
    assert len(shown[0]) == 3 and set(shown[0].class_name) == set(CLASSES)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_leaderboard_and_misclassification_tables_download(app_env, media):
    at = open_page()
    board = at.dataframe[0].value.reset_index(drop=True)
    parquet = pd.read_parquet(io.BytesIO(_download(media, at, "lb_table_parquet")))
    assert parquet.run_id.tolist() == board.run_id.tolist()
    assert parquet.accuracy.to_numpy() == pytest.approx(board.accuracy.to_numpy())
    csv = pd.read_csv(io.BytesIO(_download(media, at, "lb_probes_csv")))
    shown = next(d.value for d in at.dataframe if "probe" in d.value.columns)
    assert csv.probe.tolist() == shown.probe.tolist() and csv["accuracy"].to_numpy() == pytest.approx(
        shown["accuracy"].to_numpy())
    at = open_page("pages/misclassifications.py")
    shown = int(next(m.value for m in at.markdown if m.value.endswith("models)")).split("**")[1])
    for fmt, read in (("csv", pd.read_csv), ("parquet", pd.read_parquet)):
        rows = read(io.BytesIO(_download(media, at, f"mis_export_{fmt}")))
        assert len(rows) == shown and (rows.label != rows.pred).all()


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_compare_offers_the_comparison_as_png(app_env, media):
    from PIL import Image

    at = open_page("pages/compare.py")
    assert not at.exception
    png = Image.open(io.BytesIO(_download(media, at, "cmp_png")))
    tiles = 1 + at.slider(key="cmp_k").value  # the X-ray, then the top k models' overlays, in one row
    assert png.format == "PNG" and png.width == tiles * (render.TILE_MIN_SIDE + 10) + 10
    assert png.height > render.TILE_MIN_SIDE
    pixels = np.asarray(png.convert("RGB"))
    step = render.TILE_MIN_SIDE + 10
    for i in range(tiles):  # every tile holds its picture (the X-rays are dark, the sheet white)
        band = pixels[:, 10 + i * step: 10 + i * step + render.TILE_MIN_SIDE]
        assert (band < 240).any(axis=2).mean() > 0.4, i
