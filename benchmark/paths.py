"""Every path and environment variable the tool reads, resolved here and nowhere else.

Each resolver takes the explicit value (a CLI flag, a function argument) first, then its
environment variable, then the default. Relative defaults are relative to the working
directory, so `python -m benchmark run` and `python -m dashboard` started in one folder meet
without options (docs/usage.md, "Paths and environment variables").
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from benchmark.errors import BenchmarkError

ENV_DATA = "CXR_DATA"                 # the real-data root (pack or upstream layouts)
ENV_EXTERNAL = "CXR_EXTERNAL"         # the external-validation root (sources no preset trains on)
ENV_CACHE = "CXR_CACHE"               # decode cache shared by all runs of a machine
ENV_RESULTS_DB = "CXR_RESULTS_DB"     # the results database
ENV_CHECKPOINTS = "CXR_CHECKPOINTS"   # trained classifiers (and the default segmenter under lungseg/)
ENV_SEGMENTER = "CXR_LUNG_SEGMENTER"  # lung segmenter checkpoint stem
ENV_LOCK_WAIT = "CXR_DB_LOCK_WAIT_S"  # seconds a dashboard page waits for a benchmark writer
ENV_LIVE_WORKERS = "CXR_LIVE_WORKERS"  # dashboard: processes for live-CAM model work (0: in the server)
ENV_FAULT_PAUSE = "CXR_FAULT_PAUSE"   # test-only: "<point>:<marker>" pauses at a write point (benchmark/faults.py)
ENV_OFFLINE = "CXR_OFFLINE"           # 1: --pretrained never downloads, uses files already here only

DEFAULT_RESULTS_DB = "results.duckdb"
DEFAULT_CHECKPOINTS = "checkpoints"
DEFAULT_CACHE = Path("~/.cache/cxr-audit")
SEGMENTER_SUBPATH = Path("lungseg") / "lung_unet"   # under the checkpoint folder
# The lung segmenter the project trained, shipped as package data (pyproject.toml package-data).
SHIPPED_SEGMENTER = Path(__file__).resolve().parent / "lungseg" / "weights" / "lung_unet"
DATA_ROOT_HELP = "the real-data pack folder (holding kermany/, cohen/, nih/) or upstream downloads"
EXTERNAL_ROOT_HELP = "the external-validation pack folder (holding hannover/, openist/)"


Environ = Mapping[str, str] | None  # None: the process environment (tests pass their own)


def setting(explicit: str | os.PathLike | None, env: str, environ: Environ = None) -> str | None:
    """The explicit value if given, else the environment variable `env`, else None."""
    environ = os.environ if environ is None else environ
    value = explicit if explicit not in (None, "") else environ.get(env)
    return str(value) if value not in (None, "") else None



def data_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The real-data root, or None when neither the argument nor $CXR_DATA names one."""
    value = setting(explicit, ENV_DATA)
    return Path(value).expanduser() if value else None


def require_data_root(explicit: str | os.PathLike | None = None) -> Path:
    root = data_root(explicit)
    if root is None:
        raise BenchmarkError(
            f"real-data presets need a data root: pass --data-root DIR or set ${ENV_DATA} "
            f"({DATA_ROOT_HELP}); the embedded default needs none: --data phantom")
    return root


def external_root(explicit: str | os.PathLike | None = None) -> Path | None:
    """The external-validation root (sources no preset trains on), or None when neither the
    argument nor $CXR_EXTERNAL names one."""
    value = setting(explicit, ENV_EXTERNAL)
    return Path(value).expanduser() if value else None


def require_external_root(explicit: str | os.PathLike | None = None) -> Path:
    root = external_root(explicit)
    if root is None:
        raise BenchmarkError(
            f"external presets need an external root: pass --external-root DIR or set ${ENV_EXTERNAL} "
            f"({EXTERNAL_ROOT_HELP})")
    return root


def fault_pause() -> str | None:
    """$CXR_FAULT_PAUSE (test-only fault injection, see benchmark/faults.py), None when unset."""
    return setting(None, ENV_FAULT_PAUSE)


