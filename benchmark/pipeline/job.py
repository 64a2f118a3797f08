"""One (model, dataset) job: a plain function from a JobSpec to a RunBundle.

No DB connection and no shared state inside, so the runner can run jobs in-process now and as
Ray tasks later; the store ingests each bundle in one transaction.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from benchmark import paths
from benchmark.audit.lung_masks import complete_masks, segmenter_row
from benchmark.audit.probes import fill_region
from benchmark.audit.source_probe import SourceSample
from benchmark.audit.tables import audit_tables
from benchmark.config import AuditConfig
from benchmark.data.datasets import Dataset, load_dataset
from benchmark.data.decode import DecodeCache
from benchmark.data.memo import DecodedMemo
from benchmark.models import create_model
from benchmark.pipeline.spec import JobSpec, resolve_input_size
from benchmark.store.writes import RunBundle
from benchmark.training.checkpoints import git_commit, save_checkpoint
from benchmark.training.device import resolve_device
from benchmark.training.fit import fit
from benchmark.training.scoring import score_images

log = logging.getLogger(__name__)


def load_job_dataset(spec: JobSpec, loaded: dict | None = None) -> Dataset:
    """The spec's dataset; with `loaded` (a dict the caller keeps), each distinct dataset of a
    grid is read once, not once per model (real sources walk their folders and manifests)."""
    d = spec.data
    key = (d.name, d.data_root, d.external_root, d.data_seed, d.max_per_class, d.n_phantom, d.cache_dir)
    if loaded is not None and key in loaded:
        return loaded[key]
    dataset = load_dataset(d.name, data_root=d.data_root, data_seed=d.data_seed, max_per_class=d.max_per_class,
                           n_phantom=d.n_phantom, cache_dir=d.cache_dir, external_root=d.external_root)
    if loaded is not None:
        loaded[key] = dataset
    return dataset


@dataclass
class JobImages:
    """A job's decoded images with labels, lung masks and split indices (lungs-only already applied)."""

    records: list
    images: np.ndarray          # N x S x S uint8
    labels: np.ndarray
    masks: np.ndarray
    has_mask: np.ndarray
    mask_sources: list[str]
    index: dict[str, np.ndarray]  # split -> positions
    rejected: list              # (record, reason)
    size: int
    readable: list              # every decoded record (the `images` table), lungs-only drops included

    def count(self, split: str) -> int:
        return int(len(self.index[split]))


def prepare_images(spec: JobSpec, dataset: Dataset, device: torch.device,
                   memo: DecodedMemo | None = None) -> JobImages:
    """Decode at the job's input size, load masks; for a lungs-only control, blank all but the lungs.
    With `memo` (a grid's), each (dataset, size) is read once for all the grid's models."""
    size = resolve_input_size(spec.model, spec.data.name, spec.data.image_size)
    cache = DecodeCache(spec.data.cache_dir)
    if memo is not None:
        entry = memo.load(cache, dataset.records, size, progress=spec.progress)
        decoded, masks, has_mask = entry.decoded, entry.masks, entry.has_mask
    else:
        decoded = cache.load(dataset.records, size, progress=spec.progress)
        masks, has_mask = cache.load_masks(decoded.records, size)
    records, images = decoded.records, decoded.images
    rejected = list(decoded.rejected)
    sources = [r.mask_source for r in records]
    if spec.data.lungs_only:  # masks are needed before training here, so complete them now
        masks, sources = complete_masks(images, masks, has_mask, sources,
                                        segmenter=spec.audit.segmenter, device=str(device))
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
    return JobImages(records, images, labels, masks, has_mask, sources, index, rejected, size, decoded.records)


def score_splits(model, data: JobImages, classes: list[str], spec: JobSpec, device: torch.device
                 ) -> tuple[list[dict], list[dict], np.ndarray]:
    """(metric rows of val and test, prediction rows of test, test probabilities)."""
    metric_rows, pred_rows, probs = [], [], None
    for split in ("val", "test"):
        idx = data.index[split]
        m_rows, p_rows, probs = score_images(
            model, data.images[idx], data.labels[idx], [data.records[i] for i in idx], classes, device,
            split=split, n_boot=spec.audit.n_boot, seed=spec.train.seed, progress=spec.progress,
            with_predictions=split == "test")
        metric_rows += m_rows
        pred_rows += p_rows
    return metric_rows, pred_rows, probs


