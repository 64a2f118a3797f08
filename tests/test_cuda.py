"""The cuda tier: every device path of the project once on a CUDA device, against the CPU.

`pytest -m cuda` runs these (and the cuda tests of test_cams.py and test_road_torch.py) on a GPU
machine; bench/gpu_check.sh does it first. Without a GPU they are collected and skipped with one
reason, "needs a CUDA device" (tests/conftest.py `cuda_tier_device`; the only skips CI allows).
With `CXR_TEST_DEVICE=cpu` their bodies run on the CPU, and
`test_the_cuda_tier_runs_on_the_cpu_and_skips_with_one_reason` does that in every full run, so the
code is exercised before a GPU ever sees it.

What a CPU run proves: every call runs, takes and returns tensors where it should, and meets its
tolerance with bf16 numerics: the `Numerics` fixture makes the training code (training/fit.py,
training/device.py, audit/source_probe.py) use bf16 autocast and channels_last on the CPU as it
does on CUDA, and wraps the lung segmenter, whose CUDA autocast is fixed in its code, in a CPU bf16
autocast. What only a GPU proves: CUDA's kernels (cuDNN, TF32 convolutions, CUDA's own autocast op
list), host-device transfers, the dataset kept in device memory, and the cross-device tolerances
(on the CPU the reference is the same device).

Tolerances, the same on either device:
- predictions of the same weights, bf16 on the device vs fp32 on the CPU: PROB_TOL_MAX (largest
  absolute difference of a probability) and PROB_TOL_MEAN (mean), and the same class wherever fp32's
  two best probabilities are further apart than 2 x PROB_TOL_MAX. bf16 keeps 8 bits of mantissa
  (relative rounding 2^-9) in each product; with bf16 emulated on the CPU the three nets here moved
  by at most 1.1e-2 (mean 2e-3). A CUDA run is expected to be of the same order, not yet measured.
- CAM maps in [0, 1]: fast path vs pytorch-grad-cam on the same device 1e-3 (max), device vs CPU in
  fp32 5e-3 (mean; TF32 convolutions), as test_cams.py states.
- lung masks, bf16 on the device vs fp32 on the CPU: Dice >= MASK_DICE.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from bench.gpu_check import cuda_test_files
from tests.conftest import CUDA_SKIP_REASON, ENV_TEST_DEVICE, REPO

#: One architecture per model library (benchmark.models: `family`), the cheapest of each.
FAMILY_MODELS = {"torchvision": "resnet18", "timm": "xception", "scratch": "shallow"}
CLASSES = ("normal", "pneumonia", "covid")
PROB_TOL_MAX = 0.05
PROB_TOL_MEAN = 0.01
MAP_TOL_SAME_DEVICE = 1e-3
MAP_TOL_ACROSS_DEVICES = 5e-3
MASK_DICE = 0.97
CAM_METHODS = ("cam", "gradcam", "hirescam", "hirescam@stride16")

CPU = torch.device("cpu")


# --- CUDA's numerics, emulated on the CPU ---

@dataclass(frozen=True)
class Numerics:
    """What the device's code paths compute in. On CUDA the code's own choices (bf16 autocast and
    channels_last, training/device.py) apply and both contexts change nothing. On the CPU
    (`emulated`), `on_device()` makes the training code take the CUDA branches (bf16 autocast on the
    CPU, channels_last) and `segmenter()` puts the lung segmenter's forward under CPU bf16 autocast,
    standing in for the CUDA autocast written into lungseg/predict.py and lungseg/train.py."""

    device: torch.device

    @property
    def emulated(self) -> bool:
        return self.device.type != "cuda"

    @contextlib.contextmanager
    def on_device(self):
        if not self.emulated:
            yield
            return
        bf16 = lambda device: torch.autocast("cpu", dtype=torch.bfloat16)
        channels_last = lambda device: torch.channels_last
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("benchmark.training.fit.autocast", bf16)
            mp.setattr("benchmark.training.fit.memory_format", channels_last)
            mp.setattr("benchmark.training.device.memory_format", channels_last)  # to_input's layout
            mp.setattr("benchmark.audit.source_probe.autocast", bf16)
            yield

    def segmenter(self):
        return torch.autocast("cpu", dtype=torch.bfloat16) if self.emulated else contextlib.nullcontext()


@pytest.fixture
def numerics(device) -> Numerics:
    return Numerics(device)


# --- data and helpers ---

def band_images(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 n x size x size noise with a bright band in the third of the image that names the class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % len(CLASSES)
    x = torch.rand(n, size, size, generator=g) * 80 + 40
    for k in range(len(CLASSES)):
        x[y == k, k * size // 3:(k + 1) * size // 3, :] += 120
    return x.clamp(0, 255).to(torch.uint8), y


def smooth_images(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n x 1 x size x size floats in [0, 1] with some spatial structure (CAM inputs)."""
    g = torch.Generator().manual_seed(seed)
    return nn.functional.avg_pool2d(torch.rand(n, 1, size, size, generator=g), 5, stride=1, padding=2)


