"""Shared fixtures: where the real data pack and the hostile files are, tiny image writers."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CXR_DATA = Path(os.environ.get("CXR_DATA", REPO.parent / "shared" / "data" / "cxr"))
BAD_INPUTS = Path(os.environ.get("BAD_INPUTS", REPO.parent / "shared" / "data" / "bad-inputs"))
CXR_EXTERNAL = Path(os.environ.get("CXR_EXTERNAL", REPO.parent / "shared" / "data" / "cxr-external"))
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium, chromium-driver



def torch_threads() -> int:
    """Threads per test process: at most 2, and the cores shared among pytest-xdist's workers
    (`-n N`), whose subprocesses inherit the same share through $OMP_NUM_THREADS."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, (os.cpu_count() or 1) // max(1, workers)))


THREADS = torch_threads()
torch.set_num_threads(THREADS)
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(THREADS)

pytest_plugins = ["pytester"]  # tests/test_ci_prerequisites.py runs small sessions of its own


# --- prerequisites: skipped on a developer's machine, a failure in CI ---

def in_ci() -> bool:
    """$CI is true (.ci/run sets it, as CI services do): a missing prerequisite fails the run."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require(condition: object, reason: str) -> None:
    """Go on when `condition` holds. Otherwise skip with `reason`, or, under CI=true, fail with it:
    CI must not pass by skipping what it claims to test."""
    if condition:
        return
    if in_ci():
        pytest.fail(f"{reason} [CI=true: a missing prerequisite fails instead of skipping]", pytrace=False)
    pytest.skip(reason)


class CiSkipGuard:
    """Under CI=true, any skipped test other than one marked `cuda` fails the session: they are
    listed after pytest's own summary and the exit status becomes TESTS_FAILED."""

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    @staticmethod
    def _reason(report) -> str:
        longrepr = report.longrepr
        text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        return text.removeprefix("Skipped: ")

    def pytest_runtest_logreport(self, report) -> None:
        if report.skipped and not hasattr(report, "wasxfail") and "cuda" not in report.keywords:
            self.skipped.append((report.nodeid, self._reason(report)))

    def pytest_collectreport(self, report) -> None:
        if report.skipped:  # a module that skipped itself while being collected
            self.skipped.append((report.nodeid, self._reason(report)))

    def pytest_sessionfinish(self, session) -> None:
        if self.skipped and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if self.skipped:
            terminalreporter.write_sep("=", f"CI=true: {len(self.skipped)} skipped outside the cuda tier "
                                            "(each one fails the run)", red=True)
            for nodeid, reason in self.skipped:
                terminalreporter.write_line(f"SKIPPED {nodeid}: {reason}")


def pytest_configure(config) -> None:
    if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order LONGEST_FILES sets
        config.option.loadscopereorder = False   # (its default hands out the files with most tests first)
    if in_ci():
        config.pluginmanager.register(CiSkipGuard(), "ci-skip-guard")


# --- the cuda tier: on a CUDA device, or its bodies on the CPU under $CXR_TEST_DEVICE=cpu ---

ENV_TEST_DEVICE = "CXR_TEST_DEVICE"
CUDA_SKIP_REASON = "needs a CUDA device"


def cuda_tier_device() -> torch.device | None:
    """Where the tests marked `cuda` run: `cuda` (or `cuda:N`) when torch sees a CUDA device; the
    CPU when $CXR_TEST_DEVICE=cpu, so that their code runs before any GPU sees it; None otherwise
    (they skip with CUDA_SKIP_REASON). Naming cuda in $CXR_TEST_DEVICE on a machine without one is
    an error, not a skip: a GPU check must not pass by skipping its tests."""
    wanted = os.environ.get(ENV_TEST_DEVICE, "").strip().lower()
    if wanted == "cpu":
        return torch.device("cpu")
    if wanted not in ("", "cuda") and not wanted.startswith("cuda:"):
        raise pytest.UsageError(f"${ENV_TEST_DEVICE}={wanted!r}: use cpu, cuda or cuda:N (or leave it unset)")
    if torch.cuda.is_available():
        return torch.device(wanted or "cuda")
    if wanted:
        raise pytest.UsageError(f"${ENV_TEST_DEVICE}={wanted} but torch sees no CUDA device")
    return None


# The two longest test files (minutes of training each): collected first, so that under
# `-n 2 --dist loadfile` each worker starts on one of them and the rest fills in around them
# (pytest_configure turns off xdist's own reordering, which would hand them out late).
LONGEST_FILES = ("test_architectures.py", "test_phantom_proof.py")


def pytest_collection_modifyitems(config, items) -> None:
    """The longest files first (their own order kept); without a device for the cuda tier, its tests
    are collected and skipped, all with one reason."""
    items.sort(key=lambda item: item.path.name not in LONGEST_FILES)  # stable: every file keeps its order
    if cuda_tier_device() is not None:
        return
    skip = pytest.mark.skip(reason=CUDA_SKIP_REASON)
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture
def device(request) -> torch.device:
    """The cuda tier's device (see cuda_tier_device); only tests marked `cuda` may ask for it."""
    if request.node.get_closest_marker("cuda") is None:
        pytest.fail("the `device` fixture is for tests marked cuda (@pytest.mark.cuda)", pytrace=False)
    dev = cuda_tier_device()
    if dev is None:  # the collection hook has skipped them already; a direct call still says why
        pytest.skip(CUDA_SKIP_REASON)
    return dev


