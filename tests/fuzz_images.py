"""Seeded fuzzing of the one image reader (benchmark/data/imageio.py read_image).

Imported, not a conftest: tests/test_imageio_fuzz.py runs a few hundred cases and
bench/fuzz_reader.py ten thousand. Seeds are real files (data-pack JPEGs and masks, the
bad-inputs folder) and DICOMs written here with pydicom (8/16-bit, MONOCHROME1 with a window,
RGB, multi-frame, RLE and JPEG encapsulated), all carrying fake patient identifiers. Each case is
one seed mutated by byte edits (flips, interesting values in the header, truncation, spliced or
repeated chunks), by header edits that keep the file parseable (PNG IHDR with a valid CRC, JPEG
SOF sizes, DICOM elements set to odd values through pydicom), or is random bytes behind a
format's magic.

The contract checked: every call returns an H x W uint8 image or raises ImageRejected, and no
refusal quotes a patient identifier.
"""
from __future__ import annotations

import io
import random
import struct
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmark.data.imageio import read_image
from benchmark.errors import ImageRejected

PATIENT_NAME = "Fuzz^Patient^Quux"
PATIENT_ID = "FUZZ-ID-7731"
IDENTIFIERS = (PATIENT_NAME, PATIENT_ID, "Test^Phantom", "TEST-0001")
KINDS = ("png", "jpeg", "dicom")


@dataclass(frozen=True)
class Case:
    kind: str   # png, jpeg, dicom or random
    how: str    # the mutation, e.g. "flip", "dicom:Rows"
    seed: str   # the seed file's name
    data: bytes


@dataclass(frozen=True)
class Outcome:
    case: Case
    result: str          # "image", "rejected" or "escaped"
    seconds: float
    error: str = ""      # exception class for "escaped", reason for "rejected"
    shape: tuple = ()


# ----------------------------------------------------------------------------- seeds


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")  # uint16 -> a 16-bit PNG
    return buf.getvalue()


def _dicom(pixels: np.ndarray, *, transfer_syntax=None, frames: int = 1, **tags) -> bytes:
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["fuzz", str(tags), str(pixels.shape)])
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = PATIENT_NAME, PATIENT_ID, "DX"
    rgb = pixels.ndim == 3 + (frames > 1)
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if rgb else pixels.shape[-2:]
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    bits = pixels.dtype.itemsize * 8
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if transfer_syntax is not None:
        ds.compress(transfer_syntax, encoding_plugin="pydicom")
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def _jpeg_dicom(jpeg: bytes) -> bytes:
    """A real JPEG encapsulated as DICOM pixel data (JPEG Baseline), as a PACS exports it."""
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    im = Image.open(io.BytesIO(jpeg))
    raw = _dicom(np.zeros((im.height, im.width), np.uint8))
    ds = pydicom.dcmread(io.BytesIO(raw))
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([jpeg])
    ds["PixelData"].VR = "OB"
    ds.PhotometricInterpretation = "MONOCHROME2" if im.mode == "L" else "YBR_FULL_422"
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def synthetic_seeds() -> dict[str, list[tuple[str, bytes]]]:
    """Seeds written here: they need no data folder."""
    from pydicom.uid import RLELossless

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:96, 0:80]
    gray = ((np.sin(yy / 9.0) + np.cos(xx / 7.0) + 2) * 60 + rng.normal(0, 5, yy.shape)).clip(0, 255).astype(np.uint8)
    gray16 = (gray.astype(np.uint16) * 16)  # 12-bit values in 16 bits
    rgb = np.stack([gray, gray[::-1], 255 - gray], axis=-1)
    jpeg = io.BytesIO()
    Image.fromarray(gray).save(jpeg, format="JPEG", quality=80)
    progressive = io.BytesIO()
    Image.fromarray(rgb).save(progressive, format="JPEG", quality=70, progressive=True)
    return {
        "png": [("synthetic-gray.png", _png(gray)), ("synthetic-gray16.png", _png(gray16)),
                ("synthetic-rgb.png", _png(rgb))],
        "jpeg": [("synthetic.jpg", jpeg.getvalue()), ("synthetic-progressive.jpg", progressive.getvalue())],
        "dicom": [
            ("synthetic-8bit.dcm", _dicom(gray)),
            ("synthetic-mono1-window.dcm", _dicom(gray16, PhotometricInterpretation="MONOCHROME1", BitsStored=12,
                                                  HighBit=11, WindowCenter=2048, WindowWidth=4096)),
            ("synthetic-rescale.dcm", _dicom(gray16, BitsStored=12, HighBit=11, RescaleSlope=2,
                                             RescaleIntercept=-200)),
            ("synthetic-rgb.dcm", _dicom(rgb)),
            ("synthetic-3frames.dcm", _dicom(np.stack([gray, gray[::-1], gray[:, ::-1]]), frames=3)),
            ("synthetic-rle.dcm", _dicom(gray16, transfer_syntax=RLELossless, BitsStored=12, HighBit=11)),
            ("synthetic-jpeg.dcm", _jpeg_dicom(jpeg.getvalue())),
        ],
    }


