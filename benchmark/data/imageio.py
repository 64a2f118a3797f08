"""The one place every image, lung mask, CAM input and dashboard upload is read.

Chest X-rays arrive as 8-bit JPEGs, 16-bit PNGs, DICOMs and, from users, as anything at all:
truncated files, HTML saved as ``.jpg``, decompression bombs. Every reader in the project goes
through :func:`read_image` so each of those gets the same, specific answer: either an upright
H x W uint8 grayscale array, or :class:`~benchmark.errors.ImageRejected` with a short reason
that a benchmark run stores in ``rejected_images`` and the dashboard shows to the user.

Format is decided by content (magic bytes), never by file name. Pillow's global
``Image.MAX_IMAGE_PIXELS`` is never touched: the pixel limit is checked here, on the header,
before any pixel is decoded (see :func:`_open_pil`).
"""
from __future__ import annotations

import io
import logging
import os
import struct
from functools import cache
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps

from benchmark.errors import ImageRejected

log = logging.getLogger(__name__)

ImageSource = str | os.PathLike | bytes | bytearray | memoryview | BinaryIO

#: Formats handed to Pillow. A whitelist, because Pillow also opens EPS (Ghostscript), PSD,
#: FITS and others that no X-ray comes in and that only widen what a hostile upload can reach.
PIL_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP", "GIF", "JPEG2000")

#: Files larger than this are refused before being read into memory.
MAX_FILE_BYTES = 1 << 30

_DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_TEXT_BYTES = bytes(range(32, 127)) + b"\t\n\r\f\x1b"


def read_image(
    src: ImageSource,
    *,
    max_pixels: int = 60_000_000,
    max_side: int = 2048,
    min_side: int = 16,
) -> np.ndarray:
    """Read any supported X-ray as an upright H x W uint8 grayscale array.

    The longest side is brought down to ``max_side`` (JPEGs are decoded at a reduced scale
    with ``draft`` so a 6000x5000 film never needs a full-size buffer); nothing is upscaled.
    ``max_pixels`` bounds width x height as stated in the header, checked before decoding.
    Raises ImageRejected with a short reason for anything that is not a usable image.
    """
    data, path = _read_bytes(src)
    if not data:
        raise ImageRejected("empty file", path)
    is_dicom = data[128:132] == b"DICM"
    try:
        if is_dicom:
            img = _read_dicom(data, path, max_pixels=max_pixels, min_side=min_side)
        else:
            img = _read_pil(data, path, max_pixels=max_pixels, max_side=max_side, min_side=min_side)
        return _limit_side(img, max_side)
    except ImageRejected:
        raise
    except DECODER_ERRORS as exc:
        raise _unexpected(exc, "DICOM" if is_dicom else "image", path) from None


#: What a decoder may raise on hostile content that no specific check above caught. Every one
#: becomes ImageRejected (named in its reason, and logged), so a caller needs to handle only that.
#: Not caught: NameError, ImportError, AssertionError, MemoryError, RecursionError: those are
#: bugs or resource failures, and hiding them as "corrupt file" would mislead.
DECODER_ERRORS = (ValueError, TypeError, LookupError, AttributeError, ArithmeticError, struct.error, EOFError,
                  OSError, SyntaxError, NotImplementedError, RuntimeError, UnicodeError)


def _unexpected(exc: BaseException, kind: str, path: str | None) -> ImageRejected:
    """A decoder failure no specific check foresaw: refused with its class named, and logged so a
    developer can add a specific check. DICOM messages are not logged: pydicom quotes element
    values, which may be patient identifiers."""
    name = type(exc).__name__
    if kind == "DICOM":
        log.warning("DICOM %s refused: %s while decoding", path or "<upload>", name)
    else:
        log.warning("image %s refused: %s while decoding: %s", path or "<upload>", name, exc)
    return ImageRejected(f"corrupt {kind} ({name} while decoding)", path)


