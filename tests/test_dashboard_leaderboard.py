"""Leaderboard page: accuracy beside lung focus, probes, the uniform-map baseline, and the store reads."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from benchmark.store import queries, reader
from dashboard import images, views
from tests.fixtures_db import FakeResultsSpec, build_results_db, lung_mask, open_page, texts

PAGE = None  # the leaderboard is the default page


@pytest.fixture(scope="module")
def results_db(tmp_path_factory):
    return build_results_db(tmp_path_factory.mktemp("lb"))


def _board(at):
    return at.dataframe[0].value  # AppTest keeps no key on dataframes: the leaderboard is the first


def test_leaderboard_shows_every_done_run_and_no_failed_one(app_env):
    at = open_page()
    assert not at.exception
    board = _board(at)
    assert len(board) == 6  # 2 datasets x 3 models; the failed runs (accuracy 0.99) stay out
    assert not board.run_id.str.contains("failed").any()
    assert board.accuracy.is_monotonic_decreasing
    assert at.get("plotly_chart"), "the accuracy / lung-focus scatter is drawn"
    with reader(app_env) as con:
        acc = con.execute("SELECT value FROM metrics WHERE run_id = 'phantom-shortcut-resnet18' "
                          "AND metric = 'accuracy' AND split = 'test'").fetchone()[0]
        mass = con.execute("SELECT avg(lung_mass) FROM cams WHERE run_id = 'phantom-shortcut-resnet18' "
                           "AND method = 'gradcam'").fetchone()[0]
        scored = con.execute("SELECT count(lung_mass) FROM cams WHERE run_id = 'phantom-shortcut-resnet18' "
                             "AND method = 'gradcam' AND target_kind = 'pred' AND split = 'test'").fetchone()[0]
    row = board[board.run_id == "phantom-shortcut-resnet18"].iloc[0]
    assert row.accuracy == pytest.approx(acc) and row.lung_mass == pytest.approx(mass)
    assert row.n_scored == scored > 0 and "n_scored" in at.dataframe[0].proto.column_order  # what the mean rests on


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_filters_change_the_table(app_env):
    at = open_page()
    at.multiselect(key="lb_datasets").set_value(["phantom-clean"]).run()
    assert set(_board(at).dataset) == {"phantom-clean"} and len(_board(at)) == 3

    gradcam = _board(at).set_index("run_id").lung_mass
    at.selectbox(key="lb_method").set_value("cam").run()
    cam = _board(at).set_index("run_id").lung_mass
    assert not np.allclose(gradcam.sort_index(), cam.sort_index())

    at.selectbox(key="lb_sort").set_value("lung mass (low first)").run()
    assert _board(at).lung_mass.is_monotonic_increasing

    at.selectbox(key="lb_class").set_value("covid").run()
    board = _board(at)
    assert board.sensitivity_ci.str.startswith("[").all(), "one class: sensitivity with its CI"
    with reader(app_env) as con:
        sens = con.execute("SELECT value FROM metrics WHERE run_id = 'phantom-clean-shallow' AND "
                           "metric = 'sensitivity' AND class_name = 'covid'").fetchone()[0]
    assert board.set_index("run_id").at["phantom-clean-shallow", "sensitivity"] == pytest.approx(sens)
    assert not at.exception


def test_probes_and_external_drop(app_env):
    at = open_page()
    board = _board(at).set_index("run_id")
    # the fixture's shortcut model keeps its accuracy without lungs; the lung model falls to chance
    assert board.at["phantom-shortcut-resnet18", "lungs_removed_acc"] > 0.9
    assert board.at["phantom-shortcut-shallow", "lungs_removed_acc"] < 0.4
    # the drop is measured against the intact accuracy on the same images (the 'intact' probe)
    with reader(app_env) as con:
        intact, removed = (con.execute("SELECT value FROM probes WHERE run_id = 'phantom-shortcut-shallow' "
                                       "AND probe = ?", [p]).fetchone()[0] for p in ("intact", "lungs_removed"))
    assert board.at["phantom-shortcut-shallow", "lungs_removed_drop"] == pytest.approx(intact - removed)
    marker = board["marker_mass"]
    assert marker["phantom-shortcut-resnet18"] > 0.3 > marker["phantom-shortcut-shallow"]
    assert board.at["phantom-shortcut-resnet18", "external_dataset"] == "phantom-clean"
    ext = board.at["phantom-shortcut-resnet18", "external_drop"]
    assert ext == pytest.approx(board.at["phantom-shortcut-resnet18", "accuracy"]
                                - board.at["phantom-shortcut-resnet18", "external_acc"])
    probes = at.dataframe[1].value
    assert set(probes.probe) >= {"intact", "lungs_removed", "lungs_only", "external:phantom-clean"}
    ext_row = probes[(probes.model == "resnet18") & (probes.probe == "external:phantom-clean")].iloc[0]
    assert ext_row.reference == pytest.approx(board.at["phantom-shortcut-resnet18", "accuracy"])


def test_uniform_baseline_is_the_lungs_share_of_the_masks(app_env):
    expected = float(lung_mask(FakeResultsSpec().image_size).mean())
    at = open_page()
    board = _board(at)
    assert board.uniform_baseline.to_numpy() == pytest.approx(expected)
    assert f"{expected:.3f}" in texts(at)
    with reader(app_env) as con:
        paths = list(queries.mask_paths(con, "phantom-clean").mask_path)
    share, n = images.lung_share(paths)
    assert share == pytest.approx(expected) and n == FakeResultsSpec().n_test


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_no_database_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_RESULTS_DB", str(tmp_path / "none.duckdb"))
    for page in (None, "pages/compare.py", "pages/misclassifications.py"):
        at = open_page(page)
        assert not at.exception
        assert "python -m benchmark run --db" in texts(at)


def test_db_without_done_runs(tmp_path, monkeypatch):
    db = build_results_db(tmp_path, FakeResultsSpec(datasets=("d",), models=(), with_probes=False))
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    at = open_page()
    assert not at.exception and "no finished runs" in texts(at)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_locked_database_keeps_showing_last_results(tmp_path, monkeypatch):
    """A benchmark writer holds the file: the page shows what it read before, and says so."""
    db = build_results_db(tmp_path, FakeResultsSpec(datasets=("d1",), models=("shallow", "resnet18")))
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    monkeypatch.setenv("CXR_DB_LOCK_WAIT_S", "0.3")
    at = open_page()
    assert len(_board(at)) == 2
    script = textwrap.dedent(f"""
        import duckdb, time
        con = duckdb.connect({str(db)!r})
        con.execute("CREATE TABLE scratch AS SELECT 1 AS x")  # a write: the file's stamp changes
        con.execute("CHECKPOINT")
        print("locked", flush=True)
        time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        at.run()
        assert not at.exception
        assert len(_board(at)) == 2
        assert "writing to the results database" in texts(at)
        fresh = open_page("pages/misclassifications.py")  # never read before: nothing to fall back on
        assert not fresh.exception
        assert "writing to the results database" in texts(fresh)
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_views_leaderboard_mean_over_classes_has_no_ci(results_db):
    with reader(results_db) as con:
        summary, cm = queries.summary(con), queries.class_metrics(con)
        focus, probes = queries.lung_focus_by_run(con), queries.probe_results(con)
    board = views.leaderboard(summary, cm, focus, probes, "gradcam")
    assert board.sensitivity_ci_low.isna().all()
    expected = cm[(cm.run_id == "phantom-clean-resnet18") & (cm.metric == "sensitivity")].value.mean()
    assert board.set_index("run_id").at["phantom-clean-resnet18", "sensitivity"] == pytest.approx(expected)
    assert board.auc.tolist() == pytest.approx(board.macro_auc.tolist())
    assert views.leaderboard(summary.iloc[0:0], cm, focus, probes, "gradcam").empty


