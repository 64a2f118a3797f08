"""Decode each image once per input size and keep the uint8 result on disk.

JPEG decoding on a CPU core is slower than most models train on a GPU (bench/RESULTS.md), so
every (image, input size) is decoded once, squashed to the model's square
input with :func:`~benchmark.data.imageio.resize_image`, and stored as a small ``.npy``.
A second run, or a second model at the same input size, reads only the cache.

Layout: ``root/<size>/<key[:2]>/<key>.npy`` for pixels and ``<key>.txt`` for a refusal
reason, so refused files are not re-read either. The key hashes the resolved path, file size,
mtime_ns, the input size, the kind (image or mask) and :data:`CACHE_VERSION`, so an edited
file or a change in decoding code misses the cache instead of serving stale pixels.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from benchmark import paths
from benchmark.data.imageio import check_size, read_image, read_mask, resize_image, resize_mask
from benchmark.data.records import ImageRecord
from benchmark.errors import ImageRejected, UnknownNameError

log = logging.getLogger(__name__)

#: Bump when decoding changes what pixels come out (resampling, colour handling, limits):
#: every cached entry then misses and is decoded again.
CACHE_VERSION = 1

#: A ``.tmp`` file in the cache older than this was left by a process that died while writing
#: (a kill, a crash): it is removed the first time a cache opens that input size.
STALE_TMP_S = 15 * 60


@dataclass
class CacheStats:
    """What the most recent ``load``/``load_masks`` call did; ``decoded`` is 0 on a warm cache."""

    decoded: int = 0  # files read and decoded from their source (including ones refused)
    hits: int = 0  # served from the cache, cached refusals included
    rejected: int = 0  # refused this call, whether freshly or from the cache


@dataclass
class DecodedSet:
    """Images at one input size: row i of ``images`` belongs to ``records[i]``."""

    images: np.ndarray  # K x size x size uint8
    records: list[ImageRecord]  # kept records, in input order
    rejected: list[tuple[ImageRecord, str]] = dataclasses.field(default_factory=list)  # (record, reason)


@dataclass(frozen=True)
class _Outcome:
    array: np.ndarray | None
    reason: str
    source: str  # "cache", "decoded", or "unread" (the file could not even be stat'ed)


class DecodeCache:
    """On-disk cache of decoded, resized images and masks.

    Thread pool decoding: Pillow and zlib release the GIL while decoding, so a few threads
    keep several cores busy without the start-up and pickling cost of processes.
    Cache write failures (read-only or full disk) are logged and never fail a load.
    """

    def __init__(self, root: Path | None = None, *, workers: int | None = None):
        self.root = paths.cache_dir(root)
        self.workers = workers or min(8, os.cpu_count() or 1)
        self.stats = CacheStats()
        self._swept: set[int] = set()  # input sizes whose stale .tmp files were removed

    # ------------------------------------------------------------------------- public

    def load(self, records: Sequence[ImageRecord], size: int, *, progress: bool = False) -> DecodedSet:
        """Decoded ``size`` x ``size`` uint8 images for the records that can be read.

        Refused records are left out of ``images``/``records`` and listed in ``rejected``
        with their reason, so a run can store them in ``rejected_images`` and go on.
        """
        check_size(size)
        paths = [r.path for r in records]
        outcomes = self._run(paths, size, "image", lambda p: resize_image(read_image(p), size), progress)
        kept = [i for i, o in enumerate(outcomes) if o.array is not None]
        images = np.empty((len(kept), size, size), dtype=np.uint8)
        for row, i in enumerate(kept):
            images[row] = outcomes[i].array
        rejected = [(records[i], o.reason) for i, o in enumerate(outcomes) if o.array is None]
        for rec, reason in rejected:
            log.info("image refused: %s: %s", rec.path, reason)
        return DecodedSet(images=images, records=[records[i] for i in kept], rejected=rejected)

    def load_masks(
        self, records: Sequence[ImageRecord], size: int, field: str = "mask_path"
    ) -> tuple[np.ndarray, np.ndarray]:
        """(K x size x size bool masks, has_mask K bool) aligned with ``records``.

        A record without a mask path, or whose mask file is refused, gets an all-False mask
        and ``has_mask`` False (a warning is logged for bad files): a missing mask must drop
        that image from lung measures, never stop a run.
        """
        check_size(size)
        names = {f.name for f in dataclasses.fields(ImageRecord)}
        if field not in names:
            raise UnknownNameError("record field", field, sorted(n for n in names if n.endswith("_path")))
        masks = np.zeros((len(records), size, size), dtype=bool)
        has_mask = np.zeros(len(records), dtype=bool)
        wanted = [i for i, r in enumerate(records) if getattr(r, field)]
        paths = [getattr(records[i], field) for i in wanted]
        outcomes = self._run(paths, size, "mask", lambda p: resize_mask(read_mask(p), size), False)
        for i, o in zip(wanted, outcomes):
            if o.array is None:
                log.warning("lung mask unusable, image kept without mask: %s: %s", getattr(records[i], field), o.reason)
                continue
            masks[i] = o.array
            has_mask[i] = True
        return masks, has_mask

    def remove_stale_tmp(self, size: int, max_age_s: float = STALE_TMP_S) -> int:
        """Delete ``.tmp`` files under ``root/<size>`` older than ``max_age_s`` (a younger one may
        belong to a process writing right now); returns how many were removed."""
        now = time.time()
        removed = 0
        for tmp in (self.root / str(size)).glob("*/.*.tmp"):
            try:
                if now - tmp.stat().st_mtime > max_age_s:
                    tmp.unlink()
                    removed += 1
            except OSError:  # gone already, or not ours to delete: leave it
                continue
        if removed:
            log.info("removed %d stale temporary file(s) from the decode cache %s", removed, self.root / str(size))
        return removed

    def entry_path(self, path: str | os.PathLike, size: int, kind: str = "image") -> Path:
        """Where the cached pixels of ``path`` live (``.txt`` beside it holds a refusal)."""
        key = _cache_key(Path(path).resolve(), os.stat(path), size, kind)
        return self.root / str(size) / key[:2] / f"{key}.npy"

    # ------------------------------------------------------------------------- internals

    def _run(
        self,
        paths: Sequence[str],
        size: int,
        kind: str,
        decode: Callable[[str], np.ndarray],
        progress: bool,
    ) -> list[_Outcome]:
        """One outcome per path, in order; each distinct file is decoded at most once."""
        if size not in self._swept:
            self._swept.add(size)
            self.remove_stale_tmp(size)
        unique = list(dict.fromkeys(paths))
        bar = tqdm(total=len(unique), desc=f"decode {size}px", unit="img", disable=not progress)
        results: dict[str, _Outcome] = {}
        try:
            with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="decode") as pool:
                for p, outcome in zip(unique, pool.map(lambda p: self._one(p, size, kind, decode), unique)):
                    results[p] = outcome
                    bar.update(1)
        finally:
            bar.close()
        self.stats = CacheStats(
            decoded=sum(o.source == "decoded" for o in results.values()),
            hits=sum(o.source == "cache" for o in results.values()),
            rejected=sum(o.array is None for o in results.values()),
        )
        return [results[p] for p in paths]

    def _one(self, path: str, size: int, kind: str, decode: Callable[[str], np.ndarray]) -> _Outcome:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return _Outcome(None, "file not found", "unread")
        except OSError as e:  # nothing to key a cache entry on; retried next run
            return _Outcome(None, f"unreadable file ({e.strerror or type(e).__name__})", "unread")
        key = _cache_key(Path(path).resolve(), st, size, kind)
        entry = self.root / str(size) / key[:2] / key
        cached = self._read_entry(entry, size, np.uint8 if kind == "image" else np.bool_)
        if cached is not None:
            return cached
        try:
            arr = decode(path)
        except ImageRejected as e:
            self._write(entry.with_suffix(".txt"), e.reason.encode("utf-8"))
            return _Outcome(None, e.reason, "decoded")
        except Exception as e:  # a decoder bug or MemoryError must not end a run; not cached
            log.warning("unexpected error decoding %s", path, exc_info=True)
            return _Outcome(None, f"unreadable ({type(e).__name__})", "decoded")
        self._write(entry.with_suffix(".npy"), _npy_bytes(arr))
        return _Outcome(arr, "", "decoded")

    def _read_entry(self, entry: Path, size: int, dtype: type) -> _Outcome | None:
        npy, txt = entry.with_suffix(".npy"), entry.with_suffix(".txt")
        try:
            if npy.exists():
                arr = np.load(npy, allow_pickle=False)
                if arr.shape == (size, size) and arr.dtype == dtype:
                    return _Outcome(arr, "", "cache")
                log.warning("cache entry %s holds %s %s; decoding again", npy, arr.dtype, arr.shape)
            elif txt.exists():
                return _Outcome(None, txt.read_text(encoding="utf-8").strip() or "refused", "cache")
        except (OSError, ValueError, EOFError) as e:
            log.warning("unreadable cache entry %s (%s); decoding again", entry, type(e).__name__)
        return None

    def _write(self, target: Path, payload: bytes) -> None:
        """Atomic: write a temp file in the same folder, then rename over the target."""
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.replace(tmp, target)
        except OSError as e:
            log.warning("could not write cache entry %s (%s)", target, e.strerror or type(e).__name__)
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass


def _cache_key(resolved: Path, st: os.stat_result, size: int, kind: str) -> str:
    ident = f"{resolved}|{st.st_size}|{st.st_mtime_ns}|{size}|{kind}|v{CACHE_VERSION}"
    return hashlib.sha1(ident.encode("utf-8", "surrogateescape")).hexdigest()


def _npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()
