"""DecodeCache: decode once, invalidate on change, cache refusals, aligned masks, atomic writes."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from benchmark.data import decode as decode_mod
from benchmark.data.decode import CACHE_VERSION, DecodeCache
from benchmark.data.imageio import read_image, read_mask, resize_image, resize_mask
from benchmark.data.records import ImageRecord
from benchmark.errors import UnknownNameError
from benchmark.paths import cache_dir as default_cache_dir
from tests.conftest import BAD_INPUTS as BAD
from tests.conftest import CXR_DATA as CXR

needs_data = pytest.mark.usefixtures("cxr_root", "bad_inputs")  # skipped without them (a failure under CI=true)
#: what the bad-inputs README says must be refused; everything else there is a usable image
REFUSED = {"truncated.jpg", "zero-bytes.png", "text-named.png", "html-named.jpg", "tiny-8x8.png",
           "bomb-20000x20000.png", "random-bytes.dcm", "truncated.dcm"}
SIZE = 32


def rec(path: Path | str, mask: Path | str = "", label: str = "covid") -> ImageRecord:
    return ImageRecord(path=str(path), label=label, patient_id=f"t-{Path(path).stem}", source="test",
                       mask_path=str(mask) if mask else "")


@pytest.fixture(scope="module")
def cohen(cxr_root) -> list[ImageRecord]:
    rows = pd.read_csv(CXR / "cohen" / "manifest.csv").dropna(subset=["mask"]).head(5)
    return [rec(CXR / "cohen" / r.image, CXR / "cohen" / r.mask) for r in rows.itertuples()]


def write_png(path: Path, value: int, shape=(40, 48)) -> Path:
    arr = np.full(shape, value, np.uint8)
    arr[5:15, 5:20] = 255 - value
    Image.fromarray(arr).save(path)
    return path


def test_default_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("CXR_CACHE", str(tmp_path / "c"))
    assert default_cache_dir() == tmp_path / "c"
    assert DecodeCache().root == tmp_path / "c"
    monkeypatch.delenv("CXR_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "cxr-audit"


def test_second_load_decodes_nothing(cohen, tmp_path):
    first_cache = DecodeCache(tmp_path)
    first = first_cache.load(cohen, SIZE, progress=True)
    assert first_cache.stats.decoded == len(cohen) and first_cache.stats.hits == 0
    assert first.images.shape == (len(cohen), SIZE, SIZE) and first.images.dtype == np.uint8
    assert first.records == cohen and first.rejected == []
    expected = np.stack([resize_image(read_image(r.path), SIZE) for r in cohen])
    np.testing.assert_array_equal(first.images, expected)

    again = DecodeCache(tmp_path)  # a new process would build a new cache object
    second = again.load(cohen, SIZE)
    assert again.stats.decoded == 0 and again.stats.hits == len(cohen)
    np.testing.assert_array_equal(second.images, first.images)
    # another input size is another entry
    third = again.load(cohen[:2], SIZE * 2)
    assert again.stats.decoded == 2 and third.images.shape == (2, SIZE * 2, SIZE * 2)


def test_cache_layout_and_no_temp_files_left(tmp_path):
    img = write_png(tmp_path / "a.png", 30)
    cache = DecodeCache(tmp_path / "cache")
    cache.load([rec(img)], SIZE)
    entry = cache.entry_path(img, SIZE)
    assert entry.is_file() and entry.parent.parent == tmp_path / "cache" / str(SIZE)
    assert entry.parent.name == entry.stem[:2] and len(entry.stem) == 40  # sha1 hex
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.name.endswith(".tmp")]
    assert CACHE_VERSION >= 1


def test_changing_the_file_invalidates(tmp_path):
    path = write_png(tmp_path / "x.png", 20)
    cache = DecodeCache(tmp_path / "cache")
    before = cache.load([rec(path)], SIZE).images[0]
    write_png(path, 200)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # coarse-mtime filesystems
    after = cache.load([rec(path)], SIZE).images[0]
    assert cache.stats.decoded == 1 and cache.stats.hits == 0
    assert abs(float(after.mean()) - float(before.mean())) > 100


@needs_data
def test_rejections_are_reported_and_cached(tmp_path):
    records = [rec(BAD / "truncated.jpg"), rec(BAD / "html-named.jpg"), rec(tmp_path / "missing.png")]
    cache = DecodeCache(tmp_path / "cache")
    first = cache.load(records, SIZE)
    assert first.images.shape == (0, SIZE, SIZE) and first.records == []
    reasons = {Path(r.path).name: reason for r, reason in first.rejected}
    assert reasons == {"truncated.jpg": "truncated or corrupt image",
                       "html-named.jpg": "not an image (looks like text/HTML)",
                       "missing.png": "file not found"}
    assert cache.stats.decoded == 2 and cache.stats.rejected == 3
    txt = cache.entry_path(BAD / "truncated.jpg", SIZE).with_suffix(".txt")
    assert txt.read_text() == "truncated or corrupt image"

    second = cache.load(records, SIZE)
    assert cache.stats.decoded == 0 and cache.stats.hits == 2 and cache.stats.rejected == 3
    assert second.rejected == first.rejected


@needs_data
def test_mixed_list_keeps_exactly_the_good_ones_in_order(cohen, tmp_path):
    bad_files = sorted(p for p in BAD.iterdir() if p.is_file() and p.name != "README.md")
    mixed: list[ImageRecord] = []
    for i, path in enumerate(bad_files):  # interleave pack images and hostile files
        mixed.append(rec(path, label="bad"))
        if i < len(cohen):
            mixed.append(cohen[i])
    cache = DecodeCache(tmp_path / "cache", workers=2)
    out = cache.load(mixed, SIZE)
    expected_kept = [r for r in mixed if Path(r.path).name not in REFUSED]
    assert out.records == expected_kept
    assert {Path(r.path).name for r, _ in out.rejected} == REFUSED & {p.name for p in bad_files}
    assert all(reason for _, reason in out.rejected)
    assert out.images.shape == (len(expected_kept), SIZE, SIZE)
    for row, r in zip(out.images, out.records):  # row i belongs to record i
        np.testing.assert_array_equal(row, resize_image(read_image(r.path), SIZE))


@needs_data
def test_masks_aligned_with_records(cohen, tmp_path, caplog):
    no_mask = rec(cohen[0].path)
    broken = rec(cohen[1].path, BAD / "zero-bytes.png")
    missing = rec(cohen[2].path, tmp_path / "gone.png")
    records = [cohen[0], no_mask, broken, cohen[3], missing]
    cache = DecodeCache(tmp_path / "cache")
    with caplog.at_level(logging.WARNING, logger="benchmark.data.decode"):
        masks, has_mask = cache.load_masks(records, SIZE)
    assert masks.shape == (5, SIZE, SIZE) and masks.dtype == bool
    assert has_mask.tolist() == [True, False, False, True, False]
    assert not masks[[1, 2, 4]].any()
    for i in (0, 3):
        np.testing.assert_array_equal(masks[i], resize_mask(read_mask(records[i].mask_path), SIZE))
        assert 0.1 < masks[i].mean() < 0.7
    assert "zero-bytes.png: empty file" in caplog.text and "gone.png: file not found" in caplog.text

    masks2, has2 = DecodeCache(tmp_path / "cache").load_masks(records, SIZE)
    np.testing.assert_array_equal(masks2, masks)
    np.testing.assert_array_equal(has2, has_mask)
    # image and mask entries of the same file do not collide
    images = cache.load([r for r in records if r.mask_path and Path(r.mask_path).exists()], SIZE)
    assert images.images.dtype == np.uint8


def test_load_masks_unknown_field_lists_choices(tmp_path):
    with pytest.raises(UnknownNameError, match="marker_mask_path"):
        DecodeCache(tmp_path).load_masks([], SIZE, field="lung_mask")


def test_corrupt_cache_entry_is_decoded_again(tmp_path):
    path = write_png(tmp_path / "a.png", 60)
    cache = DecodeCache(tmp_path / "cache")
    good = cache.load([rec(path)], SIZE).images
    cache.entry_path(path, SIZE).write_bytes(b"\x93NUMPY garbage")
    again = cache.load([rec(path)], SIZE)
    assert cache.stats.decoded == 1
    np.testing.assert_array_equal(again.images, good)


def test_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch):
    """A write killed half way (here: an error after half the bytes) never leaves a .npy behind."""
    path = write_png(tmp_path / "a.png", 90)
    real_fdopen = os.fdopen

    class HalfWriter:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, payload):
            self.fh.write(payload[: len(payload) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr(decode_mod.os, "fdopen", lambda fd, mode: HalfWriter(real_fdopen(fd, mode)))
    cache = DecodeCache(tmp_path / "cache")
    out = cache.load([rec(path)], SIZE)
    assert len(out.records) == 1  # the run goes on with the decoded pixels
    assert not cache.entry_path(path, SIZE).exists()
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    monkeypatch.undo()
    cache.load([rec(path)], SIZE)
    assert cache.stats.decoded == 1 and cache.entry_path(path, SIZE).is_file()


def test_duplicate_records_decode_once_and_keep_both(tmp_path):
    path = write_png(tmp_path / "a.png", 10)
    other = shutil.copy(path, tmp_path / "b.png")
    cache = DecodeCache(tmp_path / "cache")
    out = cache.load([rec(path), rec(other), rec(path)], SIZE)
    assert len(out.records) == 3 and cache.stats.decoded == 2
    np.testing.assert_array_equal(out.images[0], out.images[2])


def test_bad_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="positive"):
        DecodeCache(tmp_path).load([], 0)
