"""Registry of data sources: each turns a folder layout into ImageRecords with one vocabulary.

Layouts: the project's data pack (manifest.csv + images + masks, see ../shared/data/cxr), the
public originals as users download them (Kermany chest_xray/, the Cohen COVID-19 collection's
metadata.csv + images/, NIH ChestX-ray14's Data_Entry_2017*.csv + image folders), and any folder
of class subfolders. Labels are mapped to: normal, bacterial_pneumonia, viral_pneumonia,
pneumonia, covid, other. Adding a layout is one decorated function.
"""
from __future__ import annotations

import csv
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmark.data.dicomfiles import DICOM_SUFFIXES, is_dicom_file, patient_key
from benchmark.data.records import ImageRecord
from benchmark.errors import BenchmarkError, UnknownNameError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff"}
MASK_SOURCES = {"v7labs": "gt-v7", "lungVAE": "gt-lungvae", "lungvae": "gt-lungvae"}


@dataclass(frozen=True)
class SourceLayout:
    """One folder layout. `dirs`: where a named source of this layout may live under a data root
    (presets name sources: "kermany", "cohen", "nih"); empty for layouts that are not sources."""

    name: str
    detect: Callable[[Path], bool]
    load: Callable[[Path], list[ImageRecord]]
    description: str
    dirs: tuple[str, ...] = ()


#: Registered layouts, in detection order (the first whose `detect` accepts a folder reads it).
LAYOUTS: dict[str, SourceLayout] = {}


def register_layout(name: str, detect: Callable[[Path], bool], description: str, *, dirs: tuple[str, ...] = ()):
    """Adding a layout (and, with `dirs`, a named source) is this one decorator."""
    def deco(fn: Callable[[Path], list[ImageRecord]]):
        LAYOUTS[name] = SourceLayout(name, detect, fn, description, tuple(dirs))
        return fn
    return deco


def named_sources() -> dict[str, tuple[str, ...]]:
    """Source name -> folders under a data root where it may live."""
    return {name: lay.dirs for name, lay in LAYOUTS.items() if lay.dirs}


def _age(text: str) -> float | None:
    try:
        return float(re.sub(r"[^0-9.]", "", text)) if text and re.search(r"\d", text) else None
    except ValueError:
        return None


# --- the data pack ---------------------------------------------------------------------

@register_layout("pack", lambda p: (p / "manifest.csv").is_file(),
                 "project data pack: manifest.csv (image, mask, label, patient_id, ...) + images/ + masks/")
