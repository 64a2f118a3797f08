"""Live CAM page: uploads of real X-rays, corrupt files and every hostile file; nothing leaks or crashes."""
from __future__ import annotations

import os
import tomllib
from pathlib import Path

import numpy as np
import pytest

from benchmark.cams.lungfocus import lung_focus
from benchmark.errors import ImageRejected
from benchmark.training.checkpoints import load_checkpoint
from dashboard import live, settings
from tests.conftest import REPO
from tests.fixtures_db import build_results_db, make_checkpoint, make_segmenter, open_page, texts

PAGE = "pages/live_cam.py"


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    ckpts = root / "checkpoints"
    make_checkpoint(ckpts, input_size=64, seed=0, accuracy=0.9)
    make_checkpoint(ckpts, input_size=48, seed=1, dataset="phantom-clean", accuracy=0.7)
    segmenter = root / "lungseg" / "lung_unet"
    make_segmenter(segmenter)
    db = build_results_db(root / "db")
    return {"root": root, "checkpoints": ckpts, "segmenter": segmenter, "db": db}


@pytest.fixture
def app_env(assets, monkeypatch):
    monkeypatch.setenv("CXR_RESULTS_DB", str(assets["db"]))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(assets["checkpoints"]))
    monkeypatch.setenv("CXR_LUNG_SEGMENTER", str(assets["segmenter"]))
    return assets


@pytest.fixture(scope="module")
def real_xray(cxr_root) -> Path:
    return sorted((cxr_root / "cohen" / "images").glob("*.jpg"))[0]


def _upload(at, name: str, data: bytes):
    at.file_uploader(key="live_upload").set_value((name, data, "application/octet-stream")).run()
    return at


def _predictions(at) -> list[str]:
    return [m.value for m in at.markdown if m.value.startswith("pred **")]


def test_upload_real_xray_shows_each_model_and_its_cam(app_env, real_xray):
    at = open_page(PAGE)
    assert not at.exception
    assert len(at.multiselect(key="live_models").value) == 2
    _upload(at, real_xray.name, real_xray.read_bytes())
    assert not at.exception and not at.error
    assert len(_predictions(at)) == 2
    assert len(at.image) == 3  # the upload with its mask, two overlays
    assert "hirescam@stride16 on CPU" in texts(at)  # the audit's fine map is the default here too
    bars = at.get("progress")  # one bar per class per model, the predicted class in bold
    assert len(bars) == 2 * 3 and sum("**" in b.proto.text for b in bars) == 2
    for pred, model_bars in zip(_predictions(at), (bars[:3], bars[3:])):
        top = max(model_bars, key=lambda b: b.proto.value)
        assert top.proto.text.startswith("**") and top.proto.text.split("**")[1] in pred
    at.multiselect(key="live_models").set_value(at.multiselect(key="live_models").value[:1]).run()
    assert len(_predictions(at)) == 1 and len(at.image) == 2
    at.selectbox(key="live_method").set_value("gradcam++").run()
    assert not at.exception and len(_predictions(at)) == 1


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_a_dead_model_worker_is_said_on_every_panel_and_the_next_rerun_asks_again(app_env, real_xray, monkeypatch):
    from dashboard import model_worker

    calls = []

    class DeadWorker:  # it answered when the page opened, then died
        def checkpoints(self, folder):
            return model_worker.checkpoints(folder)

        def describe(self, segmenter):
            return model_worker.describe(segmenter)

        def explain_upload(self, *args):
            calls.append(args)
            raise model_worker.WorkerFailed("the model worker process stopped (exit code -9; out of memory?)")

    monkeypatch.setattr(model_worker, "shared", lambda workers: DeadWorker())
    at = _upload(open_page(PAGE), real_xray.name, real_xray.read_bytes())
    assert not at.exception and not _predictions(at)
    warnings = [w.value for w in at.warning if "worker process stopped" in w.value]
    assert len(warnings) == 2  # one per chosen model
    assert len(at.image) == 1  # the upload still shows, without overlays
    at.run()  # nothing was kept: the rerun asks the worker again
    assert len(calls) == 2 and len(calls[1][1]) == 2


