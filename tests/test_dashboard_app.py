"""The dashboard's shell: settings resolution, the `python -m dashboard` launcher, the sidebar."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from dashboard import __main__ as launcher
from dashboard.settings import DashboardSettings, resolve_settings
from tests.conftest import REPO
from tests.fixtures_db import FakeResultsSpec, build_results_db, open_page


def test_flags_win_over_environment_and_defaults():
    env = {"CXR_RESULTS_DB": "/env/r.duckdb", "CXR_CHECKPOINTS": "/env/ck", "CXR_DB_LOCK_WAIT_S": "0.5"}
    s = resolve_settings(["--db", "/flag/r.duckdb"], env)
    assert s.db_path == Path("/flag/r.duckdb") and s.checkpoints_dir == Path("/env/ck") and s.lock_wait_s == 0.5
    d = resolve_settings([], {})
    assert d.db_path == Path("results.duckdb") and d.checkpoints_dir == Path("checkpoints")
    assert d.segmenter_stem is None


def test_foreign_arguments_are_ignored_not_abbreviated():
    """pytest's or streamlit's own flags reach the script's argv; none may be taken for ours."""
    s = resolve_settings(["tests/x.py", "-q", "--d", "/nope", "--durations=5", "--db=/yes.duckdb"], {})
    assert s.db_path == Path("/yes.duckdb")


def test_settings_validate_upload_limit():
    with pytest.raises(ValueError, match="max_upload_mb"):
        DashboardSettings(db_path=Path("x"), checkpoints_dir=Path("y"), max_upload_mb=0)


def test_launcher_builds_the_streamlit_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = launcher.build_parser().parse_args(["--db", "r.duckdb", "--port", "8611"])
    cmd = launcher.streamlit_command(args)
    assert cmd[1:4] == ["-m", "dashboard.serve", "run"] and cmd[4].endswith("dashboard/app.py")
    assert cmd[cmd.index("--server.port") + 1] == "8611"
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == "50"
    after = cmd[cmd.index("--") + 1:]
    assert after[after.index("--db") + 1] == str(tmp_path / "r.duckdb")  # relative to the caller
    assert after[after.index("--checkpoint-dir") + 1] == str(tmp_path / "checkpoints")
    assert "--live-workers" not in after  # the app's own default (settings.LIVE_WORKERS)
    cmd = launcher.streamlit_command(launcher.build_parser().parse_args(["--live-workers", "0"]))
    assert cmd[cmd.index("--live-workers") + 1] == "0"
    assert resolve_settings(cmd[cmd.index("--") + 1:], {}).live_workers == 0  # the app reads what was passed


def test_server_process_starts_the_workers_or_the_imports_before_streamlit(monkeypatch):
    """dashboard.serve: before streamlit's command line runs (with the arguments unchanged) the
    live CAM's worker processes are started; only with --live-workers 0, when the models run in
    the server, are torch's imports started in the server."""
    from streamlit.web import cli

    from dashboard import live, model_worker, serve

    spawned = []

    class FakeProcess:  # what would be a worker subprocess importing torch
        def __init__(self):
            spawned.append(self)

    monkeypatch.setattr(model_worker, "_SHARED", {})
    monkeypatch.setattr(model_worker, "_Process", FakeProcess)
    seen = []
    monkeypatch.setattr(live, "_warm_thread", None)
    monkeypatch.setattr(live, "_import_all", lambda: None)  # the thread, not the imports, is under test
    monkeypatch.setattr(cli.main, "main", lambda args, prog_name: seen.append((args, prog_name,
                                                                               live._warm_thread)) or 0)
    assert serve.main(["run", "app.py", "--server.port", "1", "--", "--db", "r.duckdb"]) == 0
    (args, prog, thread), = seen
    assert args == ["run", "app.py", "--server.port", "1", "--", "--db", "r.duckdb"] and prog == "streamlit"
    assert thread is None  # the models run in the worker: the server imports no torch
    assert len(spawned) == 1  # the live CAM's worker process was started at launch (settings.LIVE_WORKERS)
    assert model_worker.shared(1) is model_worker._SHARED[1] and len(spawned) == 1  # the pages get that one
    serve.main(["run", "app.py", "--", "--db", "r.duckdb", "--live-workers", "0"])
    assert len(spawned) == 1 and 0 in model_worker._SHARED  # 0: no process, the models run in the server
    thread = seen[-1][2]
    assert thread is not None and thread.name == "live-cam-warm-up"  # ... so their imports start at launch
    assert live.warm_up() is thread  # app.py's own call finds it: one per process


def test_launcher_serves_without_per_run_gc_or_source_watcher_and_with_one_torch_thread_by_default():
    cmd = launcher.streamlit_command(launcher.build_parser().parse_args([]))
    streamlit_flags = cmd[:cmd.index("--")]  # the app's own arguments follow "--"
    assert streamlit_flags[streamlit_flags.index("--runner.postScriptGC") + 1] == "false"
    assert streamlit_flags[streamlit_flags.index("--server.fileWatcherType") + 1] == "none"
    assert launcher.server_environment({})["OMP_NUM_THREADS"] == "1"
    assert launcher.server_environment({"OMP_NUM_THREADS": "4", "HOME": "/h"}) == {"OMP_NUM_THREADS": "4",
                                                                                  "HOME": "/h"}
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False  # `streamlit run` from the repository too


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_sidebar_counts_and_reload(tmp_path, monkeypatch):
    db = build_results_db(tmp_path, FakeResultsSpec(datasets=("d1",), models=("shallow",)))
    monkeypatch.setenv("CXR_RESULTS_DB", str(db))
    at = open_page()
    captions = " ".join(c.value for c in at.sidebar.caption)
    assert "1 finished runs" in captions and "1 failed" in captions and str(db) in captions
    at.sidebar.button(key="reload_results").click().run()
    assert not at.exception
