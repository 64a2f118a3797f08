"""External validation: a saved checkpoint scored (and its CAMs measured) on another dataset.

Used by `cxr-audit evaluate` for one checkpoint and by experiments for their external matrix.
Rows go under the checkpoint's run id with split `external:<dataset>`; the probe row of the same
name carries the accuracy beside the run's internal test accuracy. Images the model trained or
validated on (the same file of the same source, as when two presets share the Cohen images) are
left out, and how many were is recorded.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from benchmark.audit.rescore import score_and_audit
from benchmark.config import AuditConfig
from benchmark.data.datasets import Dataset
from benchmark.data.decode import DecodeCache
from benchmark.errors import BenchmarkError
from benchmark.pipeline.job import images_frame, load_job_dataset, rejected_frame
from benchmark.pipeline.spec import JobSpec
from benchmark.store import queries, reader, replace_run_tables
from benchmark.training.checkpoints import load_checkpoint
from benchmark.training.device import resolve_device

log = logging.getLogger(__name__)


@dataclass
class ExternalResult:
    model: str
    run_id: str
    dataset: str
    n_images: int
    n_left_out: int          # images the model trained or validated on
    accuracy: float
    ci_low: float
    ci_high: float
    internal_accuracy: float | None

    def line(self) -> str:
        drop = (f" ({self.accuracy - self.internal_accuracy:+.3f} against its internal test accuracy "
                f"{self.internal_accuracy:.3f})") if self.internal_accuracy is not None else ""
        seen = f"; {self.n_left_out} images it trained on left out" if self.n_left_out else ""
        return (f"{self.model} on {self.dataset}: accuracy {self.accuracy:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"on {self.n_images} images{drop}{seen}")


def image_identity(record) -> tuple[str, str]:
    """The same file, whichever preset it came through (presets of one data root share paths)."""
    return record.source or "", record.path


def known_records(dataset: Dataset, classes: list[str]) -> list:
    """The dataset's records of classes the model knows; logs what is left out."""
    known = [r for r in dataset.records if r.label in classes]
    unknown = sorted({r.label for r in dataset.records} - set(classes))
    if unknown:
        log.info("left out %d images of classes the model does not know: %s",
                 len(dataset.records) - len(known), ", ".join(unknown))
    return known


def evaluate_external(checkpoint: str | Path, dataset: Dataset, db: str | Path, *, device, audit: AuditConfig,
                      seed: int, cache_dir: str | None = None, progress: bool = False,
                      seen: set[tuple[str, str]] | None = None) -> ExternalResult:
    """Score `checkpoint` on `dataset` (classes it does not know and images in `seen` left out) and
    store the rows in one transaction."""
    model, meta = load_checkpoint(checkpoint, device=device)
    classes = meta["classes"]
    known = known_records(dataset, classes)
    fresh = [r for r in known if seen is None or image_identity(r) not in seen]
    if not fresh:
        raise BenchmarkError(f"{dataset.name}: no image has a class the model knows ({', '.join(classes)})"
                             + (" that it did not train on" if known else ""))
    split = f"external:{dataset.name}"
    decoded, metric_rows, pred_rows, tables = score_and_audit(
        model, meta, fresh, DecodeCache(cache_dir), device, audit, split=split, seed=seed, n_boot=audit.n_boot,
        progress=progress)
    run_id = meta.get("run_id") or Path(checkpoint).stem
    acc = next(m for m in metric_rows if m["metric"] == "accuracy" and not m["class_name"])
    internal = (meta.get("metrics") or {}).get("accuracy")
    result = ExternalResult(meta["architecture"], run_id, dataset.name, len(decoded.records), len(known) - len(fresh),
                            acc["value"], acc["ci_low"], acc["ci_high"], internal)
    probe = pd.DataFrame([{"probe": split, "metric": "accuracy", "value": acc["value"], "ci_low": acc["ci_low"],
                           "ci_high": acc["ci_high"],
                           "detail": json.dumps({"n_images": result.n_images, "n_left_out_seen": result.n_left_out,
                                                 "internal_test_accuracy": internal})}])
    run_row = {"run_id": run_id, "model": meta["architecture"], "dataset": meta.get("dataset", ""),
               "pretrained": bool(meta.get("pretrained")), "status": "done", "checkpoint_path": str(checkpoint),
               "classes_json": json.dumps(classes), "image_size": int(meta["input_size"]),
               "config_json": json.dumps(meta.get("config", {}))}
    shown = [dataclasses.replace(r, split="external") for r in decoded.records]  # the dataset's own stay as they are
    replace_run_tables(db, run_id, {
        "metrics": (pd.DataFrame(metric_rows), {"split": split}),
        "predictions": (pd.DataFrame(pred_rows), {"split": split}),
        "cams": (tables.get("cams", pd.DataFrame()), {"split": split}),
        "probes": (probe, {"probe": split}),
        "cam_skips": (tables.get("cam_skips", pd.DataFrame()), {"split": split}),
    }, images=images_frame(shown), rejected=rejected_frame(decoded.rejected, dataset.name), run_row=run_row)
    return result


def run_external_matrix(pairs: list[tuple[str, str]], specs: list[JobSpec], db: str | Path, *,
                        loaded: dict | None = None, force: bool = False) -> list[dict]:
    """Score every done run of `specs` trained on a pair's first dataset on its second one.

    Lungs-only controls are left out (their inputs are not whole images). Pairs already stored
    are skipped unless `force`; a failing evaluation is logged and reported, and the rest go on.
    """
    loaded = {} if loaded is None else loaded
    with reader(db) as con:
        done, stored = queries.done_run_ids(con), queries.external_done(con)
        checkpoints = dict(con.execute("SELECT run_id, checkpoint_path FROM runs WHERE status = 'done'").fetchall())
    statuses = []
    for spec in specs:
        if spec.run_id not in done or spec.data.lungs_only:
            continue
        source = load_job_dataset(spec, loaded)
        seen = {image_identity(r) for r in source.records if r.split in ("train", "val")}
        for train_name, test_name in pairs:
            if train_name != spec.data.name:
                continue
            target = load_job_dataset(dataclasses.replace(spec, data=dataclasses.replace(spec.data, name=test_name)),
                                      loaded)
            status = {"run_id": spec.run_id, "model": spec.model, "data": spec.data.name, "external": target.name}
            if (spec.run_id, f"external:{target.name}") in stored and not force:
                statuses.append({**status, "status": "skipped"})
                continue
            try:
                result = evaluate_external(
                    checkpoints[spec.run_id], target, db, device=resolve_device(spec.device),
                    audit=dataclasses.replace(spec.audit, faithfulness_sample=0, probes=False,
                                              sanity_sample=0),
                    seed=spec.train.seed, cache_dir=spec.data.cache_dir, progress=spec.progress, seen=seen)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as exc:
                log.error("external %s on %s failed: %s", spec.run_id, target.name, exc)
                statuses.append({**status, "status": "failed", "error": f"{type(exc).__name__}: {exc}"})
                continue
            log.info("%s", result.line())
            statuses.append({**status, "status": "done", "accuracy": result.accuracy})
    return statuses
