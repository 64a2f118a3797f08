"""Every data source: the real pack, upstream-layout fixtures built here, class folders, presets."""
from __future__ import annotations

import csv
from collections import Counter

import pytest

from benchmark.data import sources
from benchmark.data.datasets import load_dataset, presets
from benchmark.data.splits import patient_split, split_counts
from benchmark.errors import BenchmarkError, UnknownNameError
from tests.conftest import write_png


def test_pack_sources_match_manifests(cxr_root):
    expected = {"kermany": 5840, "cohen": 527, "nih": 1000}
    for name, n in expected.items():
        recs = sources.find_source(cxr_root, name)
        assert len(recs) == n
        assert all(r.source == name for r in recs)
        assert all(r.patient_id for r in recs)
    cohen = sources.find_source(cxr_root, "cohen")
    kinds = Counter(r.mask_source for r in cohen)
    assert kinds["gt-v7"] == 427 and kinds["gt-lungvae"] == 41 and kinds[""] == 59
    assert all((r.mask_path != "") == (r.mask_source != "") for r in cohen)
    assert Counter(r.label for r in cohen)["covid"] == 427


def _kermany_fixture(root):
    files = {"train/NORMAL/IM-0001-0001.jpeg": 0, "train/NORMAL/NORMAL2-IM-0007-0001.jpeg": 1,
             "train/PNEUMONIA/person3_bacteria_10.jpeg": 2, "train/PNEUMONIA/person3_bacteria_11.jpeg": 3,
             "test/PNEUMONIA/person9_virus_20.jpeg": 4, "val/NORMAL/IM-0001-0002.jpeg": 5}
    for rel, seed in files.items():
        write_png(root / "chest_xray" / rel, seed)
    return files


def test_kermany_upstream_layout(tmp_path):
    _kermany_fixture(tmp_path)
    recs = sources.load_folder(tmp_path)
    by_key = {r.key: r for r in recs}
    assert len(recs) == 6
    assert by_key["train/PNEUMONIA/person3_bacteria_10.jpeg"].label == "bacterial_pneumonia"
    assert by_key["test/PNEUMONIA/person9_virus_20.jpeg"].label == "viral_pneumonia"
    assert by_key["train/NORMAL/IM-0001-0001.jpeg"].label == "normal"
    # same patient across files and across the upstream train/val split
    assert by_key["train/NORMAL/IM-0001-0001.jpeg"].patient_id == by_key["val/NORMAL/IM-0001-0002.jpeg"].patient_id
    assert by_key["train/PNEUMONIA/person3_bacteria_10.jpeg"].patient_id == "K-P-3"
    assert by_key["train/NORMAL/NORMAL2-IM-0007-0001.jpeg"].patient_id == "K-N2-0007"


def test_cohen_upstream_layout(tmp_path):
    rows = [("1", "COVID-19", "PA", "X-ray", "a.png"), ("1", "COVID-19", "AP Supine", "X-ray", "b.png"),
            ("2", "No Finding", "PA", "X-ray", "c.png"), ("3", "Streptococcus", "AP", "X-ray", "d.png"),
            ("4", "COVID-19", "L", "X-ray", "e.png"), ("5", "COVID-19", "Axial", "CT", "f.png"),
            ("6", "SARS", "PA", "X-ray", "missing.png")]
    with open(tmp_path / "metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patientid", "offset", "sex", "age", "finding", "view", "modality", "folder", "filename"])
        for pid, finding, view, mod, fn in rows:
            w.writerow([pid, "", "M", "65", finding, view, mod, "images", fn])
    for i, fn in enumerate("abcdef"):
        write_png(tmp_path / "images" / f"{fn}.png", i)
    recs = sources.load_folder(tmp_path)
    assert sources.detect_layout(tmp_path) == "cohen"
    # lateral view, CT and a missing file are left out
    assert [r.key for r in recs] == ["images/a.png", "images/b.png", "images/c.png", "images/d.png"]
    assert [r.label for r in recs] == ["covid", "covid", "normal", "bacterial_pneumonia"]
    assert recs[0].patient_id == recs[1].patient_id == "C-1"
    assert recs[0].age == 65.0


def test_nih_upstream_layout(tmp_path):
    entries = [("00000001_000.png", "No Finding", "1"), ("00000001_001.png", "Pneumonia|Effusion", "1"),
               ("00000002_000.png", "Cardiomegaly", "2"), ("00000003_000.png", "Pneumonia", "3")]
    with open(tmp_path / "Data_Entry_2017_v2020.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age",
                    "Patient Gender", "View Position"])
        for fn, labels, pid in entries:
            w.writerow([fn, labels, "0", pid, "58", "F", "PA"])
    for i, (fn, _, _) in enumerate(entries):
        write_png(tmp_path / "images_001" / "images" / fn, i)
    recs = sources.load_folder(tmp_path)
    assert [r.label for r in recs] == ["normal", "pneumonia", "pneumonia"]  # cardiomegaly left out
    assert recs[0].patient_id == recs[1].patient_id == "N-1"
    assert recs[0].view == "PA" and recs[0].sex == "F"