def file_seeds(bad_inputs: Path | None, cxr: Path | None, per_source: int = 2) -> dict[str, list[tuple[str, bytes]]]:
    """Seeds from the bad-inputs folder and a few real data-pack images and masks, by kind."""
    out: dict[str, list[tuple[str, bytes]]] = {k: [] for k in KINDS}
    files: list[Path] = []
    if bad_inputs is not None and bad_inputs.is_dir():
        files += sorted(p for p in bad_inputs.iterdir() if p.is_file() and p.suffix != ".md")
    if cxr is not None and cxr.is_dir():
        for source in ("cohen", "kermany", "nih"):
            files += sorted((cxr / source / "images").glob("*.jpg"))[:per_source]
        files += sorted((cxr / "cohen" / "masks").glob("*.png"))[:per_source]
    for path in files:
        data = path.read_bytes()
        kind = ("dicom" if data[128:132] == b"DICM" else "png" if data[:8] == b"\x89PNG\r\n\x1a\n"
                else "jpeg" if data[:2] == b"\xff\xd8" else None)
        if kind is not None:
            out[kind].append((path.name, data))
    return out


def all_seeds(bad_inputs: Path | None = None, cxr: Path | None = None) -> dict[str, list[tuple[str, bytes]]]:
    seeds = synthetic_seeds()
    for kind, items in file_seeds(bad_inputs, cxr).items():
        seeds[kind] = seeds[kind] + items
    return seeds


# ----------------------------------------------------------------------------- mutations

INTERESTING = (0x00, 0x01, 0x7F, 0x80, 0xFF, 0xFE, 0x10, 0x40)


def _flip(data: bytearray, rng: random.Random) -> None:
    for _ in range(rng.randint(1, 8)):
        i = rng.randrange(len(data))
        data[i] ^= 1 << rng.randrange(8)


def _header_bytes(data: bytearray, rng: random.Random) -> None:
    """Interesting values where the headers are: the first 1 kB (DICOM: after the preamble)."""
    lo = 132 if data[128:132] == b"DICM" else 0
    hi = min(len(data), lo + 1024)
    for _ in range(rng.randint(1, 4)):
        if hi > lo:
            data[rng.randrange(lo, hi)] = rng.choice(INTERESTING)


def _splice(data: bytearray, rng: random.Random) -> bytearray:
    i, j = sorted(rng.randrange(len(data) + 1) for _ in range(2))
    op = rng.choice(("delete", "repeat", "random", "insert"))
    if op == "delete":
        return data[:i] + data[j:]
    if op == "repeat":
        return data[:j] + data[i:j] * rng.randint(1, 4) + data[j:]
    if op == "random":
        return data[:i] + bytearray(rng.randbytes(j - i)) + data[j:]
    return data[:i] + bytearray(rng.randbytes(rng.randint(1, 64))) + data[i:]


