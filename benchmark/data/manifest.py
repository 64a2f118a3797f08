"""A CSV manifest as a data source: `--data my_images.csv`, one row per image, as users keep their data.

Columns: `path` and `label` (required); `patient_id`, `view`, `sex`, `age`, `source`, `finding`
(optional; any other column is ignored). Paths are relative to the CSV's folder (absolute paths
are kept). Images may be anything the one image reader takes (PNG, JPEG, DICOM, ...): a missing
or unreadable file is not an error here, it is refused when decoded and recorded with its reason
in `rejected_images`, and the run goes on. A CSV that cannot be a manifest (not found, empty, no
`path`/`label` column, rows without a path or label, one file given two labels) stops with a
message naming the problem and the lines.

Without a `patient_id` column every image counts as its own patient for the patient split, which
leaks if a patient has several images; the log says so.
"""
from __future__ import annotations

import csv
import logging
import re
from pathlib import Path

from benchmark.data.records import ImageRecord
from benchmark.errors import BenchmarkError

log = logging.getLogger(__name__)

REQUIRED = ("path", "label")
OPTIONAL = ("patient_id", "view", "sex", "age", "source", "finding")
SUFFIX = ".csv"
_SHOWN = 5  # problem lines named in an error


def is_manifest(name: str | Path) -> bool:
    """A --data value naming a CSV file is a manifest."""
    return str(name).lower().endswith(SUFFIX)


def dataset_key(path: str | Path) -> str:
    """The dataset's name in the DB (as `folder:<name>` for class folders)."""
    return "manifest:" + Path(path).stem


def _age(text: str) -> float | None:
    match = re.search(r"\d+(\.\d+)?", text or "")
    return float(match.group()) if match else None


def load_manifest(path: str | Path) -> list[ImageRecord]:
    """The manifest's rows as ImageRecords (paths resolved against the CSV's folder)."""
    path = Path(path)
    if not path.is_file():
        raise BenchmarkError(f"manifest {path} not found")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise BenchmarkError(f"manifest {path} is not a UTF-8 text CSV file") from None
    except csv.Error as exc:
        raise BenchmarkError(f"manifest {path} is not a valid CSV file: {exc}") from None
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise BenchmarkError(f"manifest {path} is empty: expected a header with columns "
                             f"{', '.join(REQUIRED)} (optional: {', '.join(OPTIONAL)}) and one row per image")
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise BenchmarkError(f"manifest {path} lacks the column(s) {', '.join(missing)}; its header is "
                             f"{', '.join(header) or '(empty)'}. Required: {', '.join(REQUIRED)}; optional: "
                             f"{', '.join(OPTIONAL)}")
    if len(rows) == 1:
        raise BenchmarkError(f"manifest {path} has a header but no rows")
    col = {name: header.index(name) for name in (*REQUIRED, *OPTIONAL) if name in header}
    base, source_default = path.resolve().parent, path.stem
    records: list[ImageRecord] = []
    problems: list[str] = []
    labels_of: dict[str, tuple[str, int]] = {}
    duplicates = 0
    for line, row in enumerate(rows[1:], start=2):
        def cell(name: str, row=row) -> str:
            i = col.get(name)
            return row[i].strip() if i is not None and i < len(row) else ""

        rel, label = cell("path"), cell("label")
        if not rel or not label:
            problems.append(f"line {line}: no {'path' if not rel else 'label'}")
            continue
        key = rel.replace("\\", "/")
        if key in labels_of:
            first_label, first_line = labels_of[key]
            if first_label != label:
                problems.append(f"line {line}: {rel} is labelled {label!r} here and {first_label!r} "
                                f"on line {first_line}")
            else:
                duplicates += 1
            continue
        labels_of[key] = (label, line)
        source = cell("source") or source_default
        patient = cell("patient_id")
        file = Path(rel) if Path(rel).is_absolute() else base / rel
        records.append(ImageRecord(
            path=str(file), key=key, label=label, source=source,
            patient_id=f"M-{source}-{patient}" if patient else f"M-{key}",
            view=cell("view"), sex=cell("sex"), age=_age(cell("age")), finding=cell("finding")))
    if problems:
        more = f" and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
        raise BenchmarkError(f"manifest {path}: {len(problems)} bad row(s): {'; '.join(problems[:_SHOWN])}{more}")
    if duplicates:
        log.warning("manifest %s: %d repeated rows (same path and label) read once", path, duplicates)
    if "patient_id" not in col:
        log.warning("manifest %s has no patient_id column: each image counts as its own patient in the patient "
                    "split, so images of one patient may land in both train and test", path)
    log.info("manifest %s: %d images", path, len(records))
    return records
