"""Live-CAM model work in worker processes, so it runs beside the server's Python, not under its GIL.

Streamlit serves every browser session from threads of one process. A live CAM is mostly torch
(the classifier's forward and backward, the lung segmenter), and each torch call gives the GIL
back and must take it again from the sessions' Python (queries, tables, pictures), so under many
sessions the server cannot use all of its cores and a live CAM takes many times its time alone
(bench/RESULTS.md, dashboard load; bench/gil_convoy.py). In a worker process the model work has
its own interpreter and another core; the session's thread only waits on a pipe.

`ModelWorker` is what the server holds (one per process, dashboard/cache.py). It is thread-safe:
a request takes an idle worker process (waiting for one if all are busy), sends it the image, the
segmenter to mask it with (or the mask the page already has), the method and every checkpoint
still to answer, and gets the mask and a `live.LiveCam` per checkpoint back: one round trip per
upload, so a session waits in the worker's queue once, not once per model. A worker
loads each checkpoint once (LRU, keyed by path and mtime) and answers one request at a time. A
worker that dies (out of memory, a crash in a native library) fails the request it held with a
clear message and is replaced at the next request.

The workers are `python -m dashboard.model_worker` subprocesses, not multiprocessing's: Streamlit
runs each page as the `__main__` module, so a spawned multiprocessing child would import the page
script again. Messages are a JSON header and raw numeric arrays (uint8, bool, float32: no
pickle, nothing executable crosses the pipe); checkpoints are read by training.checkpoints
(safetensors + JSON) in the worker. A worker's stdout carries only messages (anything a library
prints goes to stderr, the server's log), and it exits when the server closes its stdin.

`workers=0` runs the same functions in the calling thread (a server without a spare core, the
AppTest suite); the answers are the same either way (tests/test_model_worker.py).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import queue
import struct
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

import numpy as np

from dashboard import live

log = logging.getLogger(__name__)

#: Checkpoints a worker keeps loaded (least recently used goes first), as the server's cache did.
MAX_MODELS_PER_WORKER = 16
#: The only array types a message may carry.
ARRAY_DTYPES = ("uint8", "bool", "float32")
_LENGTH = struct.Struct(">Q")


class WorkerFailed(RuntimeError):
    """The worker process stopped while it held a request, or answered with an error."""


# ---- the work (run in a worker, or in the calling thread with workers=0) -----------------------

@functools.lru_cache(maxsize=MAX_MODELS_PER_WORKER)
def _model(path: str, mtime_ns: int):
    """(model, sidecar) made shareable: with workers=0 every session thread shares it."""
    from benchmark.training.checkpoints import load_checkpoint

    model, meta = load_checkpoint(path, device="cpu")
    return live.shareable(model), meta


@functools.lru_cache(maxsize=2)
def _segmenter(stem: str, mtime_ns: int):
    """(segmenter, sidecar), loaded once per (stem, mtime) in this process."""
    from benchmark.lungseg import load_segmenter

    return load_segmenter(stem)


def segmenter_status(stem: str, mtime_ns: int) -> tuple[bool, str]:
    """(loads, note): the segmenter at `stem` loaded as the masks will be, and what the page says
    of it: which one and its held-out Dice, or why there is none (only a --segmenter /
    $CXR_LUNG_SEGMENTER path that does not exist, or a damaged file: the package ships one)."""
    from benchmark import paths
    from benchmark.errors import BenchmarkError, WeightsMissingError

    try:
        _model, meta = _segmenter(stem, mtime_ns)
    except WeightsMissingError:
        return False, (f"No lung segmenter at {stem}, so CAMs are shown without lung_mass. Fix the path, leave "
                       f"--segmenter and ${paths.ENV_SEGMENTER} unset to use the segmenter shipped in the package, "
                       "or train one with `python -m benchmark lungs train`.")
    except (BenchmarkError, OSError, ValueError, KeyError) as exc:
        return False, f"The lung segmenter could not be loaded ({exc}); CAMs are shown without lung_mass."
    which = ("the segmenter shipped in the package" if Path(stem) == paths.SHIPPED_SEGMENTER
             else f"segmenter {stem}")
    dice = meta.get("heldout_cohen_dice_native")
    return True, f"Lung mask from {which}" + (f" (held-out cohen Dice {dice:.3f})." if dice is not None else ".")


def checkpoints(folder: str) -> list[dict]:
    """The classifier checkpoints under `folder`, sidecars read and validated (training.checkpoints):
    validating an architecture needs the model registry, hence torch, so it is done here."""
    from benchmark.training.checkpoints import list_checkpoints

    return list_checkpoints(folder)


def describe(segmenter: tuple[str, int]) -> live.LiveOffer:
    """The live CAM page's choices, from the process that runs the models: its CAM methods (the
    registry's, then the default ones that name a layer) and the segmenter's status. Asked here so
    that a server whose models run in workers never imports torch."""
    from benchmark.cams import DEFAULT_CAM_METHODS
    from benchmark.cams.methods import list_cam_methods

    loaded, note = segmenter_status(*segmenter)
    return live.LiveOffer(methods=tuple(list_cam_methods()) + tuple(m for m in DEFAULT_CAM_METHODS if "@" in m),
                          segmenter_loaded=loaded, segmenter_note=note)


def explain_checkpoint(path: str, mtime_ns: int, image: np.ndarray, method: str,
                       lung_mask: np.ndarray | None, label: str) -> live.LiveCam:
    """One checkpoint's prediction and map for `image` (live.explain), the checkpoint loaded once
    per (path, mtime) in this process. A checkpoint that cannot be loaded is this panel's error."""
    try:
        model, meta = _model(path, mtime_ns)
    except Exception as exc:  # a broken checkpoint is one panel's problem, not the worker's
        log.exception("checkpoint %s failed to load", path)
        return live.LiveCam(label=label, classes=(), error=f"{type(exc).__name__}: {exc}")
    return live.explain(model, meta, image, method, lung_mask, label=label)


