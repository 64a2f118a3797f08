"""The grid on Ray (run --executor ray): a local instance with 2 CPUs stores the same rows as the
in-process executor; a task that raises is a failed run and the others go on; a resumed grid skips
done jobs; checkpoints come back to the driver when the folder is not shared; Ctrl-C cancels the
jobs left and stores no partial run. Plus the executor registry and its flags (fast)."""
from __future__ import annotations

import dataclasses
import logging
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
import torch

from benchmark.cli import main
from benchmark.cli.options import config_from_args
from benchmark.cli.parser import build_parser
from benchmark.config import AuditConfig, DataConfig, ExecutorConfig, TrainConfig
from benchmark.errors import BenchmarkError, UnknownNameError
from benchmark.pipeline import overlap
from benchmark.pipeline.executors import create_executor, list_executors
from benchmark.pipeline.executors import ray as ray_executor
from benchmark.pipeline.executors.inprocess import InProcessExecutor
from benchmark.pipeline.executors.ray import RayExecutor, worker_spec
from benchmark.pipeline.grid import run_grid
from benchmark.pipeline.spec import JobSpec
from benchmark.store import reader
from benchmark.store.schema import RUN_TABLES
from benchmark.training.checkpoints import load_checkpoint

SMALL = ["--epochs", "1", "--image-size", "64", "--device", "cpu", "--no-progress", "--n-phantom", "45",
         "--cam-methods", "cam,gradcam", "--faithfulness-sample", "2", "--n-boot", "50"]
DATA = DataConfig(image_size=64, n_phantom=45)
AUDIT = AuditConfig(cam_methods=("cam", "gradcam"), faithfulness_sample=2, n_boot=50)
# what differs between two executions of the same job: wall times and timestamps
VOLATILE = {"started_at", "finished_at", "train_images_per_s", "seen_at"}


def _spec(model: str, seed: int, ckpt: Path) -> JobSpec:
    return JobSpec(model=model, data=DATA, train=TrainConfig(epochs=1, seed=seed), audit=AUDIT, device="cpu",
                   checkpoint_dir=str(ckpt), progress=False)


def _grid(ckpt: Path) -> list[JobSpec]:
    return [_spec(m, s, ckpt) for m in ("shallow", "resnet18") for s in (0, 1)]


def _table(db: Path, table: str) -> pd.DataFrame:
    with reader(db) as con:
        df = con.execute(f"SELECT * FROM {table}").df()
    return df.drop(columns=[c for c in df.columns if c in VOLATILE or c.endswith("_seconds")])


def _same_rows(a: pd.DataFrame, b: pd.DataFrame, table: str) -> None:
    """Equal rows in any order; floats (and float16 maps) to a tolerance."""
    assert list(a.columns) == list(b.columns), table
    assert len(a) == len(b), table
    keys = [c for c in a.columns if a[c].map(lambda v: v is None or isinstance(v, str | int | bool | np.integer
                                                                                 | np.bool_)).all()]
    a, b = (d.sort_values(keys).reset_index(drop=True) for d in (a, b))
    for col in a.columns:
        x, y = a[col].tolist(), b[col].tolist()
        if pd.api.types.is_float_dtype(a[col]):
            np.testing.assert_allclose(np.array(x, float), np.array(y, float), atol=1e-4, err_msg=f"{table}.{col}")
        elif x and isinstance(x[0], bytes | bytearray):
            for u, v in zip(x, y):
                np.testing.assert_allclose(np.frombuffer(u, np.float16), np.frombuffer(v, np.float16), atol=2e-3,
                                           err_msg=f"{table}.{col}")
        elif x and isinstance(x[0], list | np.ndarray):
            for u, v in zip(x, y):
                np.testing.assert_allclose(np.array(u, float), np.array(v, float), atol=1e-4, err_msg=f"{table}.{col}")
        else:
            assert x == y, f"{table}.{col}"


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance (2 CPUs) for the module's tests; the executor uses it and leaves it running."""
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
    yield
    if started:
        ray.shutdown()


# --- the registry and the flags (fast) -----------------------------------------------------

def test_executor_flags_default_to_the_config_and_reach_it():
    assert config_from_args(ExecutorConfig, build_parser().parse_args(["run"])) == ExecutorConfig()
    args = build_parser().parse_args(["run", "--executor", "ray", "--ray-address", "auto", "--gpus-per-job", "0.25",
                                      "--cpus-per-job", "2", "--checkpoints-shared", "no"])
    assert config_from_args(ExecutorConfig, args) == ExecutorConfig(
        executor="ray", ray_address="auto", gpus_per_job=0.25, cpus_per_job=2, checkpoints_shared="no")
    assert list_executors() == ["inprocess", "ray"]
    assert isinstance(create_executor(ExecutorConfig()), InProcessExecutor)
    assert isinstance(create_executor(ExecutorConfig(executor="ray")), RayExecutor)
    with pytest.raises(UnknownNameError, match="choose one of: inprocess, ray"):
        create_executor(ExecutorConfig(executor="dask"))


