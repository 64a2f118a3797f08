"""Decoded images kept in memory across the jobs of a grid: one decode (or cache read) per dataset and size.

`DecodeCache` keeps pixels on disk, so a second model at the same size skips decoding, but each
job still reads every image's `.npy` back (a stat, a hash and a file read per image: 10k files per
job for the paper's databases). A grid runs many models on the same (dataset, size), so the
`DecodedMemo` a grid holds returns the arrays it already has. Bounded: least recently used
entries are dropped beyond `max_bytes`. Entries are shared between jobs, so their arrays are made
read-only; a job that changes pixels (the lungs-only control) works on copies, as it already does.

`prefetch` reads the next job's (dataset, size) on a background thread while the current job
keeps the device busy (decoding is CPU work: Pillow and zlib release the GIL); `load` then waits
for that read instead of starting its own, and re-raises its error if it failed.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from benchmark.data.decode import DecodeCache, DecodedSet

log = logging.getLogger(__name__)

MAX_BYTES = 8 * 2**30  # about 8 sizes x 10k images at 224 px with their masks


@dataclass(frozen=True)
class DecodedEntry:
    decoded: DecodedSet
    masks: np.ndarray
    has_mask: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.decoded.images.nbytes + self.masks.nbytes + self.has_mask.nbytes)


def records_digest(records) -> str:
    """Identity of a record list for the memo: the files (images and masks) in order."""
    h = hashlib.sha1()
    for r in records:
        h.update(f"{r.path}\0{r.mask_path or ''}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


class DecodedMemo:
    """(cache root, size, records) -> decoded images and masks, loaded through a DecodeCache once."""

    def __init__(self, max_bytes: int = MAX_BYTES):
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple, DecodedEntry] = OrderedDict()
        self._pending: dict[tuple, Future] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def _key(cache: DecodeCache, records, size: int) -> tuple:
        return str(cache.root), int(size), records_digest(records)

    def load(self, cache: DecodeCache, records, size: int, *, progress: bool = False) -> DecodedEntry:
        key = self._key(cache, records, size)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self.hits += 1
                return entry
            pending = self._pending.get(key)
            self.misses += 1
        if pending is not None:
            return pending.result()  # a prefetch's entry, or its error
        return self._read(key, cache, records, size, progress)

    def prefetch(self, cache: DecodeCache, records, size: int) -> None:
        """Start reading (records, size) on a background thread unless it is held or already coming."""
        key = self._key(cache, records, size)
        with self._lock:
            if key in self._entries or key in self._pending:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode-prefetch")
            self._pending[key] = self._pool.submit(self._read, key, cache, records, size, False)

    def _read(self, key: tuple, cache: DecodeCache, records, size: int, progress: bool) -> DecodedEntry:
        try:
            decoded = cache.load(records, size, progress=progress)
            masks, has_mask = cache.load_masks(decoded.records, size)
            for arr in (decoded.images, masks, has_mask):
                arr.flags.writeable = False
            entry = DecodedEntry(decoded, masks, has_mask)
            with self._lock:
                if entry.nbytes <= self.max_bytes:
                    self._entries[key] = entry
                    while sum(e.nbytes for e in self._entries.values()) > self.max_bytes:
                        dropped, _ = self._entries.popitem(last=False)
                        log.debug("decoded memo: dropped a %s px entry", dropped[1])
            return entry
        finally:
            with self._lock:
                self._pending.pop(key, None)

    def close(self) -> None:
        """Wait for a prefetch in flight and stop the background thread; entries stay usable."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __len__(self) -> int:
        return len(self._entries)