def segment(stem: str, mtime_ns: int, image: np.ndarray) -> np.ndarray | None:
    """The lung mask of `image` from the segmenter at `stem` (loaded once per (stem, mtime))."""
    return live.segment_lungs(_segmenter(stem, mtime_ns)[0], image)


def explain_upload(image: np.ndarray, checkpoints: list[tuple[str, int, str]], method: str,
                   lung_mask: np.ndarray | None = None, segmenter: tuple[str, int] | None = None,
                   ) -> tuple[np.ndarray | None, list[live.LiveCam]]:
    """What the live CAM page needs for one upload, in one call: the lung mask from `segmenter`
    (stem, mtime) when given (else `lung_mask` as it is), then each (path, mtime, label)
    checkpoint's answer with that mask. A segmenter failure leaves the mask None; the CAMs still come."""
    if segmenter is not None:
        try:
            lung_mask = segment(*segmenter, image)
        except Exception:
            log.exception("lung segmentation failed")
            lung_mask = None
    return lung_mask, [explain_checkpoint(path, mtime, image, method, lung_mask, label)
                       for path, mtime, label in checkpoints]


# ---- messages: a JSON header, then raw arrays -------------------------------------------------

def send_message(stream: BinaryIO, header: dict, arrays: dict[str, np.ndarray | None] | None = None) -> None:
    """Write one message: length-prefixed JSON (with each array's dtype and shape), then the arrays."""
    parts, specs = [], {}
    for name, array in (arrays or {}).items():
        if array is None:
            continue
        array = np.ascontiguousarray(array)
        if array.dtype.name not in ARRAY_DTYPES:
            raise TypeError(f"array {name!r} has dtype {array.dtype}; messages carry only {ARRAY_DTYPES}")
        specs[name] = [array.dtype.name, list(array.shape)]
        parts.append(array.tobytes())
    encoded = json.dumps({**header, "arrays": specs}).encode()
    stream.write(_LENGTH.pack(len(encoded)) + encoded + b"".join(parts))
    stream.flush()


def _read_exactly(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n) if n else b""
    if len(data) != n:
        raise EOFError(f"stream ended after {len(data)} of {n} bytes")
    return data