def run_job(spec: JobSpec, dataset: Dataset | None = None, memo: DecodedMemo | None = None) -> RunBundle:
    """Train, score and audit one (model, dataset) pair; no DB I/O. `dataset` is the spec's, already
    loaded (a grid shares one); by default it is loaded here. `memo`: a grid's decoded images."""
    started = dt.datetime.now()
    device = resolve_device(spec.device)
    dataset = dataset if dataset is not None else load_job_dataset(spec)
    clock = time.perf_counter()
    data = prepare_images(spec, dataset, device, memo)
    seconds = {"decode": time.perf_counter() - clock}
    # only train and val go to the device; scoring and the audit batch the test images themselves
    tensors = {split: (torch.from_numpy(data.images[data.index[split]]).to(device),
                       torch.from_numpy(data.labels[data.index[split]]).to(device)) for split in ("train", "val")}
    log.info("%s on %s: %s images per split at %dpx on %s", spec.model, dataset.name,
             {s: data.count(s) for s in data.index}, data.size, device)

    torch.manual_seed(spec.train.seed)  # the initial weights too: a job gives the same run in any process
    model = create_model(spec.model, len(dataset.classes), pretrained=spec.train.pretrained,
                         weights_dir=Path(spec.train.weights_dir) if spec.train.weights_dir else None)
    result = fit(model, *tensors["train"], *tensors["val"], len(dataset.classes), spec.train, device,
                 desc=f"{spec.model}@{dataset.name}", progress=spec.progress)
    clock = time.perf_counter()
    metric_rows, pred_rows, test_probs = score_splits(model, data, dataset.classes, spec, device)
    seconds["eval"] = time.perf_counter() - clock

    headline = {m["metric"]: m["value"] for m in metric_rows if m["split"] == "test" and not m["class_name"]}
    commit = git_commit()
    stem = paths.checkpoints_dir(spec.checkpoint_dir) / dataset.name / spec.run_id
    ckpt = save_checkpoint(model, stem, {
        "architecture": spec.model, "classes": dataset.classes, "input_size": data.size,
        "normalization": model.normalization, "dataset": dataset.name, "pretrained": model.pretrained,
        "run_id": spec.run_id, "lungs_only": spec.data.lungs_only, "best_epoch": result.best_epoch,
        "metrics": {k: headline.get(k) for k in ("accuracy", "macro_auc", "macro_f1", "balanced_accuracy")},
        "git_commit": commit, "config": spec.identity(),
    })
    run = {
        "run_id": spec.run_id, "model": spec.model, "dataset": dataset.name, "pretrained": model.pretrained,
        "epochs": spec.train.epochs, "device": str(device), "status": "done", "started_at": started,
        "git_commit": commit,
        "config_json": json.dumps(spec.flat(), default=str), "seed": spec.train.seed,
        "image_size": data.size, "lungs_only": spec.data.lungs_only, "classes_json": json.dumps(dataset.classes),
        "checkpoint_path": str(ckpt), "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
        "train_seconds": result.seconds, "train_images_per_s": result.images_per_s,
        "n_train": data.count("train"), "n_val": data.count("val"), "n_test": data.count("test"),
    }
    tables = {"metrics": pd.DataFrame(metric_rows), "predictions": pd.DataFrame(pred_rows)}
    test = data.index["test"]
    tables.update(audit_tables(model, dataset.classes, [data.records[i] for i in test], data.images[test],
                               data.masks[test], data.has_mask[test], data.labels[test], test_probs, device,
                               audit_config(spec), split="test", seed=spec.train.seed,
                               cache_dir=spec.data.cache_dir, mask_sources=[data.mask_sources[i] for i in test],
                               timings=seconds,
                               source_train=source_sample(data, "train") if audit_config(spec).source_probe else None))
    run.update({f"{phase}_seconds": s for phase, s in seconds.items()}, finished_at=dt.datetime.now())
    return RunBundle(run=run, tables=tables, images=images_frame(data.readable),
                     rejected=rejected_frame(data.rejected, dataset.name),
                     segmenter=segmenter_row(spec.audit.segmenter) if _used_predicted_masks(tables) else None)


def source_sample(data: JobImages, split: str) -> SourceSample:
    """One split's images with their source databases, classes and patients (the source probe's input)."""
    idx = data.index[split]
    return SourceSample(data.images[idx], [data.records[i].source for i in idx], data.labels[idx],
                        [data.records[i].patient_id for i in idx])


def _used_predicted_masks(tables: dict[str, pd.DataFrame]) -> bool:
    cams, probes = tables.get("cams"), tables.get("probes")
    in_cams = cams is not None and not cams.empty and (cams.mask_source == "predicted").any()
    in_probes = probes is not None and not probes.empty and probes.detail.str.contains('"predicted"').any()
    return bool(in_cams or in_probes)


def audit_config(spec: JobSpec) -> AuditConfig:
    """The spec's audit; a lungs-only control has no lungs to remove, so no probes (nor source probes:
    the control answers where the model looks, the whole-image run answers whether the source shows)."""
    lungs_only = spec.data.lungs_only
    return dataclasses.replace(spec.audit, probes=spec.audit.probes and not lungs_only,
                               source_probe=spec.audit.source_probe and not lungs_only)


def images_frame(records) -> pd.DataFrame:
    cols = ["image_id", "dataset", "source", "path", "label", "patient_id", "split", "mask_path",
            "mask_source", "marker_mask_path", "view", "sex", "age", "finding", "source_split", "key"]
    return pd.DataFrame([r.as_row() for r in records], columns=None)[cols] if records else pd.DataFrame(columns=cols)


def rejected_frame(rejected, dataset: str) -> pd.DataFrame:
    return pd.DataFrame([{"path": r.path, "source": r.source, "reason": reason, "dataset": dataset}
                         for r, reason in rejected], columns=["path", "source", "reason", "dataset"])
