"""Views read what they show: the gallery filtered, ordered and paged in SQL gives exactly the rows the
in-memory filter gave; the compare page fetches one image's row and maps and offers a window of images."""
from __future__ import annotations

import itertools

import pandas as pd
import pytest

from benchmark.store import queries, reader
from dashboard import views
from tests import oracles
from tests.fixtures_db import FakeResultsSpec, build_results_db, open_page

DATASET = "phantom-clean"


@pytest.fixture(scope="module")
def results_db(tmp_path_factory):
    return build_results_db(tmp_path_factory.mktemp("sized"), FakeResultsSpec(n_test=30))


@pytest.fixture(scope="module")
def rows(results_db):
    with reader(results_db) as con:
        return oracles.prediction_rows(con, DATASET, "gradcam")


def _filters(rows: pd.DataFrame) -> list[views.GalleryFilter]:
    ages = oracles.age_range(rows)
    lo = ages[0]
    some_runs = tuple(sorted(rows.run_id.unique())[:2])
    return [
        views.GalleryFilter(),
        views.GalleryFilter(only_wrong=False),
        views.GalleryFilter(only_wrong=False, true_classes=("covid",), pred_classes=("covid", "normal")),
        views.GalleryFilter(only_wrong=False, confidence=(0.8, 1.0)),
        views.GalleryFilter(only_wrong=False, lung_mass=(0.0, 0.3)),
        views.GalleryFilter(lung_mass=(0.2, 0.9), run_ids=some_runs),
        views.GalleryFilter(only_wrong=False, sources=("cohen",), sexes=("F",), views=("AP",)),
        views.GalleryFilter(only_wrong=False, age=ages, age_full_range=ages),  # full range keeps unknown ages
        views.GalleryFilter(only_wrong=False, age=(lo, lo + 10), age_full_range=ages),
        views.GalleryFilter(run_ids=("no-such-run",)),
    ]


def _key(df: pd.DataFrame) -> list[tuple]:
    return list(zip(df.run_id, df.image_id))


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_sql_gallery_matches_the_in_memory_filter_order_and_pages(results_db, rows):
    with reader(results_db) as con:
        for flt, order in itertools.product(_filters(rows), views.GALLERY_ORDERS):
            expected = oracles.sort_gallery(oracles.filter_predictions(rows, flt), order)
            wanted = views.gallery_query(flt, order)
            assert queries.gallery_count(con, DATASET, "gradcam", **wanted["filters"]) == len(expected), (flt, order)
            everything = queries.gallery_page(con, DATASET, "gradcam", limit=None, **wanted["order"],
                                              **wanted["filters"])
            assert _key(everything) == _key(expected), (flt, order)
            for page in (1, 2, 3):
                want, _ = oracles.page_of(expected, page, 12)
                if page > 1 and len(expected) <= 12 * (page - 1):
                    want = expected.iloc[0:0]
                got = queries.gallery_page(con, DATASET, "gradcam", limit=12, offset=12 * (page - 1),
                                           **wanted["order"], **wanted["filters"])
                assert _key(got) == _key(want), (flt, order, page)
                cols = ["confidence", "lung_mass", "pointing_hit", "label", "pred", "model", "path", "age"]
                pd.testing.assert_frame_equal(got[cols].reset_index(drop=True), want[cols].reset_index(drop=True),
                                              check_dtype=False)


def test_gallery_page_refuses_an_unknown_order(results_db):
    with reader(results_db) as con, pytest.raises(ValueError, match="unknown gallery order"):
        queries.gallery_page(con, DATASET, "gradcam", order="path; DROP TABLE runs")


def test_gallery_facets_are_what_the_filters_offered(results_db, rows):
    with reader(results_db) as con:
        facets = queries.gallery_facets(con, DATASET)
    assert facets["n_rows"] == len(rows) and facets["n_wrong"] == int((rows.label != rows.pred).sum())
    assert facets["n_runs"] == rows.run_id.nunique()
    assert facets["runs"] == list(rows.drop_duplicates("run_id")[["run_id", "model"]].itertuples(index=False,
                                                                                                  name=None))
    assert facets["classes"] == sorted(set(rows.label) | set(rows.pred))
    for col in ("source", "view", "sex"):
        assert facets[col] == oracles.known_values(rows, col)
    assert views.slider_range(facets["age"]) == oracles.age_range(rows)


def test_compare_reads_one_image(results_db):
    with reader(results_db) as con:
        full = queries.predicted_images(con, DATASET)
        listed = queries.image_list(con, DATASET)
        assert listed.image_id.tolist() == full.image_id.tolist()
        assert listed.columns.tolist() == ["image_id", "label", "source"]
        image_id = full.image_id.iloc[3]
        row = queries.image_row(con, image_id).iloc[0]
        assert row.path == full.set_index("image_id").at[image_id, "path"]
        runs = tuple(queries.image_predictions(con, image_id).run_id[:2])
        cams = queries.run_image_cams(con, image_id, runs, "gradcam")
        every = oracles.image_cams(con, image_id, "gradcam")
        assert sorted(cams.run_id) == sorted(runs)
        pd.testing.assert_frame_equal(cams.reset_index(drop=True),
                                      every[every.run_id.isin(runs)].reset_index(drop=True))
        assert sorted(queries.run_image_cams(con, image_id, runs[:1]).method) == ["cam", "gradcam"]
        assert queries.run_image_cams(con, image_id, ()).empty


def test_window_holds_the_position_and_stays_inside():
    for n, size in ((5, 200), (1000, 200), (201, 200), (1, 1)):
        for position in {p for p in (0, 1, n // 2, n - 2, n - 1) if 0 <= p < n}:
            w = views.window(n, position, size)
            assert w.start <= position < w.stop and 0 <= w.start and w.stop <= n
            assert w.stop - w.start == min(n, size)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_compare_picker_offers_a_window_but_steps_through_every_image(tmp_path, monkeypatch):
    db = build_results_db(tmp_path, FakeResultsSpec(datasets=("big",), models=("shallow",), n_test=230, n_train=0,
                                                    compute_focus=False, with_failed_run=False, image_size=32))
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    at = open_page("pages/compare.py")
    assert not at.exception
    box = at.selectbox(key="cmp_image")
    assert len(box.options) == 200 and "(230)" in box.label
    for _ in range(3):  # backwards from the first image wraps to the end of the list, outside the first window
        at.button(key="cmp_prev").click().run()
    with reader(db) as con:
        ids = queries.image_list(con, "big").image_id.tolist()
    assert at.selectbox(key="cmp_image").value == ids[-3]
    assert not at.exception and ids[-3] in [o.split(" · ")[-1] for o in at.selectbox(key="cmp_image").options]
