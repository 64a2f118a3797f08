"""Shared fixtures: where the real data pack and the hostile files are, tiny image writers."""
from __future__ import annotations

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
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"  # Debian's chromium, chromium-driver

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def cxr_root() -> Path:
    if not (CXR_DATA / "cohen" / "manifest.csv").is_file():
        pytest.skip(f"real-data pack not found at {CXR_DATA} (set CXR_DATA)")
    return CXR_DATA


@pytest.fixture(scope="session")
def bad_inputs() -> Path:
    if not BAD_INPUTS.is_dir():
        pytest.skip(f"bad-inputs folder not found at {BAD_INPUTS} (set BAD_INPUTS)")
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


@pytest.fixture
def app_env(results_db, monkeypatch):
    """Dashboard tests: the app reads the module's `results_db` fixture (each page module builds its own)."""
    monkeypatch.setenv("CXR_RESULTS_DB", str(results_db))
    return results_db


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium (selenium) for the browser tests; skipped when it is not installed.

    The browser's console is logged (`driver.get_log("browser")`), so a test can fail on errors.
    """
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"chromium not installed ({CHROMIUM}, {CHROMEDRIVER}): apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    opts = Options()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1500,1200",
                 f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