def mutate_bytes(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    buf = bytearray(data)
    if not buf:
        return "empty", b""
    how = rng.choice(("flip", "header", "truncate", "splice", "flip+truncate"))
    if how in ("flip", "flip+truncate"):
        _flip(buf, rng)
    if how == "header":
        _header_bytes(buf, rng)
    if how in ("truncate", "flip+truncate"):
        buf = buf[:rng.randrange(len(buf))]
    if how == "splice":
        buf = _splice(buf, rng)
    return how, bytes(buf)


def mutate_png_header(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """IHDR width/height/depth/colour type/interlace set to odd values, CRC recomputed, so the
    file gets past the chunk check to the decoder."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return mutate_bytes(data, rng)
    w, h, depth, colour, comp, filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    field = rng.choice(("size", "depth", "colour", "interlace", "filter"))
    if field == "size":
        pick = lambda v: rng.choice((0, 1, 15, 16, v * 2, v // 2, rng.randint(1, 100_000), 2**31 - 1, v + 1))
        w, h = pick(w), pick(h)
    elif field == "depth":
        depth = rng.choice((0, 1, 2, 4, 8, 16, 32, 255))
    elif field == "colour":
        colour = rng.choice((0, 1, 2, 3, 4, 5, 6, 7, 255))
    elif field == "interlace":
        interlace = rng.choice((0, 1, 2, 255))
    else:
        comp, filt = rng.choice(((0, 0), (1, 0), (0, 1), (255, 255)))
    body = b"IHDR" + struct.pack(">IIBBBBB", w & 0xFFFFFFFF, h & 0xFFFFFFFF, depth, colour, comp, filt, interlace)
    return f"png:{field}", data[:12] + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF) + data[29:]


def mutate_jpeg_header(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """The frame header's (SOF) height, width or component count set to odd values."""
    for marker in (b"\xff\xc0", b"\xff\xc2", b"\xff\xc1"):
        at = data.find(marker)
        if at >= 0 and at + 10 <= len(data):
            break
    else:
        return mutate_bytes(data, rng)
    buf = bytearray(data)
    field = rng.choice(("height", "width", "components", "precision"))
    if field in ("height", "width"):
        off = at + 5 if field == "height" else at + 7
        buf[off:off + 2] = struct.pack(">H", rng.choice((0, 1, 8, 16, 65535, rng.randint(1, 65535))))
    elif field == "components":
        buf[at + 9] = rng.choice((0, 1, 2, 3, 4, 255))
    else:
        buf[at + 4] = rng.choice((0, 8, 12, 16, 255))
    return f"jpeg:{field}", bytes(buf)


#: A real UID of 20 characters, but a SOP class (Media Storage Directory Storage), not a transfer syntax
NOT_A_TRANSFER_SYNTAX = "1.2.840.10008.1.3.10"


def set_transfer_syntax_bytes(data: bytes, uid: str) -> bytes | None:
    """The file with its meta header's Transfer Syntax UID replaced in place (padded with NULs to
    the old length), or None when it does not fit. pydicom refuses to write a UID that names no
    transfer syntax, and that is the very case the reader must survive."""
    at = data.find(b"\x02\x00\x10\x00UI", 128, 1024)  # (0002,0010) UI, explicit VR little endian
    if at < 0:
        return None
    length = int.from_bytes(data[at + 6:at + 8], "little")
    value = uid.encode("ascii")
    if len(value) > length:
        return None
    return data[:at + 8] + value.ljust(length, b"\0") + data[at + 8 + length:]


def _dicom_field_values(rng: random.Random) -> dict:
    from pydicom.uid import (
        DeflatedExplicitVRLittleEndian,
        ExplicitVRBigEndian,
        ImplicitVRLittleEndian,
        JPEGBaseline8Bit,
        RLELossless,
    )

    big = rng.choice((0, 1, 15, 16, 4096, 30000, 65535))
    return {
        "Rows": big, "Columns": big,
        "NumberOfFrames": rng.choice(("0", "-1", "2", "1000000", "abc", "")),
        "BitsAllocated": rng.choice((0, 1, 7, 12, 24, 32, 64, 128, 65535)),
        "BitsStored": rng.choice((0, 1, 7, 13, 16, 40, 65535)),
        "HighBit": rng.choice((0, 6, 15, 63, 65535)),
        "SamplesPerPixel": rng.choice((0, 2, 3, 4, 65535)),
        "PixelRepresentation": rng.choice((0, 1, 2)),
        "PlanarConfiguration": rng.choice((0, 1, 7)),
        "PhotometricInterpretation": rng.choice(("MONOCHROME1", "RGB", "PALETTE COLOR", "YBR_FULL", "XYZ", "")),
        "TransferSyntaxUID": rng.choice((NOT_A_TRANSFER_SYNTAX, "1.2.3.4", "", "1.2.840.10008.1.2.9", RLELossless,
                                         ExplicitVRBigEndian, ImplicitVRLittleEndian, "1.2.840.10008.1.2.5",
                                         DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit)),
        "WindowCenter": rng.choice((0, -1, 1e30, "abc", [1, 2, 3])),
        "WindowWidth": rng.choice((0, -1, 1e-30, 1e30, "abc", [1, 2])),
        "RescaleSlope": rng.choice((0, -1, 1e300, "nan", "abc")),
        "RescaleIntercept": rng.choice((0, -1e300, "inf", "abc")),
        "PixelData": rng.choice(("empty", "short", "long", "odd")),
        "VOILUTSequence": rng.choice(("bad-descriptor", "empty-data", "huge-bits")),
        "delete": rng.choice(("Rows", "Columns", "BitsAllocated", "PixelData", "PhotometricInterpretation",
                              "SamplesPerPixel", "TransferSyntaxUID")),
    }


def mutate_dicom_fields(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One DICOM element set to an odd value through pydicom, so the file still parses and the
    value reaches the reader's header checks and the pixel decoders."""
    import pydicom
    from pydicom import config
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    field, value = rng.choice(list(_dicom_field_values(rng).items()))
    saved = config.settings.writing_validation_mode, config.settings.reading_validation_mode
    config.settings.writing_validation_mode = config.settings.reading_validation_mode = config.IGNORE
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data))
            if field == "TransferSyntaxUID":
                out = set_transfer_syntax_bytes(data, value)
                if out is None:
                    raise ValueError("does not fit")
                return f"dicom:{field}", out
            if field == "delete":
                target = ds.file_meta if value == "TransferSyntaxUID" else ds
                if value in target:
                    delattr(target, value)
            elif field == "PixelData":
                pd = ds.PixelData
                ds.PixelData = {"empty": b"", "short": pd[:len(pd) // 3], "long": pd + pd[:len(pd) // 2],
                                "odd": pd[:-1]}[value]
            elif field == "VOILUTSequence":
                item = Dataset()
                item.LUTDescriptor = {"bad-descriptor": [0, 0, 0], "empty-data": [256, 0, 8],
                                      "huge-bits": [4, 0, 64]}[value]
                item.LUTData = [] if value == "empty-data" else [0, 1, 2, 3]
                ds.VOILUTSequence = Sequence([item])
            elif isinstance(value, list):
                setattr(ds, field, value)
            else:
                setattr(ds, field, value)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=False)
            return f"dicom:{field}", buf.getvalue()
    except Exception:  # the value cannot even be written (e.g. out of range for US): mutate bytes instead
        how, out = mutate_bytes(data, rng)
        return f"dicom:{field}->{how}", out
    finally:
        config.settings.writing_validation_mode, config.settings.reading_validation_mode = saved


MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff\xe0", "dicom": b"\0" * 128 + b"DICM", "none": b""}


def cases(n: int, seed: int, seeds: dict[str, list[tuple[str, bytes]]]) -> Iterator[Case]:
    """`n` seeded cases: 25 % PNG, 25 % JPEG, 40 % DICOM (half of them element edits), 10 % random bytes."""
    rng = random.Random(seed)
    for _ in range(n):
        roll = rng.random()
        if roll < 0.10:
            magic = rng.choice(list(MAGIC))
            data = MAGIC[magic] + rng.randbytes(rng.choice((0, 1, 16, 300, 5000)))
            yield Case("random", f"random:{magic}", "-", data)
            continue
        kind = "png" if roll < 0.35 else "jpeg" if roll < 0.60 else "dicom"
        name, data = rng.choice(seeds[kind])
        structured = rng.random() < 0.5
        if kind == "png" and structured:
            how, out = mutate_png_header(data, rng)
        elif kind == "jpeg" and structured:
            how, out = mutate_jpeg_header(data, rng)
        elif kind == "dicom" and structured:
            how, out = mutate_dicom_fields(data, rng)
        else:
            how, out = mutate_bytes(data, rng)
        yield Case(kind, how, name, out)


def run_case(case: Case) -> Outcome:
    """One call of read_image on the case's bytes, timed; never raises."""
    start = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = read_image(case.data)
    except ImageRejected as exc:
        return Outcome(case, "rejected", time.perf_counter() - start, exc.reason)
    except Exception as exc:  # the defect the fuzzing looks for
        return Outcome(case, "escaped", time.perf_counter() - start, f"{type(exc).__name__}: {exc}")
    seconds = time.perf_counter() - start
    if not (isinstance(img, np.ndarray) and img.ndim == 2 and img.dtype == np.uint8):
        return Outcome(case, "escaped", seconds, f"bad return value {type(img).__name__} "
                                                 f"{getattr(img, 'shape', '')} {getattr(img, 'dtype', '')}")
    return Outcome(case, "image", seconds, shape=img.shape)
