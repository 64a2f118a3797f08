"""Data as users keep it: a CSV manifest (`--data images.csv`) and folders of DICOM files."""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmark.cli import main
from benchmark.data.datasets import load_dataset
from benchmark.data.decode import DecodeCache
from benchmark.data.imageio import read_image
from benchmark.data.manifest import load_manifest
from benchmark.errors import BenchmarkError
from benchmark.store import queries, reader

RUN = ["--models", "shallow", "--epochs", "1", "--image-size", "64", "--device", "cpu", "--no-progress",
       "--n-boot", "20", "--cam-methods", "gradcam", "--faithfulness-sample", "0"]


def _pack_rows(cxr_root: Path, source: str, per_label: int) -> list[dict]:
    """The first `per_label` rows of each label of a pack source, as in its manifest."""
    with open(cxr_root / source / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    out, seen = [], {}
    for row in rows:
        if seen.get(row["label"], 0) < per_label:
            seen[row["label"]] = seen.get(row["label"], 0) + 1
            out.append(row)
    return out


def _write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def nih_manifest(tmp_path, cxr_root, bad_inputs) -> tuple[Path, list[dict]]:
    """A manifest in its own folder: 8 NIH images per label with their real metadata, paths relative
    to the CSV, plus a missing file and a truncated JPEG from the hostile files."""
    folder = tmp_path / "my data"
    folder.mkdir()
    rows = _pack_rows(cxr_root, "nih", 8)
    for r in rows:
        r["file"] = cxr_root / "nih" / r["image"]
        r["written"] = Path(os.path.relpath(r["file"], folder)).as_posix()
    body = [[r["written"], r["label"], r["patient_id"], r["view"], r["sex"], r["age"], "extra column ignored"]
            for r in rows]
    body += [["images/missing.jpg", "normal", "P-missing", "PA", "M", "50", ""],
             [os.path.relpath(bad_inputs / "truncated.jpg", folder), "pneumonia", "P-bad", "AP", "F", "61 years", ""]]
    csv_path = _write_csv(folder / "hospital_a.csv", ["path", "label", "patient_id", "view", "sex", "age", "note"],
                          body)
    return csv_path, rows


@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_manifest_run_end_to_end_records_rejections(nih_manifest, tmp_path, cache_env):
    csv_path, rows = nih_manifest
    db = tmp_path / "r.duckdb"
    rc = main(["run", "--data", str(csv_path), "--db", str(db), "--checkpoint-dir", str(tmp_path / "ckpt"), *RUN])
    assert rc == 0
    with reader(db) as con:
        run = queries.runs(con).iloc[0]
        assert run.status == "done" and run.dataset == "manifest:hospital_a" and run.model == "shallow"
        rejected = queries.rejected(con)
        reasons = dict(zip(rejected.path.map(lambda p: Path(p).name), rejected.reason))
        assert reasons == {"missing.jpg": "file not found", "truncated.jpg": "truncated or corrupt image"}
        assert set(rejected.dataset) == {"manifest:hospital_a"}
        images = queries.images(con)
        assert len(images) == len(rows) == 16
        by_key = images.set_index("key")
        for r in rows:  # the pack's own metadata, through the manifest's optional columns
            stored = by_key.loc[r["written"]]
            assert stored.label == r["label"] and stored.view == r["view"] and stored.sex == r["sex"]
            assert stored.age == float(r["age"]) and stored.patient_id == f"M-hospital_a-{r['patient_id']}"
            assert Path(stored.path).resolve() == r["file"].resolve()
        assert len(queries.predictions(con, run.run_id)) == run.n_test > 0


def test_manifest_fields_and_relative_paths(nih_manifest):
    csv_path, rows = nih_manifest
    records = load_manifest(csv_path)
    assert len(records) == 18
    assert all(Path(r.path).is_absolute() for r in records)
    assert records[0].source == "hospital_a" and records[-1].age == 61.0 and records[-1].view == "AP"
    dataset = load_dataset(str(csv_path), max_per_class=4)
    assert dataset.name == "manifest:hospital_a~max4" and dataset.classes == ["normal", "pneumonia"]


@pytest.mark.parametrize("content,message", [
    ("", "is empty"),
    ("\n\n", "is empty"),
    ("path,label\n", "header but no rows"),
    ("file,diagnosis\na.png,normal\n", "lacks the column(s) path, label; its header is file, diagnosis"),
    ("path,patient_id\na.png,1\n", "lacks the column(s) label"),
    ("path,label\na.png,normal\n,covid\nb.png,\n", "2 bad row(s): line 3: no path; line 4: no label"),
    ("path,label\na.png,normal\na.png,covid\n", "line 3: a.png is labelled 'covid' here and 'normal' on line 2"),
])
def test_bad_manifests_get_clear_errors(tmp_path, content, message):
    path = tmp_path / "m.csv"
    path.write_text(content)
    with pytest.raises(BenchmarkError) as err:
        load_dataset(str(path))
    assert message in str(err.value)


def test_manifest_errors_reach_the_cli_without_a_traceback(tmp_path, capsys):
    binary = tmp_path / "photo.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    assert main(["data", "check", str(binary)]) == 2
    assert "not a UTF-8 text CSV" in capsys.readouterr().err
    assert main(["run", "--data", str(tmp_path / "absent.csv"), *RUN, "--db", str(tmp_path / "r.duckdb")]) == 2
    err = capsys.readouterr().err
    assert "absent.csv not found" in err and "Traceback" not in err


def test_repeated_rows_are_read_once(tmp_path, cxr_root):
    image = sorted((cxr_root / "kermany" / "images").glob("*.jpg"))[0]
    path = _write_csv(tmp_path / "m.csv", ["Path", "Label"], [[str(image), "normal"], [str(image), "normal"]])
    records = load_manifest(path)
    assert len(records) == 1 and records[0].path == str(image)  # absolute paths kept; header case ignored


# ----------------------------------------------------------------------------- DICOM folders

def _write_dicom(path: Path, pixels: np.ndarray, patient: str, *, suffix: bool = True) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", patient, "DX"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def dicom_folder(tmp_path, cxr_root, bad_inputs) -> Path:
    """Class folders of DICOMs made from pack X-rays (MONOCHROME2), one without an extension as PACS
    exports write them, two files of one patient, plus the hostile DICOMs."""
    root = tmp_path / "pacs_export"
    xrays = sorted((cxr_root / "kermany" / "images").glob("*.jpg"))[:6]
    for i, xray in enumerate(xrays):
        label = "normal" if i < 3 else "pneumonia"
        name = f"IM{i:04d}" if i == 5 else f"IM{i:04d}.dcm"
        patient = "PAT-SAME" if i in (0, 1) else f"PAT-{i}"
        _write_dicom(root / label / "study1" / name, read_image(xray), patient)
    for name in ("random-bytes.dcm", "truncated.dcm", "dx-monochrome1-12bit.dcm"):
        shutil.copy(bad_inputs / name, root / "pneumonia" / name)
    (root / "normal" / ".DS_Store").write_bytes(b"\0" * 300)
    (root / "normal" / "README").write_text("export notes\n")  # no extension, not DICOM: skipped
    return root


def test_dicom_class_folders_load_and_hostile_files_are_refused(dicom_folder, tmp_path, cxr_root):
    dataset = load_dataset(str(dicom_folder))
    names = sorted(Path(r.path).name for r in dataset.records)
    assert names == ["IM0000.dcm", "IM0001.dcm", "IM0002.dcm", "IM0003.dcm", "IM0004.dcm", "IM0005",
                     "dx-monochrome1-12bit.dcm", "random-bytes.dcm", "truncated.dcm"]
    by_name = {Path(r.path).name: r for r in dataset.records}
    assert by_name["IM0000.dcm"].patient_id == by_name["IM0001.dcm"].patient_id  # one patient, one split
    assert by_name["IM0000.dcm"].split == by_name["IM0001.dcm"].split
    assert by_name["IM0002.dcm"].patient_id != by_name["IM0000.dcm"].patient_id
    assert by_name["random-bytes.dcm"].patient_id == "F-pneumonia/random-bytes.dcm"  # no header: its own patient
    assert by_name["dx-monochrome1-12bit.dcm"].patient_id.startswith("F-D-")
    for r in dataset.records:  # the identifiers stay in the files
        assert "PAT-" not in repr(r) and "Doe" not in repr(r) and "TEST-0001" not in repr(r)
    decoded = DecodeCache(tmp_path / "cache").load(dataset.records, 64)
    refused = {Path(r.path).name: reason for r, reason in decoded.rejected}
    assert set(refused) == {"random-bytes.dcm", "truncated.dcm"}
    assert refused["random-bytes.dcm"].startswith("not DICOM")
    assert refused["truncated.dcm"].startswith("truncated DICOM")
    assert len(decoded.records) == 7 and decoded.images.shape == (7, 64, 64)
    assert decoded.images.std(axis=(1, 2)).min() > 5  # real pixels, not blanks
    xray = sorted((cxr_root / "kermany" / "images").glob("*.jpg"))[0]
    ours = read_image(dicom_folder / "normal" / "study1" / "IM0000.dcm").astype(float)
    assert np.corrcoef(ours.ravel(), read_image(xray).astype(float).ravel())[0, 1] > 0.99  # MONOCHROME2, upright


def test_a_manifest_of_dicom_files_and_data_check(dicom_folder, tmp_path, capsys):
    files = sorted(p for p in dicom_folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.name != "README")
    rows = [[str(p.relative_to(dicom_folder)), p.parent.parent.name if p.parent.name == "study1" else p.parent.name]
            for p in files]
    path = _write_csv(dicom_folder / "index.csv", ["path", "label"], rows)
    assert main(["data", "check", str(path), "--size", "64", "--cache-dir", str(tmp_path / "cache")]) == 1
    out = capsys.readouterr().out
    assert "CSV manifest, 9 images" in out and "readable: 7, rejected: 2" in out
    assert main(["data", "check", str(dicom_folder), "--size", "64", "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "folder layout, 9 images" in capsys.readouterr().out
