"""Lung segmenter: U-Net shapes, Dice, training on phantoms, checkpoints, patient split, odd inputs."""
from __future__ import annotations

import csv
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.errors import BenchmarkError, WeightsMissingError
from benchmark.lungseg import (
    LungUNet,
    build_training_set,
    count_parameters,
    dice,
    dice_per_image,
    keep_lung_components,
    load_segmenter,
    phantom_samples,
    predict_lung_mask,
    predict_lung_masks,
    save_segmenter,
    split_cohen_patients,
    train_lung_segmenter,
)
from benchmark.lungseg.train import augment_batch
from tests.conftest import BAD_INPUTS, CXR_DATA, require

SIZE = 64


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def phantom_data():
    train_x, train_m, val_x, val_m, info = build_training_set(None, SIZE, n_phantom=40, seed=0, n_phantom_val=8)
    return train_x, train_m, val_x, val_m, info


@pytest.fixture(scope="module")
def trained(phantom_data):
    # module scope runs before the autouse _one_thread, so restore the count here: left at 1, every
    # later test module would train and score on one thread
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_x, train_m, val_x, val_m, _ = phantom_data
        return train_lung_segmenter(train_x, train_m, val_images=val_x, val_masks=val_m, epochs=8,
                                    batch_size=8, lr=3e-3, seed=0)
    finally:
        torch.set_num_threads(old)


# --- model ----------------------------------------------------------------------------

@pytest.mark.parametrize("side", [32, 64, 96])
def test_unet_keeps_spatial_shape(side):
    model = LungUNet(input_size=64).eval()
    out = model(torch.rand(2, 1, side, side))
    assert out.shape == (2, 1, side, side)
    assert count_parameters(model) < 2_000_000


def test_unet_rejects_sides_not_divisible_by_16():
    with pytest.raises(ValueError, match="divisible by 16"):
        LungUNet()(torch.rand(1, 1, 40, 40))
    with pytest.raises(ValueError, match="divisible by 16"):
        LungUNet(input_size=100)


def test_unet_constant_input_gives_finite_logits():
    model = LungUNet(input_size=32).eval()
    for value in (0.0, 1.0):
        assert torch.isfinite(model(torch.full((1, 1, 32, 32), value))).all()


# --- dice -----------------------------------------------------------------------------

def test_dice_exact_on_hand_made_masks():
    pred = np.zeros((4, 4), bool)
    target = np.zeros((4, 4), bool)
    pred[0, :4] = True          # 4 pixels
    target[0, 2:4] = True       # 2 pixels, both inside pred
    target[1, 0:2] = True       # 2 pixels outside pred
    assert dice(pred, target) == pytest.approx(2 * 2 / (4 + 4))
    assert dice(pred, pred) == 1.0
    assert dice(pred, ~pred) == 0.0
    empty = np.zeros((4, 4), bool)
    assert dice(empty, empty) == 1.0       # nothing to find, nothing found
    assert dice(empty, target) == 0.0


def test_dice_per_image_averages_images_not_pixels():
    big = np.ones((1, 10, 10), bool)
    small_t = np.zeros((1, 10, 10), bool)
    small_t[0, 0, 0] = True
    pred = np.concatenate([big, np.zeros((1, 10, 10), bool)])
    target = np.concatenate([big, small_t])
    per = dice_per_image(pred, target)
    np.testing.assert_allclose(per, [1.0, 0.0])
    assert dice(pred, target) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="shapes differ"):
        dice_per_image(pred, target[:, :5])


# --- training -------------------------------------------------------------------------

@pytest.mark.slow
def test_training_on_phantoms_beats_untrained_net(phantom_data, trained):
    _, _, val_x, val_m, _ = phantom_data
    model, report = trained
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        untrained = LungUNet(input_size=SIZE)
    base = dice(predict_lung_masks(untrained, val_x, postprocess=False), val_m)
    score = dice(predict_lung_masks(model, val_x), val_m)
    assert score > 0.7, report["history"]
    assert score > base + 0.2
    assert report["n_train"] == 40 and report["n_val"] == 8 and report["epochs"] == 8
    assert 1 <= report["best_epoch"] <= 8
    assert report["best_val_dice"] == max(h["val_dice"] for h in report["history"])


