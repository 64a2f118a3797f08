"""Fuzzing the one image reader: every mutated PNG, JPEG, DICOM or random file gives an image or
ImageRejected; DICOM sizes are checked before any pixel is decoded. The long run (10,000 cases,
timings, peak memory) is bench/fuzz_reader.py."""
from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from benchmark.data.imageio import read_image
from benchmark.errors import ImageRejected
from tests.conftest import BAD_INPUTS, CXR_DATA
from tests.fuzz_images import (
    IDENTIFIERS,
    NOT_A_TRANSFER_SYNTAX,
    _dicom,
    all_seeds,
    cases,
    run_case,
    set_transfer_syntax_bytes,
    synthetic_seeds,
)

N_CASES = 400


@pytest.fixture(scope="module")
def seeds():
    return all_seeds(BAD_INPUTS, CXR_DATA)


def test_seeds_cover_every_kind_and_read(seeds):
    assert all(len(seeds[k]) >= 2 for k in ("png", "jpeg", "dicom"))
    for name, data in synthetic_seeds()["dicom"]:
        img = read_image(data)  # every synthetic seed is a valid image before it is mutated
        assert img.ndim == 2 and img.dtype == np.uint8, name


def test_seeded_fuzz_cases_give_an_image_or_image_rejected(seeds):
    outcomes = [run_case(case) for case in cases(N_CASES, seed=2026, seeds=seeds)]
    escaped = [f"{o.case.kind} {o.case.how} of {o.case.seed}: {o.error}" for o in outcomes if o.result == "escaped"]
    assert escaped == []
    results = Counter(o.result for o in outcomes)
    assert results["image"] > 0 and results["rejected"] > 0  # the mutations reach both answers
    hows = Counter(o.case.how.split(":")[0] for o in outcomes)
    assert hows["dicom"] > 0 and hows["png"] > 0 and hows["jpeg"] > 0 and hows["random"] > 0
    for o in outcomes:
        assert not any(ident in o.error for ident in IDENTIFIERS), o.error  # refusals quote no patient
        if o.result == "image":
            assert max(o.shape) <= 2048 and min(o.shape) >= 1


def _dataset(data: bytes):
    return pydicom.dcmread(io.BytesIO(data))


def _write(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=False)
    return buf.getvalue()


def test_a_uid_that_is_no_transfer_syntax_is_refused():
    """The escape the first fuzzing found: pydicom's ValueError('UID is not a transfer syntax')."""
    data = set_transfer_syntax_bytes(_dicom(np.zeros((32, 32), np.uint8)), NOT_A_TRANSFER_SYNTAX)
    assert data is not None and NOT_A_TRANSFER_SYNTAX.encode() in data[:400]
    with pytest.raises(ImageRejected, match="transfer syntax"):
        read_image(data)


def _no_decoding(*args, **kwargs):
    raise AssertionError("pixel data was decoded although the header is over the limit")


@pytest.mark.parametrize("rows,cols,frames,samples", [(4000, 4000, 10, 1), (30000, 30000, 1, 1), (5000, 5000, 1, 3)])
def test_dicom_size_is_checked_before_the_pixels_are_decoded(monkeypatch, rows, cols, frames, samples):
    """A compressed DICOM whose header claims more pixels than the limit allows is refused from
    the header: rows x columns x frames x samples, as the PNG bomb check does for width x height."""
    from pydicom.uid import RLELossless

    ds = _dataset(_dicom(np.zeros((32, 32), np.uint8)))
    ds.file_meta.TransferSyntaxUID = RLELossless  # compressed: a few bytes may claim any size
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, samples
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = encapsulate([b"\0" * 64])
    ds["PixelData"].VR = "OB"
    monkeypatch.setattr(pydicom.pixels, "pixel_array", _no_decoding)
    with pytest.raises(ImageRejected, match="decompression bomb"):
        read_image(_write(ds))


def test_a_frame_count_that_is_no_number_is_refused():
    ds = _dataset(_dicom(np.zeros((32, 32), np.uint8)))
    ds.NumberOfFrames = "12"
    element = b"\x28\x00\x08\x00IS\x02\x0012"  # (0028,0008) IS, 2 bytes: pydicom will not write "ab"
    data = _write(ds)
    assert data.count(element) == 1
    with pytest.raises(ImageRejected, match="NumberOfFrames is not a number"):
        read_image(data.replace(element, element[:-2] + b"ab"))


@pytest.mark.parametrize("tag,value,match", [
    ("BitsAllocated", 128, "pixel format"), ("SamplesPerPixel", 4, "pixel format"),
    ("NumberOfFrames", "0", "frames"), ("Rows", 0, "rows"),
])
def test_odd_dicom_geometry_gets_a_specific_reason(tag, value, match):
    from pydicom import config

    ds = _dataset(_dicom(np.zeros((32, 32), np.uint8)))
    saved = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        setattr(ds, tag, value)
        data = _write(ds)
    finally:
        config.settings.writing_validation_mode = saved
    with pytest.raises(ImageRejected, match=match):
        read_image(data)
