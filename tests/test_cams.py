"""CAM engine: registry, maps at layer resolution, fast path == pytorch-grad-cam, no side effects."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from benchmark.cams import (
    CamMethodNotApplicable,
    compute_cams,
    explain_predictions,
    faithfulness_scores,
    get_cam_method,
    list_cam_methods,
    lung_focus_batch,
    register_cam_method,
    upsample_cam,
)
from benchmark.cams.faithfulness import rank_maps
from benchmark.errors import BenchmarkError, UnknownNameError
from tests.conftest import zoo_params

ALL_METHODS = set(list_cam_methods())


# --- stand-ins with XrayClassifier's interface (.net, .spec, .cam_target_layer, 1-channel input) ---

@dataclass(frozen=True)
class StandInSpec:
    name: str
    cam_target_layer: str
    classifier: str
    gap_head: bool


class StandIn(nn.Module):
    def __init__(self, net: nn.Module, spec: StandInSpec, in_chans: int = 1):
        super().__init__()
        self.net, self.spec, self.in_chans = net, spec, in_chans

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.net.get_submodule(self.spec.cam_target_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_chans == 3:
            x = x.expand(-1, 3, -1, -1)
        return self.net((x - 0.5) / 0.25)


class ShallowNet(nn.Module):
    """Like benchmark.models.shallow: conv-BN-ReLU-pool blocks, GAP, dropout, linear."""

    def __init__(self, num_classes: int = 3, widths=(1, 8, 16, 32)):
        super().__init__()
        self.features = nn.Sequential(*(
            nn.Sequential(nn.Conv2d(a, b, 3, padding=1, bias=False), nn.BatchNorm2d(b), nn.ReLU(inplace=True),
                          nn.MaxPool2d(2))
            for a, b in zip(widths[:-1], widths[1:])))
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(widths[-1], num_classes)
        self.fail_after_features = False  # to test the exception path mid-forward

    def forward(self, x):
        x = self.features(x)
        if self.fail_after_features:
            raise RuntimeError("boom after the CAM layer")
        return self.classifier(self.dropout(x.mean(dim=(2, 3))))


def shallow(seed: int = 0) -> StandIn:
    torch.manual_seed(seed)
    return StandIn(ShallowNet(), StandInSpec("shallow", "features", "classifier", True)).eval()


def resnet18(seed: int = 0) -> StandIn:
    torch.manual_seed(seed)
    net = torchvision.models.resnet18(weights=None, num_classes=3)
    return StandIn(net, StandInSpec("resnet18", "layer4", "fc", True), in_chans=3).eval()


def flat_head(seed: int = 0) -> StandIn:
    """alexnet/vgg-like: the head flattens the feature map, so there is no GAP and no CAM."""
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Conv2d(1, 8, 3, stride=4, padding=1), nn.ReLU(), nn.MaxPool2d(2)))
    net.add_module("classifier", nn.Sequential(nn.Flatten(), nn.Linear(8 * 8 * 8, 3)))
    return StandIn(net, StandInSpec("alexnet-like", "features", "classifier.1", False)).eval()


def images(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 1, size, size, generator=g)
    return torch.nn.functional.avg_pool2d(base, 5, stride=1, padding=2)  # some spatial structure


TARGETS = torch.tensor([0, 1, 2, 0])


def layer_shape(model: StandIn, x: torch.Tensor, layer: nn.Module | None = None) -> tuple[int, int]:
    seen = []
    handle = (layer or model.cam_target_layer).register_forward_hook(lambda m, i, o: seen.append(o.shape[-2:]))
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    return tuple(seen[-1])


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


# --- registry ---

def test_registry_holds_the_stored_method_names():
    # the names DESIGN.md's contract documents for `cams.method` stay registered
    assert {"cam", "gradcam", "gradcam++", "hirescam", "scorecam", "layercam", "eigencam"} <= ALL_METHODS
    assert all(name == name.lower() for name in list_cam_methods())
    assert get_cam_method("GradCAM").name == "gradcam"


def test_unknown_method_lists_the_choices():
    with pytest.raises(UnknownNameError) as err:
        get_cam_method("gradcamm")
    assert "gradcam++" in str(err.value) and "eigencam" in str(err.value)


def test_register_refuses_duplicates_and_uppercase():
    with pytest.raises(ValueError):
        register_cam_method("gradcam")(object)
    with pytest.raises(ValueError):
        register_cam_method("GradCAM")


def test_cam_on_a_head_without_gap_raises_and_lists_what_applies():
    model = flat_head()
    assert "cam" not in list_cam_methods(model) and "gradcam" in list_cam_methods(model)
    for fast in (True, False):
        with pytest.raises(CamMethodNotApplicable) as err:
            compute_cams(model, images(2), TARGETS[:2], "cam", fast=fast)
        assert isinstance(err.value, BenchmarkError)
        assert "gap_head" in str(err.value) and "gradcam" in str(err.value)
    maps = compute_cams(model, images(2), TARGETS[:2], "gradcam")  # other methods still work
    assert maps.shape == (2, *layer_shape(model, images(1)))


# --- maps: shape, range, no NaN ---

@pytest.mark.parametrize("method,fast", [(m, False) for m in sorted(ALL_METHODS)]
                         + [(m, True) for m in sorted(ALL_METHODS) if get_cam_method(m).fast])
def test_every_method_gives_normalised_maps_at_layer_resolution(method, fast):
    model, x = shallow(), images()
    maps = compute_cams(model, x, TARGETS, method, fast=fast, batch_size=3)
    assert maps.shape == (4, *layer_shape(model, x)) == (4, 8, 8)
    assert maps.dtype == torch.float32 and maps.device.type == "cpu"
    assert torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
    flat = maps.flatten(1)
    assert torch.allclose(flat.amin(1), torch.zeros(4))  # min-max per image
    nonzero = flat.amax(1) > 0
    assert torch.allclose(flat.amax(1)[nonzero], torch.ones(int(nonzero.sum())), atol=1e-3)  # 1e-7 epsilon


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
@pytest.mark.parametrize("factory,size,layer", [(shallow, 64, None), (resnet18, 96, None), (resnet18, 96, "stride16")])
@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_fast_path_equals_pytorch_grad_cam(factory, size, layer, method):
    from benchmark.cams.layers import target_module

    model, x = factory(), images(size=size)
    spec = model.spec
    fast = compute_cams(model, x, TARGETS, method, fast=True, layer=layer)
    reference = compute_cams(model, x, TARGETS, method, fast=False, layer=layer)
    shape = layer_shape(model, x, target_module(model, layer))
    assert model.spec is spec and hook_count(model) == 0  # the layer was an argument, not a change
    if layer:
        assert shape == (6, 6)  # resnet18's layer3 at 96 px: the alias picked the stride-16 block
    assert fast.shape == reference.shape == (4, *shape)
    assert (fast - reference).abs().max() <= 1e-3
    assert int((fast.flatten(1).amax(1) > 0.99).sum()) >= 3  # real maps (a class may have none)


@pytest.mark.parametrize("factory,size", [(shallow, 64), (resnet18, 96)])
def test_cam_equals_gradcam_on_a_gap_head_and_a_hand_reference(factory, size):
    """GAP + linear: Grad-CAM weights = W_c / (h*w), so after min-max CAM and Grad-CAM coincide."""
    model, x = factory(), images(size=size)
    cam = compute_cams(model, x, TARGETS, "cam")
    # equal up to the 1e-7 in scale_cam_image's denominator, which weighs h*w times more on Grad-CAM
    assert (cam - compute_cams(model, x, TARGETS, "gradcam")).abs().max() <= 1e-3
    assert (cam - compute_cams(model, x, TARGETS, "cam", fast=False)).abs().max() <= 1e-4

    feats = []  # reference without pytorch-grad-cam or our code
    handle = model.cam_target_layer.register_forward_hook(lambda m, i, o: feats.append(o.detach().clone()))
    with torch.no_grad():
        model(x)
    handle.remove()
    weight = model.net.get_submodule(model.spec.classifier).weight.detach()
    ref = np.maximum(torch.einsum("nk,nkhw->nhw", weight[TARGETS], feats[0]).numpy(), 0)
    ref = ref - ref.min(axis=(1, 2), keepdims=True)
    ref = ref / (1e-7 + ref.max(axis=(1, 2), keepdims=True))
    assert np.abs(cam.numpy() - ref).max() <= 1e-4


def test_batch_size_and_uint8_input_do_not_change_maps():
    model, x = shallow(), images()
    whole = compute_cams(model, x, TARGETS, "gradcam", batch_size=4)
    assert torch.allclose(whole, compute_cams(model, x, TARGETS, "gradcam", batch_size=1), atol=1e-5)
    as_uint8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(compute_cams(model, as_uint8 / 255.0, TARGETS, "gradcam"),
                          compute_cams(model, as_uint8, TARGETS, "gradcam"), atol=1e-5)


def test_targets_choose_the_class_explained():
    model, x = shallow(), images(1)
    maps = [compute_cams(model, x, torch.tensor([k]), "cam")[0] for k in range(3)]
    assert (maps[0] - maps[1]).abs().max() > 1e-3 or (maps[1] - maps[2]).abs().max() > 1e-3


@pytest.mark.parametrize("method,layer", [("cam", None), ("gradcam", None), ("hirescam", None),
                                          ("gradcam", "stride16"), ("gradcam++", None)])
def test_explain_predictions_equals_a_forward_then_the_map_of_its_argmax(method, layer):
    model, x = resnet18(), images(3, size=64)
    maps, logits = explain_predictions(model, x, method, layer=layer)
    with torch.no_grad():
        expected_logits = model(x)
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    expected = compute_cams(model, x, expected_logits.argmax(dim=1), method, layer=layer)
    assert maps.shape == expected.shape and torch.allclose(maps, expected, atol=1e-5)


@pytest.mark.parametrize("method", ["cam", "gradcam", "hirescam"])
def test_fast_methods_predict_and_explain_in_one_forward(method):
    model, x = shallow(), images(5)
    calls = []
    handle = model.register_forward_hook(lambda m, i, o: calls.append(o.shape[0]))
    try:
        maps, logits = explain_predictions(model, x, method, batch_size=2)
    finally:
        handle.remove()
    assert calls == [2, 2, 1]  # one forward per batch: the map's own
    assert logits.shape == (5, 3) and maps.shape[0] == 5
    assert explain_predictions(model, torch.zeros(0, 1, 64, 64), method)[1].shape[0] == 0


@pytest.mark.parametrize("fill", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("method", ["cam", "gradcam", "gradcam++", "layercam", "eigencam"])
def test_constant_images_give_finite_maps(fill, method):
    model = shallow()
    x = torch.full((2, 1, 64, 64), fill)
    maps = compute_cams(model, x, TARGETS[:2], method, fast=True)
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


@pytest.mark.parametrize("fast", [True, False])
def test_nan_pixels_give_zero_maps_and_a_warning(fast, caplog):
    x = images(2)
    x[1, 0, 10, 10] = float("nan")  # propagates through every later layer
    maps = compute_cams(shallow(), x, TARGETS[:2], "gradcam", fast=fast)
    assert torch.isfinite(maps).all() and maps[1].abs().max() == 0 and maps[0].max() > 0.99
    assert "non-finite" in caplog.text


def test_all_black_and_all_white_files_give_finite_maps(bad_inputs):
    arrays = [np.asarray(Image.open(bad_inputs / name).convert("L").resize((64, 64)), dtype=np.uint8)
              for name in ("all-black.png", "all-white.png")]
    x = torch.from_numpy(np.stack(arrays))[:, None]
    for method in ("cam", "gradcam", "hirescam"):
        for fast in (True, False):
            maps = compute_cams(shallow(), x, TARGETS[:2], method, fast=fast)
            assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1


def test_empty_input_and_bad_arguments():
    model = shallow()
    assert compute_cams(model, torch.zeros(0, 1, 64, 64), torch.zeros(0, dtype=torch.long), "gradcam").numel() == 0
    with pytest.raises(BenchmarkError):
        compute_cams(model, torch.zeros(2, 3, 64, 64), TARGETS[:2], "gradcam")  # not 1 channel
    with pytest.raises(BenchmarkError):
        compute_cams(model, images(2), TARGETS, "gradcam")  # one target per image
    with pytest.raises(BenchmarkError):
        compute_cams(model, images(2), TARGETS[:2], "gradcam", device="cuda")  # model is on the CPU


# --- resources and the caller's model ---

@pytest.mark.parametrize("fast", [True, False])
def test_hooks_are_released_on_success_and_on_errors(fast):
    model = shallow()
    assert hook_count(model) == 0
    compute_cams(model, images(), TARGETS, "gradcam", fast=fast)
    assert hook_count(model) == 0
    with pytest.raises(BenchmarkError):
        compute_cams(model, images(), torch.tensor([0, 1, 2, 99]), "gradcam", fast=fast)  # no such class
    assert hook_count(model) == 0
    model.net.fail_after_features = True
    with pytest.raises(RuntimeError, match="boom"):
        compute_cams(model, images(), TARGETS, "gradcam", fast=fast)
    assert hook_count(model) == 0


@pytest.mark.parametrize("method,fast", [("gradcam", True), ("cam", True), ("gradcam", False), ("scorecam", False)])
def test_the_callers_mode_and_gradients_are_unchanged(method, fast):
    model = shallow()
    for training in (True, False):
        model.train(training)
        model.net.features[0].eval()  # a mixed state must survive too
        before = [m.training for m in model.modules()]
        grad = torch.full_like(model.net.classifier.weight, 7.0)
        model.net.classifier.weight.grad = grad
        compute_cams(model, images(2), TARGETS[:2], method, fast=fast)
        assert [m.training for m in model.modules()] == before
        assert model.net.classifier.weight.grad is grad and bool((grad == 7.0).all())
        assert model.net.features[0][0].weight.grad is None


def test_frozen_model_still_gives_gradcam():
    model = shallow()
    for p in model.parameters():
        p.requires_grad_(False)
    for fast in (True, False):
        maps = compute_cams(model, images(2), TARGETS[:2], "gradcam", fast=fast)
        assert maps.flatten(1).amax(1).max() > 0.99


# --- upsampling ---

def test_upsample_cam_matches_cv2_bilinear_and_keeps_range():
    cam = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    up = upsample_cam(cam, (224, 224))
    assert up.shape == (224, 224) and up.dtype == np.float32
    assert np.abs(up - cv2.resize(cam, (224, 224), interpolation=cv2.INTER_LINEAR)).max() < 1e-4
    assert up.min() >= cam.min() - 1e-6 and up.max() <= cam.max() + 1e-6
    stack = upsample_cam(torch.from_numpy(np.stack([cam, cam])), (64, 32))
    assert stack.shape == (2, 64, 32)


# --- faithfulness ---

class QuadrantModel(nn.Module):
    """Class 0's logit is the brightness of the top-left quadrant: the ground truth for a CAM."""

    def forward(self, x):
        logit = 10.0 * (x[:, 0, :16, :16].mean(dim=(1, 2)) - 0.5)
        return torch.stack([logit, torch.zeros_like(logit)], dim=1)