@pytest.mark.slow
def test_training_is_reproducible_and_leaves_global_rng_alone(phantom_data):
    train_x, train_m, val_x, val_m, _ = phantom_data
    kwargs = dict(val_images=val_x[:4], val_masks=val_m[:4], epochs=1, batch_size=8, seed=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    _, r1 = train_lung_segmenter(train_x[:16], train_m[:16], **kwargs)
    after = torch.rand(1)
    _, r2 = train_lung_segmenter(train_x[:16], train_m[:16], **kwargs)
    assert before == after
    assert r1["history"][0]["loss"] == r2["history"][0]["loss"]


@pytest.mark.slow
def test_report_gives_dice_per_val_group(phantom_data):
    train_x, train_m, val_x, val_m, _ = phantom_data
    groups = ["cohen"] * 4 + ["phantom"] * 4
    _, report = train_lung_segmenter(train_x[:16], train_m[:16], val_images=val_x, val_masks=val_m,
                                     val_groups=groups, epochs=1, batch_size=8, seed=0)
    per = np.array(report["val_dice_per_image"])
    assert report["select_group"] == "cohen"
    assert report["val_dice_by_group"]["cohen"] == pytest.approx(per[:4].mean())
    assert report["val_dice_by_group"]["phantom"] == pytest.approx(per[4:].mean())
    assert report["best_val_dice"] == pytest.approx(per[:4].mean())
    with pytest.raises(ValueError, match="select_group"):
        train_lung_segmenter(train_x[:16], train_m[:16], val_images=val_x, val_masks=val_m,
                             val_groups=groups, select_group="nih", epochs=1)


def test_augmentation_keeps_masks_binary_and_is_seeded():
    x = torch.rand(4, 1, 32, 32)
    m = (torch.rand(4, 1, 32, 32) > 0.5).float()
    xa, ma = augment_batch(x, m, torch.Generator().manual_seed(0))
    xb, mb = augment_batch(x, m, torch.Generator().manual_seed(0))
    assert set(ma.unique().tolist()) <= {0.0, 1.0}
    assert xa.min() >= 0 and xa.max() <= 1
    assert torch.equal(xa, xb) and torch.equal(ma, mb)
    assert not torch.equal(xa, x)


# --- checkpoints ----------------------------------------------------------------------

@pytest.mark.slow
def test_save_load_roundtrip_identical_and_never_unpickles(trained, phantom_data, tmp_path, monkeypatch):
    model, report = trained
    _, _, val_x, _, _ = phantom_data
    weights, sidecar = save_segmenter(model, tmp_path / "seg" / "lung_unet", {"dice": report["best_val_dice"]})
    assert weights.suffix == ".safetensors" and sidecar.suffix == ".json"
    meta_on_disk = json.loads(sidecar.read_text())
    assert meta_on_disk["input_size"] == SIZE and meta_on_disk["dice"] == report["best_val_dice"]

    def refuse(*args, **kwargs):
        raise AssertionError("checkpoint loading must not unpickle")
    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    loaded, meta = load_segmenter(tmp_path / "seg" / "lung_unet")
    assert meta["base_channels"] == model.base_channels
    assert not loaded.training
    np.testing.assert_array_equal(predict_lung_masks(loaded, val_x), predict_lung_masks(model, val_x))
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_load_missing_or_corrupt_checkpoint_raises_specific_errors(tmp_path):
    with pytest.raises(WeightsMissingError, match="no lung segmenter"):
        load_segmenter(tmp_path / "absent")
    save_segmenter(LungUNet(input_size=32), tmp_path / "bad")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BenchmarkError, match="not a valid lung segmenter"):
        load_segmenter(tmp_path / "bad")


# --- prediction on odd inputs ---------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("value", [0, 255, 128])
def test_predict_on_constant_images_returns_bool_masks(trained, value):
    model, _ = trained
    images = np.full((3, 48, 80), value, np.uint8)   # not square, not the training size
    masks = predict_lung_masks(model, images)
    assert masks.dtype == bool and masks.shape == (3, 48, 80)


def test_predict_restores_training_mode_and_handles_empty_batch():
    model = LungUNet(input_size=32).train()
    assert predict_lung_masks(model, np.zeros((0, 32, 32), np.uint8)).shape == (0, 32, 32)
    predict_lung_masks(model, np.zeros((1, 32, 32), np.uint8))
    assert model.training


@pytest.mark.slow
@pytest.mark.parametrize("name", ["all-black.png", "all-white.png"])
def test_predict_on_bad_input_constant_files(trained, name):
    path = BAD_INPUTS / name
    require(path.is_file(), f"{path} not present (set BAD_INPUTS)")
    from benchmark.data.imageio import read_image
    image = read_image(path)
    mask = predict_lung_mask(trained[0], image)
    assert mask.dtype == bool and mask.shape == image.shape