def read_mask(src: ImageSource, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a lung mask as a bool array (pixel > 127 = lung), optionally resized to (H, W).

    Resizing is nearest neighbour so the mask stays binary. A mask saved as 0/1 instead of
    0/255 is recognised (its maximum is 1) rather than silently read as empty.
    Refuses exactly what :func:`read_image` refuses.
    """
    img = read_image(src)
    mask = img > 0 if img.max() == 1 else img > 127
    if shape is not None:
        mask = _nearest(mask, (int(shape[0]), int(shape[1])))
    return mask


def resize_image(img: np.ndarray, size: int) -> np.ndarray:
    """Squash a uint8 grayscale image to ``size`` x ``size`` with antialiasing.

    Squashed, not padded or cropped: the Kermany copy in the data pack is already squashed to
    224x224, so squashing every source keeps their geometry comparable, and the lung masks go
    through the identical geometric transform (:func:`resize_mask`), so lung measures on CAMs
    stay aligned pixel for pixel. Shrinking uses area averaging (Pillow's BOX, like OpenCV's
    INTER_AREA); enlarging uses bilinear interpolation.
    """
    check_size(size)
    if img.ndim != 2 or img.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {img.ndim}-D {img.dtype}")
    return _resize_u8(img, (size, size))


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Squash a bool mask to ``size`` x ``size`` with nearest neighbour (same geometry as images)."""
    check_size(size)
    if mask.ndim != 2:
        raise ValueError(f"expected a 2-D mask, got {mask.ndim}-D")
    return _nearest(mask.astype(bool, copy=False), (size, size))


# ----------------------------------------------------------------------------- input bytes


def _read_bytes(src: ImageSource) -> tuple[bytes, str | None]:
    """Return the file's bytes and a printable path (None for in-memory uploads)."""
    if isinstance(src, (bytes, bytearray, memoryview)):
        return bytes(src), None
    if hasattr(src, "read"):  # an open binary file, e.g. a Streamlit upload
        data = src.read(MAX_FILE_BYTES + 1)
        name = getattr(src, "name", None)
        if len(data) > MAX_FILE_BYTES:
            raise ImageRejected("file too large", name if isinstance(name, str) else None)
        return data, name if isinstance(name, str) else None
    path = os.fspath(src)
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageRejected("file not found", path) from None
    except OSError as e:
        raise ImageRejected(f"unreadable file ({e.strerror or type(e).__name__})", path) from None
    if not Path(path).is_file():
        raise ImageRejected("not a regular file", path)
    if st.st_size > MAX_FILE_BYTES:
        raise ImageRejected(f"file too large: {st.st_size} bytes", path)
    try:
        with open(path, "rb") as fh:
            return fh.read(), path
    except OSError as e:
        raise ImageRejected(f"unreadable file ({e.strerror or type(e).__name__})", path) from None


def _not_an_image(data: bytes, path: str | None) -> ImageRejected:
    """Word the refusal of unrecognised content; the name only chooses the wording."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n")
    if head[:1] == b"<" or (head and b"\0" not in head and len(head.translate(None, _TEXT_BYTES)) <= len(head) // 20):
        return ImageRejected("not an image (looks like text/HTML)", path)
    if path and path.lower().endswith(_DICOM_SUFFIXES):
        return ImageRejected("not DICOM (no DICM marker)", path)
    return ImageRejected("not an image", path)


def _check_header_size(width: int, height: int, path: str | None, *, max_pixels: int, min_side: int) -> None:
    if width * height > max_pixels:
        raise ImageRejected(
            f"decompression bomb: {width}x{height} pixels exceeds limit of {max_pixels}", path
        )
    if min(width, height) < min_side:
        raise ImageRejected(f"too small: {width}x{height} (minimum {min_side} px per side)", path)


# ----------------------------------------------------------------------------- Pillow path


@cache
def _pil_openers() -> tuple:
    """(format, factory, accept) for the whitelisted formats, registered on first use only."""
    Image.init()
    return tuple((f, *Image.OPEN[f]) for f in PIL_FORMATS if f in Image.OPEN)


def _open_pil(fp: io.BytesIO, path: str | None) -> Image.Image:
    """Identify by magic bytes and parse the header only, without Pillow's global bomb check.

    ``Image.open`` refuses anything over twice ``Image.MAX_IMAGE_PIXELS`` before its size is
    visible, and changing that global would race with other threads; calling the plugin
    factories directly (what ``Image.open`` does internally) leaves the limit to us.
    """
    prefix = fp.getvalue()[:16]
    recognised = False
    for fmt, factory, accept in _pil_openers():
        verdict = True if accept is None else accept(prefix)
        if not verdict or isinstance(verdict, str):  # a str is Pillow's "almost" verdict
            continue
        recognised = True
        fp.seek(0)
        try:
            return factory(fp, path or "")
        except (SyntaxError, IndexError, TypeError, ValueError, struct.error, OSError, EOFError):
            log.debug("%s header of %s did not parse", fmt, path or "<upload>")
    if recognised:
        raise ImageRejected("truncated or corrupt image", path)
    raise _not_an_image(fp.getvalue(), path)


def _read_pil(data: bytes, path: str | None, *, max_pixels: int, max_side: int, min_side: int) -> np.ndarray:
    im = _open_pil(io.BytesIO(data), path)
    width, height = im.size
    _check_header_size(width, height, path, max_pixels=max_pixels, min_side=min_side)
    if im.format in ("JPEG", "MPO") and max(width, height) > max_side:  # MPO: phone JPEGs
        scale = max_side / max(width, height)
        # draft decodes at 1/2, 1/4 or 1/8 scale, never below the requested size
        im.draft("L" if im.mode in ("L", "RGB") else None, (max(1, int(width * scale)), max(1, int(height * scale))))
    try:
        im.load()
    except Image.DecompressionBombError:  # frames of animated/multi-page files are checked on load
        raise ImageRejected(f"decompression bomb: {width}x{height} pixels exceeds limit", path) from None
    except (OSError, SyntaxError, ValueError, IndexError, struct.error, EOFError):
        raise ImageRejected("truncated or corrupt image", path) from None
    im = _exif_upright(im, path)
    return _to_gray_u8(im, path)


def _exif_upright(im: Image.Image, path: str | None) -> Image.Image:
    """Apply EXIF orientation; a malformed EXIF block is ignored rather than losing the image."""
    try:
        return ImageOps.exif_transpose(im)
    except (OSError, SyntaxError, ValueError, KeyError, TypeError, struct.error) as e:
        log.warning("ignoring malformed EXIF in %s (%s)", path or "<upload>", type(e).__name__)
        return im


def _to_gray_u8(im: Image.Image, path: str | None) -> np.ndarray:
    """Grayscale uint8: colour by luminance, alpha ignored, >8-bit data stretched to 0..255.

    Alpha is dropped rather than composited because an X-ray's transparency is an export
    artefact; compositing would darken the film by an arbitrary background choice.
    """
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        return _stretch(np.asarray(im))
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA")
    if im.mode != "L":
        try:
            im = im.convert("L")
        except ValueError:
            raise ImageRejected(f"unsupported colour mode {im.mode}", path) from None
    return np.array(im, dtype=np.uint8)


def _stretch(arr: np.ndarray) -> np.ndarray:
    """Scale the values actually stored (e.g. 12 bits in a 16-bit PNG) onto 0..255.

    A constant image has no range to stretch: it stays constant, at its value clipped to 0..255,
    with no division by zero.
    """
    arr = np.asarray(arr, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.all():
        arr = np.where(finite, arr, np.nanmin(arr[finite]) if finite.any() else 0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if hi <= lo:
        return np.full(arr.shape, np.clip(round(lo), 0, 255), dtype=np.uint8)
    out = (arr - lo) * np.float32(255.0 / (hi - lo))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- DICOM path


def _read_dicom(data: bytes, path: str | None, *, max_pixels: int, min_side: int) -> np.ndarray:
    """Pixels of the first frame as displayed: modality LUT, VOI LUT/window, MONOCHROME1 inverted.

    Patient identifiers never leave this function: only pixels are returned, and refusals and
    log lines carry fixed texts, never element values or pydicom's own messages.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut, pixel_array
    from pydicom.uid import UID

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises many types on hostile input; all mean unusable
        log.debug("DICOM header of %s did not parse (%s)", path or "<upload>", type(e).__name__)
        raise ImageRejected("truncated or corrupt DICOM", path) from None
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if tsyntax is None or "Rows" not in ds or "Columns" not in ds:
        raise ImageRejected("truncated DICOM (incomplete header)", path)
    if not isinstance(tsyntax, UID) or not tsyntax.is_transfer_syntax:
        raise ImageRejected("corrupt DICOM (its transfer syntax UID names no transfer syntax)", path)
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ImageRejected("truncated DICOM or no pixel data", path)
    rows, cols, frames, samples, bits = _dicom_geometry(ds, path)
    _check_header_size(cols, rows, path, max_pixels=max_pixels, min_side=min_side)
    if rows * cols * frames * samples > max_pixels:
        raise ImageRejected(f"decompression bomb: {frames} frame(s) of {cols}x{rows} pixels x {samples} "
                            f"sample(s) exceeds limit of {max_pixels}", path)
    if "PixelData" in ds and not tsyntax.is_compressed and len(ds.PixelData) < _native_bytes(ds):
        raise ImageRejected("truncated DICOM", path)
    try:
        arr = pixel_array(ds, index=0)
    except (NotImplementedError, RuntimeError):
        raise ImageRejected(f"unsupported DICOM compression ({tsyntax.name})", path) from None
    except Exception as e:
        log.debug("DICOM pixels of %s did not decode (%s)", path or "<upload>", type(e).__name__)
        raise ImageRejected("corrupt DICOM pixel data", path) from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return _dicom_colour_to_gray(arr, ds, photometric)
    arr = apply_modality_lut(arr, ds)
    voi_range = _voi_output_range(ds)
    if voi_range is not None:
        try:
            arr = apply_voi_lut(arr, ds, index=0)
        except (ValueError, KeyError, IndexError, TypeError):
            log.warning("invalid VOI LUT/window in %s; showing the full range", path or "<upload>")
            voi_range = None
    if voi_range is None:
        img = _stretch(arr)
    else:
        lo, hi = voi_range
        img = np.clip(np.rint((np.asarray(arr, dtype=np.float64) - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)
    return 255 - img if photometric == "MONOCHROME1" else img


def _dicom_geometry(ds, path: str | None) -> tuple[int, int, int, int, int]:
    """(rows, columns, frames, samples per pixel, bits allocated) from the header, checked before
    any pixel is decoded: with the pixel limit on rows x columns x frames x samples, and at most
    64 bits (8 bytes) a sample, a DICOM can make the decoder allocate no more than a PNG can
    (16-bit RGBA at the same pixel limit)."""

    def number(keyword: str, default: int) -> int:
        value = ds.get(keyword, default)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ImageRejected(f"corrupt DICOM ({keyword} is not a number)", path) from None

    rows, cols = number("Rows", 0), number("Columns", 0)
    frames, samples = number("NumberOfFrames", 1), number("SamplesPerPixel", 1)
    bits = number("BitsAllocated", 8)
    if rows < 1 or cols < 1 or frames < 1:
        raise ImageRejected(f"corrupt DICOM ({rows} rows, {cols} columns, {frames} frames)", path)
    if samples not in (1, 3) or bits not in (1, 8, 16, 32, 64):
        raise ImageRejected(f"unsupported DICOM pixel format ({samples} samples of {bits} bits)", path)
    return rows, cols, frames, samples, bits


def _native_bytes(ds) -> int:
    """Bytes an uncompressed Pixel Data element must hold for all frames."""
    count = int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1) or 1)
    count *= int(ds.get("NumberOfFrames", 1) or 1)
    bits = int(ds.get("BitsAllocated", 8) or 8)
    return (count + 7) // 8 if bits == 1 else count * (bits // 8)


def _voi_output_range(ds) -> tuple[float, float] | None:
    """The value range the VOI stage outputs (what maps to 0..255), or None without a VOI.

    Mirrors pydicom's apply_voi_lut (prefer the VOI LUT sequence, else the first window):
    a window's output spans the modality output range (PS3.3 C.11.2.1.2), so scaling that
    range to 0..255 shows the image as the DICOM asks, independent of which pixels occur.
    """
    if ds.get("VOILUTSequence"):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        return 0.0, float(2**bits - 1)
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 16)))
    if ds.get("ModalityLUTSequence"):
        lo, hi = 0.0, float(2 ** int(ds.ModalityLUTSequence[0].LUTDescriptor[2]) - 1)
    elif int(ds.get("PixelRepresentation", 0)) == 0:
        lo, hi = 0.0, float(2**bits - 1)
    else:
        lo, hi = float(-(2 ** (bits - 1))), float(2 ** (bits - 1) - 1)
    slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
    if slope is not None and intercept is not None and not ds.get("ModalityLUTSequence"):
        lo, hi = lo * float(slope) + float(intercept), hi * float(slope) + float(intercept)
    if hi == lo:
        return None
    return (lo, hi) if hi > lo else (hi, lo)


