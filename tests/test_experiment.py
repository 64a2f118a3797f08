"""Experiments as data: shipped grids, ad-hoc comma lists, the external matrix, growing a grid."""
from __future__ import annotations

import json

import pytest

from benchmark.cli import main
from benchmark.cli.parser import build_parser
from benchmark.cli.run import specs_from_args
from benchmark.errors import BenchmarkError, UnknownNameError
from benchmark.models import ROSTERS
from benchmark.pipeline.experiment import experiment_from_table, load_experiment, shipped_experiments
from benchmark.store import reader

STUDY = ("cohen-kermany", "cohen-nih", "covid-normal")


@pytest.mark.parametrize("name", ["paper", "paper-cpu"])
def test_shipped_experiments_are_the_studys_grid(name):
    exp = load_experiment(name)
    specs = exp.specs(device="cpu")
    assert exp.datasets == STUDY and set(exp.models) == set(ROSTERS["paper"]) and exp.seeds == (0, 1, 2)
    assert len(specs) == 3 * 15 * 3 and len({s.run_id for s in specs}) == len(specs)
    assert exp.audit.cam_methods == ("cam", "gradcam", "hirescam@stride16") and exp.audit.probes
    classes = {"cohen-kermany": ["normal", "bacterial_pneumonia", "viral_pneumonia", "covid"],
               "cohen-nih": ["normal", "pneumonia", "covid"], "covid-normal": ["normal", "covid"]}
    assert sorted(exp.external_pairs(classes)) == sorted((a, b) for a in STUDY for b in STUDY if a != b)


def test_paper_cpu_is_sized_for_two_cores():
    cpu, full = load_experiment("paper-cpu"), load_experiment("paper")
    assert cpu.data.max_per_class and cpu.data.image_size and cpu.train.epochs < full.train.epochs
    assert full.data.image_size is None  # each architecture at its own input size
    assert {s.data.image_size for s in full.specs()} == {224, 299}
    assert "paper-cpu" in shipped_experiments()


def test_bad_experiments_fail_with_the_valid_choices(tmp_path):
    with pytest.raises(UnknownNameError, match="paper-cpu"):
        load_experiment("no-such-experiment")
    with pytest.raises(BenchmarkError, match="unknown keys.*valid"):
        experiment_from_table("x", {"datasets": ["phantom"], "models": ["shallow"], "sedes": [1]})
    with pytest.raises(BenchmarkError, match=r"\[train\] has unknown keys \['epoch'\]"):
        experiment_from_table("x", {"datasets": ["phantom"], "models": ["shallow"], "train": {"epoch": 1}})
    with pytest.raises(UnknownNameError):
        experiment_from_table("x", {"datasets": ["phantom"], "models": ["resnet19"]})
    bad = tmp_path / "bad.toml"
    bad.write_text("datasets = [")
    with pytest.raises(BenchmarkError, match="not valid TOML"):
        load_experiment(str(bad))


def test_a_dataset_can_override_the_data_table():
    exp = experiment_from_table("x", {"datasets": ["covid-normal", "cohen-nih"], "models": ["shallow"],
                                      "data": {"max_per_class": 200, "image_size": 80,
                                               "covid-normal": {"max_per_class": 400}}})
    caps = {s.data.name: (s.data.max_per_class, s.data.image_size) for s in exp.specs()}
    assert caps == {"covid-normal": (400, 80), "cohen-nih": (200, 80)}
    assert exp.data.max_per_class == 200 and exp.dataset_data("cohen-nih").max_per_class == 200
    with pytest.raises(BenchmarkError, match=r"\[data.phantom\] names no dataset of the experiment"):
        experiment_from_table("x", {"datasets": ["covid-normal"], "models": ["shallow"],
                                    "data": {"phantom": {"max_per_class": 4}}})
    with pytest.raises(BenchmarkError, match=r"\[data.covid-normal\] has unknown keys \['max_per_klass'\]"):
        experiment_from_table("x", {"datasets": ["covid-normal"], "models": ["shallow"],
                                    "data": {"covid-normal": {"max_per_klass": 4}}})


def test_an_auto_set_is_scored_as_its_own_runs_select_it():
    from benchmark.pipeline.experiment import external_spec

    exp = experiment_from_table("x", {"datasets": ["covid-normal", "cohen-nih"],
                                      "models": ["shallow"],
                                      "data": {"max_per_class": 200, "covid-normal": {"max_per_class": 400}}})
    by_name = {s.data.name: s for s in exp.specs()}
    nih, cn = by_name["cohen-nih"], by_name["covid-normal"]
    assert external_spec(nih, "covid-normal", cn.data).data.max_per_class == 400
    assert external_spec(cn, "cohen-nih", nih.data).data.max_per_class == 200
    assert external_spec(nih, "covid-normal").data.max_per_class == 200  # no run of its own: the scorer's
    assert external_spec(cn, "external-covid-normal", nih.data).data.max_per_class is None  # never capped


