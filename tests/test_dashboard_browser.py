"""End to end in a real headless Chromium: a phantom benchmark run, the dashboard served on its DB.

Every page must render its main elements, and an upload in Live CAM must come back with CAM
overlays. Every page works offline and quietly: nothing at error level in the browser console
(JavaScript errors and failed loads alike) and no request to any host but the dashboard's server
(the `browser` fixture resolves no other host, as in a hospital without internet). Screenshots of
each page are saved in the test's tmp folder (look at them when changing a page). Needs Debian's
chromium and chromium-driver (CI installs them); the `browser` fixture (tests/conftest.py) skips
only when they are absent, and fails then under CI=true.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.conftest import REPO, requested_urls

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_health(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}: {proc.stdout.read()}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} not healthy after {timeout}s")


@pytest.fixture(scope="module")
def phantom_run(shortcut_run):
    """A real benchmark run (resnet18 on phantom-shortcut, shared with tests/test_phantom_proof.py):
    results DB and checkpoint, as the README's first command makes, with a marker the model reads."""
    return shortcut_run


@pytest.fixture(scope="module")
def server(phantom_run):
    port = _free_port()
    env = {**os.environ, "CXR_LUNG_SEGMENTER": str(phantom_run / "no-segmenter" / "lung_unet")}
    cmd = [sys.executable, "-m", "streamlit", "run", str(REPO / "dashboard" / "app.py"),
           "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
           "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none", "--",
           "--db", str(phantom_run / "results.duckdb"), "--checkpoint-dir", str(phantom_run / "checkpoints")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_health(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def _settle(driver, css: str, timeout: float = 90):
    """Wait until the app run finished (no running indicator) and `css` is on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        if d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'):
            return False
        return d.find_elements(By.CSS_SELECTOR, css) or False

    found = WebDriverWait(driver, timeout, poll_frequency=0.3).until(ready)
    time.sleep(0.5)  # let images decode before a screenshot
    return found


def _settle_text(driver, text: str, timeout: float = 90) -> str:
    """Wait until the main area's text contains `text` and the app run finished; returns the text."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def ready(d):
        if d.find_elements(By.CSS_SELECTOR, '[data-testid="stStatusWidget"]'):
            return False
        main = d.find_elements(By.CSS_SELECTOR, '[data-testid="stMain"]')
        return main and text in main[0].text and main[0].text

    found = WebDriverWait(driver, timeout, poll_frequency=0.3).until(ready)
    time.sleep(0.5)
    return found


def _go(driver, page: str, timeout: float = 90) -> None:
    """Open `page` as a user does, through the sidebar's link (in-app navigation). A typed URL of a page
    other than the first makes streamlit's client probe `<page>/_stcore/health` before the server's
    root, two 404s in the console, so the pages are reached from the root as a visitor reaches them."""
    from selenium.common.exceptions import ElementClickInterceptedException, StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    last_click = [0.0]

    def arrived(d):
        if urlsplit(d.current_url).path.rstrip("/").endswith(f"/{page}"):  # the page may add query parameters
            return True
        if time.monotonic() - last_click[0] < 3:  # give a click time to navigate before clicking again
            return False
        links = d.find_elements(By.CSS_SELECTOR, f'a[data-testid="stSidebarNavLink"][href$="/{page}"]')
        try:
            if links:
                links[0].click()  # a click while the page still reruns can be lost: then it is clicked again
                last_click[0] = time.monotonic()
        except (StaleElementReferenceException, ElementClickInterceptedException):  # redrawn or covered
            pass
        return False

    WebDriverWait(driver, timeout, poll_frequency=0.3).until(arrived)


def _shot(driver, path: Path) -> None:
    height = driver.execute_script(
        "const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.scrollHeight : 1200")
    driver.set_window_size(1500, min(max(900, int(height) + 120), 5000))
    time.sleep(0.5)
    driver.save_screenshot(str(path))
    driver.set_window_size(1500, 1200)


def _offline_and_quiet(driver, server: str, page: str) -> list[str]:
    """Since the last call: no console entry at error level, and every request went to `server`.
    Returns the URLs requested."""
    own = urlsplit(server).netloc
    urls = requested_urls(driver)
    foreign = [url for url in urls
               if urlsplit(url).scheme in ("http", "https", "ws", "wss") and urlsplit(url).netloc != own]
    assert not foreign, f"{page}: requests to hosts other than {own}: {foreign}"
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"{page}: console errors: {errors}"
    return urls


def _fresh_logs(driver) -> None:
    """Drop what earlier pages logged (console and requests)."""
    driver.get_log("browser")
    requested_urls(driver)


def test_every_page_renders_and_live_cam_shows_overlays(server, browser, tmp_path, cxr_data_file):
    from selenium.webdriver.common.by import By

    _fresh_logs(browser)
    browser.get(server)
    _settle(browser, '[data-testid="stDataFrame"]')
    assert "Leaderboard" in browser.find_element(By.TAG_NAME, "h1").text
    assert "resnet18" in browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text or \
        browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"] canvas')
    _shot(browser, tmp_path / "leaderboard.png")
    urls = _offline_and_quiet(browser, server, "leaderboard")
    assert server + "/" in urls and any(u.startswith("ws://") for u in urls), urls  # the log sees requests

    _go(browser, "patterns")
    text = _settle_text(browser, "Clusters of maps")
    assert "Patterns" in browser.find_element(By.TAG_NAME, "h1").text and "Class-mean maps" in text
    assert len(browser.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img')) >= 2
    assert "flagged:" in text  # the phantom's marker: a cluster whose maps lie off the lungs
    _shot(browser, tmp_path / "patterns.png")
    _offline_and_quiet(browser, server, "patterns")

    _go(browser, "compare")
    _settle(browser, '[data-testid="stImage"] img')
    assert "Compare" in browser.find_element(By.TAG_NAME, "h1").text
    assert len(browser.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img')) >= 2  # X-ray + model
    assert "pred" in browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
    _shot(browser, tmp_path / "compare.png")
    _offline_and_quiet(browser, server, "compare")

    _go(browser, "misclassifications")
    _settle(browser, ".st-key-mis_export_csv")
    text = browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]').text
    assert "predictions" in text
    if "No prediction passes" not in text:
        assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img')
    _shot(browser, tmp_path / "misclassifications.png")
    _offline_and_quiet(browser, server, "misclassifications")

    _go(browser, "live_cam")
    upload = _settle(browser, '.st-key-live_upload input[type="file"]')[0]
    upload.send_keys(str(cxr_data_file))
    _settle_text(browser, "on CPU:")  # the timing line closes the results
    _settle(browser, '[data-testid="stProgress"]')  # the class probabilities
    main = browser.find_element(By.CSS_SELECTOR, '[data-testid="stMain"]')
    assert len(main.find_elements(By.CSS_SELECTOR, '[data-testid="stImage"] img')) >= 2  # upload + overlay
    assert "pred " in main.text and "cannot be used" not in main.text
    _shot(browser, tmp_path / "live_cam.png")
    _offline_and_quiet(browser, server, "live_cam")

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(cxr_data_file.read_bytes()[:500])
    browser.find_element(By.CSS_SELECTOR, '.st-key-live_upload input[type="file"]').send_keys(str(corrupt))
    text = _settle_text(browser, "cannot be used")
    assert "truncated" in text or "corrupt" in text
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-testid="stProgress"]')  # old results gone
    _shot(browser, tmp_path / "live_cam_corrupt.png")
    _offline_and_quiet(browser, server, "live_cam_corrupt")
    for name in ("leaderboard", "patterns", "compare", "misclassifications", "live_cam", "live_cam_corrupt"):
        assert (tmp_path / f"{name}.png").stat().st_size > 10_000


def test_performance_page_draws_roc_confusion_and_calibration(server, browser, tmp_path):
    """The Performance page of the real run: four plotly charts drawn as SVG (ROC with its AUC legend,
    confusion counts and shares, the reliability diagram with its ECE), the per-source table, the
    download buttons, nothing in the browser console at error level and no request to another host."""
    from selenium.webdriver.common.by import By

    _fresh_logs(browser)
    browser.get(server)
    _settle(browser, '[data-testid="stDataFrame"]')
    _go(browser, "performance")
    _settle(browser, ".st-key-perf_sources_parquet")
    text = _settle_text(browser, "Per source database")
    for heading in ("ROC curves", "Confusion matrix", "Calibration", "ECE"):
        assert heading in text, heading
    charts = browser.find_elements(By.CSS_SELECTOR, '[data-testid="stPlotlyChart"]')
    assert len(charts) == 4
    for chart in charts:
        assert chart.find_elements(By.CSS_SELECTOR, "svg.main-svg"), "plotly drew the chart"
    roc, counts, shares, calibration = (c.text for c in charts)
    assert "AUC" in roc and "chance" in roc
    assert "counts" in counts and "share of each true class" in shares
    assert "ECE" in calibration and "perfect calibration" in calibration
    assert browser.find_elements(By.CSS_SELECTOR, '[data-testid="stDataFrame"]')
    for key in ("perf_auc_csv", "perf_confusion_parquet", "perf_calibration_csv", "perf_sources_parquet"):
        assert browser.find_elements(By.CSS_SELECTOR, f".st-key-{key}"), key
    _shot(browser, tmp_path / "performance.png")
    assert (tmp_path / "performance.png").stat().st_size > 10_000
    _offline_and_quiet(browser, server, "performance")


@pytest.fixture(scope="module")
def cxr_data_file(tmp_path_factory) -> Path:
    """A real X-ray from $CXR_DATA, else one of the hostile-but-valid files, else a drawn phantom."""
    from tests.conftest import BAD_INPUTS, CXR_DATA

    real = sorted((CXR_DATA / "cohen" / "images").glob("*.jpg"))[:1]
    if real:
        return real[0]
    if (BAD_INPUTS / "dx-monochrome2-windowed.dcm").is_file():
        return BAD_INPUTS / "dx-monochrome2-windowed.dcm"
    import numpy as np
    from PIL import Image

    from tests.fixtures_db import xray_image

    path = tmp_path_factory.mktemp("upload") / "phantom.png"
    Image.fromarray(xray_image(256, np.random.default_rng(0), marker=True)).save(path)
    return path