def load_pack(root: Path) -> list[ImageRecord]:
    records = []
    with open(root / "manifest.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            mask = row.get("mask") or ""
            records.append(ImageRecord(
                path=str(root / row["image"]), key=row["image"], label=row["label"],
                patient_id=row["patient_id"], source=row.get("source") or root.name,
                mask_path=str(root / mask) if mask else "",
                mask_source=_pack_mask_source(row, root.name) if mask else "",
                view=row.get("view", ""), sex=row.get("sex", ""), age=_age(row.get("age", "")),
                finding=row.get("finding", ""), source_split=row.get("split", ""),
            ))
    return records


def _pack_mask_source(row: dict, folder: str) -> str:
    """The mask's origin: the manifest's `mask_source` where it names one (cohen: v7labs, lungVAE),
    else the source's own ground truth (`gt-<source>`, e.g. gt-openist)."""
    named = row.get("mask_source") or ""
    if named:
        return MASK_SOURCES.get(named, f"gt-{named.lower()}")
    return f"gt-{row.get('source') or folder}"


# Sources that exist only in the pack layout (no upstream layout is read): the external-validation
# pack's (../shared/data/cxr-external), found under --external-root / $CXR_EXTERNAL by the presets
# whose `root = "external"`.
PACK_ONLY_SOURCES = {
    "hannover": "Hannover Medical School COVID-19 radiographs (pack layout)",
    "openist": "normal adult chest X-rays of a radiology teaching collection, with lung masks (pack layout)",
}
for _name, _description in PACK_ONLY_SOURCES.items():
    register_layout(_name, lambda p: False, _description, dirs=(_name,))(load_pack)


# --- Kermany: chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/*.jpeg ---------------------

def _kermany_root(p: Path) -> Path | None:
    for cand in (p, p / "chest_xray"):
        if any((cand / s / "NORMAL").is_dir() or (cand / s / "PNEUMONIA").is_dir()
               for s in ("train", "test", "val")):
            return cand
    return None


def kermany_patient(name: str) -> str:
    """Patient id from a Kermany file name: person12_bacteria_48 -> K-P-12, IM-0001-0001 -> K-N-0001."""
    if m := re.match(r"person(\d+)_", name):
        return f"K-P-{m.group(1)}"
    if m := re.match(r"NORMAL2-IM-(\d+)", name):
        return f"K-N2-{m.group(1)}"
    if m := re.match(r"IM-(\d+)", name):
        return f"K-N-{m.group(1)}"
    return f"K-{Path(name).stem}"


@register_layout("kermany", lambda p: _kermany_root(p) is not None,
                 "Kermany et al. 2018 download: chest_xray/{train,test,val}/{NORMAL,PNEUMONIA}/",
                 dirs=("kermany", "chest_xray", "chest-xray-pneumonia", "."))
def load_kermany(root: Path) -> list[ImageRecord]:
    base = _kermany_root(root)
    records = []
    for split in ("train", "val", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            folder = base / split / cls
            if not folder.is_dir():
                continue
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                low = f.name.lower()
                label = ("normal" if cls == "NORMAL" else "bacterial_pneumonia" if "bacteria" in low
                         else "viral_pneumonia" if "virus" in low else "pneumonia")
                records.append(ImageRecord(
                    path=str(f), key=str(f.relative_to(base)), label=label,
                    patient_id=kermany_patient(f.name), source="kermany",
                    finding=label.replace("_", " "), source_split=split))
    return records


# --- Cohen COVID-19 image data collection: metadata.csv + images/ ------------------------

COHEN_FRONTAL = {"PA", "AP", "AP Supine", "AP erect"}
_BACTERIAL = ("streptococcus", "klebsiella", "e.coli", "legionella", "mycoplasma", "bacterial",
              "staphylococcus", "chlamydophila", "nocardia")
_VIRAL = ("sars", "mers", "varicella", "influenza", "herpes", "viral")


def cohen_label(finding: str) -> str:
    """Map Cohen's finding text to the shared vocabulary (as the data pack does)."""
    low = finding.lower()
    if "covid" in low:
        return "covid"
    if low.strip() == "no finding":
        return "normal"
    if any(k in low for k in _BACTERIAL):
        return "bacterial_pneumonia"
    if any(k in low for k in _VIRAL):
        return "viral_pneumonia"
    return "other"


def _cohen_root(p: Path) -> Path | None:
    for cand in (p, p / "covid-chestxray-dataset"):
        meta = cand / "metadata.csv"
        if meta.is_file() and (cand / "images").is_dir():
            with open(meta, newline="") as fh:
                header = fh.readline()
            if "finding" in header and "filename" in header:
                return cand
    return None


@register_layout("cohen", lambda p: _cohen_root(p) is not None,
                 "Cohen et al. COVID-19 image data collection: metadata.csv + images/ (frontal X-rays kept)",
                 dirs=("cohen", "covid-chestxray-dataset", "."))
def load_cohen(root: Path) -> list[ImageRecord]:
    base = _cohen_root(root)
    records = []
    with open(base / "metadata.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("modality", "X-ray") != "X-ray" or row.get("view", "") not in COHEN_FRONTAL:
                continue
            folder = row.get("folder") or "images"
            f = base / folder / row["filename"]
            if not f.is_file():
                continue
            records.append(ImageRecord(
                path=str(f), key=f"{folder}/{row['filename']}", label=cohen_label(row.get("finding", "")),
                patient_id=f"C-{row.get('patientid', row['filename'])}", source="cohen",
                view=row.get("view", ""), sex=row.get("sex", ""), age=_age(row.get("age", "")),
                finding=row.get("finding", "")))
    return records


# --- NIH ChestX-ray14: Data_Entry_2017*.csv + images*/ -----------------------------------

def _nih_entry(p: Path) -> Path | None:
    found = sorted(p.glob("Data_Entry_2017*.csv"))
    return found[0] if found else None


@register_layout("nih", lambda p: _nih_entry(p) is not None,
                 "NIH ChestX-ray14: Data_Entry_2017*.csv + image folders (normal = No Finding, pneumonia)",
                 dirs=("nih", "ChestX-ray14", "chestxray14", "."))
def load_nih(root: Path) -> list[ImageRecord]:
    index = {f.name: f for f in root.rglob("*.png")} | {f.name: f for f in root.rglob("*.jpg")}
    records = []
    with open(_nih_entry(root), newline="") as fh:
        for row in csv.DictReader(fh):
            labels = row["Finding Labels"]
            label = "normal" if labels == "No Finding" else "pneumonia" if "Pneumonia" in labels.split("|") else ""
            f = index.get(row["Image Index"])
            if not label or f is None:
                continue
            records.append(ImageRecord(
                path=str(f), key=str(f.relative_to(root)), label=label,
                patient_id=f"N-{int(row['Patient ID'])}", source="nih",
                view=row.get("View Position", ""), sex=row.get("Patient Gender", ""),
                age=_age(row.get("Patient Age", "")), finding=labels))
    return records


# --- any folder of class subfolders ------------------------------------------------------

def _class_dirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")) if p.is_dir() else []


def _dicom(f: Path) -> bool:
    """A DICOM by its name, or a file without extension (as PACS exports write them) by its DICM marker."""
    return f.suffix.lower() in DICOM_SUFFIXES or (not f.suffix and is_dicom_file(f))


@register_layout("folder", lambda p: bool(_class_dirs(p)),
                 "any folder of class subfolders: ROOT/<class>/**/*.png|jpg|dcm, or DICOM files without "
                 "extension (each file its own patient, except DICOMs: grouped by their PatientID)")
def load_class_folders(root: Path) -> list[ImageRecord]:
    records = []
    for d in _class_dirs(root):
        for f in sorted(d.rglob("*")):
            if not f.is_file() or f.name.startswith("."):
                continue
            dicom = _dicom(f)
            if not dicom and f.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = str(f.relative_to(root))
            patient = patient_key(f, salt=root.name) if dicom else None
            records.append(ImageRecord(path=str(f), key=rel, label=d.name.lower(),
                                       patient_id=f"F-D-{patient}" if patient else f"F-{rel}", source=root.name))
    return records


# --- resolution --------------------------------------------------------------------------

def detect_layout(path: Path) -> str:
    for name in LAYOUTS:
        if LAYOUTS[name].detect(path):
            return name
    raise BenchmarkError(
        f"{path}: no known layout. Expected one of: "
        + "; ".join(f"{n}: {LAYOUTS[n].description}" for n in LAYOUTS))


def load_folder(path: str | Path, layout: str | None = None) -> list[ImageRecord]:
    """Records of the source at `path`, by the given layout or the first one detected."""
    path = Path(path)
    if not path.is_dir():
        raise BenchmarkError(f"{path} is not a folder")
    if layout is not None and layout not in LAYOUTS:
        raise UnknownNameError("source layout", layout, LAYOUTS)
    layout = layout or detect_layout(path)
    records = LAYOUTS[layout].load(path)
    log.info("%s: %d images (%s layout)", path, len(records), layout)
    return records


def find_source(data_root: str | Path, source: str) -> list[ImageRecord]:
    """Records of a named source under a data root, in pack or upstream layout."""
    dirs = named_sources()
    if source not in dirs:
        raise UnknownNameError("source", source, dirs)
    root = Path(data_root)
    tried = []
    for sub in dirs[source]:
        cand = (root / sub).resolve()
        tried.append(str(cand))
        if not cand.is_dir():
            continue
        if LAYOUTS["pack"].detect(cand) and sub != ".":
            return load_pack(cand)
        if LAYOUTS[source].detect(cand):
            return LAYOUTS[source].load(cand)
    raise BenchmarkError(
        f"source {source!r} not found under {root}; looked in: {', '.join(tried)}. "
        f"Point --data-root (or $CXR_DATA) at the folder holding it, e.g. ../shared/data/cxr")
