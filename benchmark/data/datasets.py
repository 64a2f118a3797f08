"""Dataset presets (data/presets.py) and folders turned into labelled, patient-split records."""
from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmark import paths
from benchmark.data import manifest, phantom, sources
from benchmark.data.presets import presets
from benchmark.data.records import ImageRecord
from benchmark.data.splits import patient_split
from benchmark.errors import BenchmarkError, UnknownNameError
from benchmark.paths import require_data_root, require_external_root

log = logging.getLogger(__name__)

@dataclass
class Dataset:
    """A named, labelled, patient-split set of images. `name` is the key used in the DB."""

    name: str
    classes: list[str]
    records: list[ImageRecord]
    description: str = ""

    def split(self, split: str) -> list[ImageRecord]:
        return [r for r in self.records if r.split == split]


def _cap_per_class(records: list[ImageRecord], cap: int, seed: int) -> list[ImageRecord]:
    """Keep whole patients, seeded, until each class has about `cap` images (small CPU runs).

    A patient counts for its majority label (a few Kermany patients have both bacterial and
    viral images), so no patient is ever cut in two.
    """
    by_patient: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_patient[r.patient_id].append(r)
    by_class: dict[str, list[str]] = defaultdict(list)
    for pid, recs in sorted(by_patient.items()):
        by_class[Counter(r.label for r in recs).most_common(1)[0][0]].append(pid)
    rng = np.random.default_rng(seed)
    kept = []
    for label in sorted(by_class):
        pids, n = by_class[label], 0
        for i in rng.permutation(len(pids)):
            if n >= cap:
                break
            kept += by_patient[pids[i]]
            n += len(by_patient[pids[i]])
    return kept


def dataset_key(name: str, *, max_per_class: int | None, data_seed: int, n_phantom: int | None) -> str:
    """DB name of a dataset: the preset plus any option that changes which images it holds."""
    parts = [name]
    if max_per_class:
        parts.append(f"max{max_per_class}")
    if n_phantom:
        parts.append(f"n{n_phantom}")
    if data_seed:
        parts.append(f"seed{data_seed}")
    return "~".join(parts)


def preset_root(spec: dict, data_root: str | Path | None, external_root: str | Path | None) -> Path:
    """Where a real preset's sources live: the data root, or the external root for `root = "external"`."""
    if spec.get("root", "data") == "external":
        return require_external_root(external_root)
    return require_data_root(data_root)


def load_dataset(name: str, *, data_root: str | Path | None = None, data_seed: int = 0,
                 max_per_class: int | None = None, n_phantom: int | None = None,
                 cache_dir: Path | None = None, phantom_size: int | None = None,
                 external_root: str | Path | None = None) -> Dataset:
    """Records of a preset name or a folder path, labelled in the preset's classes and split by patient."""
    table = presets()
    is_phantom = name in table and table[name]["kind"] == "phantom"
    key = dataset_key(name, max_per_class=max_per_class, data_seed=data_seed,
                      n_phantom=n_phantom if is_phantom else None)
    if is_phantom:
        overrides = {"seed": data_seed}
        if n_phantom:
            overrides["n_images"] = n_phantom
        if phantom_size:
            overrides["size"] = phantom_size
        cfg = phantom.phantom_config(name, **overrides)
        root = paths.cache_dir(cache_dir) / "phantom"
        records = phantom.materialize(cfg, root, key)
        classes = list(cfg.classes)
        desc = table[name]["description"]
    elif name in table:
        spec = table[name]
        root = preset_root(spec, data_root, external_root)
        records = []
        for part in spec["parts"]:
            for r in sources.find_source(root, part["source"]):
                if r.label in part["labels"]:
                    r.label = part["labels"][r.label]
                    records.append(r)
        classes = list(spec["classes"])
        desc = spec["description"]
    elif manifest.is_manifest(name):
        records = manifest.load_manifest(name)
        classes = sorted({r.label for r in records})
        key = dataset_key(manifest.dataset_key(name), max_per_class=max_per_class, data_seed=data_seed, n_phantom=None)
        desc = f"CSV manifest {name}"
    elif Path(name).is_dir():
        records = sources.load_folder(name)
        classes = sorted({r.label for r in records})
        key = "folder:" + Path(name).resolve().name
        desc = f"class folders at {name}"
    else:
        raise UnknownNameError("dataset (preset, existing folder or CSV manifest)", name, table)
    if not records:
        raise BenchmarkError(f"dataset {name}: no images found")
    if max_per_class:
        records = _cap_per_class(records, max_per_class, data_seed)
    for r in records:
        r.dataset = key
    patient_split(records, seed=data_seed)
    log.info("dataset %s: %d images, classes %s", key, len(records), classes)
    return Dataset(name=key, classes=classes, records=records, description=desc)
