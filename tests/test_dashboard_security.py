"""Dashboard security: localhost unless told, XSRF on, uploads never on disk, DICOM identifiers never shown."""
from __future__ import annotations

import builtins
import contextlib
import io
import os
import re
import socket
import subprocess
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

import dashboard.__main__ as launcher
from tests.conftest import REPO
from tests.fixtures_db import build_results_db, make_checkpoint, make_segmenter, open_page, texts
from tests.fuzz_images import _dicom

PAGE = "pages/live_cam.py"

# ----------------------------------------------------------------------------- where it listens, XSRF


def _flag(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


def test_launcher_listens_on_localhost_unless_told(tmp_path):
    db = ["--db", str(tmp_path / "r.duckdb")]
    assert _flag(launcher.streamlit_command(launcher.build_parser().parse_args(db)), "--server.address") == "localhost"
    for flag in ("--host", "--address"):
        args = launcher.build_parser().parse_args([*db, flag, "0.0.0.0"])
        assert _flag(launcher.streamlit_command(args), "--server.address") == "0.0.0.0"


def test_xsrf_protection_is_on_and_nothing_turns_it_off(tmp_path):
    cmd = launcher.streamlit_command(launcher.build_parser().parse_args(["--db", str(tmp_path / "r.duckdb")]))
    # streamlit's XSRF check does not cover the websocket without CORS limits: both on
    assert _flag(cmd, "--server.enableXsrfProtection") == "true" and _flag(cmd, "--server.enableCORS") == "true"
    server = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]
    assert server["enableXsrfProtection"] is True and server["enableCORS"] is True
    assert server["address"] == "localhost"
    off = re.compile(r"(enableXsrfProtection|enableCORS|enable_xsrf|xsrf_cookies)[\"'\s=:,]*(false|False|0)\b")
    found = []
    for path in [*REPO.glob(".streamlit/*.toml"), *REPO.glob("**/*.py"), *REPO.glob(".ci/*")]:
        if ".git" in path.parts or path == Path(__file__) or not path.is_file():
            continue
        found += [f"{path.relative_to(REPO)}: {m.group(0)}" for m in off.finditer(path.read_text(errors="ignore"))]
    assert found == []


