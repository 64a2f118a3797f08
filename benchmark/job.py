"""One (model, dataset) job: a plain function from a JobSpec to a RunBundle.

No DB connection and no shared state inside, so the runner can run jobs in-process now and as
Ray tasks later; the store ingests each bundle in one transaction.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .checkpoints import git_commit, save_checkpoint
from .data.datasets import Dataset, load_dataset, preset_input_size
from .data.decode import DecodeCache
from .device import resolve_device
from .audit import AuditOptions, audit_tables
from .cams import DEFAULT_CAM_METHODS
from .evaluate import score_images
from .lungmasks import complete_masks, segmenter_row
from .models import create_model, get_spec
from .probes import fill_region
from .store.writes import RunBundle
from .train import TrainConfig, fit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobSpec:
    model: str
    data: str = "phantom"
    epochs: int = 8
    seed: int = 0
    device: str = "auto"
    pretrained: bool = False
    weights_dir: str | None = None
    image_size: int | None = None          # None: the architecture's own input size
    batch_size: int = 32
    lr: float = 1e-3
    patience: int = 3
    lungs_only: bool = False
    data_root: str | None = None
    data_seed: int = 0
    max_per_class: int | None = None
    n_phantom: int | None = None
    n_boot: int = 1000
    cam_methods: tuple[str, ...] = DEFAULT_CAM_METHODS
    faithfulness_sample: int = 8
    segmenter: str | None = None           # lung segmenter stem; None: checkpoints/lungseg/lung_unet
    checkpoint_dir: str = "checkpoints"
    cache_dir: str | None = None
    progress: bool = True

    def identity(self) -> dict:
        """The fields that make a run a different run (what rerun-skipping compares)."""
        keep = ("model", "data", "epochs", "seed", "pretrained", "image_size", "batch_size", "lr",
                "patience", "lungs_only", "data_seed", "max_per_class", "n_phantom")
        return {k: getattr(self, k) for k in keep}

    @property
    def run_id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, default=str).encode()
        name = f"{Path(self.data).name}-{self.model}" + ("-lungsonly" if self.lungs_only else "")
        return f"{name}-{hashlib.sha1(blob).hexdigest()[:10]}"


def resolve_input_size(model: str, data: str, image_size: int | None) -> int:
    """--image-size, else the dataset preset's default (phantom: 128), else the architecture's own.
    The CLI resolves it before building a JobSpec, so that it is part of the run's identity."""
    return image_size or preset_input_size(data) or get_spec(model).input_size


def load_job_dataset(spec: JobSpec, loaded: dict | None = None) -> Dataset:
    """The spec's dataset; with `loaded` (a dict the caller keeps), each distinct dataset of a
    grid is read once, not once per model (real sources walk their folders and manifests)."""
    key = (spec.data, spec.data_root, spec.data_seed, spec.max_per_class, spec.n_phantom, spec.cache_dir)
    if loaded is not None and key in loaded:
        return loaded[key]
    dataset = load_dataset(spec.data, data_root=spec.data_root, data_seed=spec.data_seed,
                           max_per_class=spec.max_per_class, n_phantom=spec.n_phantom,
                           cache_dir=Path(spec.cache_dir) if spec.cache_dir else None)
    if loaded is not None:
        loaded[key] = dataset
    return dataset


