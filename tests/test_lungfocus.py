"""Lung-focus measures on synthetic maps whose answers are known by construction."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmark.cams.engine import upsample_cam
from benchmark.cams.lungfocus import LungFocus, lung_focus, lung_focus_batch, uniform_baseline
from benchmark.errors import BenchmarkError


def two_lungs(size: int = 64) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[size // 8: 7 * size // 8, size // 8: 7 * size // 16] = True
    mask[size // 8: 7 * size // 8, 9 * size // 16: 7 * size // 8] = True
    return mask


def test_map_entirely_inside_the_mask():
    mask = two_lungs()
    cam = np.where(mask, np.random.default_rng(0).random(mask.shape) + 0.1, 0.0)
    f = lung_focus(cam, mask)
    assert f.lung_mass == pytest.approx(1.0) and f.pointing_hit is True
    assert 0 < f.lung_iou <= 1


def test_map_entirely_outside_the_mask():
    mask = two_lungs()
    cam = np.where(mask, 0.0, np.random.default_rng(1).random(mask.shape) + 0.1)
    f = lung_focus(cam, mask)
    assert f.lung_mass == 0.0 and f.pointing_hit is False and f.lung_iou == 0.0


@pytest.mark.parametrize("cam_size", [(7, 7), (64, 64), (5, 9)])
def test_uniform_map_scores_the_uniform_baseline(cam_size):
    mask = two_lungs()
    f = lung_focus(np.full(cam_size, 0.37, np.float32), mask)
    assert abs(f.lung_mass - uniform_baseline(mask)) <= 1e-6
    assert uniform_baseline(mask) == pytest.approx(mask.mean())
    assert f.lung_iou == pytest.approx(mask.mean())  # every pixel ties at the cut: the top set is all


@pytest.mark.parametrize("cam", [np.zeros((7, 7)), -np.ones((7, 7))])
def test_zero_map_has_no_measure_and_no_nan(cam):
    assert lung_focus(cam, two_lungs()) == LungFocus(None, None, None)


def test_empty_mask_has_no_measure():
    assert lung_focus(np.random.default_rng(2).random((7, 7)), np.zeros((64, 64), bool)) == LungFocus(None, None, None)


def test_top_twenty_percent_equal_to_the_mask_gives_iou_one():
    cam = np.random.default_rng(3).random((50, 50))
    cut = np.sort(cam.ravel())[-500]  # exactly 20 % of 2500 pixels
    mask = cam >= cut
    f = lung_focus(cam, mask)
    assert f.lung_iou == pytest.approx(1.0) and f.pointing_hit is True


def test_pointing_ties_are_decided_by_the_tied_maxima_as_a_whole():
    mask = np.zeros((8, 8), bool)
    mask[:, :4] = True
    cam = np.zeros((8, 8))
    cam[0, 0] = cam[0, 7] = 1.0  # one maximum in, one out: half are in
    assert lung_focus(cam, mask).pointing_hit is True
    cam[7, 7] = 1.0  # now one of three
    assert lung_focus(cam, mask).pointing_hit is False
    cam[0, 0] = 0.999  # a single clear maximum outside
    cam[0, 5] = 0.0
    assert lung_focus(cam, mask).pointing_hit is False


def test_low_resolution_map_is_upsampled_bilinearly_first():
    rng = np.random.default_rng(4)
    cam, mask = rng.random((7, 7)).astype(np.float32), two_lungs()
    assert lung_focus(cam, mask) == lung_focus(upsample_cam(cam, mask.shape), mask)


def test_batch_equals_one_by_one_and_accepts_uint8_masks():
    rng = np.random.default_rng(5)
    cams = rng.random((70, 7, 7)).astype(np.float32) ** 3  # 70 > one vectorised chunk
    cams[3] = 0.0
    masks = np.stack([np.roll(two_lungs(), int(s), axis=1) for s in rng.integers(-20, 20, 70)])
    batch = lung_focus_batch(torch.from_numpy(cams), (masks * 255).astype(np.uint8))
    single = [lung_focus(c, m) for c, m in zip(cams, masks)]
    assert batch == single
    assert batch[3] == LungFocus(None, None, None)
    for f in batch[:3]:
        assert not any(isinstance(v, float) and math.isnan(v) for v in (f.lung_mass, f.lung_iou))


def test_mismatched_inputs_are_refused():
    with pytest.raises(BenchmarkError):
        lung_focus_batch(np.zeros((2, 7, 7)), np.zeros((3, 64, 64), bool))
    with pytest.raises(BenchmarkError):
        lung_focus(np.zeros((1, 7, 7)), two_lungs())