def test_the_dashboard_asks_no_other_host(tmp_path):
    """Offline and quiet: usage statistics off (launcher and config file), and no `:material/...:` tab
    icon, which streamlit loads from a font CDN. tests/test_dashboard_browser.py watches every request
    of the real pages in a browser; this is the fast tier's check."""
    cmd = launcher.streamlit_command(launcher.build_parser().parse_args(["--db", str(tmp_path / "r.duckdb")]))
    assert _flag(cmd, "--browser.gatherUsageStats") == "false"
    assert tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["browser"]["gatherUsageStats"] is False
    cdn_tab_icon = re.compile(r"page_icon\s*=\s*[\"']:material/")
    found = [str(p.relative_to(REPO)) for p in (REPO / "dashboard").rglob("*.py") if cdn_tab_icon.search(p.read_text())]
    assert found == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> set[str]:
    """Local addresses with a socket listening on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                addr, hexport = fields[1].rsplit(":", 1)
                if int(hexport, 16) == port and fields[3] == "0A":  # 0A: LISTEN
                    found.add(addr)
    return found


LOOPBACK = {"0100007F", "00000000000000000000000001000000"}  # 127.0.0.1 and ::1 as /proc writes them


@pytest.mark.slow
def test_the_real_server_listens_on_loopback_only_and_refuses_uploads_without_a_token(tmp_path):
    """Starts the launcher's own streamlit command: sockets only on 127.0.0.1/::1, and an upload
    without the XSRF cookie and header is refused (403) before it reaches the app."""
    port = _free_port()
    args = launcher.build_parser().parse_args(["--db", str(tmp_path / "r.duckdb"), "--port", str(port),
                                               "--checkpoint-dir", str(tmp_path / "ckpts")])
    cmd = launcher.streamlit_command(args)
    proc = subprocess.Popen(cmd, cwd=launcher.SERVE_FROM, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://localhost:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "server not healthy in 90 s"
                time.sleep(0.3)
        listening = _listening(port)
        assert listening and listening <= LOOPBACK, listening
        body = b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n\r\nabc\r\n--b--\r\n"
        put = urllib.request.Request(url + "/_stcore/upload_file/some-session/some-file", data=body, method="PUT",
                                     headers={"Content-Type": "multipart/form-data; boundary=b"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(put, timeout=10)
        assert refused.value.code == 403
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


# ----------------------------------------------------------------------------- uploads


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    make_checkpoint(root / "checkpoints", input_size=64, seed=0, accuracy=0.9)
    make_segmenter(root / "lungseg" / "lung_unet")
    return {"root": root, "checkpoints": root / "checkpoints", "segmenter": root / "lungseg" / "lung_unet",
            "db": build_results_db(root / "db")}


@pytest.fixture
def live_env(assets, monkeypatch):
    monkeypatch.setenv("CXR_RESULTS_DB", str(assets["db"]))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(assets["checkpoints"]))
    monkeypatch.setenv("CXR_LUNG_SEGMENTER", str(assets["segmenter"]))
    return assets


IDENTIFIERS = {"PatientName": "Leakcheck^Zelda^Q", "PatientID": "ZID-424242", "PatientBirthDate": "19010203",
               "InstitutionName": "Sankt Leak Hospital", "AccessionNumber": "ACC98765",
               "ReferringPhysicianName": "Doc^Leaky", "StudyDescription": "SECRET STUDY 77",
               "OtherPatientIDs": "OTHER-ID-5150"}


def _xray_dicom() -> bytes:
    yy, xx = np.mgrid[0:256, 0:224] / 256
    body = np.where(((xx - 0.44) / 0.4) ** 2 + ((yy - 0.55) / 0.45) ** 2 <= 1, 2600.0, 300.0)
    lungs = (((xx - 0.3) / 0.12) ** 2 + ((yy - 0.5) / 0.28) ** 2 <= 1) | (((xx - 0.6) / 0.12) ** 2
                                                                        + ((yy - 0.5) / 0.28) ** 2 <= 1)
    pixels = np.where(lungs, 900.0, body).astype(np.uint16)
    return _dicom(pixels, BitsStored=12, HighBit=11, WindowCenter=1500, WindowWidth=3000, **IDENTIFIERS)


def _upload(at, name: str, data: bytes):
    at.file_uploader(key="live_upload").set_value((name, data, "application/octet-stream")).run()
    return at


def _predictions(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("pred **")]


def _rendered(at) -> str:
    """Every element the page rendered, as protobuf text (markdown, captions, image ids, chart specs,
    widget labels and options), plus the session state's keys and values."""
    parts = []

    def walk(node):
        proto = getattr(node, "proto", None)
        if proto is not None:
            parts.append(str(proto))
        for child in getattr(node, "children", {}).values():
            walk(child)

    walk(at._tree)
    parts.append(str(at.session_state))  # every key and value this session keeps
    return "\n".join(parts)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_dicom_identifiers_never_reach_the_page(live_env):
    data = _xray_dicom()
    assert all(value.encode() in data for value in IDENTIFIERS.values())  # the upload does carry them
    at = _upload(open_page(PAGE), "patient.dcm", data)
    assert not at.exception and not at.error
    assert len(_predictions(at)) == 1  # the image was read and explained
    shown = _rendered(at) + texts(at)
    leaked = [value for value in IDENTIFIERS.values() for part in (value, *value.split("^"))
              if len(part) > 3 and part in shown]
    assert leaked == []


@contextlib.contextmanager
def _file_writes():
    """Record every file this process opens for writing (Python's open and os.open)."""
    writes: list[tuple[str, str]] = []
    real_open, real_os_open = builtins.open, os.open

    def recording_open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(c in mode for c in "wax+"):
            writes.append((str(file), mode))
        return real_open(file, mode, *args, **kwargs)

    def recording_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC):
            writes.append((str(path), oct(flags)))
        return real_os_open(path, flags, *args, **kwargs)

    with mock.patch("builtins.open", recording_open), mock.patch("io.open", recording_open), \
            mock.patch("os.open", recording_os_open):
        yield writes


def _tree_files(folder: Path) -> set[str]:
    return {str(p) for p in folder.rglob("*")} if folder.is_dir() else set()


@pytest.mark.parametrize("name", ["patient.dcm", "xray.png"])
@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_an_upload_never_touches_the_disk(live_env, tmp_path, monkeypatch, name):
    from streamlit.testing.v1 import app_test

    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # tempfile.gettempdir() is now this empty folder
    assert tempfile.gettempdir() == str(temp)
    if name.endswith(".dcm"):
        data = _xray_dicom()
    else:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray((np.random.default_rng(0).random((200, 180)) * 255).astype(np.uint8)).save(buf, "PNG")
        data = buf.getvalue()
    streamlit_tmp = Path(app_test.TMP_DIR.name)  # AppTest's own temporary folder
    before = _tree_files(streamlit_tmp), _tree_files(live_env["root"])
    at = open_page(PAGE)
    with _file_writes() as writes:
        _upload(at, name, data)
    assert not at.exception and len(_predictions(at)) == 1
    assert writes == []
    assert list(temp.iterdir()) == []
    assert (_tree_files(streamlit_tmp), _tree_files(live_env["root"])) == before
