"""The live CAM's model worker process: same answers as in-process, shared safely, survives a crash."""
from __future__ import annotations

import io
import os
import signal
import threading

import numpy as np
import pytest

from benchmark.paths import SHIPPED_SEGMENTER
from dashboard.model_worker import ModelWorker, WorkerFailed, receive_message, send_message
from tests.fixtures_db import APP, lung_mask, make_checkpoint, xray_image


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("worker")
    path = make_checkpoint(root / "ck", architecture="resnet18", input_size=64, seed=3)
    rng = np.random.default_rng(0)
    images = [xray_image(96, rng, marker=bool(i % 2)) for i in range(4)]
    return {"checkpoint": str(path), "mtime": path.stat().st_mtime_ns, "images": images, "mask": lung_mask(96)}


@pytest.fixture(scope="module")
def worker():
    w = ModelWorker(1)
    w.start()
    yield w
    w.close()


def _explain(w, path, mtime, image, method, mask, label):
    """One checkpoint's answer through the page's request (ModelWorker.explain_upload)."""
    return w.explain_upload(image, [(path, mtime, label)], method, mask)[1][0]


def _segment(w, stem, mtime, image):
    return w.explain_upload(image, [], "", segmenter=(stem, mtime))[0]


def _same(a, b):
    assert a.error == b.error == ""
    assert (a.label, a.classes, a.pred) == (b.label, b.classes, b.pred)
    np.testing.assert_allclose(a.probs, b.probs, atol=1e-6)
    np.testing.assert_allclose(a.cam, b.cam, atol=1e-6)
    assert a.lung_mass == pytest.approx(b.lung_mass, abs=1e-6) and a.pointing_hit == b.pointing_hit


def test_messages_carry_numeric_arrays_and_refuse_anything_else():
    buf = io.BytesIO()
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    send_message(buf, {"op": "x", "n": 1.5}, {"image": image, "mask": image > 5, "none": None})
    buf.seek(0)
    header, arrays = receive_message(buf)
    assert header == {"op": "x", "n": 1.5} and set(arrays) == {"image", "mask"}
    np.testing.assert_array_equal(arrays["image"], image)
    assert arrays["mask"].dtype == bool and arrays["mask"].sum() == 6
    arrays["image"][0, 0] = 9  # owned and writable (torch.from_numpy needs that)
    with pytest.raises(TypeError, match="dtype object"):
        send_message(io.BytesIO(), {}, {"bad": np.array([object()])})
    # a header naming another dtype is refused before any bytes are interpreted
    bad = io.BytesIO()
    send_message(bad, {}, {"a": np.zeros(2, np.float32)})
    raw = bad.getvalue().replace(b"float32", b"float64")
    with pytest.raises(ValueError, match="dtype 'float64'"):
        receive_message(io.BytesIO(raw))
    with pytest.raises(EOFError):
        receive_message(io.BytesIO(bad.getvalue()[:-3]))  # cut short


@pytest.mark.slow  # the worker's start imports torch: seconds, not milliseconds
def test_worker_gives_the_in_process_answers(worker, assets):
    here = ModelWorker(0)
    for method in ("hirescam@stride16", "gradcam", "cam"):
        for image in assets["images"][:2]:
            args = (assets["checkpoint"], assets["mtime"], image, method, assets["mask"], "m")
            _same(_explain(worker, *args), _explain(here, *args))
    stem, mtime = str(SHIPPED_SEGMENTER), 0
    image = assets["images"][0]
    np.testing.assert_array_equal(_segment(worker, stem, mtime, image), _segment(here, stem, mtime, image))
    # what the page offers (methods, segmenter) is the same from either side, good or missing segmenter
    for segmenter in ((stem, mtime), ("/nowhere/lung_unet", 0)):
        assert worker.describe(segmenter) == here.describe(segmenter)
    offer = worker.describe((stem, mtime))
    assert offer.segmenter_loaded
    assert "segmenter shipped in the package (held-out cohen Dice 0.9" in offer.segmenter_note
    assert {"cam", "gradcam", "hirescam", "hirescam@stride16"} <= set(offer.methods)
    missing = worker.describe(("/nowhere/lung_unet", 0))
    assert not missing.segmenter_loaded and "No lung segmenter at /nowhere/lung_unet" in missing.segmenter_note