def cache_dir(explicit: str | os.PathLike | None = None) -> Path:
    """The decode cache: the argument, $CXR_CACHE, else ~/.cache/cxr-audit."""
    value = setting(explicit, ENV_CACHE)
    return Path(value).expanduser() if value else DEFAULT_CACHE.expanduser()


def results_db(explicit: str | os.PathLike | None = None, environ: Environ = None) -> Path:
    return Path(setting(explicit, ENV_RESULTS_DB, environ) or DEFAULT_RESULTS_DB)


def checkpoints_dir(explicit: str | os.PathLike | None = None, environ: Environ = None) -> Path:
    return Path(setting(explicit, ENV_CHECKPOINTS, environ) or DEFAULT_CHECKPOINTS)


def user_segmenter_stem(explicit: str | os.PathLike | None = None, environ: Environ = None) -> Path:
    """Where `lungs train` writes a segmenter: the argument, $CXR_LUNG_SEGMENTER, else
    <checkpoints>/lungseg/lung_unet."""
    value = setting(explicit, ENV_SEGMENTER, environ)
    return Path(value) if value else checkpoints_dir(None, environ) / SEGMENTER_SUBPATH


def choose_segmenter(given: str | os.PathLike | None, checkpoints: str | os.PathLike) -> Path:
    """The one rule for which lung segmenter masks come from (runs, `lungs predict`, the dashboard):

    1. the stem given (a flag or $CXR_LUNG_SEGMENTER), used as is, so a wrong path says so;
    2. else one the user trained at <checkpoints>/lungseg/lung_unet, if its weights exist;
    3. else the segmenter shipped in the package (SHIPPED_SEGMENTER).
    """
    if given not in (None, ""):
        return Path(given)
    trained = Path(checkpoints) / SEGMENTER_SUBPATH
    if trained.with_suffix(".safetensors").is_file():
        return trained
    return SHIPPED_SEGMENTER


def segmenter_stem(explicit: str | os.PathLike | None = None, environ: Environ = None) -> Path:
    """The lung segmenter in use: the argument, $CXR_LUNG_SEGMENTER, else a trained one under
    <checkpoints>/lungseg/, else the shipped one (choose_segmenter)."""
    return choose_segmenter(setting(explicit, ENV_SEGMENTER, environ), checkpoints_dir(None, environ))


def project_environment(environ: Environ = None) -> tuple[tuple[str, str], ...]:
    """Every CXR_* variable with its value, sorted: what settings resolved from them depend on."""
    environ = os.environ if environ is None else environ
    return tuple(sorted((k, v) for k, v in environ.items() if k.startswith("CXR_")))


def environment_with_default(name: str, value: str, environ: Environ = None) -> dict[str, str]:
    """A copy of the environment (for a child process) with `name` set to `value` unless it is set."""
    env = dict(os.environ if environ is None else environ)
    env.setdefault(name, value)
    return env


def offline(environ: Environ = None) -> bool:
    """True when $CXR_OFFLINE forbids downloads: --pretrained then uses files already here only."""
    value = setting(None, ENV_OFFLINE, environ)
    return value is not None and value.strip().lower() not in ("0", "false", "no", "off")


# Library caches (where --pretrained looks for ImageNet weights): the libraries' own conventions.

def torch_hub_checkpoints() -> Path:
    """torch hub's checkpoint cache, resolved now so a changed TORCH_HOME is honoured."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder, read from the environment at call time.

    huggingface_hub fixes its constant at import; tests and users may change the variables later.
    """
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    try:
        from huggingface_hub import constants
    except ImportError:  # optional: without it only --weights-dir and torch hub are searched
        return Path.home() / ".cache" / "huggingface" / "hub"
    return Path(constants.HF_HUB_CACHE)


def config_file(name: str) -> Traversable:
    """A file shipped in the package's configs/ (dataset presets, experiments)."""
    return resources.files("benchmark") / "configs" / name
