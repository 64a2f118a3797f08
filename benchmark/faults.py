"""Fault injection for the kill -9 tests: pause a process at a named write point, for a test to kill it.

Test-only and off unless `$CXR_FAULT_PAUSE` is set (resolved in benchmark/paths.py). Its value is
`<point>:<marker file>`; when the process reaches that point it writes the marker file and sleeps
(up to `PAUSE_S`), so a test can wait for the marker and `kill -9` the process exactly while it
is writing. Points:

- `commit`: inside a store transaction (writes.transaction), every row inserted, before COMMIT;
- `checkpoint`: a classifier checkpoint's `.safetensors.tmp` written, before it replaces the old file;
- `segmenter`: the same for the lung segmenter's checkpoint (`lungs train`);
- `read`: a read-only connection open (store.reader), before the query runs (a dashboard read).
"""
from __future__ import annotations

import time
from pathlib import Path

from benchmark import paths

POINTS = ("commit", "checkpoint", "segmenter", "read")
PAUSE_S = 120.0


def pause_point(point: str) -> None:
    """Do nothing, unless $CXR_FAULT_PAUSE names this point: then write its marker and sleep."""
    value = paths.fault_pause()
    if not value:
        return
    name, _, marker = value.partition(":")
    if name != point:
        return
    if marker:
        Path(marker).write_text(point)
    time.sleep(PAUSE_S)
