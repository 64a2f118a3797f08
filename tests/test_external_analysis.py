"""Does the audit predict external failure? benchmark.analysis on frames whose answer is known, and
queries.external_metrics on a small results DB in the stored contract (split 'external:<set>')."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from benchmark.analysis import board as board_mod
from benchmark.analysis import external as ex
from benchmark.analysis.correlation import MIN_RUNS_CI, resampled_rhos, spearman_ci
from benchmark.store import queries, reader, write_run
from benchmark.store.writes import RunBundle
from tests.fixtures_db import EXTERNAL_METRIC_NAMES, FakeResultsSpec, build_results_db

SET = "external-covid-normal"


def _long(rows: list[dict]) -> pd.DataFrame:
    """queries.external_metrics-shaped rows from {run_id, external_set, <metric>: value, n_images}."""
    out = []
    for r in rows:
        for metric, value in r.items():
            if metric in ("run_id", "external_set", "n_images"):
                continue
            out.append({"run_id": r["run_id"], "dataset": "d", "model": r["run_id"],
                        "split": f"external:{r['external_set']}", "external_set": r["external_set"],
                        "metric": metric, "value": value, "ci_low": value - 0.05, "ci_high": value + 0.05,
                        "n_images": r.get("n_images", 10)})
    return pd.DataFrame(out)


def _runs(n: int, external_set: str = SET) -> tuple[pd.DataFrame, pd.DataFrame]:
    """n runs whose AUC drop grows with the run index while their lung mass falls: a warning that
    works perfectly (rho -1 for lung mass, +1 for lungs-removed accuracy)."""
    drops = np.linspace(0.02, 0.40, n)
    metrics = _long([{"run_id": f"r{i}", "external_set": external_set, "internal_set_auc": 0.95,
                      "set_auc": 0.95 - d, "internal_balanced_accuracy": 0.9, "balanced_accuracy": 0.9 - d / 2,
                      "off_set_share": 0.01 * i} for i, d in enumerate(drops)])
    board = pd.DataFrame({"run_id": [f"r{i}" for i in range(n)], "dataset": "d",
                          "model": [f"m{i}" for i in range(n)], "accuracy": 0.9,
                          "lung_mass": np.linspace(0.7, 0.2, n), "uniform_baseline": 0.3,
                          "lung_focus_score": np.linspace(0.9, 0.1, n), "pointing_game": np.linspace(1.0, 0.0, n),
                          "lungs_removed_acc": np.linspace(0.4, 0.9, n), "lungs_only_acc": np.linspace(0.9, 0.5, n),
                          "source_auc": 0.8,  # the same for every run
                          "sanity_rank_corr": np.nan})  # never measured
    return metrics, board


# ----------------------------------------------------------------------------- the rank correlation

def test_perfectly_anti_monotone_measure_gives_minus_one_and_a_ci_that_excludes_zero():
    x = np.linspace(0.7, 0.2, 8)
    y = np.linspace(0.0, 0.4, 8) ** 2  # monotone, not linear: only the ranks matter
    r = spearman_ci(x, y, n_boot=500, seed=3)
    assert r.rho == pytest.approx(-1.0) and r.n == 8 and r.reason == ""
    assert r.ci_high < 0 and r.ci_low == pytest.approx(-1.0)
    assert 0 < r.n_boot <= 500  # resamples of one repeated run (both constant) are skipped
    assert spearman_ci(x, y, n_boot=500, seed=3) == r  # seeded: the same CI every time


def test_constant_measure_gives_nan_with_a_reason_not_a_crash():
    r = spearman_ci(np.full(8, 0.8), np.arange(8.0), names=("source-probe AUC", "AUC drop"))
    assert np.isnan(r.rho) and np.isnan(r.ci_low) and np.isnan(r.ci_high)
    assert "source-probe AUC is the same for every run" in r.reason


def test_two_runs_claim_neither_a_correlation_nor_a_ci():
    r = spearman_ci([0.1, 0.5], [0.3, 0.1])
    assert np.isnan(r.rho) and np.isnan(r.ci_low) and r.n == 2 and "at least 3" in r.reason


def test_few_runs_give_a_correlation_without_a_ci():
    r = spearman_ci([0.1, 0.5, 0.3, 0.9], [0.3, 0.1, 0.2, 0.0])
    assert r.rho == pytest.approx(-1.0) and r.n == 4 < MIN_RUNS_CI
    assert np.isnan(r.ci_low) and "too few for a bootstrap CI" in r.reason


def test_missing_values_leave_their_runs_out():
    x = [0.1, np.nan, 0.3, 0.4, 0.5, 0.6]
    y = [1.0, 0.0, 0.8, 0.7, 0.6, np.inf]
    r = spearman_ci(x, y, n_boot=200)
    assert r.n == 4 and r.rho == pytest.approx(-1.0)


def test_seeds_of_one_model_are_resampled_together():
    """Six models, each trained with five seeds that agree closely: 30 runs, but six independent
    points. The run bootstrap counts 30 and is too sure; the cluster bootstrap counts six."""
    rng = np.random.default_rng(5)
    model_x, model_y = rng.normal(size=6), rng.normal(size=6)
    x = np.repeat(model_x, 5) + rng.normal(0, 0.01, 30)
    y = np.repeat(model_y, 5) + rng.normal(0, 0.01, 30)
    groups = np.repeat(np.arange(6), 5)
    runs = spearman_ci(x, y, n_boot=400, seed=1)
    models = spearman_ci(x, y, n_boot=400, seed=1, clusters=groups)
    assert models.rho == runs.rho and models.n == runs.n == 30  # the same point estimate over the same runs
    assert runs.n_clusters == 0 and models.n_clusters == 6
    assert models.ci_high - models.ci_low > 1.5 * (runs.ci_high - runs.ci_low)
    # one run per label: the run bootstrap itself, resample for resample
    assert spearman_ci(x, y, n_boot=400, seed=1, clusters=np.arange(30)) == runs
    few = spearman_ci(x[:20], y[:20], n_boot=400, clusters=groups[:20])  # four models
    assert np.isfinite(few.rho) and np.isnan(few.ci_low) and "4 seed groups: too few" in few.reason


def test_correlations_say_when_the_ci_is_over_seed_groups():
    rng = np.random.default_rng(6)
    lung = np.repeat(rng.uniform(0, 0.3, 6), 3) + rng.normal(0, 0.005, 18)
    drops = pd.DataFrame({"external_set": SET, "run_id": [f"r{i}" for i in range(18)],
                          "seed_group": np.repeat(np.arange(6), 3), "lung_mass_above_uniform": lung,
                          "auc_drop": 0.5 - lung + rng.normal(0, 0.01, 18), "bacc_drop": 0.1})
    corr = ex.correlations(drops, measures=ex.AUDIT_MEASURES[:1], targets={"auc_drop": "AUC drop"}, n_boot=200)
    row = corr.iloc[0]
    assert row.rho < -0.8 and row.n_runs == 18 and "CI over 6 seed groups" in row.note
    alone = ex.correlations(drops.drop(columns="seed_group"), measures=ex.AUDIT_MEASURES[:1],
                            targets={"auc_drop": "AUC drop"}, n_boot=200).iloc[0]
    assert "seed groups" not in alone.note and alone.rho == row.rho


def test_vectorised_resamples_equal_spearmanr_on_each():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=9), rng.normal(size=9)
    x[3] = x[5]  # ties take average ranks, as in spearmanr
    rows = rng.integers(0, 9, size=(200, 9))
    rhos = resampled_rhos(x, y, rows)
    for i in range(200):
        xs, ys = x[rows[i]], y[rows[i]]
        if np.ptp(xs) == 0 or np.ptp(ys) == 0:
            assert np.isnan(rhos[i])
        else:
            assert rhos[i] == pytest.approx(spearmanr(xs, ys).statistic, abs=1e-12)


# ----------------------------------------------------------------------------- per run and set

def test_external_frame_holds_only_the_pairs_that_were_scored():
    """Run b was scored on one set only: no row of b on the other (it would show as a blank run in
    Table 5 and as a run of no value in every per-set count)."""
    frame = ex.external_frame(_long([{"run_id": "a", "external_set": "x", "set_auc": 0.9},
                                     {"run_id": "a", "external_set": "y", "set_auc": 0.8},
                                     {"run_id": "b", "external_set": "x", "set_auc": 0.7}]))
    assert sorted(zip(frame.run_id, frame.external_set)) == [("a", "x"), ("a", "y"), ("b", "x")]
    assert frame.set_auc.notna().all()


def test_external_frame_computes_both_drops_per_run_and_set():
    metrics = _long([{"run_id": "a", "external_set": "s1", "internal_set_auc": 0.9, "set_auc": 0.6,
                      "internal_balanced_accuracy": 0.8, "balanced_accuracy": 0.5, "off_set_share": 0.3,
                      "accuracy": 0.4, "internal_accuracy": 0.85, "n_images": 12},
                     {"run_id": "a", "external_set": "s2", "set_auc": 0.7}])  # an older score: no internal AUC
    frame = ex.external_frame(metrics).set_index("external_set")
    assert list(frame.columns) == [c for c in ex.FRAME_COLUMNS if c != "external_set"]
    assert frame.at["s1", "auc_drop"] == pytest.approx(0.3) and frame.at["s1", "bacc_drop"] == pytest.approx(0.3)
    assert frame.at["s1", "off_set_share"] == pytest.approx(0.3) and frame.at["s1", "n_images"] == 12
    assert frame.at["s1", "set_auc_ci_low"] == pytest.approx(0.55)
    assert np.isnan(frame.at["s2", "auc_drop"]) and frame.at["s2", "set_auc"] == pytest.approx(0.7)
    assert ex.external_frame(pd.DataFrame()).empty and list(ex.external_frame(None).columns) == ex.FRAME_COLUMNS


def test_board_columns_show_the_set_where_the_auc_fell_most():
    metrics = _long([{"run_id": "a", "external_set": "s1", "internal_set_auc": 0.9, "set_auc": 0.8},
                     {"run_id": "a", "external_set": "s2", "internal_set_auc": 0.95, "set_auc": 0.6},
                     {"run_id": "b", "external_set": "s1", "set_auc": 0.7}])
    cols = ex.board_columns(metrics).set_index("run_id")
    assert cols.at["a", "external_set"] == "s2" and cols.at["a", "auc_drop"] == pytest.approx(0.35)
    assert cols.at["a", "internal_auc"] == pytest.approx(0.95) and cols.at["a", "external_auc"] == pytest.approx(0.6)
    assert cols.at["b", "external_set"] == "s1" and np.isnan(cols.at["b", "auc_drop"])


def test_drop_table_puts_each_run_beside_its_audit():
    metrics, board = _runs(6)
    drops = ex.drop_table(metrics, board.iloc[:5])  # a run not on the board is left out
    assert len(drops) == 5 and set(drops.run_id) == {f"r{i}" for i in range(5)}
    assert drops.auc_drop.is_monotonic_decreasing  # largest drop first
    row = drops.set_index("run_id").loc["r0"]
    assert row.lung_mass_above_uniform == pytest.approx(0.7 - 0.3) and row.model == "m0"
    assert row.test_accuracy == pytest.approx(0.9)
    assert ex.drop_table(metrics, board.iloc[0:0]).empty


# ----------------------------------------------------------------------------- across runs

def test_correlations_with_a_known_answer():
    metrics, board = _runs(8)
    corr = ex.correlations(ex.drop_table(metrics, board), n_boot=300, seed=1)
    auc = corr[corr["drop"] == "auc_drop"].set_index("measure")
    assert set(corr.external_set) == {SET} and len(corr) == 2 * len(ex.AUDIT_MEASURES)
    lung = auc.loc["lung_mass_above_uniform"]
    assert lung.rho == pytest.approx(-1.0) and lung.ci_high < 0 and lung.n_runs == 8
    assert lung.expected_sign == -1 and lung.verdict == "as expected"
    assert "only 8 runs" in lung.note  # few runs: said in words
    removed = auc.loc["lungs_removed_acc"]
    assert removed.rho == pytest.approx(1.0) and removed.expected_sign == 1 and removed.verdict == "as expected"
    source = auc.loc["source_auc"]
    assert np.isnan(source.rho) and "the same for every run" in source.note and source.verdict == ""
    sanity = auc.loc["sanity_rank_corr"]
    assert np.isnan(sanity.rho) and sanity.n_runs == 0 and "no run has both" in sanity.note
    assert sanity.expected_sign == 0


def test_a_warning_pointing_the_wrong_way_says_so():
    metrics, board = _runs(8)
    board["pointing_game"] = board["pointing_game"][::-1].to_numpy()  # peaks on the lungs go with a larger drop
    corr = ex.correlations(ex.drop_table(metrics, board), n_boot=300)
    row = corr[(corr.measure == "pointing_game") & (corr["drop"] == "auc_drop")].iloc[0]
    assert row.rho == pytest.approx(1.0) and row.verdict == "opposite to expected"


def test_two_runs_per_set_claim_no_ci_and_each_set_is_its_own_group():
    m1, b1 = _runs(2, "s1")
    m2, _ = _runs(8, "s2")
    corr = ex.correlations(ex.drop_table(pd.concat([m1, m2]), _runs(8)[1]), n_boot=200)
    s1 = corr[corr.external_set == "s1"]
    assert s1.rho.isna().all() and s1.ci_low.isna().all() and (s1.n_runs <= 2).all()
    s2 = corr[(corr.external_set == "s2") & (corr.measure == "lung_mass_above_uniform")]
    assert (s2.n_runs == 8).all() and s2.rho.to_numpy() == pytest.approx([-1.0, -1.0])
    assert ex.correlations(pd.DataFrame()).empty
    assert list(ex.correlations(pd.DataFrame()).columns) == ["external_set", *ex.CORRELATION_COLUMNS]


def test_within_training_sets_exposes_a_rho_that_only_ranks_the_training_sets():
    # three training sets: the higher a set's source AUC, the larger its runs' drops (pooled rho high),
    # but inside each set the runs with the higher source AUC lose less
    rows, audit = [], []
    for k, dataset in enumerate(["a", "b", "c"]):
        for i in range(6):
            run = f"{dataset}{i}"
            drop = 0.2 * k + 0.02 * (5 - i)
            rows.append({"run_id": run, "external_set": SET, "internal_set_auc": 0.95, "set_auc": 0.95 - drop,
                         "internal_balanced_accuracy": 0.9, "balanced_accuracy": 0.9 - drop})
            audit.append({"run_id": run, "dataset": dataset, "model": run, "accuracy": 0.9, "lung_mass": 0.5,
                          "uniform_baseline": 0.3, "source_auc": 0.6 + 0.15 * k + 0.01 * i})
    rows.append({"run_id": "d0", "external_set": SET, "internal_set_auc": 0.9, "set_auc": 0.5,
                 "internal_balanced_accuracy": 0.9, "balanced_accuracy": 0.5})  # a set with one run
    audit.append({"run_id": "d0", "dataset": "d", "model": "d0", "accuracy": 0.9, "lung_mass": 0.5,
                  "uniform_baseline": 0.3, "source_auc": 0.99})
    drops = ex.drop_table(_long(rows), pd.DataFrame(audit))
    pooled = ex.correlations(drops, n_boot=200)
    source = pooled[(pooled.measure == "source_auc") & (pooled["drop"] == "auc_drop")].iloc[0]
    assert source.rho > 0.7 and source.verdict == "as expected"  # pooled: the warning seems to work
    within = ex.within_training_sets(drops).set_index(["measure", "drop"])
    row = within.loc[("source_auc", "auc_drop")]
    # perfectly ranked inside each set: every resample gives -1 too
    assert row.within == "a -1.00 [-1.00, -1.00] (6); b -1.00 [-1.00, -1.00] (6); c -1.00 [-1.00, -1.00] (6)"
    assert row.n_training_sets == 3  # d: too few runs
    # the six runs of a set as three models of two seeds each: too few groups for a CI, the rho stays
    paired = drops.assign(seed_group=drops.run_id.str[0] + (drops.run_id.str[1:].astype(int) // 2).astype(str))
    row = ex.within_training_sets(paired).set_index(["measure", "drop"]).loc[("source_auc", "auc_drop")]
    assert row.within == "a -1.00 (6); b -1.00 (6); c -1.00 (6)"
    assert within.loc[("lung_mass_above_uniform", "auc_drop")].within == ""  # the same in every run
    one_set = drops[drops.dataset == "a"]
    assert (ex.within_training_sets(one_set).within == "").all()  # one training set: the pooled rho is it
    assert list(ex.within_training_sets(pd.DataFrame()).columns) == ex.WITHIN_COLUMNS


def test_verdicts_in_words():
    assert ex.verdict(-1, -0.5, -0.8, -0.1) == "as expected"
    assert ex.verdict(-1, -0.5, -0.8, 0.2) == "as expected, but the CI includes 0"
    assert ex.verdict(-1, -0.5, np.nan, np.nan) == "as expected, no CI"
    assert ex.verdict(1, -0.5, -0.8, -0.1) == "opposite to expected"
    assert ex.verdict(0, 0.4, 0.1, 0.6) == "no direction expected"
    assert ex.verdict(1, np.nan, np.nan, np.nan) == ""
    assert [ex.expected_sign_text(s) for s in (-1, 1, 0)] == ["negative", "positive", "none"]


# ----------------------------------------------------------------------------- the query and the board

@pytest.fixture(scope="module")
def external_db(tmp_path_factory):
    spec = FakeResultsSpec(datasets=("phantom-shortcut",), models=("shallow", "resnet18", "vgg16"),
                           methods=("gradcam",), external_sets=(SET, "other-set"), n_external=6)
    db = build_results_db(tmp_path_factory.mktemp("ext"), spec)
    metrics = pd.DataFrame([{"split": f"external:{SET}", "metric": m, "class_name": "", "value": 0.5}
                            for m in EXTERNAL_METRIC_NAMES])
    write_run(db, RunBundle(run={"run_id": "failed-with-external", "model": "vgg19", "dataset": "phantom-shortcut",
                                 "pretrained": False, "status": "failed", "error": "killed"},
                            tables={"metrics": metrics}))
    return db


def test_external_metrics_query_reads_done_runs_overall_rows_only(external_db):
    with reader(external_db) as con:
        rows = queries.external_metrics(con)
        stored = con.execute("SELECT count(*) FROM metrics m JOIN runs r USING (run_id) WHERE r.status = 'done' "
                             "AND m.split LIKE 'external:%' AND m.class_name = ''").fetchone()[0]
    assert list(rows.columns) == ["run_id", "dataset", "model", "split", "external_set", "metric", "value", "ci_low",
                                  "ci_high", "n_images"]
    assert "failed-with-external" not in set(rows.run_id)
    assert set(rows.run_id) == {"phantom-shortcut-shallow", "phantom-shortcut-resnet18", "phantom-shortcut-vgg16"}
    assert set(rows.external_set) == {SET, "other-set"} and set(rows.split) == {f"external:{SET}", "external:other-set"}
    assert set(rows.metric) == set(EXTERNAL_METRIC_NAMES) == set(queries.EXTERNAL_METRICS)
    assert len(rows) == stored == 3 * 2 * len(EXTERNAL_METRIC_NAMES)  # per-class rows and test rows left out
    assert (rows.n_images == 6).all()
    frame = ex.external_frame(rows)
    assert len(frame) == 6 and frame.auc_drop.notna().all()


def test_external_metrics_query_on_a_db_without_external_scores(tmp_path):
    db = build_results_db(tmp_path, FakeResultsSpec(datasets=("d",), models=("shallow",), with_failed_run=False))
    with reader(db) as con:
        rows = queries.external_metrics(con)
    assert rows.empty and "external_set" in rows.columns


def test_leaderboard_gets_the_external_auc_columns_and_ignores_the_external_lungs_probes(external_db):
    with reader(external_db) as con:
        summary, cm, focus = queries.summary(con), queries.class_metrics(con), queries.lung_focus_by_run(con)
        probes, external = queries.probe_results(con), queries.external_metrics(con)
    plain = board_mod.leaderboard(summary, cm, focus, probes, "gradcam")
    assert plain[["internal_auc", "external_auc", "auc_drop"]].isna().all(axis=None)
    assert plain["external_set"].isna().all()
    board = board_mod.leaderboard(summary, cm, focus, probes, "gradcam", external=external).set_index("run_id")
    expected = ex.board_columns(external).set_index("run_id")
    for run_id in board.index:
        assert board.at[run_id, "auc_drop"] == pytest.approx(expected.at[run_id, "auc_drop"])
        assert board.at[run_id, "external_set"] == expected.at[run_id, "external_set"]
    # shortcut learners (resnet18) lose more AUC elsewhere than lung readers (shallow)
    assert board.at["phantom-shortcut-resnet18", "auc_drop"] > 0.2 > board.at["phantom-shortcut-shallow", "auc_drop"]
    # the lungs probes on external images are not external sets: the accuracy-based drop is unchanged
    ext_probes = probes[probes.probe.str.contains("@external:")]
    assert not ext_probes.empty
    without = board_mod.probe_summary(probes[~probes.probe.str.contains("@")], summary).set_index("run_id")
    with_them = board_mod.probe_summary(probes, summary).set_index("run_id")
    pd.testing.assert_frame_equal(without, with_them)
    assert not with_them.external_dataset.str.contains("@").any()


def test_probe_table_compares_external_lungs_probes_with_their_own_intact(external_db):
    with reader(external_db) as con:
        probes, summary = queries.probe_results(con), queries.summary(con)
    table = board_mod.probe_table(probes, summary)
    rows = table[table.model == "resnet18"].set_index("probe")
    intact = rows.at[f"intact@external:{SET}", "accuracy"]
    assert np.isnan(rows.at[f"intact@external:{SET}", "reference"])  # the reference itself
    for probe in (f"lungs_removed@external:{SET}", f"lungs_only@external:{SET}"):
        assert rows.at[probe, "reference"] == pytest.approx(intact)
        assert rows.at[probe, "change"] == pytest.approx(rows.at[probe, "accuracy"] - intact)
    test_acc = summary.set_index("run_id").at["phantom-shortcut-resnet18", "accuracy"]
    assert rows.at[f"external:{SET}", "reference"] == pytest.approx(test_acc)
    assert rows.at["lungs_removed", "reference"] == pytest.approx(rows.at["intact", "accuracy"])


def test_test_accuracy_is_the_baseline_every_audit_measure_is_read_against():
    """Models weaker at home fail more elsewhere: Table 6 gives test accuracy's own rho (expected
    negative), so a measure that ranks the drops no better than accuracy is seen to add nothing."""
    rows, audit = [], []
    for i in range(8):
        drop = 0.5 - 0.05 * i
        rows.append({"run_id": f"r{i}", "external_set": SET, "internal_set_auc": 0.95, "set_auc": 0.95 - drop,
                     "internal_balanced_accuracy": 0.9, "balanced_accuracy": 0.9 - drop})
        audit.append({"run_id": f"r{i}", "dataset": "d", "model": f"m{i}", "accuracy": 0.7 + 0.03 * i,
                      "lung_mass": 0.5, "uniform_baseline": 0.3})
    corr = ex.correlations(ex.drop_table(_long(rows), pd.DataFrame(audit)), n_boot=200)
    base = corr[(corr.measure == "test_accuracy") & (corr["drop"] == "auc_drop")].iloc[0]
    assert base.measure_label == "test accuracy (baseline)" and base.expected_sign == -1
    assert base.rho == pytest.approx(-1.0) and base.verdict == "as expected" and base.n_runs == 8
