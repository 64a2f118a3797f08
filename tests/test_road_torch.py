"""ROAD in torch (benchmark/cams/road.py) against pytorch-grad-cam's ROAD, the reference.

Stated tolerances: percentile cuts (which pixels are removed) equal pytorch-grad-cam's exactly;
filled pixels within 1e-4 of scipy's direct solve (pixel values in [0, 1]; the imputer's own
noise is 0.01); ROAD scores (probabilities) within 1e-4 with the noise off on both sides; with the
same noise draws, filled images within 1e-4 as well.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics import road as pgc_road
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.perturbation_confidence import RemoveLeastRelevantFirst, RemoveMostRelevantFirst
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from benchmark.cams import faithfulness_scores
from benchmark.cams.faithfulness import rank_maps
from benchmark.cams.road import (
    confidence_drop,
    linear_fill,
    noisy_linear_impute,
    percentile_threshold,
    road_masks,
    road_scores,
)
from tests.conftest import no_tf32

FILL_TOL = 1e-4
SCORE_TOL = 1e-4
TF32_SCORE_TOL = 5e-3  # CUDA with cuDNN's default TF32 convolutions, against the CPU: not yet measured on a GPU
PERCENTILES = [20, 40, 60, 80]


def smooth_image(size: int, seed: int) -> torch.Tensor:
    """1 x H x W in [0, 1]: a gradient, two soft blobs and a little texture (X-ray-like smoothness)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    img = 0.3 + 0.3 * xx
    for _ in range(2):
        cy, cx, r = torch.rand(3, generator=g)
        img = img + 0.3 * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (0.02 + 0.1 * r))
    img = img + 0.05 * torch.rand(size, size, generator=g)
    return img.clamp(0, 1)[None]


def blob_map(size: int, seed: int) -> np.ndarray:
    """A CAM-like map: a few Gaussian bumps (float32, no ties)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    m = np.zeros((size, size))
    for _ in range(3):
        cy, cx = rng.random(2)
        m += rng.random() * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.03)
    return m.astype(np.float32)


def reference_mask(cut, percentile: int, cam: np.ndarray) -> torch.Tensor:
    """The binary mask pytorch-grad-cam's cut hands to its imputer (1 = kept)."""
    seen = []
    cut(percentile, lambda img, mask: seen.append(mask) or img)(torch.zeros(1, *cam.shape), torch.from_numpy(cam))
    return seen[0].bool()


# --- percentile cuts ---

@pytest.mark.parametrize("size", [7, 32, 80, pytest.param(224, marks=pytest.mark.slow)])
def test_percentile_thresholds_equal_numpys(size):
    rng = np.random.default_rng(size)
    maps = np.stack([rng.random((size, size)), rank_maps(rng.random((1, size, size)), rng)[0],
                     np.round(rng.random((size, size)), 1), np.zeros((size, size)), blob_map(size, 1)])
    maps = maps.astype(np.float32)
    for q in [0, 10, 20, 33, 40, 50, 60, 80, 90, 99, 100]:
        mine = percentile_threshold(torch.from_numpy(maps), q).numpy()
        for i, m in enumerate(maps):
            assert mine[i] == np.percentile(m, q), (size, q, i)  # bit-exact, float32


@pytest.mark.parametrize("size", [16, 75, pytest.param(224, marks=pytest.mark.slow)])
def test_road_masks_equal_pytorch_grad_cams(size):
    rng = np.random.default_rng(0)
    cams = np.stack([rank_maps(blob_map(size, s)[None], rng)[0] for s in range(2)] +
                    [np.round(rng.random((size, size)), 2).astype(np.float32)])  # the last one with ties
    morf, lerf = road_masks(torch.from_numpy(cams), PERCENTILES)
    for i, cam in enumerate(cams):
        for j, p in enumerate(PERCENTILES):
            assert torch.equal(morf[i, j], reference_mask(RemoveMostRelevantFirst, p, cam)), (i, p)
            assert torch.equal(lerf[i, j], reference_mask(RemoveLeastRelevantFirst, p, cam)), (i, p)


# --- the imputer ---

def reference_fill(img: torch.Tensor, keep: torch.Tensor, noise: float = 0.0) -> torch.Tensor:
    return pgc_road.NoisyLinearImputer(noise=noise)(img, keep.float())