def test_unknown_executor_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--executor", "dask", "--db", str(tmp_path / "r.duckdb"), *SMALL]) == 2
    assert "unknown executor 'dask'; choose one of: inprocess, ray" in capsys.readouterr().err
    assert not (tmp_path / "r.duckdb").exists()


def test_workers_get_absolute_paths_and_the_same_run(tmp_path, monkeypatch):
    """A worker has neither the driver's environment nor its working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CXR_DATA", "pack")
    monkeypatch.setenv("CXR_CACHE", "cache")
    monkeypatch.setenv("CXR_LUNG_SEGMENTER", "seg/lung_unet")
    spec = JobSpec.for_model("shallow", DataConfig(name="cohen-kermany"), train=TrainConfig(weights_dir="w"))
    ws = worker_spec(spec, tmp_path / "ckpt")
    assert ws.data.data_root == str(tmp_path / "pack") and ws.data.cache_dir == str(tmp_path / "cache")
    assert ws.audit.segmenter == str(tmp_path / "seg/lung_unet") and ws.train.weights_dir == str(tmp_path / "w")
    assert ws.checkpoint_dir == str(tmp_path / "ckpt") and ws.progress is False
    assert ws.run_id == spec.run_id  # where things are is not what the run is


def test_errors_cross_processes_whole():
    err = UnknownNameError("model", "nope", ["shallow"])
    err.args = (err.args[0] + " (did you mean shallow?)",)
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is UnknownNameError and str(back) == str(err) and back.choices == ["shallow"]


def test_impossible_resources_fail_before_anything_runs(monkeypatch):
    nodes = [{"Alive": True, "Resources": {"CPU": 2.0}}]
    monkeypatch.setattr(ray_executor.ray, "nodes", lambda: nodes)
    cpu = [JobSpec(model="shallow", device="cpu")]
    assert RayExecutor(ExecutorConfig(executor="ray")).resources(cpu) == (1, 0.0, True)  # one node: shared
    for bad, match in ((dict(gpus_per_job=0.5), "no node of the Ray cluster has that many GPUs"),
                       (dict(cpus_per_job=3), "at most 2 CPUs"), (dict(gpus_per_job=1.5), "a whole number")):
        with pytest.raises(BenchmarkError, match=match):
            RayExecutor(ExecutorConfig(executor="ray", **bad)).resources(cpu)
    with pytest.raises(BenchmarkError, match="--device cuda on Ray needs --gpus-per-job"):
        RayExecutor(ExecutorConfig(executor="ray")).resources([JobSpec(model="shallow", device="cuda")])
    nodes.append({"Alive": True, "Resources": {"CPU": 8.0, "GPU": 4.0}})
    ex = RayExecutor(ExecutorConfig(executor="ray"))
    assert ex.resources([JobSpec(model="shallow")]) == (1, 1.0, False)  # two nodes: not shared; GPUs by default
    assert RayExecutor(ExecutorConfig(executor="ray", gpus_per_job=0.25, checkpoints_shared="yes")).resources(
        [JobSpec(model="shallow")]) == (1, 0.25, True)


# --- on a local Ray instance (slow: each trains small models) ------------------------------

@pytest.mark.slow
def test_cli_on_ray_resumes_the_grid_and_stops_its_instance(tmp_path, cache_env, caplog):
    """Runs first in the module: without --ray-address the CLI starts a local instance and stops it."""
    was_running = ray.is_initialized()
    db, ckpt = tmp_path / "r.duckdb", tmp_path / "ckpt"
    common = ["run", "--data", "phantom", "--db", str(db), "--checkpoint-dir", str(ckpt), *SMALL]
    assert main([*common, "--models", "shallow"]) == 0
    before = _table(db, "runs")
    with caplog.at_level(logging.INFO, logger="benchmark.pipeline.grid"):
        assert main([*common, "--models", "shallow,resnet18", "--executor", "ray"]) == 0
    assert "already done, skipped" in caplog.text
    with reader(db) as con:
        runs = con.execute("SELECT run_id, model, status, finished_at FROM runs").df()
    assert sorted(runs.model) == ["resnet18", "shallow"] and set(runs.status) == {"done"}
    with reader(db) as con:
        kept = con.execute("SELECT finished_at FROM runs WHERE model = 'shallow'").fetchone()[0]
        first = con.execute("SELECT finished_at FROM runs WHERE run_id = ?", [before.run_id[0]]).fetchone()[0]
    assert kept == first  # the done run was not redone
    assert ray.is_initialized() == was_running


@pytest.mark.slow
def test_ray_grid_stores_the_rows_of_the_inprocess_grid(tmp_path, cache_env, local_ray):
    ckpt = tmp_path / "ckpt"
    specs = _grid(ckpt)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a task holding 1 CPU runs
    try:
        local = run_grid(specs, tmp_path / "local.duckdb")
    finally:
        torch.set_num_threads(threads)
    on_ray = run_grid(specs, tmp_path / "ray.duckdb", executor=RayExecutor(ExecutorConfig(executor="ray")))
    assert [s["status"] for s in local] == [s["status"] for s in on_ray] == ["done"] * 4
    assert local == on_ray
    for table in ("runs", "images", "rejected_images", *RUN_TABLES):
        _same_rows(_table(tmp_path / "local.duckdb", table), _table(tmp_path / "ray.duckdb", table), table)
    assert len(_table(tmp_path / "ray.duckdb", "cams")) > 0 and len(_table(tmp_path / "ray.duckdb", "metrics")) > 0
    assert ray.is_initialized()  # the executor did not stop an instance it did not start


@pytest.mark.slow
def test_failed_task_is_a_failed_run_and_checkpoints_come_back(tmp_path, cache_env, local_ray, monkeypatch):
    """Not shared: the worker saves the checkpoint in a temporary folder and returns its files; the
    driver writes them under --checkpoint-dir. A task that raises stores its reason; the other goes on."""
    ckpt = tmp_path / "ckpt"
    good = _spec("shallow", 0, ckpt)
    bad = dataclasses.replace(good, model="no_such_model")
    written = []
    real_write = ray_executor.write_checkpoint_files
    monkeypatch.setattr(ray_executor, "write_checkpoint_files", lambda files, stem: written.append(stem) or
                        real_write(files, stem))
    db = tmp_path / "r.duckdb"
    statuses = run_grid([bad, good], db, executor=RayExecutor(ExecutorConfig(executor="ray",
                                                                             checkpoints_shared="no")))
    assert [s["status"] for s in statuses] == ["failed", "done"]
    assert statuses[0]["error"].startswith("unknown model 'no_such_model'; choose one of:")
    runs = _table(db, "runs").set_index("run_id")
    assert runs.loc[bad.run_id, "status"] == "failed"
    assert runs.loc[bad.run_id, "error"].startswith("UnknownNameError: unknown model 'no_such_model'")
    for table in RUN_TABLES:
        assert bad.run_id not in set(_table(db, table).run_id), table  # no partial rows
    path = Path(runs.loc[good.run_id, "checkpoint_path"])
    assert path == ckpt / "phantom~n45" / f"{good.run_id}.safetensors" and path.is_file()  # <dataset>/<run id>
    assert written == [path.with_suffix("")]
    model, meta = load_checkpoint(path)
    assert meta["run_id"] == good.run_id and meta["architecture"] == "shallow"


@pytest.mark.slow
def test_ctrl_c_cancels_the_jobs_left_and_stores_no_partial_run(tmp_path, cache_env, local_ray, monkeypatch):
    """Two quick jobs, then two that would train for minutes (no early stop). Ctrl-C reaches the
    driver while it waits for the long ones (as a real one does: in the main thread, inside
    ray.wait), after both quick runs are stored: the long jobs are cancelled, not waited for."""
    quick = [_spec("shallow", s, tmp_path / "ckpt") for s in range(2)]
    long = [dataclasses.replace(_spec("shallow", s, tmp_path / "ckpt"),
                                train=TrainConfig(epochs=5000, patience=5000, seed=s)) for s in (2, 3)]
    stored, cancelled = [], []

    def write_and_record(db, bundle):
        real_write(db, bundle)
        stored.append(bundle.run["run_id"])

    def wait_then_interrupt(refs, **kw):
        if len(stored) == 2:
            raise KeyboardInterrupt
        return real_wait(refs, **kw)

    real_write, real_cancel, real_wait = overlap.write_run, ray.cancel, ray.wait
    monkeypatch.setattr(overlap, "write_run", write_and_record)  # the grid's background writer
    monkeypatch.setattr(ray_executor.ray, "wait", wait_then_interrupt)
    monkeypatch.setattr(ray_executor.ray, "cancel", lambda ref, **kw: cancelled.append(ref) or real_cancel(ref, **kw))
    db = tmp_path / "r.duckdb"
    with pytest.raises(KeyboardInterrupt):
        run_grid(quick + long, db, executor=RayExecutor(ExecutorConfig(executor="ray")))
    monkeypatch.setattr(ray_executor.ray, "wait", real_wait)
    runs = _table(db, "runs")
    assert sorted(runs.run_id) == sorted(s.run_id for s in quick) and set(runs.status) == {"done"}
    for table in RUN_TABLES:
        assert set(_table(db, table).run_id) <= set(stored), table
    assert len(cancelled) == 2  # the two long jobs
    outcomes = []
    for ref in cancelled:
        try:
            ray.get(ref, timeout=60)
            outcomes.append("finished")
        except ray.exceptions.TaskCancelledError:
            outcomes.append("cancelled")
    assert outcomes == ["cancelled", "cancelled"]