def test_class_folders_layout(tmp_path):
    for cls in ("covid", "normal"):
        for i in range(3):
            write_png(tmp_path / cls / f"{i}.png", i)
    (tmp_path / "normal" / "notes.txt").write_text("not an image")
    recs = sources.load_folder(tmp_path)
    assert sources.detect_layout(tmp_path) == "folder"
    assert Counter(r.label for r in recs) == {"covid": 3, "normal": 3}
    assert len({r.patient_id for r in recs}) == 6


def test_unknown_layout_and_source_errors(tmp_path):
    with pytest.raises(BenchmarkError, match="no known layout"):
        sources.load_folder(tmp_path)
    with pytest.raises(UnknownNameError, match="kermany"):
        sources.find_source(tmp_path, "chexpert")
    with pytest.raises(BenchmarkError, match="not found under"):
        sources.find_source(tmp_path, "nih")


def test_upstream_layouts_serve_presets(tmp_path, cache_env):
    """A data root of upstream downloads (not the pack) feeds the study presets."""
    _kermany_fixture(tmp_path)
    with open(tmp_path / "metadata.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patientid", "finding", "view", "modality", "folder", "filename"])
        for i in range(4):
            w.writerow([str(i), "COVID-19", "PA", "X-ray", "images", f"c{i}.png"])
            write_png(tmp_path / "images" / f"c{i}.png", 10 + i)
    ds = load_dataset("cohen-kermany", data_root=tmp_path)
    assert Counter(r.label for r in ds.records) == {"covid": 4, "normal": 3, "bacterial_pneumonia": 2,
                                                    "viral_pneumonia": 1}
    assert ds.classes == presets()["cohen-kermany"]["classes"]


@pytest.mark.parametrize("preset,classes", [("cohen-kermany", 4), ("cohen-nih", 3), ("covid-normal", 2)])
def test_study_presets_on_pack(cxr_root, preset, classes):
    ds = load_dataset(preset, data_root=cxr_root)
    labels = Counter(r.label for r in ds.records)
    assert set(labels) == set(ds.classes) and len(ds.classes) == classes
    assert labels["covid"] == 427
    _assert_patient_disjoint(ds.records)
    counts = split_counts(ds.records)
    assert set(counts) == {"train", "val", "test"}
    assert all(counts[s].get(c, 0) > 0 for s in counts for c in ds.classes)


def test_max_per_class_keeps_whole_patients(cxr_root):
    ds = load_dataset("cohen-kermany", data_root=cxr_root, max_per_class=40)
    labels = Counter(r.label for r in ds.records)
    assert all(35 <= n <= 70 for n in labels.values()), labels
    assert ds.name == "cohen-kermany~max40"
    full = {}
    for r in load_dataset("cohen-kermany", data_root=cxr_root).records:
        full.setdefault(r.patient_id, set()).add(r.key)
    kept = {}
    for r in ds.records:
        kept.setdefault(r.patient_id, set()).add(r.key)
    assert all(kept[p] == full[p] for p in kept)


def _assert_patient_disjoint(records):
    split_of = {}
    for r in records:
        assert split_of.setdefault(r.patient_id, r.split) == r.split, f"patient {r.patient_id} in two splits"


def test_patient_split_disjoint_stratified_seeded(cxr_root):
    recs = sources.find_source(cxr_root, "kermany")
    a = [r.split for r in patient_split(recs, seed=3)]
    _assert_patient_disjoint(recs)
    fractions = Counter(a)
    assert 0.6 < fractions["train"] / len(a) < 0.8
    for label in ("normal", "bacterial_pneumonia", "viral_pneumonia"):
        n = [r for r in recs if r.label == label]
        assert 0.08 < sum(r.split == "test" for r in n) / len(n) < 0.25
    b = [r.split for r in patient_split(sources.find_source(cxr_root, "kermany"), seed=3)]
    c = [r.split for r in patient_split(sources.find_source(cxr_root, "kermany"), seed=4)]
    assert a == b and a != c


def test_image_ids_are_machine_independent(cxr_root, tmp_path):
    recs = sources.find_source(cxr_root, "cohen")
    assert len({r.image_id for r in recs}) == len(recs)
    assert all(not r.key.startswith("/") for r in recs)