@pytest.mark.parametrize("size", [12, 33, 80])
def test_linear_fill_equals_scipys_solve(size):
    rng = np.random.default_rng(size)
    imgs, keeps = [], []
    for s in range(4):
        img = smooth_image(size, s)
        cam = rank_maps(blob_map(size, s)[None], rng)[0]
        keep = [cam < np.percentile(cam, 20), cam > np.percentile(cam, 80),  # big removed regions
                rng.random((size, size)) < 0.5, rng.random((size, size)) < 0.02][s]  # scattered / almost all
        imgs.append(img)
        keeps.append(torch.from_numpy(np.asarray(keep)))
    images, keep = torch.stack(imgs), torch.stack(keeps)
    mine = linear_fill(images, keep)
    for i in range(len(imgs)):
        ref = reference_fill(imgs[i], keep[i])
        assert (mine[i] - ref).abs().max() <= FILL_TOL, i
        assert torch.equal(mine[i][:, keep[i]], imgs[i][:, keep[i]])  # kept pixels untouched


@pytest.mark.slow  # scipy's reference solve at 224 px takes seconds
def test_linear_fill_at_224_px_and_on_three_channels():
    img = torch.cat([smooth_image(224, 0), smooth_image(224, 1), smooth_image(224, 2)])
    cam = rank_maps(blob_map(224, 5)[None], np.random.default_rng(0))[0]
    keep = torch.from_numpy(cam < np.percentile(cam, 20))  # MoRF at 20: 80 % of the pixels removed
    mine = linear_fill(img[None], keep[None])[0]
    assert (mine - reference_fill(img, keep)).abs().max() <= FILL_TOL


def test_the_same_noise_gives_the_same_image():
    size = 40
    img = smooth_image(size, 3)
    keep = torch.from_numpy(blob_map(size, 3) < 0.3)
    torch.manual_seed(11)
    ref = pgc_road.NoisyLinearImputer()(img, keep.float())  # noise 0.01, drawn in the order of the removed pixels
    torch.manual_seed(11)
    eps = torch.zeros(1, size * size)
    eps[:, ~keep.flatten()] = torch.randn(1, int((~keep).sum()))
    mine = noisy_linear_impute(img[None], keep[None], noise_fields=eps.view(1, 1, size, size))[0]
    assert (mine - ref).abs().max() <= FILL_TOL
    assert (mine - linear_fill(img[None], keep[None])[0]).abs().max() > 0.02  # the noise is there


def test_degenerate_masks():
    img = smooth_image(20, 0)[None]
    assert torch.equal(linear_fill(img, torch.ones(1, 20, 20, dtype=torch.bool)), img)
    assert torch.isnan(linear_fill(img, torch.zeros(1, 20, 20, dtype=torch.bool))).all()  # singular: no kept pixel
    one = torch.zeros(1, 20, 20, dtype=torch.bool)
    one[0, 5, 7] = True  # a single kept pixel: the whole image takes its value
    assert torch.allclose(linear_fill(img, one), img[0, 0, 5, 7].expand_as(img), atol=FILL_TOL)


# --- ROAD scores and the confidence drop ---

class SmallNet(nn.Module):
    """Small CNN with a GAP head, random weights, eval mode: enough to make scores move."""

    def __init__(self):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                          nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16),
                                          nn.ReLU())
            self.head = nn.Linear(16, 3)
        with torch.no_grad():
            self.head.weight.mul_(20)  # away from a flat softmax, so imputation changes probabilities

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def reference_road(model, x, ranks, targets, noise: float):
    """pytorch-grad-cam's MoRF/LeRF per percentile and ROADCombined, its imputer's noise set to `noise`."""
    cams = ranks.numpy()
    outs = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    class Imputer(pgc_road.NoisyLinearImputer):  # its __call__ looks its class up by the module's name
        def __init__(self, *args, **kwargs):
            super().__init__(noise=noise)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pgc_road, "NoisyLinearImputer", Imputer)
        morf = np.stack([pgc_road.ROADMostRelevantFirst(p)(x, cams, outs, model) for p in PERCENTILES])
        lerf = np.stack([pgc_road.ROADLeastRelevantFirst(p)(x, cams, outs, model) for p in PERCENTILES])
        combined = pgc_road.ROADCombined(percentiles=PERCENTILES)(x, cams, outs, model)
    return morf, lerf, combined


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_road_scores_equal_pytorch_grad_cams_without_noise():
    model = SmallNet().eval()
    x = torch.stack([smooth_image(48, s) for s in range(3)])
    targets = torch.tensor([0, 1, 2])
    maps = np.stack([blob_map(48, s) for s in range(3)])
    ranks = torch.from_numpy(rank_maps(maps, np.random.default_rng(0)))
    morf, lerf, combined = reference_road(model, x, ranks, targets, noise=0.0)
    mine = road_scores(model, x, ranks, targets, percentiles=PERCENTILES, noise=0.0, chunk=2)
    assert np.abs(mine["morf"].numpy() - morf).max() <= SCORE_TOL
    assert np.abs(mine["lerf"].numpy() - lerf).max() <= SCORE_TOL
    assert np.abs(mine["combined"].numpy() - combined).max() <= SCORE_TOL
    assert np.abs(morf).max() > 10 * SCORE_TOL  # the test can fail: imputation moves the scores well beyond it


