"""Patterns page: class-mean maps and clusters of CAMs, read from the stored summaries only.

The fake DB's covid images carry the corner marker (tests/fixtures_db.py); a model that does not
look at the lungs (resnet18 there) reads it, so its clusters are flagged and a lung-reading model's
(shallow) are not.
"""
from __future__ import annotations

import pytest

from benchmark.store import queries, reader
from tests.fixtures_db import FakeResultsSpec, build_results_db, open_page, texts

PAGE = "pages/patterns.py"
pytestmark = pytest.mark.slow  # each test runs the app (seconds): the fast tier keeps to quick tests


@pytest.fixture(scope="module")
def results_db(tmp_path_factory):
    return build_results_db(tmp_path_factory.mktemp("patterns"), FakeResultsSpec(
        models=("shallow", "resnet18"), n_test=24, methods=("gradcam", "hirescam@stride16"), with_failed_run=False,
        with_patterns=True))


def _pick(at, key: str, value) -> None:
    box = at.selectbox(key=key)
    box.set_value(value)


def test_the_page_shows_class_maps_and_flags_the_marker_reader(app_env):
    with reader(app_env) as con:
        index = queries.pattern_index(con)
        clusters = queries.cam_clusters(con, tuple(index.run_id.unique()))
    assert set(index.method) == {"gradcam", "hirescam@stride16"} and set(index.split) == {"test"}
    flagged = clusters[clusters.flagged]
    assert set(flagged.model) == {"resnet18"}  # the marker reader, and only it

    at = open_page(PAGE)
    assert not at.exception
    assert "Patterns" in texts(at)
    _pick(at, "pat_dataset", "phantom-shortcut")
    at.run()
    _pick(at, "pat_run", "phantom-shortcut-resnet18")
    at.run()
    assert not at.exception
    shown = texts(at)
    assert "Class-mean maps" in shown and "predicted covid" in shown
    assert "flagged" in shown.replace("0 flagged", "")
    n_maps = queries_count(app_env, "phantom-shortcut-resnet18", at.selectbox(key="pat_method").value)
    assert len(at.image) >= n_maps  # every class-mean and cluster map, plus the nearest images

    _pick(at, "pat_run", "phantom-shortcut-shallow")
    at.run()
    assert not at.exception and ":red[**flagged**" not in "\n".join(str(m.value) for m in at.markdown)


def queries_count(db, run_id: str, method: str) -> int:
    with reader(db) as con:
        return len(queries.class_maps(con, (run_id,), "test", method)) + len(
            queries.cam_clusters(con, (run_id,), "test", method))


def test_a_click_on_a_nearest_image_opens_it_in_compare(app_env):
    at = open_page(PAGE)
    _pick(at, "pat_dataset", "phantom-shortcut")
    at.run()
    _pick(at, "pat_run", "phantom-shortcut-resnet18")
    at.run()
    button = next(b for b in at.button if b.key.startswith("pat_open_phantom-shortcut-resnet18"))
    image_id = button.key.rsplit("_", 1)[1]
    button.click().run()
    assert not at.exception
    assert at.query_params.get("image") == image_id and at.query_params.get("run") == "phantom-shortcut-resnet18"


def test_a_results_file_without_patterns_says_how_to_make_them(tmp_path, monkeypatch):
    db = build_results_db(tmp_path, FakeResultsSpec(models=("shallow",), n_test=6, methods=("gradcam",),
                                                     with_failed_run=False))
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    at = open_page(PAGE)
    assert not at.exception
    assert "cams --clusters" in texts(at)