def _dicom_colour_to_gray(arr: np.ndarray, ds, photometric: str) -> np.ndarray:
    """Secondary-capture style colour DICOMs: luminance, stretched if deeper than 8 bits."""
    from pydicom.pixels import apply_color_lut

    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3 and arr.shape[-1] == 3:
        luma = arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        if arr.dtype == np.uint8:
            return np.clip(np.rint(luma), 0, 255).astype(np.uint8)
        return _stretch(luma)
    return _stretch(arr)


# ----------------------------------------------------------------------------- resampling


def check_size(size: int) -> None:
    """An output size must be a positive integer (ValueError otherwise)."""
    if int(size) != size or size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")


def _limit_side(img: np.ndarray, max_side: int) -> np.ndarray:
    h, w = img.shape
    if max(h, w) <= max_side:
        return img
    scale = max_side / max(h, w)
    return _resize_u8(img, (max(1, round(h * scale)), max(1, round(w * scale))))


def _resize_u8(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    if img.shape == (h, w):
        return np.ascontiguousarray(img)
    shrink = h <= img.shape[0] and w <= img.shape[1]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((w, h), resample=resample))


def _nearest(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest neighbour on pixel centres, the same sampling grid Pillow's resize uses."""
    h, w = shape
    rows = np.minimum(((np.arange(h) + 0.5) * (mask.shape[0] / h)).astype(np.intp), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * (mask.shape[1] / w)).astype(np.intp), mask.shape[1] - 1)
    return np.ascontiguousarray(mask[rows[:, None], cols[None, :]])