def settle_batchnorm(model: nn.Module, images: torch.Tensor, device: torch.device) -> None:
    """Re-estimate every BatchNorm's running statistics on `images` (a cumulative average, fp32).
    A net trained for a few steps still holds nearly its initial statistics and predicts almost the
    same probabilities for every image, and a comparison of flat predictions could not fail. Both
    sides of the comparison get these statistics (the weights are copied afterwards)."""
    from benchmark.training.device import to_input

    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    with torch.no_grad():
        for start in range(0, len(images), 16):
            model(to_input(images[start:start + 16], device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def mask_dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / max(1, a.sum() + b.sum()))


def cohen_with_masks(cxr_root, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The first `n` cohen images with a human (v7labs) lung mask, as (uint8 image, bool mask)."""
    import csv

    from benchmark.data.imageio import read_image, read_mask

    out = []
    with open(cxr_root / "cohen" / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["mask"] and row["mask_source"] == "v7labs":
                out.append((np.asarray(read_image(cxr_root / "cohen" / row["image"])),
                            np.asarray(read_mask(cxr_root / "cohen" / row["mask"])) > 0))
            if len(out) == n:
                return out
    return out


# --- training on the device ---

@pytest.mark.cuda
@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_training_on_the_device_predicts_as_the_cpu_does(family, device, numerics):
    """fit() with the dataset on the device (uint8, as run_job puts it there), on-device augmentation,
    bf16 autocast and channels_last; then the trained weights predict on the device (bf16) within
    PROB_TOL_MAX / PROB_TOL_MEAN of the same weights on the CPU in fp32. On the CPU the bf16 and
    channels_last branches run emulated (Numerics); the CUDA kernels and transfers are not proven."""
    from benchmark.config import TrainConfig
    from benchmark.models import create_model, get_spec
    from benchmark.training.fit import fit, predict_probs

    name = FAMILY_MODELS[family]
    assert get_spec(name).family == family
    cuda = device.type == "cuda"
    size, n_train, n_val, epochs = (64, 96, 24, 2) if cuda else (32, 18, 9, 1)
    x, y = band_images(n_train + n_val, size)
    train_x, train_y = x[:n_train].to(device), y[:n_train].to(device)
    val_x, val_y = x[n_train:].to(device), y[n_train:].to(device)
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES))
    with numerics.on_device():
        result = fit(model, train_x, train_y, val_x, val_y, len(CLASSES),
                     TrainConfig(epochs=epochs, batch_size=8, lr=1e-3, patience=epochs), device, progress=False)
    assert {p.device.type for p in model.parameters()} == {device.type}
    assert train_x.device.type == device.type  # fit trains from the device's copy, never a host one
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert len(result.history) == epochs and result.images_per_s > 0
    assert all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in result.history)

    settle_batchnorm(model, train_x, device)
    with numerics.on_device():
        probs = predict_probs(model, val_x, device)
    reference = create_model(name, num_classes=len(CLASSES))
    reference.load_state_dict({k: v.detach().float().cpu() for k, v in model.state_dict().items()})
    expected = predict_probs(reference, val_x.cpu(), CPU)  # fp32, contiguous: the CPU's own path
    assert expected.max() - 1 / len(CLASSES) >= 0.1, "flat predictions: the comparison could not fail"
    diff = np.abs(probs - expected)
    assert diff.max() <= PROB_TOL_MAX and diff.mean() <= PROB_TOL_MEAN, (diff.max(), diff.mean())
    assert diff.max() > 0  # the bf16 path ran: it cannot give fp32's numbers exactly
    top = np.sort(expected, axis=1)
    clear = top[:, -1] - top[:, -2] > 2 * PROB_TOL_MAX
    assert (probs.argmax(1) == expected.argmax(1))[clear].all()


# --- CAMs on the device ---

@pytest.mark.cuda
@pytest.mark.parametrize("family", list(FAMILY_MODELS))
def test_fast_cams_on_the_device_equal_pytorch_grad_cams(family, device):
    """Per family, every fast method (and a stride-16 layer) on the device: the same maps as
    pytorch-grad-cam on the device (MAP_TOL_SAME_DEVICE), near the CPU's (MAP_TOL_ACROSS_DEVICES),
    the predicted class's map and logits from one forward, the model left as it was. On the CPU both
    devices are the CPU."""
    from benchmark.audit.cam_rows import method_applicability
    from benchmark.cams.engine import compute_cams, explain_predictions
    from benchmark.cams.names import split_method
    from benchmark.models import create_model

    torch.manual_seed(0)
    on_cpu = create_model(FAMILY_MODELS[family], num_classes=len(CLASSES)).eval()
    model = copy.deepcopy(on_cpu).to(device)
    x = smooth_images(16 if device.type == "cuda" else 2, 64)
    methods, skipped = method_applicability(model, CAM_METHODS)
    assert {m for m, _ in skipped} <= {"cam"} and len(methods) >= 3
    for method in methods:
        base, layer = split_method(method)
        maps, logits = explain_predictions(model, x.to(device), base, layer=layer)  # one forward: class and map
        assert maps.device.type == "cpu" and logits.device.type == "cpu", method
        targets = logits.argmax(1)
        fast = compute_cams(model, x, targets, base, fast=True, layer=layer)
        reference = compute_cams(model, x, targets, base, fast=False, layer=layer)
        assert fast.shape == reference.shape == maps.shape, method
        assert (fast - reference).abs().max() <= MAP_TOL_SAME_DEVICE, method
        assert (maps - fast).abs().max() <= MAP_TOL_SAME_DEVICE, method
        assert int((fast.flatten(1).amax(1) > 0.99).sum()) >= 1, method  # real maps, not all zero
        if device.type != "cpu":  # on the CPU this is the same call again
            assert (fast - compute_cams(on_cpu, x, targets, base, layer=layer)).abs().mean() <= MAP_TOL_ACROSS_DEVICES
    assert hook_count(model) == 0 and not any(m.training for m in model.modules())
    assert {p.device.type for p in model.parameters()} == {device.type}


# --- the live CAM and the lung segmenter on the device ---

@pytest.mark.cuda
def test_live_cam_and_its_lung_mask_on_the_device(device, numerics, cxr_root):
    """dashboard/live.py with a classifier and the shipped segmenter on the device, shared as the
    dashboard shares them: the same prediction and maps as on the CPU for fast and
    pytorch-grad-cam methods, the lung mask computed on the segmenter's own device (it is never
    moved), lung measures from it. On the CPU the segmenter's bf16 is emulated."""
    from benchmark.lungseg import load_segmenter
    from benchmark.models import create_model
    from benchmark.paths import SHIPPED_SEGMENTER
    from dashboard.live import WORK_SIDE, explain, segment_lungs, shareable

    ((image, _),) = cohen_with_masks(cxr_root, 1)
    image = np.array(image[:WORK_SIDE, :WORK_SIDE])
    torch.manual_seed(0)
    on_cpu = shareable(create_model("resnet18", num_classes=len(CLASSES)))
    model = shareable(copy.deepcopy(on_cpu).to(device))
    meta = {"classes": list(CLASSES), "input_size": 64}

    seg_cpu, _ = load_segmenter(SHIPPED_SEGMENTER)
    seg, _ = load_segmenter(SHIPPED_SEGMENTER, device=str(device))
    seen = []
    seg.register_forward_pre_hook(lambda module, args: seen.append(args[0].device.type))
    with numerics.segmenter():
        mask = segment_lungs(seg, image)
    assert seen and set(seen) == {device.type}  # computed where the shared segmenter lives
    assert {p.device.type for p in seg.parameters()} == {device.type} and not seg.training
    expected_mask = segment_lungs(seg_cpu, image)
    assert mask.shape == image.shape and mask.any()
    assert mask_dice(mask, expected_mask) >= MASK_DICE

    for method in ("gradcam", "hirescam@stride16", "cam", "gradcam++"):
        got = explain(model, meta, image, method, mask, label="device")
        want = explain(on_cpu, meta, image, method, expected_mask, label="cpu")
        assert not got.error and not want.error, (got.error, want.error)
        assert got.pred == want.pred and np.abs(np.array(got.probs) - np.array(want.probs)).max() <= 2e-3
        assert got.cam.shape == want.cam.shape
        assert np.abs(got.cam - want.cam).mean() <= MAP_TOL_ACROSS_DEVICES, method
        assert got.lung_mass is not None and abs(got.lung_mass - want.lung_mass) <= 0.05, method
    assert {p.device.type for p in model.parameters()} == {device.type} and hook_count(model) == 0


@pytest.mark.cuda
def test_lung_segmenter_predicts_and_trains_on_the_device(device, numerics, cxr_root):
    """The shipped segmenter on the device (bf16 autocast on CUDA) gives the CPU's fp32 masks within
    MASK_DICE on real X-rays, and still finds the lungs (Dice with the human mask); a short training
    on the device runs in bf16 with channels_last and returns its model on the device. On the CPU
    bf16 is emulated around the calls; CUDA's autocast branch itself runs only on a GPU."""
    from benchmark.lungseg import load_segmenter, phantom_samples, predict_lung_mask, train_lung_segmenter
    from benchmark.paths import SHIPPED_SEGMENTER

    seg_cpu, _ = load_segmenter(SHIPPED_SEGMENTER)
    seg, _ = load_segmenter(SHIPPED_SEGMENTER, device=str(device))
    for image, truth in cohen_with_masks(cxr_root, 4 if device.type == "cuda" else 2):
        with numerics.segmenter():
            mask = predict_lung_mask(seg, image, device=str(device))
        assert mask_dice(mask, predict_lung_mask(seg_cpu, image)) >= MASK_DICE
        assert mask_dice(mask, truth) >= 0.7
    assert {p.device.type for p in seg.parameters()} == {device.type}

    images, masks = phantom_samples(12, 32, seed=0)
    with numerics.segmenter():
        trained, report = train_lung_segmenter(images[:8], masks[:8], val_images=images[8:], val_masks=masks[8:],
                                               epochs=1, batch_size=4, device=str(device), base_channels=8)
    assert report["device"] == str(device) and report["bf16"] == (device.type == "cuda")
    assert {p.device.type for p in trained.parameters()} == {device.type} and not trained.training
    conv = next(m for m in trained.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert math.isfinite(report["history"][0]["loss"]) and 0 <= report["best_val_dice"] <= 1


# --- the pipeline: a two-run experiment with the external matrix ---

@pytest.mark.cuda
def test_a_two_run_experiment_with_the_external_matrix_on_the_device(device, numerics, cxr_root, external_root,
                                                                    cache_env, tmp_path):
    """resnet18 on cohen-nih and on covid-normal (a few whole patients per class) on the device:
    training, scoring, CAMs, the CAM sanity check, ROAD on one image, probes, the source probe, lung
    masks from the segmenter on the device; then the external matrix: each checkpoint scored on the
    other dataset ("auto") and, on CUDA, on the external pack, which is scored whole (497 images). On
    the CPU the training code runs with bf16 and channels_last emulated, and the external pack is
    left out: scoring it twice took about two minutes of CPU there (bf16 emulated is slow on a CPU),
    and tests/test_external_sets.py scores it on the CPU."""
    from benchmark.pipeline.experiment import experiment_from_table
    from benchmark.pipeline.external import experiment_pairs, run_external_matrix
    from benchmark.pipeline.grid import run_grid
    from benchmark.store import reader

    cuda = device.type == "cuda"
    external_set = "external-covid-normal"
    exp = experiment_from_table("cuda-tier", {
        "datasets": ["cohen-nih", "covid-normal"], "models": ["resnet18"], "seeds": [0],
        "external": ["auto", external_set] if cuda else ["auto"],
        "data": {"max_per_class": 8, "image_size": 64},
        "train": {"epochs": 2 if cuda else 1, "batch_size": 8},
        "audit": {"cam_methods": ["gradcam", "hirescam@stride16"], "faithfulness_sample": 1, "sanity_sample": 2,
                  "n_boot": 30},
    }).with_overrides(data_root=str(cxr_root), external_root=str(external_root), cache_dir=str(cache_env))
    specs = exp.specs(device=str(device), checkpoint_dir=str(tmp_path / "ck"), progress=False)
    db = tmp_path / "r.duckdb"
    loaded: dict = {}
    with numerics.on_device():
        statuses = run_grid(specs, db, loaded=loaded)
        pairs = experiment_pairs(exp, specs, loaded)
        external = run_external_matrix(pairs, specs, db, loaded=loaded)
    assert [s["status"] for s in statuses] == ["done", "done"], statuses
    expected_pairs = [("cohen-nih", "covid-normal"), ("covid-normal", "cohen-nih")]
    if cuda:
        expected_pairs += [("cohen-nih", external_set), ("covid-normal", external_set)]
    assert pairs == expected_pairs
    assert [s["status"] for s in external] == ["done"] * len(pairs), external
    with reader(db) as con:
        devices = {r[0] for r in con.execute("SELECT device FROM runs").fetchall()}
        splits = dict(con.execute("SELECT split, count(*) FROM predictions GROUP BY split").fetchall())
        lung = con.execute("SELECT count(*), count(lung_mass) FROM cams WHERE split LIKE 'external:%' "
                           "AND target_kind = 'pred'").fetchone()
        faithful = con.execute("SELECT count(*), count(value) FROM faithfulness").fetchone()
        sanity = con.execute("SELECT count(*), count(rank_corr) FROM cam_sanity").fetchone()
        probes = {r[0] for r in con.execute("SELECT probe FROM probes").fetchall()}
    assert devices == {str(device)}
    assert {"external:covid-normal~max8", "external:cohen-nih~max8"} <= set(splits)
    if cuda:
        assert splits[f"external:{external_set}"] == 2 * 497  # the external pack, scored whole by both runs
    assert lung[0] > 0 and lung[1] == lung[0]  # every external image has its lung measures
    assert faithful[0] > 0 and faithful[1] > 0 and sanity[0] > 0 and sanity[1] > 0
    assert {"lungs_removed", "lungs_only", "source", "lungs_only@external:covid-normal~max8"} <= probes


# --- the tier itself, in every run of the suite ---

def run_tier(env_changes: dict[str, str | None]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in env_changes}
    env.update({k: v for k, v in env_changes.items() if v is not None})
    return subprocess.run([sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
                           *cuda_test_files()], cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)


def outcome_counts(stdout: str) -> dict[str, int]:
    last = stdout.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)", last)}


@pytest.mark.slow
def test_the_cuda_tier_runs_on_the_cpu_and_skips_with_one_reason():
    """`pytest -m cuda` with CXR_TEST_DEVICE=cpu: every test of the tier passes on the CPU, none
    skipped. Without a device and with CI=true: all of them skip with the one reason, and the CI
    skip guard lets that session pass."""
    assert {"tests/test_cams.py", "tests/test_cuda.py", "tests/test_road_torch.py"} <= set(cuda_test_files())

    on_cpu = run_tier({ENV_TEST_DEVICE: "cpu"})
    counts = outcome_counts(on_cpu.stdout)
    assert on_cpu.returncode == 0, on_cpu.stdout[-6000:] + on_cpu.stderr[-3000:]
    assert counts.get("passed", 0) >= 11 and set(counts) <= {"passed", "deselected"}, on_cpu.stdout[-3000:]

    plain = run_tier({ENV_TEST_DEVICE: None, "CI": "true"})
    assert plain.returncode == 0, plain.stdout[-6000:] + plain.stderr[-3000:]
    if torch.cuda.is_available():  # a GPU machine: the tier runs for real
        assert outcome_counts(plain.stdout).get("passed") == counts["passed"]
        return
    assert outcome_counts(plain.stdout).get("skipped") == counts["passed"], plain.stdout[-3000:]
    reasons = {line.rsplit(": ", 1)[-1] for line in plain.stdout.splitlines() if line.startswith("SKIPPED")}
    assert reasons == {CUDA_SKIP_REASON}, plain.stdout[-3000:]
