"""External sets as data: the external pack by name, the rule for a model scored on some of its
classes, experiments that list sets, and the matrix scoring every checkpoint on them."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from benchmark.errors import BenchmarkError
from benchmark.pipeline.experiment import experiment_from_table, load_experiment
from benchmark.store import reader
from benchmark.training.metrics import set_metric_values, set_metrics_with_ci

EXTERNAL = "external-covid-normal"
CLASSES = {"cohen-kermany": ["normal", "bacterial_pneumonia", "viral_pneumonia", "covid"],
           "cohen-nih": ["normal", "pneumonia", "covid"], "covid-normal": ["normal", "covid"],
           EXTERNAL: ["normal", "covid"]}


def test_a_four_class_model_on_a_two_class_set_follows_one_rule():
    classes = ["normal", "bacterial_pneumonia", "viral_pneumonia", "covid"]
    rng = np.random.default_rng(0)
    y = rng.choice([0, 3], size=60)                      # the set has normal and covid only
    probs = rng.dirichlet(np.ones(4), size=60)
    probs[y == 3, 3] += 0.4                               # covid images lean to covid
    probs /= probs.sum(1, keepdims=True)
    values = {k: float(v[0]) for k, v in set_metric_values(y, probs, [0, 3], np.ones((1, 60))).items()}
    pred = probs.argmax(1)
    assert values["set_auc"] == pytest.approx(roc_auc_score(y == 3, probs[:, 3]))
    assert values["accuracy"] == pytest.approx(np.mean(pred == y))
    recall = [np.mean(pred[y == k] == k) for k in (0, 3)]
    assert values["balanced_accuracy"] == pytest.approx(np.mean(recall))
    assert values["off_set_share"] == pytest.approx(np.mean(~np.isin(pred, [0, 3])))
    assert 0 < values["off_set_share"] < 1                # the rule's third number is not trivially 0

    rows = {m.metric: m for m in set_metrics_with_ci(y, probs, classes, ["normal", "covid"],
                                                     [f"p{i // 2}" for i in range(60)], n_boot=200, seed=1)}
    assert set(rows) == {"accuracy", "balanced_accuracy", "set_auc", "off_set_share"}
    for m in rows.values():
        assert m.ci_low <= m.value <= m.ci_high and m.ci_low < m.ci_high


def test_more_than_two_set_classes_average_one_vs_rest_auc():
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    probs = np.eye(4)[[0, 1, 2, 3, 1, 2, 0, 0]] * 0.7 + 0.075
    values = set_metric_values(y, probs, [0, 1, 2], np.ones((1, 8)))
    expected = np.mean([roc_auc_score(y == k, probs[:, k]) for k in (0, 1, 2)])
    assert values["set_auc"][0] == pytest.approx(expected)
    assert values["off_set_share"][0] == pytest.approx(1 / 8)  # one image sent to class 3


def test_set_rule_refuses_classes_the_model_lacks():
    with pytest.raises(ValueError, match="not among the model's classes"):
        set_metrics_with_ci(np.array([0, 1]), np.eye(2), ["normal", "covid"], ["normal", "pneumonia"], ["a", "b"])
    with pytest.raises(ValueError, match="every label"):
        set_metrics_with_ci(np.array([0, 2, 1]), np.eye(3), ["normal", "x", "covid"], ["normal", "x"], ["a", "b", "c"])


def test_experiments_list_external_sets_by_name():
    exp = experiment_from_table("x", {"datasets": list(CLASSES)[:3], "models": ["shallow"],
                                      "external": ["auto", EXTERNAL, {"train": "covid-normal", "test": "phantom"}]})
    assert exp.external_sets() == [EXTERNAL]
    pairs = exp.external_pairs(CLASSES)
    assert [p for p in pairs if p[1] == EXTERNAL] == [(d, EXTERNAL) for d in list(CLASSES)[:3]]
    assert ("covid-normal", "phantom") in pairs and ("cohen-nih", "covid-normal") in pairs
    assert len(pairs) == len(set(pairs))
    # a set whose classes a dataset lacks is not scored by that dataset's models
    narrow = experiment_from_table("x", {"datasets": ["covid-normal", "cohen-nih"], "models": ["shallow"],
                                         "external": ["cohen-nih"]})
    assert narrow.external_pairs(CLASSES) == [("cohen-nih", "cohen-nih")]
    none = experiment_from_table("x", {"datasets": ["phantom"], "models": ["shallow"], "external": "none"})
    assert none.external == ()
    for bad in (3, ["auto", 3], [{"train": "a"}], [""]):
        with pytest.raises(BenchmarkError, match="external must be"):
            experiment_from_table("x", {"datasets": ["phantom"], "models": ["shallow"], "external": bad})


def test_study_cpu_is_the_grid_the_issue_asks_for():
    exp = load_experiment("study-cpu")
    assert set(exp.datasets) == set(CLASSES) - {EXTERNAL} and len(exp.models) >= 8
    for family in ("shallow", "resnet", "densenet", "vgg", "googlenet"):
        assert any(m.startswith(family) for m in exp.models), family
    assert exp.data.max_per_class and exp.data.image_size and exp.audit.faithfulness_sample > 0
    assert exp.external == ("auto", EXTERNAL)


def test_the_external_pack_loads_by_name(external_root, cxr_root):
    from benchmark.data.datasets import load_dataset

    ds = load_dataset(EXTERNAL, external_root=external_root)
    counts = {c: sum(r.label == c for r in ds.records) for c in ds.classes}
    assert ds.classes == ["normal", "covid"] and counts == {"normal": 274, "covid": 223}
    assert {r.source for r in ds.records} == {"hannover", "openist"}
    assert {r.mask_source for r in ds.records if r.source == "openist"} == {"gt-openist"}
    assert not any(r.mask_path for r in ds.records if r.source == "hannover")
    assert len({r.patient_id for r in ds.records if r.source == "hannover"}) == 59
    main = load_dataset("covid-normal", data_root=cxr_root)
    assert not {r.path for r in ds.records} & {r.path for r in main.records}


def test_an_external_preset_needs_its_root(monkeypatch):
    from benchmark.data.datasets import load_dataset

    monkeypatch.delenv("CXR_EXTERNAL", raising=False)
    with pytest.raises(BenchmarkError, match=r"--external-root.*\$CXR_EXTERNAL"):
        load_dataset(EXTERNAL)


@pytest.mark.slow
def test_every_checkpoint_is_scored_on_its_sets_with_one_model_load(tmp_path, cache_env, cxr_root, external_root,
                                                                   monkeypatch):
    """A 3-class cohen-nih model scored on covid-normal (auto) and on the external pack: one model
    load for both, the set rule's rows beside the internal ones, lung measures and the lung probes
    on the external images."""
    from benchmark.config import AuditConfig, DataConfig, TrainConfig
    from benchmark.pipeline import external
    from benchmark.pipeline.grid import run_grid
    from benchmark.pipeline.spec import JobSpec

    db = tmp_path / "r.duckdb"
    data = DataConfig(name="cohen-nih", data_root=str(cxr_root), external_root=str(external_root),
                      max_per_class=20, image_size=64)
    spec = JobSpec.for_model("shallow", data, train=TrainConfig(epochs=1),
                             audit=AuditConfig(cam_methods=("gradcam",), faithfulness_sample=0, n_boot=30,
                                               sanity_sample=0),
                             device="cpu", checkpoint_dir=str(tmp_path / "ck"), progress=False)
    loaded: dict = {}
    assert run_grid([spec], db, loaded=loaded)[0]["status"] == "done"
    loads = []
    real_load = external.load_checkpoint
    monkeypatch.setattr(external, "load_checkpoint", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    statuses = external.run_external_matrix([("cohen-nih", "covid-normal"), ("cohen-nih", EXTERNAL)], [spec], db,
                                            loaded=loaded)
    assert [s["status"] for s in statuses] == ["done", "done"] and len(loads) == 1
    split = f"external:{EXTERNAL}"
    with reader(db) as con:
        metrics = {r[0]: r[1:] for r in con.execute(
            "SELECT metric, value, ci_low, ci_high FROM metrics WHERE split = ? AND class_name = ''",
            [split]).fetchall()}
        n_pred = con.execute("SELECT count(*) FROM predictions WHERE split = ?", [split]).fetchone()[0]
        cams = con.execute("SELECT count(*), count(lung_mass), count(DISTINCT image_id) FROM cams "
                           "WHERE split = ? AND target_kind = 'pred'", [split]).fetchone()
        probes = {r[0] for r in con.execute("SELECT probe FROM probes").fetchall()}
        test = con.execute("SELECT label, probs FROM predictions WHERE split = 'test'").fetchall()
    for name in ("set_auc", "off_set_share", "internal_set_auc", "internal_balanced_accuracy", "internal_accuracy",
                 "accuracy", "balanced_accuracy"):
        value, low, high = metrics[name]
        assert value is not None and low is not None and low <= value <= high, name
    assert n_pred == 497                                   # the external pack is scored whole, never capped
    assert cams[0] == 497 and cams[1] == 497               # every external image has its lung measures
    assert {f"{p}@{split}" for p in ("intact", "lungs_removed", "lungs_only")} <= probes
    assert split in probes and "external:covid-normal~max20" in probes  # the auto pair keeps the cap
    # the internal rows are the same rule on the run's own test images of the set's classes
    kept = [(label, p) for label, p in test if label in ("normal", "covid")]
    y = np.array([["normal", "pneumonia", "covid"].index(label) for label, _ in kept])
    expected = set_metric_values(y, np.array([p for _, p in kept]), [0, 2], np.ones((1, len(kept))))
    assert metrics["internal_set_auc"][0] == pytest.approx(float(expected["set_auc"][0]))
    # stored once: the same pairs again are skipped, not redone
    again = external.run_external_matrix([("cohen-nih", EXTERNAL)], [spec], db, loaded=loaded)
    assert [s["status"] for s in again] == ["skipped"] and len(loads) == 1