def test_queries_external_metrics_split_becomes_a_probe_row(tmp_path):
    """External validation stored as a metrics split (docs/ARCHITECTURE.md) shows like a probe."""
    import pandas as pd

    from benchmark.store import write_run
    from benchmark.store.writes import RunBundle

    db = tmp_path / "r.duckdb"
    metrics = pd.DataFrame([
        {"split": "test", "metric": "accuracy", "class_name": "", "value": 0.9, "ci_low": 0.8, "ci_high": 1.0},
        {"split": "external:other", "metric": "accuracy", "class_name": "", "value": 0.5, "ci_low": 0.4,
         "ci_high": 0.6}])
    write_run(db, RunBundle(run={"run_id": "r", "model": "m", "dataset": "d", "pretrained": False,
                                 "status": "done"}, tables={"metrics": metrics}))
    with reader(db) as con:
        probes = queries.probe_results(con)
        summary = queries.summary(con)
    assert probes.probe.tolist() == ["external:other"] and probes.value.tolist() == [0.5]
    drop = views.probe_summary(probes, summary).iloc[0]
    assert drop.external_drop == pytest.approx(0.4) and drop.external_dataset == "other"


def test_scatter_has_one_point_per_run_and_the_baselines(results_db):
    from dashboard import render

    with reader(results_db) as con:
        board = views.leaderboard(queries.summary(con), queries.class_metrics(con), queries.lung_focus_by_run(con),
                                  queries.probe_results(con), "gradcam")
    fig = render.accuracy_focus_scatter(board, {"phantom-clean": 0.25, "phantom-shortcut": 0.25})
    points = [(x, y) for tr in fig.data for x, y in zip(tr.x, tr.y)]
    assert len(points) == len(board) == 6
    assert sorted(points) == sorted(zip(board.lung_mass, board.accuracy))
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert [ln.x0 for ln in lines] == [0.25]  # equal baselines share one line
    fig = render.accuracy_focus_scatter(board, {"phantom-clean": 0.2, "phantom-shortcut": 0.3, "absent": 0.5})
    assert sorted(s.x0 for s in fig.layout.shapes if s.type == "line") == [0.2, 0.3]


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_pages_open_on_the_audits_fine_map_when_it_is_stored(tmp_path, monkeypatch):
    assert views.preferred_method_index(["cam", "gradcam", "hirescam@stride16"]) == 2
    assert views.preferred_method_index(["cam", "gradcam"]) == 1
    assert views.preferred_method_index(["eigencam"]) == 0
    db = build_results_db(tmp_path, FakeResultsSpec(methods=("gradcam", "hirescam@stride16"), n_test=4,
                                                    models=("shallow",), with_failed_run=False))
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    at = open_page(PAGE)
    assert not at.exception
    assert at.selectbox(key="lb_method").value == "hirescam@stride16"


