"""The server process of `python -m dashboard`: streamlit's own command line, with the live-CAM
imports started first.

`streamlit run` imports app.py only when the first browser session opens, so the first sessions
would otherwise share the cores with ~6.5 s of imports (torch, the model zoo, pytorch-grad-cam;
measured on the 2-core box). Under 10 sessions at once that import got a tenth of the
interpreter and took ~25 s, and every live CAM waited for it (bench/RESULTS.md, dashboard load).
Started here, it runs while the server comes up and waits for its first visitor; app.py's own
`live.warm_up()` then finds it under way (one per process). The live CAM's model worker processes
(dashboard/model_worker.py) are started here for the same reason: the pages get the same one.
With workers (the default) the models, their methods and the segmenter live in those processes,
so the server itself never imports torch and nothing is warmed up here; with `--live-workers 0`
the server runs the models in its threads and imports torch at launch.

    python -m dashboard.serve run APP [streamlit flags] -- [app arguments]   # what the launcher execs
"""
from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from dashboard import live, model_worker
    from dashboard.settings import resolve_settings

    argv = list(sys.argv[1:] if argv is None else argv)
    app_args = argv[argv.index("--") + 1:] if "--" in argv else []
    workers = resolve_settings(app_args).live_workers
    if workers == 0:  # the models run in the server's own threads: torch loads now, in a daemon thread
        live.warm_up()
    model_worker.shared(workers)  # its processes start importing now; with them the server needs no torch
    from streamlit.web import cli

    # what `python -m streamlit` does (streamlit/__main__.py), with our arguments
    return cli.main.main(args=argv, prog_name="streamlit")


if __name__ == "__main__":
    sys.exit(main())
