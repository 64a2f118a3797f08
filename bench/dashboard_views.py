"""Dashboard timings: server time per view on a 100k-CAM-row DB, and one live CAM with resnet18 on CPU.

    python -m bench.dashboard_views                 # 2 datasets x 10 models x 2 methods x 2500 images
    python -m bench.dashboard_views --n-test 250    # a quick run (10k CAM rows)

Server time per view is the wall time of one script run of the page in streamlit's AppTest (the
same code path as a browser session, minus the network and the browser's drawing): "cold" with
empty caches (the first visitor after a new run), "warm" for the next rerun, and one filter
interaction. Goals: <= 1 s per view; <= 0.5 s for a live CAM with resnet18 on CPU.
Prints one JSON object; the lead copies the numbers (with machine and date) into bench/RESULTS.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmark import paths
from tests.fixtures_db import MODEL_BEHAVIOUR, FakeResultsSpec, build_results_db, make_checkpoint, open_page, xray_image


def _time_view(page: str | None, interact=None, repeats: int = 3) -> dict:
    import streamlit as st

    st.cache_data.clear()
    st.cache_resource.clear()
    t = time.perf_counter()
    at = open_page(None, timeout=300)
    first = time.perf_counter() - t
    if page is not None:
        t = time.perf_counter()
        at.switch_page(page).run(timeout=300)
        cold = time.perf_counter() - t
    else:
        cold = first
    if at.exception:
        raise RuntimeError(f"{page}: {at.exception}")
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        at.run(timeout=300)
        warm.append(time.perf_counter() - t)
    out = {"cold_s": round(cold, 3), "warm_s": round(statistics.median(warm), 3)}
    if interact is not None:
        t = time.perf_counter()
        interact(at).run(timeout=300)
        out["interaction_s"] = round(time.perf_counter() - t, 3)
        if at.exception:
            raise RuntimeError(f"{page} after interaction: {at.exception}")
    return out


def bench_views(folder: Path, n_test: int, db: Path | None = None) -> dict:
    spec = FakeResultsSpec(datasets=("bench-a", "bench-b"), models=tuple(MODEL_BEHAVIOUR), n_test=n_test,
                           n_train=0, methods=("gradcam", "cam"), image_size=64, compute_focus=False,
                           with_failed_run=False)
    t = time.perf_counter()
    if db is None:
        db = build_results_db(folder, spec)
    build_s = time.perf_counter() - t
    os.environ["CXR_RESULTS_DB"] = str(db)
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        n_cams = con.execute("SELECT count(*) FROM cams").fetchone()[0]
        n_preds = con.execute("SELECT count(*) FROM predictions").fetchone()[0]
    _time_view(None)  # imports (streamlit, plotly, torch) happen once per server process: not a view's cost
    views = {
        "leaderboard": _time_view(None, lambda at: at.selectbox(key="lb_method").set_value("cam")),
        "compare": _time_view("pages/compare.py", lambda at: at.button(key="cmp_next").click()),
        "misclassifications": _time_view("pages/misclassifications.py",
                                         lambda at: at.slider(key="mis_conf").set_value((0.8, 1.0))),
    }
    return {"db": {"cam_rows": n_cams, "prediction_rows": n_preds, "size_mb": round(db.stat().st_size / 2**20, 1),
                   "build_s": round(build_s, 1)}, "views": views}


def bench_live(folder: Path, repeats: int = 10) -> dict:
    from benchmark.lungseg import LungUNet, predict_lung_mask
    from benchmark.training.checkpoints import load_checkpoint
    from dashboard import live

    ckpt = make_checkpoint(folder / "ckpt", architecture="resnet18", input_size=224)
    model, meta = load_checkpoint(ckpt)
    cxr = paths.data_root() or Path("../shared/data/cxr")
    real = sorted((cxr / "cohen" / "images").glob("*.jpg"))[:1]
    if real:
        data, source = real[0].read_bytes(), str(real[0].name)
    else:
        import io

        from PIL import Image
        buf = io.BytesIO()
        Image.fromarray(xray_image(256, np.random.default_rng(0), marker=True)).save(buf, format="PNG")
        data, source = buf.getvalue(), "phantom png"
    segmenter = LungUNet(base_channels=16, input_size=128).eval()  # the default segmenter's size
    timings = {"decode": [], "segment": [], "predict_and_gradcam": [], "total": []}
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        image = live.decode_upload(data, 50 << 20)
        t1 = time.perf_counter()
        mask = predict_lung_mask(segmenter, image)
        t2 = time.perf_counter()
        res = live.explain(model, meta, image, "gradcam", mask if mask.any() else None)
        t3 = time.perf_counter()
        assert not res.error, res.error
        if i >= 2:  # warm-up: first calls allocate
            for k, v in zip(timings, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                timings[k].append(v)
    return {"upload": source, "model": "resnet18 @224 (untrained weights: same compute)",
            "threads": torch.get_num_threads(),
            **{f"{k}_s": round(statistics.median(v), 3) for k, v in timings.items()}}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-test", type=int, default=2500, help="test images per dataset (CAM rows = 40 x this)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--db", type=Path, default=None,
                    help="time the views on this existing DB (e.g. one built by bench.dashboard_load) instead of "
                         "building one")
    ap.add_argument("--no-live", action="store_true", help="skip the live CAM timing")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="dashboard-bench-") as tmp:
        result = {"machine": f"{cpu_name()}, {os.cpu_count()} CPUs, no GPU used",
                  "date": time.strftime("%Y-%m-%d"),
                  **bench_views(Path(tmp), args.n_test, args.db)}
        if not args.no_live:
            result["live_cam"] = bench_live(Path(tmp))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