# ----------------------------------------------------------------------------- seeds, costs, report

@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_seed_groups_show_mean_and_sd_over_seeds(tmp_path, monkeypatch):
    from tests.fixtures_db import phase_seconds

    db = build_results_db(tmp_path, FakeResultsSpec(datasets=("d1",), models=("shallow", "resnet18"), seeds=(0, 1, 2),
                                                    n_test=6, methods=("gradcam",), with_failed_run=False))
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    at = open_page()
    assert not at.exception
    assert at.toggle(key="lb_seed_groups").value is True  # several seeds: one row per group by default
    board = _board(at).set_index("model")
    assert len(board) == 2 and board.n_seeds.tolist() == [3, 3]
    with reader(db) as con:
        acc = con.execute("SELECT value, ci_low FROM metrics WHERE run_id LIKE 'd1-shallow-s%' AND split = 'test' "
                          "AND metric = 'accuracy' AND class_name = '' ORDER BY run_id").fetchall()
    values, lows = [a for a, _ in acc], [lo for _, lo in acc]
    shallow = board.loc["shallow"]
    assert shallow.accuracy == pytest.approx(np.mean(values))
    assert shallow.accuracy_sd == pytest.approx(np.std(values, ddof=1))
    assert shallow.accuracy_ci_low == pytest.approx(np.mean(lows))  # the mean of the per-seed bounds
    assert shallow.run_id == "d1-shallow-s0, d1-shallow-s1, d1-shallow-s2"
    assert "mean of the per-seed bootstrap CI bounds" in texts(at)

    costs = at.dataframe[-1].value.set_index("run_id")  # the cost-per-phase expander, last on the page
    assert len(costs) == 6
    for seed in (0, 1, 2):
        expected = phase_seconds(1, seed)["train_seconds"]
        assert costs.at[f"d1-resnet18-s{seed}", "train_seconds"] == pytest.approx(expected)

    at.toggle(key="lb_seed_groups").set_value(False).run()
    assert not at.exception
    assert len(_board(at)) == 6 and "n_seeds" not in _board(at)