def test_faithfulness_prefers_the_map_the_model_uses():
    x = torch.zeros(2, 1, 32, 32)
    x[:, :, :16, :16] = 1.0
    right = np.zeros((2, 32, 32), np.float32)
    right[:, :16, :16] = 1.0
    wrong = right[:, ::-1, ::-1].copy()
    targets = torch.tensor([0, 0])
    good = faithfulness_scores(QuadrantModel(), x, targets, right, percentiles=[20, 40, 60, 80])
    bad = faithfulness_scores(QuadrantModel(), x, targets, wrong, percentiles=[20, 40, 60, 80])
    for scores in (good, bad):
        assert set(scores) == {"road_combined", "confidence_drop"}
        assert all(v.shape == (2,) and np.isfinite(v).all() for v in scores.values())
    assert (good["road_combined"] > bad["road_combined"] + 0.1).all()
    assert (good["confidence_drop"] < bad["confidence_drop"] - 0.1).all()


def test_faithfulness_on_real_cams_is_finite_and_repeatable():
    model, x = shallow(), images(2, size=32)
    maps = compute_cams(model, x, TARGETS[:2], "gradcam")  # layer resolution: upsampled inside
    rng_state = torch.get_rng_state()
    first = faithfulness_scores(model, x, TARGETS[:2], maps, seed=3, percentiles=[20, 80])
    assert torch.equal(torch.get_rng_state(), rng_state)  # the caller's RNG is untouched
    second = faithfulness_scores(model, x, TARGETS[:2], maps, seed=3, percentiles=[20, 80])
    for key in first:
        assert np.isfinite(first[key]).all()
        np.testing.assert_array_equal(first[key], second[key])
    zero = faithfulness_scores(model, x, TARGETS[:2], np.zeros((2, 4, 4), np.float32), percentiles=[50])
    assert all(np.isfinite(v).all() for v in zero.values())  # tied maps stay defined


