"""Dashboard under load: N concurrent sessions against a real Streamlit server on a 1M-CAM-row DB.

    python -m bench.dashboard_load                      # builds the DB (2 x 10 models x 2 methods x 25k images)
    python -m bench.dashboard_load --sessions 10 --rounds 3 --db /tmp/big/results.duckdb   # reuse a DB
    python -m bench.dashboard_load --url http://localhost:8501 --server-pid PID          # attach to a server

Each session is a browser-like client speaking the app's own wire protocol: it opens Streamlit's
websocket (`/_stcore/stream`, with the XSRF cookie a browser gets), asks for a page the way the
browser does (a `rerun_script` BackMsg naming the page), and counts the time until the server's
`script_finished`: the server's whole work for that view (queries, images, overlays, serialising
every element and sending it). What it leaves out against a real browser: drawing, and fetching the
PNGs and dataframes the page refers to (media URLs); nothing is cached on the client side. The live CAM view
uploads a PNG through the upload endpoint (PUT, as the browser's uploader does) and reruns with the
uploader's widget state, so the model runs on the server.

By default the sessions meet a freshly started server (its first visits import torch and the
model zoo, load the model and fill the caches while the others wait); `--warm-server` first
visits every view once from one session, to measure a server that has served before.
Every session visits leaderboard, compare, misclassifications and live CAM in its own order,
`--rounds` times; the first visit of a view in a session is its "cold" visit for that session
(server caches may already be warm from other sessions). Reported: p50/p95 seconds per view over all
visits, the p95 of the rounds after the first (the server's imports and caches warm), the slowest
visit, the server's peak RSS (VmHWM of the server process, from /proc) and that of its live-CAM
model workers (its child processes), and the CPU seconds the server, its workers and this client
used during the run (they share the machine's cores).
Goal (issue 10): p95 <= 2 s with 10 sessions on 2 cores; memory bounded.
Prints one JSON object; the lead copies the numbers (with machine and date) into bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from websockets.sync.client import connect

from bench.dashboard_views import cpu_name

VIEWS = ("leaderboard", "compare", "misclassifications", "live_cam")


def peak_rss_mb(pid: int) -> dict[str, float]:
    """Peak (VmHWM) and current (VmRSS) resident memory of a process, MB (Linux /proc)."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid` (the server's live-CAM model workers), from /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(set(found))


def workers_usage(pid: int) -> dict:
    """CPU seconds and memory (MB) of the server's worker processes, summed."""
    cpu, hwm, rss, seen = 0.0, 0.0, 0.0, 0
    for child in child_pids(pid):
        try:
            cpu += cpu_seconds(child)
            mem = peak_rss_mb(child)
        except OSError:  # it ended between the listing and the read
            continue
        hwm, rss, seen = hwm + mem.get("VmHWM", 0.0), rss + mem.get("VmRSS", 0.0), seen + 1
    return {"processes": seen, "cpu_s": cpu, "VmHWM": round(hwm, 1), "VmRSS": round(rss, 1)}