def no_tf32():
    """A context in which CUDA convolutions run in IEEE fp32, as the CPU's do. By default cuDNN runs
    fp32 convolutions in TF32 (a 10-bit mantissa), which alone moves outputs by about 1e-3; matrix
    products are IEEE fp32 by default. On the CPU it changes nothing."""
    return torch.backends.cudnn.flags(enabled=True, allow_tf32=False)


@pytest.fixture(scope="session")
def cxr_root() -> Path:
    require((CXR_DATA / "cohen" / "manifest.csv").is_file(),
            f"real-data pack not found at {CXR_DATA} (set CXR_DATA)")
    return CXR_DATA


@pytest.fixture(scope="session")
def external_root() -> Path:
    """The external-validation pack (hannover covid, openist normal with lung masks)."""
    require((CXR_EXTERNAL / "openist" / "manifest.csv").is_file(),
            f"external pack not found at {CXR_EXTERNAL} (set CXR_EXTERNAL)")
    return CXR_EXTERNAL


@pytest.fixture(scope="session")
def bad_inputs() -> Path:
    require(BAD_INPUTS.is_dir(), f"bad-inputs folder not found at {BAD_INPUTS} (set BAD_INPUTS)")
    return BAD_INPUTS


# One architecture per head family, cheap on a CPU: the fast tier tests these; every other
# registered model runs in the slow tier (zoo_params).
LIGHT_MODELS = ("shallow", "resnet18", "alexnet", "squeezenet1_1", "mobilenet_v2", "shufflenet_v2_x1_0")


def zoo_params(names=None) -> list:
    """pytest params over the model registry (or `names`), the heavy ones marked slow."""
    from benchmark.models import list_models
    return [pytest.param(n, marks=() if n in LIGHT_MODELS else pytest.mark.slow)
            for n in (list_models() if names is None else names)]


def write_png(path: Path, seed: int, size: int = 48) -> Path:
    """A small grayscale PNG with some structure (fixtures for layout tests)."""
    rng = np.random.default_rng(seed)
    arr = (rng.random((size, size)) * 200 + 20).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)
    return path


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch):
    """No test downloads ImageNet weights, even on a machine with a network ($CXR_OFFLINE, see
    benchmark/models/weights.py); tests of the download path unset it and fake the network."""
    monkeypatch.setenv("CXR_OFFLINE", "1")


@pytest.fixture
def cache_env(tmp_path, monkeypatch) -> Path:
    """Point the decode cache at a temporary folder for the test."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CXR_CACHE", str(cache))
    return cache


# Sizes at which resnet18 learns phantom-shortcut's marker (test accuracy 1.0) and its stride-16
# maps put covid and pneumonia in flagged clusters: the phantom proof and the browser test share it.
SHORTCUT_RUN = {"n": 360, "size": 128, "epochs": 6, "batch": 32}


@pytest.fixture(scope="session")
def shortcut_run(tmp_path_factory) -> Path:
    """One real run of resnet18 on phantom-shortcut (results.duckdb and checkpoints/ under the folder
    returned), made once per session in a subprocess with its own decode cache. Read it, never write."""
    from filelock import FileLock

    # under pytest-xdist the workers share one run: the first to ask makes it, the others wait for it
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if "PYTEST_XDIST_WORKER" in os.environ else base) / "shortcut-run"
    with FileLock(f"{root}.lock"):
        if not (root / "done").is_file():
            shutil.rmtree(root, ignore_errors=True)
            _make_shortcut_run(root)
            (root / "done").touch()
    return root


def _make_shortcut_run(root: Path) -> None:
    import subprocess
    import sys

    root.mkdir(parents=True)
    c = SHORTCUT_RUN
    cmd = [sys.executable, "-m", "benchmark", "run", "--data", "phantom-shortcut", "--n-phantom", str(c["n"]),
           "--models", "resnet18", "--image-size", str(c["size"]), "--epochs", str(c["epochs"]),
           "--batch-size", str(c["batch"]), "--device", "cpu", "--no-progress",
           "--cam-methods", "gradcam,hirescam@stride16", "--faithfulness-sample", "0",
           "--db", str(root / "results.duckdb"), "--checkpoint-dir", str(root / "checkpoints")]
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "CXR_CACHE": str(root / "cache")},
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]


@pytest.fixture
def app_env(results_db, monkeypatch):
    """Dashboard tests: the app reads the module's `results_db` fixture (each page module builds its own)."""
    monkeypatch.setenv("CXR_RESULTS_DB", str(results_db))
    return results_db


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium (selenium) for the browser tests; skipped when it is not installed (a
    failure under CI=true).

    The browser's console is logged (`driver.get_log("browser")`), so a test can fail on errors, and
    so is every request it makes (`requested_urls(driver)`). No host name resolves but localhost:
    the browser is as offline as a hospital's, whatever network this machine has, and a request to
    another host fails (a console error) as well as being listed.
    """
    require(shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER),
            f"chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1200",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    opts.add_experimental_option("perfLoggingPrefs", {"enableNetwork": True, "enablePage": False})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


#: the DevTools events of the performance log that name a URL the page asked for
_REQUEST_EVENTS = {"Network.requestWillBeSent": ("request", "url"), "Network.webSocketCreated": ("url",)}


def requested_urls(driver) -> list[str]:
    """Every URL the browser asked for (documents, scripts, fonts, images, fetches, websockets) since
    the last call; this drains the performance log."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        path = _REQUEST_EVENTS.get(message.get("method"))
        if path:
            value = message.get("params", {})
            for key in path:
                value = value.get(key, {})
            urls.append(str(value))
    return urls
