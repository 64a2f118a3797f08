"""The server process of `python -m dashboard`: streamlit's own command line, with the live-CAM
imports started first.

`streamlit run` imports app.py only when the first browser session opens, so the first sessions
would otherwise share the cores with seconds of imports (torch, the model zoo, pytorch-grad-cam).
Under many sessions at once that import gets a small share of the interpreter and takes several
times longer, and every live CAM waits for it (bench/RESULTS.md, dashboard load).
Started here (`model_worker.shared`), they run while the server comes up and waits for its first
visitor; the pages get the same ModelWorker through dashboard/cache.py. With workers (the default)
the imports happen in those processes and the server itself never imports torch; with
`--live-workers 0` the models run in the server's threads and `shared` starts the imports here
(`live.warm_up`, a daemon thread, once per process).

    python -m dashboard.serve run APP [streamlit flags] -- [app arguments]   # what the launcher execs
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from dashboard import model_worker
    from dashboard.settings import resolve_settings

    argv = list(sys.argv[1:] if argv is None else argv)
    app_args = argv[argv.index("--") + 1:] if "--" in argv else []
    # the worker processes start importing torch now (with --live-workers 0, this process does)
    model_worker.shared(resolve_settings(app_args).live_workers)
    from streamlit.web import cli

    # what `python -m streamlit` does (streamlit/__main__.py), with our arguments
    return cli.main.main(args=argv, prog_name="streamlit")


if __name__ == "__main__":
    sys.exit(main())
