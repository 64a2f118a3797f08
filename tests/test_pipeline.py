"""End to end: CLI runs on the phantom, on real X-rays and on a folder with a corrupt file;
a killed run leaves nothing and a rerun completes it."""
from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.config import DataConfig, TrainConfig
from benchmark.pipeline.spec import JobSpec
from benchmark.store import queries, reader
from tests.conftest import REPO, write_png

SMALL = ["--epochs", "1", "--image-size", "64", "--device", "cpu", "--no-progress", "--n-phantom", "45"]


def _tables(db, run_id):
    with reader(db) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [run_id]).fetchone()[0]
                for t in ("runs", "predictions", "metrics")}


@pytest.mark.slow
def test_phantom_run_writes_everything(tmp_path, cache_env, capsys, caplog):
    db = tmp_path / "r.duckdb"
    rc = main(["run", "--data", "phantom", "--models", "shallow,resnet18", "--db", str(db),
               "--checkpoint-dir", str(tmp_path / "ckpt"), *SMALL])
    assert rc == 0
    out = capsys.readouterr().out
    assert "Summary" in out and "resnet18" in out and "python -m dashboard --db" in out
    with reader(db) as con:
        runs = queries.runs(con)
        assert sorted(runs.model) == ["resnet18", "shallow"]
        assert set(runs.status) == {"done"} and not runs.pretrained.any()
        n_test = con.execute("SELECT count(*) FROM images WHERE split = 'test'").fetchone()[0]
        for run_id in runs.run_id:
            preds = queries.predictions(con, run_id)
            assert len(preds) == n_test and preds.image_id.is_unique
            assert all(abs(sum(p) - 1) < 1e-6 for p in preds.probs)
            m = queries.metrics(con, run_id, "test")
            acc = m[m.metric == "accuracy"].iloc[0]
            assert acc.ci_low <= acc.value <= acc.ci_high
            assert {"sensitivity", "specificity", "precision", "f1", "macro_auc", "confusion"} <= set(m.metric)
        # splits stored, patient-disjoint
        img = queries.images(con)
        assert img.groupby("patient_id").split.nunique().max() == 1
    # checkpoint: safetensors + sidecar
    sidecars = list((tmp_path / "ckpt").rglob("*.json"))
    assert len(sidecars) == 2
    meta = json.loads(sidecars[0].read_text())
    assert {"architecture", "classes", "input_size", "normalization", "dataset", "metrics", "git_commit"} <= set(meta)
    assert sidecars[0].with_suffix(".safetensors").is_file()
    # rerun skips what is done: the stored run is not redone (same finish time) and the log says so
    with reader(db) as con:
        before = queries.runs(con).set_index("run_id").finished_at
    with caplog.at_level(logging.INFO, logger="benchmark.pipeline.grid"):
        assert main(["run", "--data", "phantom", "--models", "shallow", "--db", str(db),
                     "--checkpoint-dir", str(tmp_path / "ckpt"), *SMALL]) == 0
    assert "already done, skipped" in caplog.text
    with reader(db) as con:
        after = queries.runs(con).set_index("run_id").finished_at
    assert len(after) == 2 and after.sort_index().equals(before.sort_index())


@pytest.mark.slow
def test_corrupt_file_rejected_and_run_completes(tmp_path, cache_env, bad_inputs):
    data = tmp_path / "folder"
    for cls in ("covid", "normal"):
        for i in range(12):
            write_png(data / cls / f"{i}.png", seed=i + (100 if cls == "covid" else 0), size=40)
    shutil.copy(bad_inputs / "truncated.jpg", data / "covid" / "broken.jpg")
    shutil.copy(bad_inputs / "zero-bytes.png", data / "normal" / "empty.png")
    db = tmp_path / "r.duckdb"
    rc = main(["run", "--data", str(data), "--models", "shallow", "--db", str(db),
               "--checkpoint-dir", str(tmp_path / "ckpt"), *SMALL])
    assert rc == 0
    with reader(db) as con:
        rej = queries.rejected(con)
        reasons = dict(zip(rej.path.map(lambda p: Path(p).name), rej.reason))
        assert reasons == {"broken.jpg": "truncated or corrupt image", "empty.png": "empty file"}
        assert queries.runs(con).status.tolist() == ["done"]
        assert len(queries.images(con)) == 24