def run_job(spec: JobSpec, dataset: Dataset | None = None) -> RunBundle:
    """Train, score and audit one (model, dataset) pair; no DB I/O. `dataset` is the spec's, already
    loaded (a grid shares one); by default it is loaded here."""
    started = dt.datetime.now()
    device = resolve_device(spec.device)
    dataset = dataset if dataset is not None else load_job_dataset(spec)
    size = resolve_input_size(spec.model, spec.data, spec.image_size)
    cache = DecodeCache(Path(spec.cache_dir) if spec.cache_dir else None)
    decoded = cache.load(dataset.records, size, progress=spec.progress)
    records, images = decoded.records, decoded.images
    rejected = [(r, reason) for r, reason in decoded.rejected]
    masks, has_mask = cache.load_masks(records, size)
    sources = [r.mask_source for r in records]
    if spec.lungs_only:  # masks are needed before training here, so complete them now
        masks, sources = complete_masks(images, masks, has_mask, sources,
                                        segmenter=spec.segmenter, device=str(device))
        has_mask = np.array([bool(s) for s in sources], dtype=bool)
        keep = np.flatnonzero(has_mask)
        rejected += [(records[i], "lungs-only run: no lung mask") for i in np.flatnonzero(~has_mask)]
        records, sources = [records[i] for i in keep], [sources[i] for i in keep]
        images = fill_region(images[keep], ~masks[keep])
        masks, has_mask = masks[keep], has_mask[keep]
    class_index = {c: i for i, c in enumerate(dataset.classes)}
    labels = np.array([class_index[r.label] for r in records], dtype=np.int64)
    splits = np.array([r.split for r in records])
    index = {split: np.flatnonzero(splits == split) for split in ("train", "val", "test")}
    # only train and val go to the device; scoring and the audit batch the test images themselves
    tensors = {split: (torch.from_numpy(images[index[split]]).to(device),
                       torch.from_numpy(labels[index[split]]).to(device)) for split in ("train", "val")}
    counts = {s: int(len(i)) for s, i in index.items()}
    log.info("%s on %s: %s images per split at %dpx on %s", spec.model, dataset.name, counts, size, device)

    model = create_model(spec.model, len(dataset.classes), pretrained=spec.pretrained,
                         weights_dir=Path(spec.weights_dir) if spec.weights_dir else None)
    cfg = TrainConfig(epochs=spec.epochs, batch_size=spec.batch_size, lr=spec.lr, patience=spec.patience,
                      seed=spec.seed, progress=spec.progress)
    result = fit(model, *tensors["train"], *tensors["val"], len(dataset.classes), cfg, device,
                 desc=f"{spec.model}@{dataset.name}")

    metric_rows, pred_rows, probs_by_split = [], [], {}
    for split in ("val", "test"):
        idx = index[split]
        m_rows, p_rows, probs_by_split[split] = score_images(
            model, images[idx], labels[idx], [records[i] for i in idx], dataset.classes, device, split=split,
            n_boot=spec.n_boot, seed=spec.seed, progress=spec.progress, with_predictions=split == "test")
        metric_rows += m_rows
        pred_rows += p_rows

    headline = {m["metric"]: m["value"] for m in metric_rows if m["split"] == "test" and not m["class_name"]}
    commit = git_commit()
    stem = Path(spec.checkpoint_dir) / dataset.name / spec.run_id
    ckpt = save_checkpoint(model, stem, {
        "architecture": spec.model, "classes": dataset.classes, "input_size": size,
        "normalization": model.normalization, "dataset": dataset.name, "pretrained": model.pretrained,
        "run_id": spec.run_id, "lungs_only": spec.lungs_only, "best_epoch": result.best_epoch,
        "metrics": {k: headline.get(k) for k in ("accuracy", "macro_auc", "macro_f1", "balanced_accuracy")},
        "git_commit": commit, "config": spec.identity(),
    })
    run = {
        "run_id": spec.run_id, "model": spec.model, "dataset": dataset.name, "pretrained": model.pretrained,
        "epochs": spec.epochs, "device": str(device), "status": "done", "started_at": started,
        "finished_at": dt.datetime.now(), "git_commit": commit,
        "config_json": json.dumps(dataclasses.asdict(spec), default=str), "seed": spec.seed,
        "image_size": size, "lungs_only": spec.lungs_only, "classes_json": json.dumps(dataset.classes),
        "checkpoint_path": str(ckpt), "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "train_seconds": result.seconds, "train_images_per_s": result.images_per_s,
        "n_train": counts["train"], "n_val": counts["val"], "n_test": counts["test"],
    }
    tables = {"metrics": pd.DataFrame(metric_rows), "predictions": pd.DataFrame(pred_rows)}
    test = index["test"]
    tables.update(audit_tables(model, dataset.classes, [records[i] for i in test], images[test], masks[test],
                               has_mask[test], labels[test], probs_by_split["test"], device, audit_options(spec),
                               split="test", mask_sources=[sources[i] for i in test]))
    return RunBundle(run=run, tables=tables, images=images_frame(decoded.records),
                     rejected=rejected_frame(rejected, dataset.name),
                     segmenter=segmenter_row(spec.segmenter) if _used_predicted_masks(tables) else None)


def _used_predicted_masks(tables: dict[str, pd.DataFrame]) -> bool:
    cams, probes = tables.get("cams"), tables.get("probes")
    in_cams = cams is not None and not cams.empty and (cams.mask_source == "predicted").any()
    in_probes = probes is not None and not probes.empty and probes.detail.str.contains('"predicted"').any()
    return bool(in_cams or in_probes)


def audit_options(spec: JobSpec) -> AuditOptions:
    return AuditOptions(cam_methods=spec.cam_methods, faithfulness_sample=spec.faithfulness_sample,
                        probes=not spec.lungs_only, segmenter=spec.segmenter, cache_dir=spec.cache_dir,
                        seed=spec.seed, n_boot=spec.n_boot)


def images_frame(records) -> pd.DataFrame:
    cols = ["image_id", "dataset", "source", "path", "label", "patient_id", "split", "mask_path",
            "mask_source", "marker_mask_path", "view", "sex", "age", "finding", "source_split", "key"]
    return pd.DataFrame([r.as_row() for r in records], columns=None)[cols] if records else pd.DataFrame(columns=cols)


def rejected_frame(rejected, dataset: str) -> pd.DataFrame:
    return pd.DataFrame([{"path": r.path, "source": r.source, "reason": reason, "dataset": dataset}
                         for r, reason in rejected], columns=["path", "source", "reason", "dataset"])