def test_rank_maps_break_ties_into_a_strict_order():
    cams = np.zeros((1, 4, 4), np.float32)
    cams[0, 0, 0] = 1.0
    ranks = rank_maps(cams, np.random.default_rng(0))
    assert len(np.unique(ranks)) == 16 and ranks[0, 0, 0] == 1.0 and ranks.min() == 0.0


# --- real data: CAMs against real lung masks ---

def test_cams_on_real_xrays_with_lung_masks(cxr_root):
    manifest = pd.read_csv(cxr_root / "cohen" / "manifest.csv")
    rows = manifest[manifest["mask"].notna() & (manifest["mask_source"] == "v7labs")].head(4)
    load = lambda rel, resample: np.asarray(  # noqa: E731
        Image.open(cxr_root / "cohen" / rel).convert("L").resize((64, 64), resample))
    x = torch.from_numpy(np.stack([load(r, Image.BILINEAR) for r in rows["image"]]))[:, None]
    masks = np.stack([load(r, Image.NEAREST) for r in rows["mask"]])  # 0/255
    maps = compute_cams(shallow(), x, TARGETS[: len(rows)], "gradcam")
    focus = lung_focus_batch(maps, masks)
    assert len(focus) == len(rows)
    for f in focus:
        assert f.lung_mass is not None and 0.0 <= f.lung_mass <= 1.0
        assert 0.0 <= f.lung_iou <= 1.0 and isinstance(f.pointing_hit, bool)