def receive_message(stream: BinaryIO) -> tuple[dict, dict[str, np.ndarray]]:
    """Read one message written by send_message (EOFError when the other side has gone)."""
    (length,) = _LENGTH.unpack(_read_exactly(stream, _LENGTH.size))
    header = json.loads(_read_exactly(stream, length))
    arrays = {}
    for name, (dtype, shape) in header.pop("arrays", {}).items():
        if dtype not in ARRAY_DTYPES:
            raise ValueError(f"message array {name!r} has dtype {dtype!r}")
        count = int(np.prod(shape, dtype=np.int64))
        raw = _read_exactly(stream, count * np.dtype(dtype).itemsize)
        arrays[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()  # writable, owned
    return header, arrays


def _live_cam_fields(res: live.LiveCam) -> dict:
    return {"label": res.label, "classes": list(res.classes), "probs": list(res.probs), "pred": res.pred,
            "confidence": res.confidence, "lung_mass": res.lung_mass, "pointing_hit": res.pointing_hit,
            "seconds": res.seconds, "error": res.error}


def _live_cam_from(fields: dict, cam: np.ndarray | None) -> live.LiveCam:
    return live.LiveCam(label=fields["label"], classes=tuple(fields["classes"]), probs=tuple(fields["probs"]),
                        pred=fields["pred"], confidence=fields["confidence"], cam=cam,
                        lung_mass=fields["lung_mass"], pointing_hit=fields["pointing_hit"],
                        seconds=fields["seconds"], error=fields["error"])


def _answer(header: dict, arrays: dict) -> tuple[dict, dict]:
    if header.get("op") == "describe":
        offer = describe((str(header["segmenter"][0]), int(header["segmenter"][1])))
        return {"ok": "describe", "offer": dataclasses.asdict(offer)}, {}
    if header.get("op") == "checkpoints":
        return {"ok": "checkpoints", "checkpoints": checkpoints(str(header["folder"]))}, {}
    if header.get("op") != "upload":
        raise ValueError(f"unknown request {header.get('op')!r}")
    segmenter = header.get("segmenter")
    mask, results = explain_upload(arrays["image"], [(str(p), int(m), str(lab)) for p, m, lab in header["checkpoints"]],
                                   str(header["method"]), arrays.get("mask"),
                                   None if segmenter is None else (str(segmenter[0]), int(segmenter[1])))
    out = {"mask": mask}
    for i, res in enumerate(results):
        out[f"cam{i}"] = None if res.cam is None else np.asarray(res.cam, dtype=np.float32)
    return {"ok": "upload", "results": [_live_cam_fields(r) for r in results]}, out


def serve(requests: BinaryIO, answers: BinaryIO) -> int:
    """The worker's loop: answer each request until the server closes the stream."""
    live._import_all()  # the imports before the first request, not inside it
    send_message(answers, {"ok": "ready", "pid": os.getpid()})
    while True:
        try:
            header, arrays = receive_message(requests)
        except EOFError:
            return 0  # the server has gone
        try:
            reply, out = _answer(header, arrays)
        except Exception as exc:  # one bad request is that request's error, not the worker's end
            log.exception("model worker request failed")
            reply, out = {"error": f"{type(exc).__name__}: {exc}"}, {}
        send_message(answers, reply, out)


# ---- the server's side -------------------------------------------------------------------------

class _Process:
    """One worker subprocess and its two pipes."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "dashboard.model_worker"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self.ready = False

    def request(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        try:
            if not self.ready:
                hello, _ = receive_message(self.proc.stdout)
                if hello.get("ok") != "ready":
                    raise EOFError(f"unexpected first message {hello}")
                self.ready = True
            send_message(self.proc.stdin, header, arrays)
            reply, out = receive_message(self.proc.stdout)
        except (EOFError, OSError, ValueError) as exc:
            code = self.proc.poll()
            self.stop()
            why = f"exit code {code}" if code is not None else str(exc)
            raise WorkerFailed(f"the model worker process stopped ({why}; out of memory or a crash?); "
                               "a new one starts with the next request") from None
        if "error" in reply:
            raise WorkerFailed(f"the model worker could not answer: {reply['error']}")
        return reply, out

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout):
            try:
                pipe.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


class ModelWorker:
    """Runs `explain_upload` in `workers` processes (0: in the calling thread).

    Safe to share between sessions: each request holds one idle process for its duration.
    """

    def __init__(self, workers: int = 1):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.workers = int(workers)
        self._idle: queue.Queue[_Process | None] = queue.Queue()
        self._started = False
        self._start_lock = threading.Lock()

    def start(self) -> None:
        """Start the worker processes now (their imports take seconds), not at the first request."""
        with self._start_lock:
            if self._started:
                return
            self._started = True
            for _ in range(self.workers):
                self._idle.put(_Process())

    def _request(self, header: dict, arrays: dict) -> tuple[dict, dict]:
        self.start()
        process = self._idle.get()  # waits while every worker is busy
        try:
            if process is None or not process.alive:
                if process is not None:
                    process.stop()
                process = _Process()
            return process.request(header, arrays)
        finally:
            self._idle.put(process if process is not None and process.alive else None)

    def explain_upload(self, image: np.ndarray, checkpoints: list[tuple[str, int, str]], method: str,
                       lung_mask: np.ndarray | None = None, segmenter: tuple[str, int] | None = None,
                       ) -> tuple[np.ndarray | None, list[live.LiveCam]]:
        """`explain_upload` in a worker: one round trip for the mask and every checkpoint. Raises
        WorkerFailed when the worker died while it held the request."""
        if self.workers == 0:
            return explain_upload(image, checkpoints, method, lung_mask, segmenter)
        header = {"op": "upload", "checkpoints": [list(c) for c in checkpoints], "method": method,
                  "segmenter": None if segmenter is None else list(segmenter)}
        reply, arrays = self._request(header, {"image": image, "mask": lung_mask})
        return arrays.get("mask"), [_live_cam_from(fields, arrays.get(f"cam{i}"))
                                    for i, fields in enumerate(reply["results"])]

    def describe(self, segmenter: tuple[str, int]) -> live.LiveOffer:
        """`describe` where the models run (raises WorkerFailed like explain_upload)."""
        if self.workers == 0:
            return describe(segmenter)
        reply, _ = self._request({"op": "describe", "segmenter": list(segmenter)}, {})
        fields = reply["offer"]
        return live.LiveOffer(**{**fields, "methods": tuple(fields["methods"])})  # JSON gave a list

    def checkpoints(self, folder: str) -> list[dict]:
        """`checkpoints` where the models run (raises WorkerFailed like explain_upload)."""
        if self.workers == 0:
            return checkpoints(folder)
        reply, _ = self._request({"op": "checkpoints", "folder": str(folder)}, {})
        return list(reply["checkpoints"])

    def pids(self) -> list[int]:
        """Process ids of the idle worker processes (tests)."""
        return [p.proc.pid for p in list(self._idle.queue) if p is not None and p.alive]

    def close(self) -> None:
        """Stop the idle worker processes; a later request starts new ones."""
        for _ in range(self._idle.qsize()):
            try:
                process = self._idle.get_nowait()
            except queue.Empty:
                return
            if process is not None:
                process.stop()
            self._idle.put(None)


_SHARED: dict[int, ModelWorker] = {}
_SHARED_LOCK = threading.Lock()


def shared(workers: int) -> ModelWorker:
    """This process's one ModelWorker for `workers`, started: the server's, which every session
    uses. dashboard/serve.py asks for it at launch, so the workers import torch while the server
    waits for its first visitor; the pages get the same object through dashboard/cache.py. With
    workers=0 the models run in this process, so torch's imports start here instead (live.warm_up,
    a daemon thread, once per process); with workers this process never imports torch."""
    if workers == 0:
        live.warm_up()
    with _SHARED_LOCK:
        worker = _SHARED.get(workers)
        if worker is None:
            worker = _SHARED[workers] = ModelWorker(workers)
    worker.start()
    return worker


def main() -> int:
    answers = os.fdopen(os.dup(1), "wb")  # messages only: fd 1 now points at stderr, so stray prints
    os.dup2(2, 1)                         # from a library cannot corrupt the stream
    sys.stdout = sys.stderr
    logging.basicConfig(level=logging.WARNING, format="model worker %(levelname)s %(name)s: %(message)s")
    return serve(sys.stdin.buffer, answers)


if __name__ == "__main__":
    sys.exit(main())
