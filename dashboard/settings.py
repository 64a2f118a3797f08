"""Where the dashboard finds its results, checkpoints and lung segmenter, resolved once per run.

The same app is started three ways: `python -m dashboard --db PATH`, `streamlit run
dashboard/app.py -- --db PATH`, and by tests (AppTest, a headless browser) that set environment
variables. Flags win over the environment, the environment over defaults; the defaults match the
benchmark CLI's (results.duckdb and checkpoints/ in the working directory), so the README's
first command and this dashboard meet without any option.
"""
from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from benchmark import paths
from benchmark.paths import (
    DEFAULT_CHECKPOINTS,
    DEFAULT_RESULTS_DB,
    ENV_CHECKPOINTS,
    ENV_LIVE_WORKERS,
    ENV_LOCK_WAIT,
    ENV_RESULTS_DB,
    ENV_SEGMENTER,
)

#: Uploads above this are refused in code; .streamlit/config.toml sets server.maxUploadSize to
#: the same number so the browser refuses them first. A chest X-ray DICOM is 5-30 MB.
MAX_UPLOAD_MB = 50

#: Worker processes for the live CAM's model work (dashboard/model_worker.py); 0 runs it in the
#: server's own session threads. One, so that a small machine keeps a core for the sessions' Python
#: and gives the models another; more workers pay only with more cores (bench/RESULTS.md, dashboard load).
LIVE_WORKERS = 1


@dataclass(frozen=True)
class DashboardSettings:
    """Paths and limits of one dashboard process.

    `lock_wait_s` is how long a page waits for a benchmark writer before it shows the last
    results it has instead.
    """

    db_path: Path
    checkpoints_dir: Path
    segmenter_stem: Path | None = None  # None: a trained one under checkpoints_dir, else the shipped one
    max_upload_mb: int = MAX_UPLOAD_MB
    lock_wait_s: float = 3.0
    live_workers: int = LIVE_WORKERS

    def __post_init__(self):
        if self.max_upload_mb <= 0:
            raise ValueError(f"max_upload_mb must be positive, got {self.max_upload_mb}")
        if self.live_workers < 0:
            raise ValueError(f"live_workers must be >= 0, got {self.live_workers}")

    @property
    def segmenter(self) -> Path:
        """The segmenter stem in use: the one given, else <checkpoints>/lungseg/lung_unet if trained,
        else the one shipped in the package (the rule is benchmark.paths.choose_segmenter)."""
        return paths.choose_segmenter(self.segmenter_stem, self.checkpoints_dir)

    @property
    def max_upload_bytes(self) -> int:
        return self.max_upload_mb * 1024 * 1024


def argument_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    p.add_argument("--db", default=None, help=f"results database (default ${ENV_RESULTS_DB} or {DEFAULT_RESULTS_DB})")
    p.add_argument("--checkpoint-dir", default=None,
                   help=f"checkpoint folder for live CAMs (default ${ENV_CHECKPOINTS} or {DEFAULT_CHECKPOINTS})")
    p.add_argument("--segmenter", default=None,
                   help=f"lung segmenter checkpoint stem (default ${ENV_SEGMENTER}, else checkpoints/lungseg/lung_unet "
                        "if trained, else the one shipped in the package)")
    p.add_argument("--live-workers", type=int, default=None,
                   help=f"processes that run the live CAM's models (default ${ENV_LIVE_WORKERS} or {LIVE_WORKERS}; "
                        "0: in the server process)")
    return p


def resolve_settings(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> DashboardSettings:
    """Settings from script arguments (unknown ones ignored: streamlit and pytest add their own)."""
    args, _ = argument_parser().parse_known_args(list(argv or []))
    segmenter = paths.setting(args.segmenter, ENV_SEGMENTER, environ)
    return DashboardSettings(
        db_path=paths.results_db(args.db, environ),
        checkpoints_dir=paths.checkpoints_dir(args.checkpoint_dir, environ),
        segmenter_stem=Path(segmenter) if segmenter else None,
        lock_wait_s=float(paths.setting(None, ENV_LOCK_WAIT, environ) or DashboardSettings.lock_wait_s),
        live_workers=_int_setting(args.live_workers, ENV_LIVE_WORKERS, environ, LIVE_WORKERS),
    )


def _int_setting(explicit: int | None, env: str, environ, default: int) -> int:
    """The flag's value, else the environment variable's (a whole number), else `default`."""
    if explicit is not None:
        return explicit
    value = paths.setting(None, env, environ)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{env} must be a whole number, got {value!r}") from None