def test_a_worker_that_cannot_describe_its_models_is_said_and_the_next_rerun_asks_again(app_env, monkeypatch):
    """The page's methods and segmenter come from the worker; one that is down gives a clear error,
    the app stays up, and nothing is cached: the next rerun asks again."""
    from dashboard import cache, model_worker

    asked = []

    class Worker:
        dead = True

        def _answer(self, what, real):
            asked.append(what)
            if self.dead:
                raise model_worker.WorkerFailed("the model worker process stopped (exit code -9; out of memory?)")
            return real

        def checkpoints(self, folder):
            return self._answer("checkpoints", model_worker.checkpoints(folder))

        def describe(self, segmenter):
            return self._answer("describe", model_worker.describe(segmenter))

    worker = Worker()
    monkeypatch.setattr(model_worker, "shared", lambda workers: worker)
    cache._checkpoints.clear()
    cache._live_offer.clear()
    at = open_page(PAGE)
    assert not at.exception
    assert any("Live CAMs are not available right now" in e.value and "worker process stopped" in e.value
               for e in at.error)
    assert not at.get("file_uploader")
    worker.dead = False
    at.run()
    assert not at.exception and not at.error
    assert asked == ["checkpoints", "checkpoints", "describe"]  # the failure was not cached
    assert at.get("file_uploader") and "hirescam@stride16" in at.selectbox(key="live_method").options
    assert len(at.multiselect(key="live_models").options) == 2
    cache._checkpoints.clear()  # what the page read above came from this test's worker
    cache._live_offer.clear()


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_corrupt_upload_gets_a_message_and_the_app_stays_up(app_env, real_xray):
    at = open_page(PAGE)
    data = real_xray.read_bytes()
    _upload(at, "broken.jpg", data[: len(data) // 2])
    assert not at.exception
    assert at.error and "cannot be used" in at.error[0].value
    _upload(at, real_xray.name, data)
    assert not at.exception and not at.error and len(_predictions(at)) == 2


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_every_bad_input_gets_an_image_or_a_clear_message(app_env, bad_inputs):
    at = open_page(PAGE)
    files = sorted(p for p in bad_inputs.iterdir() if p.is_file())
    assert len(files) >= 18
    for path in files:
        _upload(at, path.name, path.read_bytes())
        assert not at.exception, path.name
        if at.error:
            assert "cannot be used as a chest X-ray" in at.error[0].value, path.name
            assert len(at.image) == 0, path.name
        else:
            assert len(_predictions(at)) == 2 and len(at.image) == 3, path.name
    outcome = {}
    for name in ("zero-bytes.png", "bomb-20000x20000.png", "random-bytes.dcm", "truncated.dcm",
                 "dx-monochrome1-12bit.dcm", "gray16.png", "all-black.png"):
        _upload(at, name, (bad_inputs / name).read_bytes())
        outcome[name] = "refused" if at.error else "shown"
    assert outcome == {"zero-bytes.png": "refused", "bomb-20000x20000.png": "refused",
                       "random-bytes.dcm": "refused", "truncated.dcm": "refused",
                       "dx-monochrome1-12bit.dcm": "shown", "gray16.png": "shown", "all-black.png": "shown"}


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_dicom_identifiers_are_never_displayed(app_env, bad_inputs):
    at = open_page(PAGE)
    for name in ("dx-monochrome1-12bit.dcm", "dx-monochrome2-windowed.dcm", "dx-rescale.dcm"):
        raw = (bad_inputs / name).read_bytes()
        assert b"TEST-0001" in raw  # the file does carry them
        _upload(at, name, raw)
        shown = texts(at) + " ".join(str(i.proto) for i in at.image)
        assert "Test^Phantom" not in shown and "TEST-0001" not in shown and "Phantom" not in shown
        assert len(_predictions(at)) == 2


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_upload_writes_nothing(app_env, real_xray, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db_stat = os.stat(app_env["db"])
    before = sorted(p for p in app_env["root"].rglob("*"))
    at = open_page(PAGE)
    _upload(at, real_xray.name, real_xray.read_bytes())
    assert len(_predictions(at)) == 2
    assert list(tmp_path.iterdir()) == []
    assert sorted(p for p in app_env["root"].rglob("*")) == before
    assert os.stat(app_env["db"]).st_mtime_ns == db_stat.st_mtime_ns


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_without_segmenter_cams_show_and_the_page_says_how_to_train_one(app_env, real_xray, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_LUNG_SEGMENTER", str(tmp_path / "missing" / "lung_unet"))
    at = _upload(open_page(PAGE), real_xray.name, real_xray.read_bytes())
    assert not at.exception
    assert "python -m benchmark lungs train" in texts(at)
    assert len(_predictions(at)) == 2 and "lung mass n/a" in texts(at)


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_without_any_training_the_shipped_segmenter_gives_contours_and_lung_mass(app_env, cxr_root, monkeypatch):
    """A fresh install: no --segmenter, nothing trained under the checkpoints, an NIH X-ray (no mask in the pack)."""
    from benchmark.lungseg import load_segmenter
    from benchmark.paths import SHIPPED_SEGMENTER

    monkeypatch.delenv("CXR_LUNG_SEGMENTER", raising=False)
    assert not (app_env["checkpoints"] / "lungseg").exists()
    xray = sorted((cxr_root / "nih" / "images").glob("*.jpg"))[0]
    at = _upload(open_page(PAGE), xray.name, xray.read_bytes())
    assert not at.exception and not at.error
    text = texts(at)
    assert "segmenter shipped in the package (held-out cohen Dice 0.9" in text
    assert "Lungs cover 0." in text and "lung mass n/a" not in text
    assert text.count("lung mass **") == len(_predictions(at)) == 2
    # the contour drawn is the shipped segmenter's mask of this upload, a plausible pair of lungs
    mask = live.segment_lungs(load_segmenter(SHIPPED_SEGMENTER)[0], live.decode_upload(xray.read_bytes(), 10 << 20))
    assert 0.1 < mask.mean() < 0.6 and f"Lungs cover {mask.mean():.2f}" in text


def test_without_checkpoints_the_page_explains_and_still_reads_the_upload(app_env, real_xray, tmp_path, monkeypatch):
    monkeypatch.setenv("CXR_CHECKPOINTS", str(tmp_path / "empty"))
    at = open_page(PAGE)
    assert "No classifier checkpoints" in texts(at)
    _upload(at, real_xray.name, real_xray.read_bytes())
    assert not at.exception and len(at.image) == 1 and _predictions(at) == []


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_a_broken_checkpoint_fails_alone(app_env, real_xray, tmp_path, monkeypatch):
    ckpts = tmp_path / "ckpts"
    good = make_checkpoint(ckpts, input_size=64, seed=3, accuracy=0.95)
    bad = make_checkpoint(ckpts, input_size=64, seed=4, dataset="other", accuracy=0.5)
    bad.write_bytes(b"not a safetensors file")
    monkeypatch.setenv("CXR_CHECKPOINTS", str(ckpts))
    at = _upload(open_page(PAGE), real_xray.name, real_xray.read_bytes())
    assert not at.exception
    assert len(_predictions(at)) == 1 and at.warning
    assert good.exists()


def test_explain_predicts_and_scores_against_the_mask(app_env, real_xray):
    path = next(Path(app_env["checkpoints"]).rglob("*.safetensors"))
    model, meta = load_checkpoint(path)
    image = live.decode_upload(real_xray.read_bytes(), 10 << 20)
    mask = np.zeros(image.shape, bool)
    mask[image.shape[0] // 4: 3 * image.shape[0] // 4, image.shape[1] // 5: 4 * image.shape[1] // 5] = True
    res = live.explain(model, meta, image, "gradcam", mask, label="x")
    assert res.error == "" and res.pred in meta["classes"]
    assert sum(res.probs) == pytest.approx(1.0, abs=1e-5) and res.confidence == pytest.approx(max(res.probs))
    assert res.cam.ndim == 2 and np.isfinite(res.cam).all()
    assert res.lung_mass == pytest.approx(lung_focus(res.cam, mask).lung_mass)
    no_mask = live.explain(model, meta, image, "gradcam", None)
    assert no_mask.lung_mass is None and no_mask.pred == res.pred
    bad = live.explain(model, meta, image, "no-such-method")
    assert "choose one of" in bad.error
    fine = live.explain(model, meta, image, "hirescam@stride16", mask)
    size = int(meta["input_size"])
    assert fine.error == "" and fine.cam.shape == (size // 16, size // 16) and fine.lung_mass is not None


def test_size_limit_in_code_and_in_server_config(real_xray):
    data = real_xray.read_bytes()
    with pytest.raises(ImageRejected, match="limit"):
        live.decode_upload(data, len(data) - 1)
    assert live.decode_upload(data, len(data)).dtype == np.uint8
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == settings.MAX_UPLOAD_MB


def test_warm_up_imports_the_live_cam_modules_once_per_process():
    import sys

    from dashboard import live

    first = live.warm_up()
    assert live.warm_up() is first  # every session's app run asks; one thread does it
    first.join(timeout=120)
    assert not first.is_alive()
    assert all(name in sys.modules for name in live.WARM_MODULES)


@pytest.mark.slow  # three reruns
def test_checkpoint_list_is_read_again_when_a_checkpoint_appears_or_goes(tmp_path, monkeypatch):
    ckpts = tmp_path / "checkpoints"
    make_checkpoint(ckpts, input_size=48, seed=0)
    monkeypatch.setenv("CXR_RESULTS_DB", str(build_results_db(tmp_path / "db")))
    monkeypatch.setenv("CXR_CHECKPOINTS", str(ckpts))
    at = open_page(PAGE)
    assert len(at.multiselect(key="live_models").options) == 1
    second = make_checkpoint(ckpts, input_size=48, seed=1, dataset="phantom-clean")
    at.run()
    assert len(at.multiselect(key="live_models").options) == 2
    Path(second).unlink()
    at.run()
    assert len(at.multiselect(key="live_models").options) == 1
