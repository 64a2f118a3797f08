"""Live CAMs on an uploaded X-ray: decode, predict, explain, score against a predicted lung mask.

No streamlit here. The upload stays in memory from browser to picture: bytes go to the
project's one image reader (content sniffing, bomb and size checks, DICOM MONOCHROME1 and VOI
LUT), never to a file or the DB, and only pixels come back, so no DICOM header field (patient
name, id) can reach the page.
"""
from __future__ import annotations

import importlib
import logging
import sys
import threading
import time
from dataclasses import dataclass

import numpy as np

from benchmark.data.imageio import read_image, resize_image
from benchmark.errors import BenchmarkError, ImageRejected
from dashboard.images import fit_within

log = logging.getLogger(__name__)

#: What a live CAM imports (torch and the model zoo: seconds of CPU), loaded in the
#: background when the server's first session starts, so the first upload does not wait for it
#: and no session's rerun holds the import lock for seconds while others queue behind it.
WARM_MODULES = ("torch", "benchmark.training.checkpoints", "benchmark.models", "benchmark.cams.methods",
                "benchmark.audit.cam_rows", "benchmark.lungseg")
_warm_lock = threading.Lock()
_warm_thread: threading.Thread | None = None


def _import_all() -> None:
    started = time.perf_counter()
    for name in WARM_MODULES:
        try:
            importlib.import_module(name)
        except Exception:  # a broken install shows up where the module is used, with its page
            if not sys.is_finalizing():  # a process ending mid-import (a short test run) is no fault
                log.exception("warm-up import of %s failed", name)
            return
    log.info("live CAM modules imported in %.1f s", time.perf_counter() - started)


def warm_up() -> threading.Thread:
    """Start importing WARM_MODULES in a daemon thread, once per process; returns that thread."""
    global _warm_thread
    with _warm_lock:
        if _warm_thread is None:
            _warm_thread = threading.Thread(target=_import_all, name="live-cam-warm-up", daemon=True)
            _warm_thread.start()
        return _warm_thread


#: The working copy of an upload: masks and overlays are computed at this size (longest side).
WORK_SIDE = 512


@dataclass(frozen=True)
class LiveCam:
    """One model's answer for one upload. `error` is set (and the rest empty) when it failed."""

    label: str
    classes: tuple[str, ...]
    probs: tuple[float, ...] = ()
    pred: str = ""
    confidence: float = float("nan")
    cam: np.ndarray | None = None          # layer resolution, values in [0, 1]
    lung_mass: float | None = None
    pointing_hit: bool | None = None
    seconds: float = 0.0
    error: str = ""


@dataclass(frozen=True)
class LiveOffer:
    """What the live CAM page can offer, as the process that runs the models sees it: its CAM
    methods, and whether the lung segmenter loads (`segmenter_note`: which one and its held-out
    Dice, or why there is none). Shared by every session (dashboard/cache.py): frozen."""

    methods: tuple[str, ...]
    segmenter_loaded: bool
    segmenter_note: str


def decode_upload(data: bytes, max_bytes: int) -> np.ndarray:
    """uint8 H x W (longest side <= WORK_SIDE) of an uploaded file, or ImageRejected with a reason.

    The size limit is checked here as well as by the server (server.maxUploadSize), because the
    server's limit can be raised by a flag and this function is also called outside a server.
    """
    if len(data) > max_bytes:
        raise ImageRejected(f"file is {len(data) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:.0f} MB")
    return np.array(fit_within(read_image(bytes(data)), WORK_SIDE))  # writable copy for torch


def segment_lungs(segmenter, image: np.ndarray) -> np.ndarray | None:
    """bool lung mask at the image's size from the project's segmenter (None without one), computed
    on the segmenter's own device: a segmenter shared by every session is never moved."""
    if segmenter is None:
        return None
    from benchmark.lungseg import predict_lung_mask

    return predict_lung_mask(segmenter, image, device=str(next(segmenter.parameters()).device))


def shareable(model):
    """A loaded classifier made ready to be shared by every session (dashboard/cache.py): eval
    mode, parameters frozen. Nothing per request writes to it after this: CAMs take their layer
    as an argument and hook only their own thread's forwards (benchmark/cams/hooks.py), and a
    frozen model's backward fills no `.grad`, so even pytorch-grad-cam's methods run without a lock."""
    model.eval()
    model.requires_grad_(False)
    return model


def explain(model, meta: dict, image: np.ndarray, method: str, lung_mask: np.ndarray | None = None,
            *, label: str = "") -> LiveCam:
    """Predict `image` with one checkpoint and compute `method`'s map for the predicted class
    (for CAM, Grad-CAM and HiResCAM, from the same forward pass).

    The image is squashed to the checkpoint's input size exactly as in training
    (benchmark.data.imageio.resize_image). Safe to call from many sessions at once on one
    shared model: nothing here changes the model (the method's layer is an argument). Failures of
    one model (a method that does not apply to it, a broken checkpoint) come back as `error` so
    the other models still show.
    """
    import torch

    from benchmark.audit.cam_rows import predicted_maps
    from benchmark.cams.lungfocus import lung_focus

    classes = tuple(str(c) for c in meta.get("classes", []))
    start = time.perf_counter()
    try:
        size = int(meta["input_size"])
        x = torch.from_numpy(np.array(resize_image(image, size))).float().div_(255)[None, None]
        maps, logits = predicted_maps(model, x, method)  # one forward for both (fast methods)
        probs = torch.softmax(logits, dim=1)[0]
        pred = int(probs.argmax())
        cam = maps[0].numpy()
    except BenchmarkError as exc:
        return LiveCam(label=label, classes=classes, error=str(exc))
    except (RuntimeError, ValueError, KeyError) as exc:  # shape mismatch, bad sidecar
        log.exception("live CAM failed for %s", label)
        return LiveCam(label=label, classes=classes, error=f"{type(exc).__name__}: {exc}")
    focus = None
    if lung_mask is not None and lung_mask.any():
        focus = lung_focus(cam, lung_mask)
    return LiveCam(
        label=label, classes=classes, probs=tuple(float(p) for p in probs), pred=classes[pred] if pred < len(classes)
        else str(pred), confidence=float(probs[pred]), cam=cam,
        lung_mass=None if focus is None else focus.lung_mass,
        pointing_hit=None if focus is None else focus.pointing_hit,
        seconds=time.perf_counter() - start)