@pytest.mark.slow
def test_real_xrays_cohen_kermany(tmp_path, cache_env, cxr_root):
    db = tmp_path / "r.duckdb"
    rc = main(["run", "--data", "cohen-kermany", "--data-root", str(cxr_root), "--models", "shallow",
               "--max-per-class", "25", "--db", str(db), "--checkpoint-dir", str(tmp_path / "ckpt"), *SMALL])
    assert rc == 0
    with reader(db) as con:
        run = queries.runs(con).iloc[0]
        assert run.status == "done" and run.dataset == "cohen-kermany~max25"
        assert json.loads(run.classes_json) == ["normal", "bacterial_pneumonia", "viral_pneumonia", "covid"]
        img = queries.images(con)
        assert set(img.source) == {"cohen", "kermany"}
        assert len(queries.predictions(con, run.run_id)) == (img.split == "test").sum()


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_pretrained_without_weights_stops_with_file_name(tmp_path, cache_env, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    rc = main(["run", "--data", "phantom", "--models", "resnet18", "--pretrained", "--db", str(tmp_path / "r.duckdb"),
               "--checkpoint-dir", str(tmp_path / "ckpt"), *SMALL])
    assert rc == 2
    err = capsys.readouterr().err
    assert "resnet18-f37072fd.pth" in err and "--weights-dir" in err
    with reader(tmp_path / "r.duckdb") as con:
        assert con.execute("SELECT count(*) FROM predictions").fetchone()[0] == 0


@pytest.mark.slow
def test_killed_run_leaves_no_rows_and_rerun_completes(tmp_path, cache_env):
    """Kill the CLI while the second model trains: the first run is stored whole, the second not at all."""
    db = tmp_path / "r.duckdb"
    args = [sys.executable, "-m", "benchmark", "run", "--data", "phantom", "--models", "shallow,resnet18",
            "--db", str(db), "--checkpoint-dir", str(tmp_path / "ckpt"), "--epochs", "12", "--patience", "12",
            "--image-size", "64", "--device", "cpu", "--no-progress", "--n-phantom", "45"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stderr.readline()
            if "resnet18 on" in line:  # the second job has started training
                break
            assert proc.poll() is None, "run ended before it could be killed"
        time.sleep(2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    with reader(db) as con:
        runs = queries.runs(con)
    assert runs.model.tolist() == ["shallow"] and runs.status.tolist() == ["done"]
    killed_id = JobSpec(model="resnet18", data=DataConfig(image_size=64, n_phantom=45),
                        train=TrainConfig(epochs=12, patience=12)).run_id
    assert _tables(db, killed_id) == {"runs": 0, "predictions": 0, "metrics": 0}
    # rerun with fewer epochs to keep it short: a different run id, so check the same command instead
    rc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert rc.returncode == 0, rc.stderr[-2000:]
    assert "already done" in rc.stderr
    t = _tables(db, killed_id)
    assert t["runs"] == 1 and t["predictions"] > 0 and t["metrics"] > 0


@pytest.mark.slow
def test_every_bad_input_through_a_full_run(tmp_path, cache_env, bad_inputs):
    """Import, masks, CAMs (every method) and probes over the hostile files: each is used or
    rejected with its reason, and the run completes."""
    data = tmp_path / "folder"
    for cls in ("covid", "normal"):
        for i in range(10):
            write_png(data / cls / f"{i}.png", seed=i + (50 if cls == "covid" else 0), size=40)
    bad = sorted(p for p in bad_inputs.iterdir() if p.name != "README.md")
    for i, f in enumerate(bad):
        shutil.copy(f, data / ("covid" if i % 2 else "normal") / f"bad-{f.name}")
    db = tmp_path / "r.duckdb"
    rc = main(["run", "--data", str(data), "--models", "shallow", "--db", str(db), "--checkpoint-dir",
               str(tmp_path / "ck"), "--cam-methods", "cam,gradcam,gradcam++,hirescam,scorecam,layercam,eigencam",
               "--faithfulness-sample", "2", *SMALL])
    assert rc == 0
    with reader(db) as con:
        rejected = dict(zip(queries.rejected(con).path.map(lambda p: Path(p).name[4:]), queries.rejected(con).reason))
        kept = set(queries.images(con).path.map(lambda p: Path(p).name))
        cams = con.execute("SELECT * FROM cams").df()
    assert set(rejected) | {k[4:] for k in kept if k.startswith("bad-")} == {f.name for f in bad}
    for name in ("truncated.jpg", "zero-bytes.png", "text-named.png", "html-named.jpg", "bomb-20000x20000.png",
                 "random-bytes.dcm", "truncated.dcm"):
        assert name in rejected, name
    assert "bomb" in rejected["bomb-20000x20000.png"] and "empty" in rejected["zero-bytes.png"]
    for name in ("all-black.png", "all-white.png", "gray16.png", "dx-monochrome1-12bit.dcm", "large-6000x5000.jpg"):
        assert f"bad-{name}" in kept, name
    maps = np.stack([queries.cam_array(r) for _, r in cams.iterrows()])
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
