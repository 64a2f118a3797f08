"""Models trained elsewhere: their weights made a checkpoint of the tool's own, and scored as runs.

`import_model` (behind `cxr-audit import`) reads a state dict without unpickling it, fits it
strictly to a torchvision or timm architecture (models/imported.py), finds the CAM layer and
classifier (cams/netlayers.py) and writes safetensors + a sidecar with `origin: imported`.

An imported model has no train/val/test split of its own, so `evaluate_imported` (behind
`cxr-audit evaluate` for such a checkpoint) scores every image of a dataset whose class it
knows and stores them as the `test` split of a run of its own per (checkpoint, dataset): model
`<arch> (imported)`, dataset the one evaluated, `config_json` with `origin: imported`. The
leaderboard, the comparison pages and `cams` then read it like a trained run, probes included.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark import paths
from benchmark.audit.rescore import score_and_audit
from benchmark.cams.netlayers import find_net_layers
from benchmark.config import AuditConfig, DataConfig, TrainConfig
from benchmark.data.datasets import Dataset
from benchmark.data.decode import DecodeCache
from benchmark.errors import BenchmarkError
from benchmark.models.imported import (
    DEFAULT_INPUT_SIZE,
    IMPORTED_DIR,
    ORIGIN,
    fit_weights,
    imported_spec,
    normalization,
)
from benchmark.models.statedict import file_sha256, read_state_dict
from benchmark.models.zoo import XrayClassifier
from benchmark.pipeline.external import known_records
from benchmark.pipeline.job import images_frame, rejected_frame
from benchmark.pipeline.spec import JobSpec
from benchmark.store import queries, reader, replace_run_tables
from benchmark.store.schema import RUN_TABLES
from benchmark.training.checkpoints import git_commit, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

MIN_INPUT_SIZE = 16
_SPLIT_TABLES = ("metrics", "predictions", "cams", "cam_skips", "cam_class_maps", "cam_clusters",
                 "cam_cluster_members")  # per-run tables with a `split` column
_CHECKPOINT_SUFFIXES = (".safetensors", ".json")


def model_label(arch: str) -> str:
    """`runs.model` of an imported model: its architecture, marked so it is never taken for one trained here."""
    return f"{arch} ({ORIGIN})"


def is_imported(meta: dict) -> bool:
    return meta.get("origin") == ORIGIN


def import_model(arch: str, weights: str | Path, classes: list[str], *, library: str = "auto",
                 input_size: int = DEFAULT_INPUT_SIZE, norm: str | None = None, mean: list[float] | None = None,
                 std: list[float] | None = None, out: str | Path | None = None,
                 checkpoint_dir: str | Path | None = None) -> tuple[Path, dict]:
    """Write the checkpoint of `weights` as `arch` for `classes`; (its .safetensors path, its sidecar)."""
    if input_size < MIN_INPUT_SIZE:
        raise BenchmarkError(f"--input-size must be at least {MIN_INPUT_SIZE} px, got {input_size}")
    fitted = fit_weights(arch, read_state_dict(weights), classes, library)
    norm_meta = normalization(fitted.in_chans, norm, mean, std)
    try:
        layers = find_net_layers(fitted.net, fitted.in_chans, input_size)
    except RuntimeError as exc:  # e.g. an input too small for the net's pooling
        raise BenchmarkError(f"{arch} does not run at --input-size {input_size}: {str(exc).splitlines()[0]}") from None
    source_sha = file_sha256(weights)
    meta = {
        "architecture": arch, "origin": ORIGIN, "library": fitted.library, "classes": list(classes),
        "input_size": input_size, "normalization": norm_meta, "in_chans": fitted.in_chans,
        "cam_target_layer": layers.cam_layer, "classifier": layers.classifier, "gap_head": layers.gap_head,
        "pretrained": False, "dataset": "", "metrics": {},
        "source_file": str(Path(weights).resolve()), "source_sha256": source_sha,
        "prefix_removed": fitted.prefix, "aux_keys_dropped": fitted.dropped,
        "imported_at": dt.datetime.now().isoformat(timespec="seconds"), "git_commit": git_commit(),
    }
    model = XrayClassifier(imported_spec(meta), fitted.net, len(classes), pretrained=False)
    path = save_checkpoint(model, _stem(out, checkpoint_dir, arch, meta), meta)
    log.info("imported %s %s (%d input channel(s), CAM layer %s, classifier %s, GAP head %s) -> %s",
             fitted.library, arch, fitted.in_chans, layers.cam_layer, layers.classifier, layers.gap_head, path)
    return path, meta


def _stem(out, checkpoint_dir, arch: str, meta: dict) -> Path:
    if out is not None:
        out = Path(out)
        return out.with_suffix("") if out.suffix.lower() in _CHECKPOINT_SUFFIXES else out
    # the same weights imported with other classes, size or normalisation get another file
    ident = json.dumps({k: meta[k] for k in ("source_sha256", "classes", "input_size", "normalization", "library")},
                       sort_keys=True)
    digest = hashlib.sha1(ident.encode()).hexdigest()[:10]
    return paths.checkpoints_dir(checkpoint_dir) / IMPORTED_DIR / f"{arch}-{digest}"


@dataclass
class ImportedResult:
    model: str
    run_id: str
    dataset: str
    n_images: int
    n_rejected: int
    accuracy: float
    ci_low: float
    ci_high: float

    def line(self) -> str:
        refused = f"; {self.n_rejected} unreadable images recorded in rejected_images" if self.n_rejected else ""
        return (f"{self.model} on {self.dataset}: accuracy {self.accuracy:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"on {self.n_images} images (run {self.run_id}, split test){refused}")


def imported_run_id(meta: dict, data: DataConfig, dataset: Dataset, seed: int) -> str:
    ident = json.dumps({"weights": meta.get("source_sha256", ""), "classes": meta["classes"],
                        "input_size": meta["input_size"], "normalization": meta["normalization"],
                        "dataset": dataset.name, "seed": seed}, sort_keys=True, default=str)
    return f"{Path(data.name).name}-{meta['architecture']}-{ORIGIN}-{hashlib.sha1(ident.encode()).hexdigest()[:10]}"


def evaluate_imported(checkpoint: str | Path, dataset: Dataset, db: str | Path, *, data: DataConfig, device,
                      audit: AuditConfig, seed: int, progress: bool = False) -> ImportedResult:
    """Score an imported checkpoint on every image of `dataset` it has a class for, audit it (CAMs,
    lung focus, probes) and store it as one run, split `test`, in one transaction."""
    started = dt.datetime.now()
    model, meta = load_checkpoint(checkpoint, device=device)
    classes = meta["classes"]
    known = known_records(dataset, classes)
    if not known:
        raise BenchmarkError(f"{dataset.name}: no image has a class the model knows ({', '.join(classes)})")
    decoded, metric_rows, pred_rows, tables = score_and_audit(
        model, meta, known, DecodeCache(data.cache_dir), device, audit, split="test", seed=seed,
        n_boot=audit.n_boot, progress=progress)
    if not decoded.records:
        raise BenchmarkError(f"{dataset.name}: none of the {len(known)} images could be read; first refusal: "
                             f"{decoded.rejected[0][0].path}: {decoded.rejected[0][1]}")
    acc = next(m for m in metric_rows if m["metric"] == "accuracy" and not m["class_name"])
    size, arch = int(meta["input_size"]), meta["architecture"]
    run_id = imported_run_id(meta, data, dataset, seed)
    spec = JobSpec(model=arch, data=dataclasses.replace(data, image_size=size),
                   train=TrainConfig(seed=seed, epochs=0), audit=audit, device=str(device))
    config = {**spec.flat(), "origin": ORIGIN, "library": meta.get("library"), "architecture": arch,
              "checkpoint": str(checkpoint), "source_file": meta.get("source_file"),
              "source_sha256": meta.get("source_sha256")}
    run_row = {"run_id": run_id, "model": model_label(arch), "dataset": dataset.name, "pretrained": False,
               "epochs": None, "device": str(device), "status": "done", "started_at": started,
               "finished_at": dt.datetime.now(), "git_commit": git_commit(),
               "config_json": json.dumps(config, default=str), "seed": seed, "image_size": size,
               "lungs_only": False, "classes_json": json.dumps(classes), "checkpoint_path": str(checkpoint),
               "n_test": len(decoded.records)}
    stored = {"metrics": (pd.DataFrame(metric_rows), {"split": "test"}),
              "predictions": (pd.DataFrame(pred_rows), {"split": "test"})}
    for name in RUN_TABLES:  # the audit's tables; the run holds one dataset, so all its rows are replaced
        if name not in stored:
            stored[name] = (tables.get(name, pd.DataFrame()), {"split": "test"} if name in _SPLIT_TABLES else {})
    replace_run_tables(db, run_id, stored, images=images_frame(decoded.records),
                       rejected=rejected_frame(decoded.rejected, dataset.name), run_row=run_row)
    return ImportedResult(model_label(arch), run_id, dataset.name, len(decoded.records), len(decoded.rejected),
                          acc["value"], acc["ci_low"], acc["ci_high"])


def imported_test_records(db: str | Path, run_id: str, dataset: Dataset) -> list:
    """The records an imported run was scored on (its `test` predictions), for `cams` to explain again."""
    with reader(db) as con:
        preds = queries.predictions(con, run_id)
    scored = set(preds.loc[preds.split == "test", "image_id"]) if not preds.empty else set()
    return [r for r in dataset.records if r.image_id in scored]
