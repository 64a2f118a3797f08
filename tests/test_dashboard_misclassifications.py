"""Misclassification gallery: every filter changes what is shown, pages, CSV export, open in Compare."""
from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from benchmark.store import queries, reader
from dashboard import views
from tests import oracles
from tests.fixtures_db import FakeResultsSpec, build_results_db, open_page, texts

PAGE = "pages/misclassifications.py"


@pytest.fixture(scope="module")
def results_db(tmp_path_factory):
    return build_results_db(tmp_path_factory.mktemp("mis"), FakeResultsSpec(n_test=30))


@pytest.fixture(scope="module")
def rows(results_db):
    with reader(results_db) as con:
        return oracles.prediction_rows(con, "phantom-clean", "gradcam")


def _count(at) -> int:
    line = next(m.value for m in at.markdown if m.value.endswith("models)"))
    return int(line.split("**")[1])


def _cards(at) -> int:
    return len([b for b in at.button if b.key and b.key.startswith("mis_open_")])


def test_gallery_shows_the_misclassified_predictions(app_env, rows):
    at = open_page(PAGE)
    assert not at.exception
    wrong = int((rows.label != rows.pred).sum())
    assert _count(at) == wrong
    assert _cards(at) == min(12, wrong) and len(at.image) == _cards(at)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_filters_change_what_is_shown(app_env, rows):
    at = open_page(PAGE)
    at.toggle(key="mis_only_wrong").set_value(False).run()
    assert _count(at) == len(rows)
    at.multiselect(key="mis_true").set_value(["covid"]).run()
    assert _count(at) == int((rows.label == "covid").sum())
    at.multiselect(key="mis_pred").set_value(["covid"]).run()
    assert _count(at) == int(((rows.label == "covid") & (rows.pred == "covid")).sum())
    at.multiselect(key="mis_pred").set_value([]).run()
    at.multiselect(key="mis_true").set_value([]).run()
    at.slider(key="mis_conf").set_value((0.8, 1.0)).run()
    assert _count(at) == int(rows.confidence.between(0.8, 1.0).sum())
    at.slider(key="mis_conf").set_value((0.0, 1.0)).run()
    at.slider(key="mis_lung_mass").set_value((0.0, 0.3)).run()
    assert _count(at) == int(rows.lung_mass.between(0.0, 0.3).sum())
    at.slider(key="mis_lung_mass").set_value((0.0, 1.0)).run()
    resnet = "phantom-clean-resnet18"
    at.multiselect(key="mis_runs").set_value([resnet]).run()
    assert _count(at) == int((rows.run_id == resnet).sum())
    at.multiselect(key="mis_runs").set_value([]).run()
    at.multiselect(key="mis_source").set_value(["cohen"]).run()
    assert _count(at) == int((rows.source == "cohen").sum())
    at.multiselect(key="mis_sex").set_value(["F"]).run()
    assert _count(at) == int(((rows.source == "cohen") & (rows.sex == "F")).sum())
    at.multiselect(key="mis_view").set_value(["AP"]).run()
    assert _count(at) == int(((rows.source == "cohen") & (rows.sex == "F") & (rows.view == "AP")).sum())
    lo = float(np.floor(rows.age.min()))
    at.slider(key="mis_age").set_value((lo, lo + 10)).run()
    expected = rows[(rows.source == "cohen") & (rows.sex == "F") & (rows.view == "AP") & rows.age.between(lo, lo + 10)]
    assert _count(at) == len(expected)
    assert not at.exception


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_pagination(app_env, rows):
    at = open_page(PAGE)
    at.toggle(key="mis_only_wrong").set_value(False).run()
    assert _cards(at) == 12
    n_pages = -(-len(rows) // 12)
    at.number_input(key="mis_page").set_value(n_pages).run()
    assert _cards(at) == len(rows) - 12 * (n_pages - 1)
    at.selectbox(key="mis_page_size").set_value(48).run()
    assert _cards(at) == min(48, len(rows))


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_csv_export_holds_the_filtered_rows(app_env, rows):
    at = open_page(PAGE)
    at.multiselect(key="mis_true").set_value(["pneumonia"]).run()
    picked = oracles.filter_predictions(rows, views.GalleryFilter(true_classes=("pneumonia",)))
    exported = pd.read_csv(io.BytesIO(oracles.export_csv(picked)))
    assert len(exported) == _count(at) and set(exported.label) <= {"pneumonia"}
    assert (exported.label != exported.pred).all()
    assert {"run_id", "image_id", "confidence", "lung_mass"} <= set(exported.columns)
    assert at.get("download_button"), "the export button is on the page"


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_click_opens_the_image_in_compare(app_env):
    at = open_page(PAGE)
    card = next(b for b in at.button if b.key and b.key.startswith("mis_open_"))
    run_id, image_id = card.key[len("mis_open_"):].split("_", 1)
    card.click().run()
    assert not at.exception
    assert at.selectbox(key="cmp_image").value == image_id
    assert at.selectbox(key="cmp_run").value == run_id
    assert "Compare" in texts(at)


def test_filter_keeps_rows_without_a_value_only_on_the_full_range():
    rows = pd.DataFrame({"run_id": ["a", "a", "b"], "label": ["x", "x", "y"], "pred": ["y", "y", "x"],
                         "confidence": [0.9, 0.5, 0.7], "lung_mass": [0.2, np.nan, 0.8],
                         "source": ["s", "s", "t"], "view": ["", "", ""], "sex": ["", "", ""],
                         "age": [np.nan, 40.0, 60.0]})
    assert len(oracles.filter_predictions(rows, views.GalleryFilter())) == 3
    assert oracles.filter_predictions(rows, views.GalleryFilter(lung_mass=(0.0, 0.5))).confidence.tolist() == [0.9]
    full = (40.0, 60.0)
    assert len(oracles.filter_predictions(rows, views.GalleryFilter(age=full, age_full_range=full))) == 3
    assert len(oracles.filter_predictions(rows, views.GalleryFilter(age=(50.0, 60.0), age_full_range=full))) == 1
    assert oracles.known_values(rows, "view") == [] and oracles.known_values(rows, "source") == ["s", "t"]
    page, n_pages = oracles.page_of(rows, 5, 2)
    assert n_pages == 2 and len(page) == 1


def test_external_predictions_stay_out_of_the_gallery(tmp_path):
    """`benchmark evaluate` stores predictions on another dataset as split external:<ds>."""
    from benchmark.store import write_run
    from benchmark.store.writes import RunBundle

    db = tmp_path / "r.duckdb"
    images = pd.DataFrame({"image_id": ["a1", "b1"], "dataset": ["A", "B"], "label": ["x", "x"],
                           "split": ["test", "external"]})
    preds = pd.DataFrame({"image_id": ["a1", "b1"], "split": ["test", "external:B"], "label": ["x", "x"],
                          "pred": ["y", "y"], "confidence": [0.9, 0.8], "probs": [[0.1, 0.9]] * 2})
    write_run(db, RunBundle(run={"run_id": "r", "model": "m", "dataset": "A", "pretrained": False,
                                 "status": "done"}, tables={"predictions": preds}, images=images))
    with reader(db) as con:
        assert oracles.prediction_rows(con, "A", None).image_id.tolist() == ["a1"]
        assert queries.image_predictions(con, "b1").empty
        assert queries.predicted_images(con, "B").empty
        assert queries.image_predictions(con, "b1", split="external:B").pred.tolist() == ["y"]
