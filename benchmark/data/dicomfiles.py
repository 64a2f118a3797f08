"""DICOM files as users keep them: which files of a folder are DICOM, and whose images they are.

Pixels are read only by the one image reader (imageio.py). This module looks at headers when a
folder is listed: PACS exports often have no file extension (a file is DICOM when its bytes 128-131
are `DICM`), and the PatientID tag says which images belong to one patient, which the patient split
needs (images of one patient must not land in both train and test). The identifier itself never
reaches a record, the results DB or a log line: records get a salted one-way key of it.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

log = logging.getLogger(__name__)

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
_PREAMBLE = 128


def is_dicom_file(path: str | Path) -> bool:
    """True when the file carries the DICOM Part 10 marker (DICM after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(_PREAMBLE + 4)[_PREAMBLE:] == b"DICM"
    except OSError:
        return False


def patient_key(path: str | Path, salt: str) -> str | None:
    """A 12-hex-digit key of the file's PatientID (salted SHA-1), or None when the header has none
    or cannot be read (the file is then refused, with its reason, when its pixels are decoded)."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True, specific_tags=["PatientID"])
        pid = str(ds.get("PatientID", "") or "").strip()
    except Exception:  # hostile or truncated headers: many exception types, all mean "unknown"
        return None
    if not pid:
        return None
    return hashlib.sha1(f"{salt}\0{pid}".encode("utf-8", "surrogateescape")).hexdigest()[:12]