def test_one_seed_per_run_shows_no_seed_toggle(app_env):
    at = open_page()
    assert not at.exception
    assert "lb_seed_groups" not in [t.key for t in at.toggle]
    assert len(at.dataframe[-1].value) == 6  # phase costs of every done run


@pytest.mark.slow  # builds a whole report (seconds)
def test_leaderboard_offers_the_report_download(app_env, monkeypatch):
    from benchmark.report import build
    from dashboard import cache

    at = open_page()
    button = at.download_button(key="lb_report")
    assert "report" in button.label.lower() and button.proto.deferred_file_id  # built only when clicked

    builds = []
    real = build.build_report
    monkeypatch.setattr(build, "build_report", lambda db, **kw: builds.append(db) or real(db, **kw))
    stamp = cache.db_stamp(app_env)
    html = cache.report_html(str(app_env), stamp).decode("utf-8")
    assert html.startswith("<!DOCTYPE html>") and '<img src="data:image/png;base64,' in html
    with reader(app_env) as con:
        assert all(run_id in html for run_id in queries.done_run_ids(con))
    assert cache.report_html(str(app_env), stamp).decode("utf-8") == html and len(builds) == 1  # cached by stamp
    cache.report_html(str(app_env), (*stamp[:2], stamp[2] + 1))  # the DB changed: built again
    assert len(builds) == 2


@pytest.mark.slow  # an AppTest per session
def test_board_is_composed_once_per_db_state_and_choice(tmp_path, monkeypatch):
    """Reruns and other sessions reuse the composed board; a new choice or a commit rebuilds it."""
    import duckdb

    db = build_results_db(tmp_path, FakeResultsSpec(datasets=("d1",), models=("shallow", "resnet18")))
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    built = []
    real = views.leaderboard_view
    monkeypatch.setattr(views, "leaderboard_view", lambda *a, **kw: built.append(kw["sort_label"]) or real(*a, **kw))
    at = open_page()
    at.run()
    other = open_page()  # a second session
    assert len(built) == 1 and len(_board(other)) == 2
    at.selectbox(key="lb_sort").set_value("lung mass (low first)").run()
    assert built == ["accuracy (high first)", "lung mass (low first)"]
    with duckdb.connect(str(db)) as con:  # a run commits: the page shows it at the next rerun
        con.execute("UPDATE metrics SET value = 0.123 WHERE metric = 'accuracy' AND split = 'test' "
                    "AND run_id = (SELECT min(run_id) FROM runs WHERE status = 'done')")
    at.run()
    assert len(built) == 3 and 0.123 in set(_board(at).accuracy.round(3))


