"""Live CAMs from many threads on one shared model: each gets exactly the map it gets alone.

The dashboard caches one model per checkpoint and every browser session (a Streamlit thread)
uses it. Before the layer became an argument, explaining at another layer swapped the model's
spec and the hooks saw every thread's forwards: 98 of 120 concurrent requests failed and 7
returned another request's map (issue 10).
"""
from __future__ import annotations

import random
import threading

import numpy as np
import pytest
import torch

from benchmark.audit.cam_rows import method_maps
from benchmark.models import create_model
from benchmark.training.checkpoints import load_checkpoint, save_checkpoint
from dashboard import live

CLASSES = ["normal", "pneumonia", "covid"]
SIZE = 64  # resnet18: layer4 2 x 2, layer3 (stride16) 4 x 4, layer2 8 x 8
# fast path (cam, gradcam, hirescam) at three layers, and pytorch-grad-cam's own classes
METHODS = ("gradcam", "hirescam@stride16", "cam", "gradcam@layer3", "hirescam", "gradcam++",
           "layercam@layer2", "eigencam")
N_THREADS = 8
PER_THREAD = 8
N_IMAGES = 4


def _images() -> list[np.ndarray]:
    """Distinct images (a bright blob somewhere different on each), so swapped maps show."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = []
    for _ in range(N_IMAGES):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.01) * 180
        out.append(np.clip(blob + rng.normal(40, 20, (SIZE, SIZE)), 0, 255).astype(np.uint8))
    return out


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    """8 request threads are parallel enough: with torch's own threads per op as well, the threads
    only spin against each other for cores and the test's CPU time grows many times over."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cached(tmp_path_factory):
    """One checkpoint loaded once, as dashboard/cache.load_model does (random init is enough)."""
    torch.manual_seed(0)
    stem = tmp_path_factory.mktemp("ckpt") / "resnet18"
    save_checkpoint(create_model("resnet18", num_classes=len(CLASSES)), stem,
                    {"architecture": "resnet18", "classes": CLASSES, "input_size": SIZE})
    model, meta = load_checkpoint(stem.with_suffix(".safetensors"))
    return live.shareable(model), meta


def _run_threads(work: list[list], call) -> tuple[dict, list[str]]:
    """Run `call(item)` for every item of each thread's list, all threads started together."""
    results: dict = {}
    failures: list[str] = []
    barrier = threading.Barrier(len(work))

    def worker(items):
        barrier.wait()
        for item in items:
            try:
                results.setdefault(item, []).append(call(item))
            except Exception as exc:  # every failure is counted; none may happen
                failures.append(f"{item}: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=worker, args=(items,)) for items in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in threads), "a CAM thread hung"
    return results, failures


def _hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


@pytest.mark.slow  # seconds: the fast tier keeps to quick tests
def test_live_cams_from_8_threads_equal_the_same_requests_alone(cached):
    model, meta = cached
    spec = model.spec
    images = _images()
    pairs = [(i, m) for i in range(N_IMAGES) for m in METHODS]
    alone = {}
    for i, method in pairs:
        res = live.explain(model, meta, images[i], method)
        assert res.error == "", (method, res.error)
        alone[i, method] = res
    # the maps differ between images, so a map handed to the wrong request would be seen
    for method in METHODS:
        cams = [alone[i, method].cam for i in range(N_IMAGES)]
        assert sum(not np.allclose(cams[0], c, atol=1e-3) for c in cams[1:]) >= N_IMAGES - 2, method

    rng = random.Random(0)
    work = [[rng.choice(pairs) for _ in range(PER_THREAD)] for _ in range(N_THREADS)]

    def call(item):
        i, method = item
        return live.explain(model, meta, images[i], method)

    results, failures = _run_threads(work, call)
    assert failures == []
    errors = [f"{k}: {r.error}" for k, rs in results.items() for r in rs if r.error]
    assert errors == []
    assert sum(len(rs) for rs in results.values()) == N_THREADS * PER_THREAD
    wrong = [k for k, rs in results.items() for r in rs
             if not (np.allclose(r.cam, alone[k].cam, rtol=0, atol=1e-5) and r.cam.shape == alone[k].cam.shape
                     and np.allclose(r.probs, alone[k].probs, rtol=0, atol=1e-6))]
    assert wrong == []
    # and the shared model is exactly as cached: same spec object, no hook left, eval, frozen
    assert model.spec is spec and _hooks(model) == 0
    assert not any(m.training for m in model.modules())
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_a_trainable_model_shared_by_threads_keeps_its_gradients(cached):
    """The audit's models are not frozen: pytorch-grad-cam's backward() then writes .grad, so that
    path holds a lock per model and restores them; the fast path needs none."""
    _, meta = cached
    torch.manual_seed(1)
    model = create_model("resnet18", num_classes=len(CLASSES)).eval()
    x = torch.from_numpy(np.stack(_images())).unsqueeze(1)
    targets = torch.tensor([0, 1, 2, 0])
    methods = ("gradcam++", "gradcam@layer3", "hirescam@stride16", "gradcam")
    alone = {m: method_maps(model, x, targets, m) for m in methods}
    results, failures = _run_threads([[methods[(t + k) % len(methods)] for k in range(4)] for t in range(4)],
                                     lambda m: method_maps(model, x, targets, m))
    assert failures == []
    assert all(torch.allclose(r, alone[m], rtol=0, atol=1e-5) for m, rs in results.items() for r in rs)
    assert all(p.requires_grad and p.grad is None for p in model.parameters()) and _hooks(model) == 0