def test_keep_lung_components_drops_stray_blobs_and_fills_holes():
    mask = np.zeros((40, 40), bool)
    mask[5:35, 3:15] = True
    mask[5:35, 25:37] = True
    mask[20, 8] = False            # a hole inside a lung
    mask[0:2, 38:40] = True        # a stray blob (a marker)
    out = keep_lung_components(mask)
    assert out[20, 8] and not out[0, 38]
    assert out.sum() == 2 * 30 * 12


@pytest.mark.parametrize("seed", range(6))
def test_fill_holes_equals_scipys_binary_fill_holes(seed):
    from scipy import ndimage

    from benchmark.lungseg.predict import fill_holes

    rng = np.random.default_rng(seed)
    shape = tuple(rng.integers(1, 70, size=2))
    mask = rng.random(shape) < rng.uniform(0.3, 0.9)  # many holes, some touching the border
    if seed == 0:
        mask[:] = False
    elif seed == 1:
        mask[:] = True
    assert np.array_equal(fill_holes(mask), ndimage.binary_fill_holes(mask))


# --- training set and patient split ---------------------------------------------------

def test_phantom_only_training_set(phantom_data):
    train_x, train_m, val_x, val_m, info = phantom_data
    assert train_x.shape == (40, SIZE, SIZE) and train_x.dtype == np.uint8
    assert train_m.dtype == bool and val_m.shape == (8, SIZE, SIZE)
    assert info["val_groups"] == ["phantom"] * 8
    assert 0.05 < train_m.mean() < 0.6
    again, _ = phantom_samples(4, SIZE, seed=0)
    np.testing.assert_array_equal(again, train_x[:4])


def _rows(n_patients: int) -> list[dict]:
    rows = []
    for p in range(n_patients):
        for k in range(3):
            src = "lungVAE" if (p + k) % 4 == 0 else "v7labs"
            rows.append({"patient_id": f"C-{p}", "mask_source": src, "image": f"{p}-{k}.jpg"})
    return rows


def test_patient_split_has_no_patient_on_both_sides():
    rows = _rows(30)
    train, held = split_cohen_patients(rows, seed=1)
    train_p = {r["patient_id"] for r in train}
    held_p = {r["patient_id"] for r in held}
    assert not train_p & held_p
    assert len(held_p) == 6                               # 20 % of 30 patients
    assert {r["mask_source"] for r in held} == {"v7labs"}  # generated masks never judge the model
    assert {r["mask_source"] for r in train} == {"v7labs", "lungVAE"}
    assert split_cohen_patients(rows, seed=1) == (train, held)
    assert split_cohen_patients(rows, seed=2)[1] != held


def test_build_training_set_from_a_fake_pack(tmp_path):
    from PIL import Image
    cohen = tmp_path / "cohen"
    (cohen / "images").mkdir(parents=True)
    (cohen / "masks").mkdir()
    fields = ["image", "mask", "label", "patient_id", "mask_source"]
    rng = np.random.default_rng(0)
    with open(cohen / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for i in range(20):
            h, w = 40 + i % 3, 36
            Image.fromarray(rng.integers(0, 255, (h, w), dtype=np.uint8)).save(cohen / f"images/{i}.jpg")
            mask = np.zeros((h, w), np.uint8)
            mask[5:30, 4:16] = 255
            Image.fromarray(mask).save(cohen / f"masks/{i}.png")
            src = ["v7labs", "lungVAE", ""][i % 3]
            writer.writerow({"image": f"images/{i}.jpg", "mask": f"masks/{i}.png" if src else "",
                             "label": "covid", "patient_id": f"C-{i // 2}", "mask_source": src})
    train_x, train_m, val_x, val_m, info = build_training_set(tmp_path, 32, n_phantom=4, seed=0)
    assert not set(info["train_patients"]) & set(info["heldout_patients"])
    assert info["n_cohen_train"] + info["n_cohen_heldout"] <= 14         # unmasked images left out
    assert len(train_x) == info["n_cohen_train"] + 4
    assert info["val_groups"].count("cohen") == info["n_cohen_heldout"] > 0
    assert all(r["mask_source"] == "v7labs" for r in info["heldout_rows"])
    assert train_x.shape[1:] == (32, 32) and val_m.dtype == bool
    assert train_m[: info["n_cohen_train"]].any(axis=(1, 2)).all()


def test_real_cohen_split_is_patient_disjoint(cxr_root):
    from benchmark.lungseg.data import cohen_masked_rows
    rows = cohen_masked_rows(CXR_DATA)
    train, held = split_cohen_patients(rows, seed=0)
    assert not {r["patient_id"] for r in train} & {r["patient_id"] for r in held}
    assert len(held) > 30 and all(r["mask_source"] == "v7labs" for r in held)
    assert all(Path(r["mask"]).is_file() for r in held[:5])