@pytest.mark.slow  # an AppTest per session
def test_scatter_figure_is_shared_between_sessions_and_never_changed(tmp_path, monkeypatch):
    """The scatter is a cache_resource: one Figure for every session, which drawing leaves as built."""
    import plotly.io as pio

    from dashboard import cache, render

    db = build_results_db(tmp_path, FakeResultsSpec(datasets=("d1",), models=("shallow", "resnet18")))
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    cache.clear()  # the fixture's board is deterministic: another test may have drawn the same one
    figures = []
    real = render.accuracy_focus_scatter
    monkeypatch.setattr(render, "accuracy_focus_scatter", lambda *a, **kw: figures.append(real(*a, **kw)) or
                        figures[-1])
    built_json = None
    for _ in range(3):  # three sessions
        at = open_page()
        assert not at.exception and at.get("plotly_chart")
        if built_json is None:
            built_json = pio.to_json(figures[0], validate=False)
    assert len(figures) == 1
    assert pio.to_json(figures[0], validate=False) == built_json
    at.radio(key="lb_focus").set_value("pointing_game").run()
    assert len(figures) == 2  # another measure: another figure
    at.run()
    assert len(figures) == 2
    import duckdb
    with duckdb.connect(str(db)) as con:  # a run commits: the next rerun draws the new board
        con.execute("UPDATE metrics SET value = 0.123 WHERE metric = 'accuracy' AND split = 'test' "
                    "AND run_id = (SELECT min(run_id) FROM runs WHERE status = 'done')")
    at.run()
    assert len(figures) == 3 and 0.123 in [round(y, 3) for t in figures[-1].data for y in ([] if t.y is None else t.y)]


EXTERNAL_SET = "external-covid-normal"


@pytest.fixture(scope="module")
def external_db(tmp_path_factory):
    spec = FakeResultsSpec(datasets=("phantom-shortcut",), models=("shallow", "resnet18", "vgg16"),
                           methods=("gradcam",), n_test=6, external_sets=(EXTERNAL_SET,))
    return build_results_db(tmp_path_factory.mktemp("lb-ext"), spec)


def test_external_auc_drop_shows_beside_accuracy(external_db, monkeypatch):
    """A model that is accurate at home and fails on another hospital's images is seen at a glance."""
    from benchmark.analysis.external import board_columns

    monkeypatch.setenv("CXR_RESULTS_DB", str(external_db))
    at = open_page()
    assert not at.exception
    order = list(at.dataframe[0].proto.column_order)
    new = ["internal_auc", "external_auc", "auc_drop", "external_set"]
    assert [c for c in order if c in new] == new
    assert order.index("accuracy") < order.index("external_auc") < order.index("lung_mass")
    assert "external_drop" in order  # the accuracy-based drop stays
    with reader(external_db) as con:
        expected = board_columns(queries.external_metrics(con)).set_index("run_id")
    board = _board(at).set_index("run_id")
    for run_id in board.index:
        assert board.at[run_id, "auc_drop"] == pytest.approx(expected.at[run_id, "auc_drop"])
        assert board.at[run_id, "external_auc"] == pytest.approx(expected.at[run_id, "external_auc"])
        assert board.at[run_id, "external_set"] == EXTERNAL_SET
    # the shortcut learner is the most accurate here and the one that loses most elsewhere
    assert board.accuracy.idxmax() == board.auc_drop.idxmax() == "phantom-shortcut-resnet18"
    at.selectbox(key="lb_sort").set_value("external AUC drop (large first)").run()
    assert _board(at).auc_drop.is_monotonic_decreasing and not at.exception
    probes = at.dataframe[1].value
    removed = probes[(probes.model == "resnet18") & (probes.probe == f"lungs_removed@external:{EXTERNAL_SET}")]
    intact = probes[(probes.model == "resnet18") & (probes.probe == f"intact@external:{EXTERNAL_SET}")]
    assert removed.reference.iloc[0] == pytest.approx(intact.accuracy.iloc[0])


def test_external_auc_columns_stay_hidden_without_external_scores(app_env):
    at = open_page()
    order = list(at.dataframe[0].proto.column_order)
    assert "auc_drop" not in order and "external_auc" not in order
    assert _board(at)["auc_drop"].isna().all()  # in the table, for downloads, but empty