class Session:
    """One browser-like client: a websocket session on the server, driven page by page."""

    def __init__(self, base: str, name: str):
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self._Back, self._Fwd = BackMsg, ForwardMsg
        self.base, self.name = base.rstrip("/"), name
        self.http = requests.Session()
        self.http.get(self.base + "/", timeout=60)  # what a browser loads first
        self.http.get(self.base + "/_stcore/health", timeout=60)  # the frontend's first call: sets the XSRF cookie
        self.xsrf = self.http.cookies.get("_streamlit_xsrf", "")
        cookie = "; ".join(f"{k}={v}" for k, v in self.http.cookies.items())
        ws_url = self.base.replace("http", "ws", 1) + "/_stcore/stream"
        self.ws = connect(ws_url, subprotocols=["streamlit", self.xsrf] if self.xsrf else ["streamlit"],
                          additional_headers={"Cookie": cookie} if cookie else None, max_size=None,
                          open_timeout=60)
        self.session_id = ""
        self.pages: dict[str, str] = {}  # url path -> page_script_hash
        self.uploader_id = ""
        self.errors: list[str] = []

    def close(self) -> None:
        self.ws.close()

    def _receive_until_finished(self, timeout: float) -> list:
        msgs = []
        deadline = time.monotonic() + timeout
        while True:
            raw = self.ws.recv(timeout=max(0.1, deadline - time.monotonic()))
            msg = self._Fwd()
            msg.ParseFromString(raw)
            kind = msg.WhichOneof("type")
            msgs.append(msg)
            if kind == "new_session":
                self.session_id = msg.new_session.initialize.session_id or self.session_id
            elif kind == "navigation":
                for p in msg.navigation.app_pages:
                    self.pages[p.url_pathname] = p.page_script_hash
                    if p.is_default:
                        self.pages[""] = p.page_script_hash
            elif kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
                el = msg.delta.new_element
                which = el.WhichOneof("type")
                if which == "file_uploader":
                    self.uploader_id = el.file_uploader.id
                elif which == "exception":
                    self.errors.append(el.exception.message)
            elif kind == "script_finished":
                return msgs
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: no script_finished within {timeout} s")

    def visit(self, page: str, widgets=None, timeout: float = 600) -> float:
        """Run `page` (url path, '' = the default page) with `widgets` states; seconds to script_finished."""
        from streamlit.proto.WidgetStates_pb2 import WidgetStates

        back = self._Back()
        back.rerun_script.query_string = ""
        back.rerun_script.page_name = page
        if page in self.pages:
            back.rerun_script.page_script_hash = self.pages[page]
        back.rerun_script.widget_states.CopyFrom(WidgetStates(widgets=widgets or []))
        started = time.perf_counter()
        self.ws.send(back.SerializeToString())
        self._receive_until_finished(timeout)
        return time.perf_counter() - started

    def upload(self, name: str, data: bytes, timeout: float = 60):
        """Ask for an upload URL, PUT the file like the browser's uploader; returns the widget state."""
        from streamlit.proto.Common_pb2 import FileUploaderState, UploadedFileInfo
        from streamlit.proto.WidgetStates_pb2 import WidgetState

        back = self._Back()
        back.file_urls_request.request_id = uuid.uuid4().hex
        back.file_urls_request.file_names.append(name)
        back.file_urls_request.session_id = self.session_id
        self.ws.send(back.SerializeToString())
        deadline = time.monotonic() + timeout
        while True:
            msg = self._Fwd()
            msg.ParseFromString(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if msg.WhichOneof("type") == "file_urls_response":
                break
        if msg.file_urls_response.error_msg:
            raise RuntimeError(msg.file_urls_response.error_msg)
        urls = msg.file_urls_response.file_urls[0]
        url = urls.upload_url if urls.upload_url.startswith("http") else self.base + urls.upload_url
        resp = self.http.put(url, files={"file": (name, data, "image/png")},
                             headers={"X-Xsrftoken": self.xsrf} if self.xsrf else {}, timeout=timeout)
        resp.raise_for_status()
        state = WidgetState(id=self.uploader_id)
        state.file_uploader_state_value.CopyFrom(FileUploaderState(uploaded_file_info=[UploadedFileInfo(
            file_id=urls.file_id, name=name, size=len(data), file_urls=urls)]))
        return state


def upload_png(seed: int) -> bytes:
    from tests.fixtures_db import xray_image

    buf = io.BytesIO()
    Image.fromarray(xray_image(512, np.random.default_rng(seed), marker=True)).save(buf, format="PNG")
    return buf.getvalue()


def visit_view(s: Session, view: str, upload: bytes, upload_name: str) -> float:
    """One user's visit of `view`; seconds it took. The live CAM visit uploads `upload` and counts
    from the upload request to the page finished with the model's answer."""
    if view != "live_cam":
        return s.visit(view)
    s.visit("live_cam")  # draws the uploader (its widget id is needed for the upload)
    t0 = time.perf_counter()
    state = s.upload(upload_name, upload)
    s.visit("live_cam", [state])
    return time.perf_counter() - t0  # the upload's PUT is part of what the user waits for


def warm_server(base: str) -> float:
    """One session visits every view once (a live CAM included), so the server's imports, model
    and segmenter loads and query caches are done before the timed sessions start; seconds taken."""
    t = time.perf_counter()
    s = Session(base, "warm-up")
    try:
        s.visit("")
        for view in VIEWS:
            visit_view(s, view, upload_png(10**6), "warm-up.png")
        if s.errors:
            raise RuntimeError(f"warm-up visit raised on a page: {s.errors[:3]}")
    finally:
        s.close()
    return time.perf_counter() - t


def drive(base: str, index: int, rounds: int, timings: dict, failures: list, start: threading.Barrier,
          think_s: float = 0.0) -> None:
    name = f"session-{index}"
    try:
        s = Session(base, name)
    except Exception as exc:  # noqa: BLE001 (reported, not raised: one session must not stop the others)
        failures.append(f"{name}: could not connect: {exc!r}")
        return
    rng = random.Random(index)
    # the user's files exist before they upload them: made before the timed part starts, so the
    # client's PNG synthesis does not take CPU from the server (client and server share the box)
    uploads = [upload_png(index * 100 + r) for r in range(rounds)]
    try:
        s.visit("")  # the app's first run: navigation, sidebar (not timed: a browser's initial load)
        start.wait()
        for r in range(rounds):
            order = list(VIEWS)
            rng.shuffle(order)
            for view in order:
                timings[view].append((name, r, visit_view(s, view, uploads[r], f"xray-{index}-{r}.png")))
                if think_s:  # the user reads the page before the next click (0.5-1.5 x think_s)
                    time.sleep(think_s * rng.uniform(0.5, 1.5))
        if s.errors:
            failures.append(f"{name}: exceptions on a page: {s.errors[:3]}")
    except Exception as exc:  # noqa: BLE001
        failures.append(f"{name}: {exc!r}")
    finally:
        s.close()


def cpu_seconds(pid: int | None = None) -> float:
    """CPU seconds (user + system) used so far by process `pid` (None: this one), from /proc."""
    fields = Path(f"/proc/{pid or os.getpid()}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(db: Path, checkpoints: Path, port: int, log_file: Path) -> subprocess.Popen:
    """The server exactly as `python -m dashboard` starts it (its command, environment and folder),
    on 127.0.0.1:`port`."""
    from dashboard.__main__ import SERVE_FROM, build_parser, server_environment, streamlit_command

    cmd = streamlit_command(build_parser().parse_args(["--db", str(db), "--checkpoint-dir", str(checkpoints),
                                                       "--port", str(port), "--host", "127.0.0.1"]))
    proc = subprocess.Popen(cmd, cwd=SERVE_FROM, env=server_environment(), stdout=log_file.open("w"),
                            stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_file.read_text()[-2000:]}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=2).ok:
                return proc
        except requests.RequestException:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not become healthy in 180 s")


def build_db(folder: Path, n_test: int) -> Path:
    from tests.fixtures_db import MODEL_BEHAVIOUR, FakeResultsSpec, build_results_db

    spec = FakeResultsSpec(datasets=("bench-a", "bench-b"), models=tuple(MODEL_BEHAVIOUR), n_test=n_test,
                           n_train=0, methods=("gradcam", "cam"), image_size=64, compute_focus=False,
                           with_failed_run=False)
    return build_results_db(folder, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10, help="concurrent sessions (default 10)")
    ap.add_argument("--rounds", type=int, default=3, help="visits of every view per session (default 3)")
    ap.add_argument("--n-test", type=int, default=25000,
                    help="test images per dataset when building the DB (CAM rows = 40 x this; default 1M rows)")
    ap.add_argument("--db", type=Path, default=None, help="use this results DB (built there if missing)")
    ap.add_argument("--checkpoint-dir", type=Path, default=None,
                    help="classifier checkpoints for live CAM (default: one untrained resnet18 made here)")
    ap.add_argument("--warm-server", action="store_true",
                    help="before timing, visit every view once from one session: measures a server that has "
                         "served before (imports, model and caches loaded) instead of a freshly started one")
    ap.add_argument("--think-s", type=float, default=0.0,
                    help="mean seconds a user spends on a page before the next click (default 0: every "
                         "session clicks again as soon as a page is done, the heaviest load N sessions can make)")
    ap.add_argument("--url", default=None, help="attach to a running server instead of starting one")
    ap.add_argument("--server-pid", type=int, default=None, help="with --url: the server's pid (for its memory)")
    args = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="dashboard-load-"))
    server = None
    try:
        db = args.db or work / "db" / "results.duckdb"
        built_s = None
        if args.url is None and not db.exists():
            t = time.perf_counter()
            db = build_db(db.parent, args.n_test)
            built_s = round(time.perf_counter() - t, 1)
        checkpoints = args.checkpoint_dir
        if checkpoints is None:
            from tests.fixtures_db import make_checkpoint
            checkpoints = work / "ck"
            make_checkpoint(checkpoints, architecture="resnet18", input_size=224, dataset="bench-a")
        if args.url:
            base, pid = args.url, args.server_pid
        else:
            port = free_port()
            server = start_server(db, checkpoints, port, work / "server.log")
            base, pid = f"http://127.0.0.1:{port}", server.pid
        warm_s = round(warm_server(base), 1) if args.warm_server else None
        rss_start = peak_rss_mb(pid) if pid else {}
        timings: dict[str, list] = {v: [] for v in VIEWS}
        failures: list[str] = []
        start = threading.Barrier(args.sessions)
        threads = [threading.Thread(target=drive, args=(base, i, args.rounds, timings, failures, start, args.think_s),
                                    daemon=True)
                   for i in range(args.sessions)]
        t = time.perf_counter()
        cpu_start = {"client": cpu_seconds(), "server": cpu_seconds(pid) if pid else None,
                     "workers": workers_usage(pid)["cpu_s"] if pid else None}
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
        # where the box's CPU went during the run (connects and first page loads included)
        cpu = {"client_s": round(cpu_seconds() - cpu_start["client"], 1),
               "server_s": round(cpu_seconds(pid) - cpu_start["server"], 1) if pid else None}
        rss = peak_rss_mb(pid) if pid else {}
        workers = workers_usage(pid) if pid else {}
        if workers:  # the live CAM's model worker processes (dashboard/model_worker.py)
            cpu["model_workers_s"] = round(workers["cpu_s"] - cpu_start["workers"], 1)
        n_cams = None
        if db.exists() and server is not None:
            server.terminate()
            server.wait(30)
            server = None
            import duckdb
            with duckdb.connect(str(db), read_only=True) as con:
                n_cams = con.execute("SELECT count(*) FROM cams").fetchone()[0]
        views = {}
        for view, rows in timings.items():
            secs = [s for _, _, s in rows]
            first = [s for _, r, s in rows if r == 0]
            views[view] = {"visits": len(secs), "p50_s": round(percentile(secs, 50), 3),
                           "p95_s": round(percentile(secs, 95), 3), "max_s": round(max(secs), 3) if secs else None,
                           "first_visit_p50_s": round(statistics.median(first), 3) if first else None,
                           # rounds after the first: the server's imports and caches are warm
                           "later_rounds_p95_s": round(percentile([s for _, r, s in rows if r > 0], 95), 3)}
        result = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs", "date": time.strftime("%Y-%m-%d %H:%M"),
                  "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
                  "sessions": args.sessions, "rounds": args.rounds, "warm_server_s": warm_s,
                  "think_s": args.think_s, "db_cam_rows": n_cams, "db_build_s": built_s,
                  "wall_s": round(wall, 1), "cpu_during_run": cpu, "views": views,
                  "server_memory_mb": {"at_start": rss_start, "at_end": rss},
                  "model_workers": {k: v for k, v in workers.items() if k != "cpu_s"},
                  "goal": "p95 <= 2 s per view with 10 sessions on 2 cores",
                  "failures": failures}
        print(json.dumps(result, indent=2))
        return 1 if failures else 0
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
        shutil.rmtree(work, ignore_errors=True)  # a DB given with --db lives elsewhere and is kept


if __name__ == "__main__":
    sys.exit(main())