def test_data_and_seed_take_comma_lists():
    args = build_parser().parse_args(["run", "--data", "phantom,phantom-clean", "--seed", "0,3", "--models",
                                      "shallow", "--epochs", "2"])
    specs = specs_from_args(args)
    assert [(s.data.name, s.train.seed) for s in specs] == [("phantom", 0), ("phantom", 3),
                                                             ("phantom-clean", 0), ("phantom-clean", 3)]
    assert all(s.train.epochs == 2 for s in specs) and len({s.run_id for s in specs}) == 4
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--seed", "zero"])


def _write_experiment(path, seeds):
    path.write_text(f"""
datasets = ["phantom", "phantom-clean"]
models = ["shallow"]
seeds = {list(seeds)}
[data]
n_phantom = 45
image_size = 64
[train]
epochs = 1
[audit]
cam_methods = ["gradcam"]
faithfulness_sample = 0
n_boot = 20
""")


def _externals(db):
    with reader(db) as con:
        return con.execute("SELECT run_id, probe, value, detail FROM probes WHERE probe LIKE 'external:%' "
                           "ORDER BY run_id, probe").fetchall()


@pytest.mark.slow
def test_experiment_runs_its_grid_and_external_matrix_and_grows(tmp_path, cache_env, capsys):
    exp, db = tmp_path / "grid.toml", tmp_path / "r.duckdb"
    _write_experiment(exp, [0])
    args = ["run", "--experiment", str(exp), "--db", str(db), "--checkpoint-dir", str(tmp_path / "ck"),
            "--device", "cpu", "--no-progress"]
    assert main(args) == 0
    assert "external validation: 2 scored, 0 already stored, 0 failed" in capsys.readouterr().out
    with reader(db) as con:
        runs = con.execute("SELECT run_id, dataset, seed FROM runs WHERE status = 'done'").fetchall()
        ext_metrics = con.execute("SELECT DISTINCT run_id, split FROM metrics WHERE split LIKE 'external:%'").fetchall()
    assert sorted(d for _, d, _ in runs) == ["phantom-clean~n45", "phantom~n45"]
    by_run = {r: d for r, d, _ in runs}
    # every checkpoint scored on the other dataset (same classes), with its internal accuracy beside
    assert sorted((by_run[r], s) for r, s in ext_metrics) == [("phantom-clean~n45", "external:phantom~n45"),
                                                               ("phantom~n45", "external:phantom-clean~n45")]
    first = _externals(db)
    assert len(first) == 2 and all(json.loads(d)["internal_test_accuracy"] is not None for *_, d in first)
    assert all(json.loads(d)["n_images"] == 45 for *_, d in first)  # separate phantoms: nothing seen, all scored

    _write_experiment(exp, [0, 1])  # grown: one more seed
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "external validation: 2 scored, 2 already stored, 0 failed" in out
    with reader(db) as con:
        seeds = sorted(con.execute("SELECT seed FROM runs WHERE status = 'done'").fetchall())
    assert seeds == [(0,), (0,), (1,), (1,)]
    assert set(first) <= set(_externals(db))  # the stored external rows were not redone


@pytest.mark.slow
def test_external_leaves_out_images_the_model_trained_on(tmp_path, cache_env, cxr_root):
    """covid-normal and cohen-nih share the Cohen covid images: those a model trained or validated
    on are not counted as external evidence."""
    from benchmark.config import AuditConfig, DataConfig, TrainConfig
    from benchmark.data.datasets import load_dataset
    from benchmark.pipeline.external import image_identity, run_external_matrix
    from benchmark.pipeline.grid import run_grid
    from benchmark.pipeline.spec import JobSpec

    db = tmp_path / "r.duckdb"
    data = DataConfig(name="covid-normal", data_root=str(cxr_root), max_per_class=8, image_size=64)
    spec = JobSpec.for_model("shallow", data, train=TrainConfig(epochs=1),
                             audit=AuditConfig(cam_methods=("gradcam",), faithfulness_sample=0, n_boot=20),
                             device="cpu", checkpoint_dir=str(tmp_path / "ck"), progress=False)
    loaded: dict = {}
    assert run_grid([spec], db, loaded=loaded)[0]["status"] == "done"
    statuses = run_external_matrix([("covid-normal", "cohen-nih")], [spec], db, loaded=loaded)
    assert [s["status"] for s in statuses] == ["done"]
    source = load_dataset("covid-normal", data_root=cxr_root, max_per_class=8)
    target = load_dataset("cohen-nih", data_root=cxr_root, max_per_class=8)
    seen = {image_identity(r) for r in source.records if r.split in ("train", "val")}
    known = [r for r in target.records if r.label in ("normal", "covid")]
    overlap = sum(image_identity(r) in seen for r in known)
    assert overlap > 0  # the shared Cohen covid images
    (_, _, _, detail), = _externals(db)
    detail = json.loads(detail)
    assert detail["n_left_out_seen"] == overlap and detail["n_images"] == len(known) - overlap
    with reader(db) as con:
        scored = {r[0] for r in con.execute("SELECT i.path FROM predictions p JOIN images i USING (image_id) "
                                            "WHERE p.split LIKE 'external:%'").fetchall()}
    assert not scored & {path for _, path in seen}
