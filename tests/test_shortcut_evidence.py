"""Shortcut evidence beyond CAMs: the source probe (Zech et al. 2018) and the CAM sanity check
(Adebayo et al. 2018), from the maths to the DB, the leaderboard and the report."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from benchmark.analysis import board as board_mod
from benchmark.audit import cam_sanity as cam_sanity_mod
from benchmark.audit.cam_sanity import cam_sanity_rows
from benchmark.audit.source_probe import SourceSample, source_probe_rows
from benchmark.cams.sanity import randomized_copy, rank_correlation
from benchmark.config import AuditConfig, DataConfig, TrainConfig
from benchmark.data.phantom import PhantomConfig, iter_phantom
from benchmark.models import create_model
from benchmark.pipeline.grid import run_grid
from benchmark.pipeline.spec import JobSpec
from benchmark.report import evidence_tables
from benchmark.store import RunBundle, queries, reader, replace_run_tables, write_run
from tests.fixtures_db import FakeResultsSpec, build_results_db, open_page, texts

CLASSES = ["normal", "pneumonia", "covid"]
CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- rank correlation


def test_rank_correlation_is_spearman_with_ties_and_constant_maps():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(6, 7, 7)).astype(float)  # many ties
    b = a + rng.normal(0, 2, size=a.shape)
    got = rank_correlation(a, b)
    want = [spearmanr(x.ravel(), y.ravel()).statistic for x, y in zip(a, b)]
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert rank_correlation(a, a) == pytest.approx(np.ones(6))
    assert rank_correlation(a, -a) == pytest.approx(-np.ones(6))
    zero = np.zeros((1, 7, 7))
    assert rank_correlation(a[:1], zero)[0] == 0.0  # a constant map shares no ranking
    assert rank_correlation(zero, zero)[0] == 1.0  # two constant maps: unchanged
    with pytest.raises(ValueError, match="one shape"):
        rank_correlation(a, b[:, :3])


def test_randomized_copy_is_seeded_leaves_the_model_and_the_rng_alone():
    model = create_model("shallow", 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    one, two = randomized_copy(model), randomized_copy(model)
    assert torch.equal(torch.rand(3), expected_next), "the global RNG stream is not consumed"
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{k} of the trained model changed"
    weights = [k for k, v in before.items() if v.is_floating_point() and v.ndim > 1]
    assert weights and all(torch.equal(one.state_dict()[k], two.state_dict()[k]) for k in weights)
    assert all(not torch.equal(one.state_dict()[k], before[k]) for k in weights), "every weight re-drawn"
    assert one is not model and not one.training


# ------------------------------------------------------------------------------- source probe


def _phantom_split(n: int = 240, size: int = 32, seed: int = 3):
    """Clean phantom images, patients split 2:1 into train/test, a random source per patient."""
    cfg = PhantomConfig(n_images=n, size=size, p_marker=0.0, lung_signal=True, seed=seed)
    items = list(iter_phantom(cfg))
    images = np.stack([p.image for p in items])
    labels = np.array([CLASSES.index(p.label) for p in items])
    patients = [p.patient_id for p in items]
    rng = np.random.default_rng(seed)
    by_patient = {pid: rng.choice(["hospital_a", "hospital_b"]) for pid in sorted(set(patients))}
    sources = [str(by_patient[pid]) for pid in patients]
    test = np.array([int(pid.split("-")[1]) % 3 == 0 for pid in patients])
    return images, labels, patients, sources, np.flatnonzero(~test), np.flatnonzero(test)


def _samples(images, labels, patients, sources, train, test):
    def one(idx):
        return SourceSample(images[idx], [sources[i] for i in idx], labels[idx], [patients[i] for i in idx])
    return one(train), one(test)


def _row(rows: pd.DataFrame, probe: str, metric: str = "auc") -> pd.Series:
    hit = rows[(rows.probe == probe) & (rows.metric == metric)]
    assert len(hit) == 1, rows
    return hit.iloc[0]


def test_source_probe_sees_a_planted_source_difference():
    images, labels, patients, sources, train, test = _phantom_split()
    marked = images.copy()
    b = np.array([s == "hospital_b" for s in sources])
    marked[b, :3, :] = 250  # hospital b burns a bright strip into the top of every film
    tr, te = _samples(marked, labels, patients, sources, train, test)
    model = create_model("shallow", 3)
    rows = source_probe_rows(model, tr, te, CLASSES, CPU, seed=0, n_boot=200)
    pixels = _row(rows, "source_pixels")
    assert pixels.value > 0.95 and pixels.ci_low > 0.9
    assert _row(rows, "source").value > 0.9, "even an untrained net's features carry a bright strip"
    detail = json.loads(pixels.detail)
    assert detail["sources"] == ["hospital_a", "hospital_b"] and detail["n_test"] == len(test)
    assert detail["n_train"] == len(train) and "skipped" not in detail
    # sources are drawn per patient independently of the class, so every class mixes them
    within = rows[rows.metric.str.startswith("auc_within:")]
    assert set(within.metric) == {f"auc_within:{c}" for c in CLASSES} and (within.value > 0.9).all()


def test_source_probe_is_at_chance_when_sources_do_not_differ():
    images, labels, patients, sources, train, test = _phantom_split()
    tr, te = _samples(images, labels, patients, sources, train, test)
    rows = source_probe_rows(None, tr, te, CLASSES, CPU, seed=0, n_boot=500, with_model=False)
    assert set(rows.probe) == {"source_pixels"}
    pixels = _row(rows, "source_pixels")
    assert abs(pixels.value - 0.5) < 0.15
    assert pixels.ci_low <= 0.5 <= pixels.ci_high, "the CI covers chance"


def test_source_probe_with_one_source_is_skipped_with_its_reason():
    images, labels, patients, _, train, test = _phantom_split(n=30)
    tr, te = _samples(images, labels, patients, ["phantom"] * len(images), train, test)
    rows = source_probe_rows(create_model("shallow", 3), tr, te, CLASSES, CPU, seed=0, n_boot=10)
    assert set(rows.probe) == {"source", "source_pixels"} and rows.value.isna().all()
    assert all(json.loads(d)["skipped"] == "the dataset has a single source" for d in rows.detail)
    # a source only in the test split cannot be scored by a probe that never saw it
    tr, te = _samples(images, labels, patients, ["a"] * len(images), train, test)
    te.sources = ["b" if i % 2 else "a" for i in range(len(te.sources))]
    rows = source_probe_rows(None, tr, te, CLASSES, CPU, seed=0, n_boot=10, with_model=False)
    assert "one source in the train split" in json.loads(_row(rows, "source_pixels").detail)["skipped"]


# ---------------------------------------------------------------------------- CAM sanity check


def test_sanity_check_flags_maps_that_do_not_change(monkeypatch):
    images, labels, patients, _, _, _ = _phantom_split(n=12, size=32)
    model = create_model("shallow", 3).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    preds = labels  # any class per image will do for the maps
    kwargs = dict(sample=4, threshold=0.5, seed=0, n_boot=50)
    rows = cam_sanity_rows(model, images, preds, patients, ["gradcam", "cam"], CPU, **kwargs)
    assert list(rows.method) == ["gradcam", "cam"] and (rows.n_images == 4).all()
    assert rows.rank_corr.between(-1, 1).all()
    assert (rows.flagged == (rows.rank_corr >= 0.5)).all()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), "trained model untouched"
    assert all(p.grad is None for p in model.parameters())
    # a "randomisation" that changes nothing: identical maps, correlation 1, flagged
    monkeypatch.setattr(cam_sanity_mod, "randomized_copy", lambda m, seed: m)
    same = cam_sanity_rows(model, images, preds, patients, ["gradcam"], CPU, **kwargs)
    assert same.rank_corr.iloc[0] == pytest.approx(1.0) and bool(same.flagged.iloc[0])
    # 0 disables, methods that do not apply are left out
    assert cam_sanity_rows(model, images, preds, patients, ["gradcam"], CPU, **{**kwargs, "sample": 0}).empty


# ------------------------------------------------------------------ the pipeline, DB, leaderboard


@pytest.fixture(scope="module")
def phantom_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evidence")
    db = tmp / "r.duckdb"
    spec = JobSpec(model="shallow", data=DataConfig(name="phantom-shortcut", image_size=48, n_phantom=45,
                                                    cache_dir=str(tmp / "cache")),
                   train=TrainConfig(epochs=1),
                   audit=AuditConfig(cam_methods=("gradcam", "cam"), faithfulness_sample=0, sanity_sample=3,
                                     n_boot=50),
                   device="cpu", checkpoint_dir=str(tmp / "ckpt"), progress=False)
    statuses = run_grid([spec], db)
    assert statuses[0]["status"] == "done", statuses
    return db, spec.run_id


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_run_grid_stores_sanity_rows_and_the_skipped_source_probe(phantom_run):
    db, run_id = phantom_run
    with reader(db) as con:
        sanity = queries.cam_sanity(con)
        probes = queries.probe_results(con)
    assert set(sanity.method) == {"gradcam", "cam"} and (sanity.run_id == run_id).all()
    assert (sanity.n_images == 3).all() and sanity.rank_corr.between(-1, 1).all()
    assert (sanity.flagged == (sanity.rank_corr >= AuditConfig().sanity_threshold)).all()
    assert "full" in json.loads(sanity.detail.iloc[0])["randomisation"]
    src = probes[probes.probe.isin(["source", "source_pixels"])]
    assert len(src) == 2 and src.value.isna().all(), "a phantom has one source: skipped, with no value"
    assert all("single source" in json.loads(d)["skipped"] for d in src.detail)
    # the run's rows are replaced together (RUN_TABLES): a rewrite of the run leaves no old sanity rows
    write_run(db, RunBundle(run={"run_id": run_id, "model": "shallow", "dataset": "phantom-shortcut",
                                 "pretrained": False, "status": "failed", "error": "rewritten by the test"}))
    with reader(db) as con:
        assert con.execute("SELECT count(*) FROM cam_sanity WHERE run_id = ?", [run_id]).fetchone()[0] == 0


RUN_A, RUN_B = "phantom-shortcut-shallow", "phantom-shortcut-resnet18"


@pytest.fixture(scope="module")
def evidence_db(tmp_path_factory):
    """A fake results DB whose first run has source probes and sanity rows, the second none."""
    db = build_results_db(tmp_path_factory.mktemp("ev"), FakeResultsSpec(
        datasets=("phantom-shortcut",), models=("shallow", "resnet18"), with_failed_run=False))
    detail = json.dumps({"sources": ["a", "b"], "n_test": 12})
    replace_run_tables(db, RUN_A, {
        "probes": (pd.DataFrame([{"probe": "source", "metric": "auc", "value": 0.97, "ci_low": 0.9, "ci_high": 1.0,
                                  "detail": detail},
                                 {"probe": "source_pixels", "metric": "auc", "value": 0.99, "ci_low": 0.95,
                                  "ci_high": 1.0, "detail": detail}]), {"probe": "source"}),
        "cam_sanity": (pd.DataFrame([{"method": "gradcam", "n_images": 4, "rank_corr": 0.2, "ci_low": 0.1,
                                      "ci_high": 0.3, "flagged": False, "detail": json.dumps({"threshold": 0.5})},
                                     {"method": "cam", "n_images": 4, "rank_corr": 0.8, "ci_low": 0.7,
                                      "ci_high": 0.9, "flagged": True, "detail": json.dumps({"threshold": 0.5})}]),
                       {}),
    })
    return db


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_leaderboard_and_report_tables_carry_the_evidence(evidence_db):
    db, run_a, run_b = evidence_db, RUN_A, RUN_B
    with reader(db) as con:
        summary, cm = queries.summary(con), queries.class_metrics(con)
        focus, probes, sanity = queries.lung_focus_by_run(con), queries.probe_results(con), queries.cam_sanity(con)
    board = board_mod.leaderboard(summary, cm, focus, probes, "gradcam", sanity=sanity).set_index("run_id")
    for col in board_mod.SOURCE_COLUMNS[1:] + board_mod.SANITY_COLUMNS[1:]:
        assert col in board
    assert board.at[run_a, "source_auc"] == pytest.approx(0.97)
    assert board.at[run_a, "source_pixels_auc_ci_low"] == pytest.approx(0.95)
    assert board.at[run_a, "sanity_rank_corr"] == pytest.approx(0.2) and board.at[run_a, "sanity_flagged"] == 0.0
    assert board.at[run_a, "sanity_flagged_methods"] == "cam"
    assert np.isnan(board.at[run_b, "source_auc"]) and np.isnan(board.at[run_b, "sanity_rank_corr"])
    on_cam = board_mod.leaderboard(summary, cm, focus, probes, "cam", sanity=sanity).set_index("run_id")
    assert on_cam.at[run_a, "sanity_flagged"] == 1.0
    # without the sanity frame (older callers) the columns are there and empty
    assert board_mod.leaderboard(summary, cm, focus, probes, "gradcam").sanity_rank_corr.isna().all()

    src = evidence_tables.source_report_table(probes)
    assert list(src.frame["Source AUC"]) == ["0.970 [0.90, 1.00]", "0.990 [0.95, 1.00]"]
    checks = evidence_tables.sanity_report_table(sanity)
    assert list(checks.frame["Flagged"]) == ["yes", "no"]  # ordered by method: cam, gradcam
    assert any("0.5" in n for n in checks.notes)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_leaderboard_page_shows_the_evidence(evidence_db, monkeypatch):
    monkeypatch.setenv("CXR_RESULTS_DB", str(evidence_db))
    at = open_page()
    assert not at.exception
    board = at.dataframe[0].value.set_index("run_id")
    assert board.at[RUN_A, "source_auc"] == pytest.approx(0.97) and board.at[RUN_A, "source_auc_ci"] == "[0.90, 1.00]"
    assert board.at[RUN_A, "sanity_flagged_methods"] == "cam"
    assert "Source probe and CAM sanity check" in texts(at)
    shown = [d.value for d in at.dataframe]
    sanity = next(f for f in shown if "rank_corr" in f.columns and "method" in f.columns)
    assert list(sanity.method) == ["cam", "gradcam"] and list(sanity.flagged) == [True, False]
    assert any("features" in f.columns and (f.auc > 0.95).any() for f in shown)


@pytest.mark.slow
def test_source_probe_on_real_sources_through_the_pipeline(tmp_path, cxr_root):
    """covid-normal mixes three collections: the probe gets a value and a CI, and 'normal' (Kermany and
    NIH) gets a within-class probe."""
    db = tmp_path / "r.duckdb"
    spec = JobSpec(model="shallow", data=DataConfig(name="covid-normal", data_root=str(cxr_root), max_per_class=40,
                                                    image_size=48, cache_dir=str(tmp_path / "cache")),
                   train=TrainConfig(epochs=1), audit=AuditConfig(cam_methods=("gradcam",), faithfulness_sample=0,
                                                                  sanity_sample=2, n_boot=100),
                   device="cpu", checkpoint_dir=str(tmp_path / "ckpt"), progress=False)
    assert run_grid([spec], db)[0]["status"] == "done"
    with reader(db) as con:
        probes = queries.probe_results(con)
    src = probes[probes.probe.isin(["source", "source_pixels"]) & (probes.metric == "auc")]
    assert len(src) == 2 and src.value.between(0, 1).all() and src.ci_low.notna().all()
    assert (probes.metric == "auc_within:normal").sum() == 2