# --- the real model zoo (benchmark.models), where it exists ---

@pytest.mark.parametrize("name", zoo_params())
@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_zoo_models_fast_path_and_cam_applicability(name):
    """Per registry entry: fast Grad-CAM == pytorch-grad-cam, and `cam` exactly where the head is GAP+linear."""
    from benchmark.models import create_model, get_spec

    spec = get_spec(name)
    torch.manual_seed(0)
    model = create_model(name, 3).eval()
    size = max(spec.min_input_size, 64)
    x, targets = images(2, size=size), TARGETS[:2]
    fast = compute_cams(model, x, targets, "gradcam")
    assert fast.shape == (2, *layer_shape(model, x))
    assert (fast - compute_cams(model, x, targets, "gradcam", fast=False)).abs().max() <= 1e-3
    if not spec.gap_head:
        with pytest.raises(CamMethodNotApplicable):
            compute_cams(model, x, targets, "cam")
        return
    feats = []  # the spec's claim that CAM relies on: logits = classifier(GAP(target layer output))
    handle = model.cam_target_layer.register_forward_hook(lambda m, i, o: feats.append(o.detach().clone()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    classifier = model.net.get_submodule(spec.classifier)
    assert torch.allclose(classifier(feats[-1].mean(dim=(2, 3))), logits, rtol=1e-4, atol=1e-6)
    cam = compute_cams(model, x, targets, "cam")
    assert cam.shape == fast.shape and torch.isfinite(cam).all()


# --- on a GPU (skipped without one; the bodies run on the CPU under $CXR_TEST_DEVICE=cpu) ---

@pytest.mark.cuda
def test_fast_path_on_cuda_matches_the_cpu_reference(device):
    """On CUDA: the fast path equals pytorch-grad-cam on the device, stays near the CPU's maps
    (TF32 convolutions) and with bf16 autocast, and an out-of-range target is refused before a
    device-side assert could poison the context. On the CPU the same calls run, but the CPU is
    then its own reference and `amp` is a no-op: only the paths and the error are proven."""
    from benchmark.cams.fast import grad_cams

    x = images(size=96)  # on the CPU: batches are moved to the model's device
    model = resnet18().to(device)
    fp32 = grad_cams(model, x, TARGETS)
    assert fp32.device.type == "cpu"
    assert (fp32 - compute_cams(model, x, TARGETS, "gradcam", fast=False)).abs().max() <= 1e-3  # same device
    # across devices cuDNN's TF32 convolutions move maps by ~1e-3
    assert (fp32 - compute_cams(resnet18(), x, TARGETS, "gradcam", fast=False)).abs().mean() <= 5e-3
    bf16 = compute_cams(model, x.to(device), TARGETS, "gradcam", amp=True)  # bf16 autocast forward on CUDA
    assert torch.isfinite(bf16).all() and (bf16 - fp32).abs().mean() <= 0.05
    assert hook_count(model) == 0 and not any(m.training for m in model.modules())
    with pytest.raises(BenchmarkError):  # checked before indexing: no device-side assert
        compute_cams(model, x, torch.tensor([0, 1, 2, 7]), "gradcam")
    assert float(torch.ones(2, device=device).sum()) == 2.0