@pytest.mark.slow  # starts a worker process (torch import) under a fresh interpreter
def test_with_workers_the_server_never_imports_torch(tmp_path):
    """The live page, an upload and every other page, in a fresh process with one worker: the CAMs
    come back and torch stays out of the server process (the worker holds it)."""
    import subprocess
    import sys
    import textwrap

    from tests.fixtures_db import build_results_db

    ck = tmp_path / "ck"
    make_checkpoint(ck, architecture="resnet18", input_size=64, seed=3)
    db = build_results_db(tmp_path / "db")
    buf = io.BytesIO()
    from PIL import Image
    Image.fromarray(xray_image(128, np.random.default_rng(0), marker=True)).save(buf, format="PNG")
    (tmp_path / "x.png").write_bytes(buf.getvalue())
    script = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from streamlit.testing.v1 import AppTest
        def open_page(page):  # as tests/fixtures_db.py does; that module imports torch itself
            at = AppTest.from_file({str(APP)!r}, default_timeout=120).run()
            return at.switch_page(page).run()
        for page in ("pages/leaderboard.py", "pages/performance.py", "pages/compare.py",
                     "pages/misclassifications.py"):
            assert not open_page(page).exception, page
        assert "torch" not in sys.modules
        at = open_page("pages/live_cam.py")
        data = Path({str(tmp_path / "x.png")!r}).read_bytes()
        at.file_uploader(key="live_upload").set_value(("x.png", data, "image/png")).run(timeout=120)
        assert not at.exception and not at.error, (at.exception, at.error)
        preds = [m.value for m in at.markdown if m.value.startswith("pred **")]
        print("PREDICTIONS", len(preds), "IMAGES", len(at.image), "TORCH", "torch" in sys.modules)
        from dashboard import model_worker
        for w in model_worker._SHARED.values():
            w.close()
    """)
    env = {**os.environ, "CXR_RESULTS_DB": str(db), "CXR_CHECKPOINTS": str(ck), "CXR_LIVE_WORKERS": "1"}
    env.pop("CXR_LUNG_SEGMENTER", None)  # the shipped segmenter, loaded by the worker
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "PREDICTIONS 1 IMAGES 2 TORCH False" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]


@pytest.mark.slow  # shares the module's worker process
def test_one_request_gives_the_mask_and_every_model(worker, assets, tmp_path):
    """The page's request: the mask from the segmenter, then each checkpoint with that mask."""
    image, ck = assets["images"][1], (assets["checkpoint"], assets["mtime"])
    mask, (a, b) = worker.explain_upload(image, [(*ck, "a"), (*ck, "b")], "gradcam",
                                         segmenter=(str(SHIPPED_SEGMENTER), 0))
    np.testing.assert_array_equal(mask, _segment(ModelWorker(0), str(SHIPPED_SEGMENTER), 0, image))
    _same(a, _explain(worker, *ck, image, "gradcam", mask, "a"))
    assert (a.label, b.label) == ("a", "b") and np.array_equal(a.cam, b.cam)
    # a segmenter that cannot be loaded leaves the mask None; the CAMs still come, without lung mass
    mask, (c,) = worker.explain_upload(image, [(*ck, "c")], "gradcam", segmenter=(str(tmp_path / "none"), 0))
    assert mask is None and c.error == "" and c.cam is not None and c.lung_mass is None


@pytest.mark.slow  # 8 threads queue on one worker process, so this takes seconds
def test_sessions_sharing_one_worker_get_their_own_maps(worker, assets):
    requests = [(image, method) for image in assets["images"] for method in ("hirescam@stride16", "gradcam")]
    alone = [_explain(worker, assets["checkpoint"], assets["mtime"], img, m, assets["mask"], f"r{i}")
             for i, (img, m) in enumerate(requests)]
    got: dict[int, object] = {}
    start = threading.Barrier(8)

    def session(k):
        start.wait()
        for i in range(k, len(requests), 8):
            img, m = requests[i]
            got[i] = _explain(worker, assets["checkpoint"], assets["mtime"], img, m, assets["mask"], f"r{i}")

    threads = [threading.Thread(target=session, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, res in enumerate(alone):
        _same(got[i], res)


@pytest.mark.slow  # shares the module's worker process
def test_a_bad_checkpoint_or_method_is_one_panels_error_and_the_worker_stays(worker, assets, tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a checkpoint")
    res = _explain(worker, str(broken), 1, assets["images"][0], "gradcam", None, "broken")
    assert res.error and res.label == "broken" and res.cam is None
    res = _explain(worker, assets["checkpoint"], assets["mtime"], assets["images"][0], "no-such-method", None, "m")
    assert "no-such-method" in res.error
    good = _explain(worker, assets["checkpoint"], assets["mtime"], assets["images"][0], "gradcam", None, "m")
    assert good.error == "" and good.cam is not None and good.lung_mass is None  # no mask, no lung mass


@pytest.mark.slow  # starts a second worker process (torch import)
def test_a_worker_that_dies_fails_its_request_clearly_and_is_replaced(assets):
    w = ModelWorker(1)
    try:
        args = (assets["checkpoint"], assets["mtime"], assets["images"][0], "gradcam", assets["mask"], "m")
        first = _explain(w, *args)
        assert first.error == ""
        (pid,) = w.pids()
        os.kill(pid, signal.SIGKILL)  # as the OOM killer would
        with pytest.raises(WorkerFailed, match="worker process stopped"):
            _explain(w, *args)  # the page shows this on every panel (test_dashboard_live_cam)
        again = _explain(w, *args)  # a new process answers
        _same(again, first)
        assert w.pids() and w.pids() != [pid]
    finally:
        w.close()
    assert w.pids() == []


@pytest.mark.slow  # starts a worker process
def test_the_worker_process_exits_when_the_server_closes_its_pipe(assets):
    w = ModelWorker(1)
    w.start()
    process = list(w._idle.queue)[0]
    process.proc.stdin.close()  # what the kernel does when the server process dies
    assert process.proc.wait(timeout=120) == 0
    process.proc.stdout.close()


def test_workers_setting():
    from dashboard.settings import LIVE_WORKERS, resolve_settings

    assert resolve_settings([], {}).live_workers == LIVE_WORKERS == 1
    assert resolve_settings(["--live-workers", "0"], {}).live_workers == 0
    assert resolve_settings([], {"CXR_LIVE_WORKERS": "2"}).live_workers == 2
    with pytest.raises(ValueError, match="CXR_LIVE_WORKERS must be a whole number"):
        resolve_settings([], {"CXR_LIVE_WORKERS": "two"})
    with pytest.raises(ValueError, match="live_workers must be >= 0"):
        resolve_settings(["--live-workers", "-1"], {})