def test_road_scores_with_noise_stay_close_and_repeat():
    model = SmallNet().eval()
    x = torch.stack([smooth_image(40, s) for s in range(2)])
    targets = torch.tensor([1, 0])
    ranks = torch.from_numpy(rank_maps(np.stack([blob_map(40, s) for s in range(2)]), np.random.default_rng(1)))
    quiet = road_scores(model, x, ranks, targets, percentiles=PERCENTILES, noise=0.0)["combined"]
    runs = [road_scores(model, x, ranks, targets, percentiles=PERCENTILES,
                        generator=torch.Generator().manual_seed(5), chunk=chunk)["combined"] for chunk in (1, 2)]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=1e-6)  # chunking draws the same noise
    assert (runs[0] - quiet).abs().max() < 0.05  # noise 0.01 moves a probability only a little


def test_confidence_drop_equals_pytorch_grad_cams():
    model = SmallNet().eval()
    x = torch.stack([smooth_image(32, s) for s in range(3)])
    targets = torch.tensor([2, 0, 1])
    maps = np.stack([blob_map(32, s) / blob_map(32, s).max() for s in range(3)])
    outs = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    ref = -CamMultImageConfidenceChange()(x, maps, outs, model)
    mine = confidence_drop(model, x, torch.from_numpy(maps), targets)
    assert np.abs(mine.numpy() - ref).max() <= SCORE_TOL
    scores = faithfulness_scores(model, x, targets, maps, percentiles=PERCENTILES)
    assert np.abs(scores["confidence_drop"] - ref).max() <= SCORE_TOL


@pytest.mark.cuda
def test_road_on_cuda_equals_the_cpu(device):
    """The imputer and ROAD's scores on the device against the CPU, with the same noise draws (a CPU
    generator on both sides). Convolutions in IEEE fp32 (no_tf32) for the 1e-4 bound; with cuDNN's
    default TF32 the model's probabilities move more, so that case has its own, looser bound. On
    the CPU ($CXR_TEST_DEVICE=cpu) both sides are the CPU: only the calls are proven."""
    model = SmallNet().eval()
    x = torch.stack([smooth_image(64, s) for s in range(2)])
    targets = torch.tensor([0, 1])
    ranks = torch.from_numpy(rank_maps(np.stack([blob_map(64, s) for s in range(2)]), np.random.default_rng(0)))
    morf, lerf = road_masks(ranks, PERCENTILES)
    keep = torch.cat([morf, lerf], dim=1).reshape(-1, 64, 64)
    batch = x[:, None].expand(-1, 2 * len(PERCENTILES), -1, -1, -1).reshape(-1, 1, 64, 64)
    fill = linear_fill(batch.to(device), keep.to(device))
    assert fill.device.type == device.type
    assert (fill.cpu() - linear_fill(batch, keep)).abs().max() <= FILL_TOL
    cpu = road_scores(model, x, ranks, targets, percentiles=PERCENTILES, generator=torch.Generator().manual_seed(0))
    on_device = model.to(device)
    with no_tf32():
        gpu = road_scores(on_device, x.to(device), ranks, targets, percentiles=PERCENTILES,
                          generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(gpu["combined"].cpu(), cpu["combined"], rtol=0, atol=SCORE_TOL)
    tf32 = road_scores(on_device, x.to(device), ranks, targets, percentiles=PERCENTILES,
                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(tf32["combined"].cpu(), cpu["combined"], rtol=0, atol=TF32_SCORE_TOL)
