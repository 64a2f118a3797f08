"""`python -m dashboard --db PATH [--port N] [--host ADDRESS]`: serve the dashboard and print its URL.

It listens on localhost unless `--host` says otherwise, with XSRF protection and CORS limits on.

A thin launcher around `streamlit run dashboard/app.py -- --db PATH` (through dashboard/serve.py,
which starts the live-CAM imports before the server waits for visitors): it resolves paths against
the caller's directory, then replaces itself with streamlit running in the folder that holds the
package (in a source checkout the repository root, so .streamlit/config.toml applies), passing
the upload limit explicitly. A missing database is
reported at once; the app then says how to make one.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from benchmark import paths
from dashboard.settings import MAX_UPLOAD_MB, argument_parser

log = logging.getLogger("dashboard")
APP = Path(__file__).resolve().with_name("app.py")
SERVE_FROM = APP.parents[1]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cxr-audit-dashboard", parents=[argument_parser()],
                                     description="Serve the shortcut-audit dashboard over a results database.")
    parser.add_argument("--port", type=int, default=8501, help="port to listen on (default 8501)")
    parser.add_argument("--host", "--address", dest="address", default="localhost",
                        help="address to listen on (default localhost: this machine only; 0.0.0.0 serves "
                             "every network the machine is on, so only do that behind a login)")
    return parser


def streamlit_command(args: argparse.Namespace) -> list[str]:
    """The `streamlit run` command line this launcher executes (tested without starting it)."""
    db = paths.results_db(args.db).resolve()
    cmd = [sys.executable, "-m", "dashboard.serve", "run", str(APP),  # streamlit run, imports started first
           "--server.port", str(args.port), "--server.address", args.address,
           "--server.headless", "true", "--server.maxUploadSize", str(MAX_UPLOAD_MB),
           # XSRF protection on, and CORS limited: streamlit's XSRF check does not guard the
           # websocket unless CORS is on too (its config warns), so both are set, whatever a
           # config file says
           "--server.enableXsrfProtection", "true", "--server.enableCORS", "true",
           "--browser.gatherUsageStats", "false",
           # no full gc.collect after every script run (.streamlit/config.toml says why)
           "--runner.postScriptGC", "false",
           # no source watcher: a served dashboard's code does not change under it, and the watcher
           # walked every imported module's path (thousands, with torch) on the server's event loop
           # after every script run of every session, a cost that grows with the sessions (profiled:
           # bench/RESULTS.md). `streamlit run dashboard/app.py` still reloads on save.
           "--server.fileWatcherType", "none", "--", "--db", str(db)]
    checkpoints = paths.checkpoints_dir(args.checkpoint_dir)
    cmd += ["--checkpoint-dir", str(Path(checkpoints).resolve())]  # relative to the caller, not the repo
    if args.segmenter:
        cmd += ["--segmenter", str(Path(args.segmenter).resolve())]
    if args.live_workers is not None:
        cmd += ["--live-workers", str(args.live_workers)]
    return cmd


#: torch threads per operation in the server, unless $OMP_NUM_THREADS says otherwise. Sessions are
#: threads, and with several live CAMs at once, several threads per op spin against each other for
#: the same cores; one per op was a little faster under load (bench/RESULTS.md, dashboard load).
SERVER_TORCH_THREADS = 1


def server_environment(environ=None) -> dict[str, str]:
    """The environment the server runs with: the caller's (default this process's), with
    SERVER_TORCH_THREADS as the default of $OMP_NUM_THREADS."""
    return paths.environment_with_default("OMP_NUM_THREADS", str(SERVER_TORCH_THREADS), environ)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cmd = streamlit_command(args)
    db = Path(cmd[cmd.index("--db") + 1])
    if not db.exists():
        log.warning("no results database at %s yet: the dashboard will say how to make one "
                    "(python -m benchmark run --db %s)", db, db)
    print(f"Dashboard: http://{args.address}:{args.port}  (results: {db}; Ctrl+C stops it)", flush=True)
    os.chdir(SERVE_FROM)
    # exec, not a child process: Ctrl+C, SIGTERM and exit codes reach streamlit itself, and no
    # orphaned server is left behind when whoever started us stops us.
    os.execve(sys.executable, cmd, server_environment())
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
