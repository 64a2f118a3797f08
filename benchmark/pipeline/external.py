"""External validation: a saved checkpoint scored (and its CAMs measured) on other datasets.

Used by `cxr-audit evaluate` for one checkpoint and by experiments for their external matrix.
Rows go under the checkpoint's run id with split `external:<dataset>`; the probe row of the same
name carries the accuracy beside the run's internal test accuracy. Images the model trained or
validated on (the same file of the same source, as when two presets share the Cohen images) are
left out, and how many were is recorded.

A model is scored on a set whose classes are some of its own by one rule (training/metrics.py
`set_metric_values`): accuracy and balanced accuracy from the argmax over all of the model's
classes, `set_auc` (a 2-class set: AUC of p(its last class)), and `off_set_share`, the images sent
to classes the set does not have. The same rule on the run's own test images of the set's classes
gives `internal_*` rows in the same split, so the drop compares like with like. External images
get what test images get: lung masks, CAMs with lung measures, and the lungs-removed and
lungs-only probes (probes `intact@external:<dataset>`, `lungs_removed@...`, `lungs_only@...`),
and class-mean maps and clusters of their CAMs.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmark.audit.cam_patterns import PATTERN_TABLES
from benchmark.audit.rescore import score_and_audit
from benchmark.config import AuditConfig
from benchmark.data.datasets import Dataset
from benchmark.data.decode import DecodeCache
from benchmark.errors import BenchmarkError
from benchmark.pipeline.experiment import Experiment, external_spec
from benchmark.pipeline.job import images_frame, load_job_dataset, rejected_frame
from benchmark.pipeline.spec import JobSpec
from benchmark.store import queries, reader, replace_run_tables
from benchmark.training.checkpoints import load_checkpoint
from benchmark.training.device import resolve_device
from benchmark.training.metrics import set_metrics_with_ci

log = logging.getLogger(__name__)

EXTERNAL_PROBES = ("intact", "lungs_removed", "lungs_only")  # stored as '<probe>@external:<dataset>'


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
    set_auc: float | None = None
    internal_set_auc: float | None = None
    off_set_share: float | None = None

    def line(self) -> str:
        drop = (f" ({self.accuracy - self.internal_accuracy:+.3f} against its internal test accuracy "
                f"{self.internal_accuracy:.3f})") if self.internal_accuracy is not None else ""
        auc = ""
        if self.set_auc is not None and not np.isnan(self.set_auc):
            auc = f"; AUC {self.set_auc:.3f}" + (f" (internal {self.internal_set_auc:.3f})"
                                                 if self.internal_set_auc is not None else "")
        off = f"; {self.off_set_share:.0%} sent to classes the set lacks" if self.off_set_share else ""
        seen = f"; {self.n_left_out} images it trained on left out" if self.n_left_out else ""
        return (f"{self.model} on {self.dataset}: accuracy {self.accuracy:.3f} [{self.ci_low:.3f}, {self.ci_high:.3f}] "
                f"on {self.n_images} images{drop}{auc}{off}{seen}")


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


def _metric_rows(rows, split: str, prefix: str = "") -> list[dict]:
    return [{"split": split, "metric": prefix + m.metric, "class_name": "", "value": m.value, "ci_low": m.ci_low,
             "ci_high": m.ci_high} for m in rows]


def stored_test_predictions(db: str | Path, run_id: str) -> pd.DataFrame:
    """The run's own test predictions with their patients, read once for all of its sets."""
    with reader(db) as con:
        test = queries.performance_predictions(con, [run_id])
    return test[test.split == "test"]


def internal_set_rows(test: pd.DataFrame, classes: list[str], set_classes: list[str], split: str, *,
                      seed: int, n_boot: int) -> list[dict]:
    """The set rule on the run's stored test predictions (`stored_test_predictions`) of the set's
    classes (`internal_*` rows in `split`); none when the run stored no such predictions."""
    test = test[test.label.isin(set_classes)]
    if test.empty:
        return []
    probs = np.stack([np.asarray(p, dtype=np.float64) for p in test.probs])
    labels = np.array([classes.index(c) for c in test.label])
    patients = test.patient_id.fillna(test.image_id).tolist()
    rows = set_metrics_with_ci(labels, probs, classes, set_classes, patients, n_boot=n_boot, seed=seed)
    return _metric_rows(rows, split, prefix="internal_")


def _score_set(model, meta: dict, checkpoint: str | Path, dataset: Dataset, db: str | Path, *, device,
               audit: AuditConfig, seed: int, cache_dir: str | None, progress: bool,
               seen: set[tuple[str, str]] | None, test: pd.DataFrame) -> ExternalResult:
    """Score one loaded model on one dataset and store its rows in one transaction."""
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
    set_classes = [c for c in classes if c in {r.label for r in decoded.records}]
    if pred_rows:
        labels = np.array([classes.index(p["label"]) for p in pred_rows])
        probs = np.array([p["probs"] for p in pred_rows], dtype=np.float64)
        patients = [r.patient_id for r in decoded.records]
        ext = set_metrics_with_ci(labels, probs, classes, set_classes, patients, n_boot=audit.n_boot, seed=seed)
        metric_rows = metric_rows + _metric_rows([m for m in ext if m.metric in ("set_auc", "off_set_share")], split)
    metric_rows += internal_set_rows(test, classes, set_classes, split, seed=seed, n_boot=audit.n_boot)
    by_name = {m["metric"]: m for m in metric_rows if not m["class_name"]}
    acc = by_name["accuracy"]
    internal = (meta.get("metrics") or {}).get("accuracy")
    result = ExternalResult(meta["architecture"], run_id, dataset.name, len(decoded.records), len(known) - len(fresh),
                            acc["value"], acc["ci_low"], acc["ci_high"], internal,
                            set_auc=by_name.get("set_auc", {}).get("value"),
                            internal_set_auc=by_name.get("internal_set_auc", {}).get("value"),
                            off_set_share=by_name.get("off_set_share", {}).get("value"))
    probe = pd.DataFrame([{"probe": split, "metric": "accuracy", "value": acc["value"], "ci_low": acc["ci_low"],
                           "ci_high": acc["ci_high"],
                           "detail": json.dumps({"n_images": result.n_images, "n_left_out_seen": result.n_left_out,
                                                 "internal_test_accuracy": internal})}])
    probes = tables.get("probes", pd.DataFrame())
    if not probes.empty:
        probes = probes.assign(probe=probes.probe + "@" + split)
    run_row = {"run_id": run_id, "model": meta["architecture"], "dataset": meta.get("dataset", ""),
               "pretrained": bool(meta.get("pretrained")), "status": "done", "checkpoint_path": str(checkpoint),
               "classes_json": json.dumps(classes), "image_size": int(meta["input_size"]),
               "config_json": json.dumps(meta.get("config", {}))}
    shown = [dataclasses.replace(r, split="external") for r in decoded.records]  # the dataset's own stay as they are
    replace_run_tables(db, run_id, {
        "metrics": (pd.DataFrame(metric_rows), {"split": split}),
        "predictions": (pd.DataFrame(pred_rows), {"split": split}),
        "cams": (tables.get("cams", pd.DataFrame()), {"split": split}),
        "probes": (pd.concat([probe, probes], ignore_index=True),
                   {"probe": (split, *(f"{p}@{split}" for p in EXTERNAL_PROBES))}),
        "cam_skips": (tables.get("cam_skips", pd.DataFrame()), {"split": split}),
        **{name: (tables.get(name, pd.DataFrame()), {"split": split}) for name in PATTERN_TABLES},
    }, images=images_frame(shown), rejected=rejected_frame(decoded.rejected, dataset.name), run_row=run_row)
    return result


def evaluate_external_sets(checkpoint: str | Path, datasets: list[Dataset], db: str | Path, *, device,
                           audit: AuditConfig, seed: int, cache_dir: str | None = None, progress: bool = False,
                           seen: set[tuple[str, str]] | None = None) -> list[ExternalResult | Exception]:
    """Score `checkpoint` on each dataset, loading the model once; each set is stored in its own
    transaction, and a set that fails gives its exception in its place while the rest go on."""
    model, meta = load_checkpoint(checkpoint, device=device)
    test = stored_test_predictions(db, meta.get("run_id") or Path(checkpoint).stem)
    out: list[ExternalResult | Exception] = []
    for dataset in datasets:
        try:
            out.append(_score_set(model, meta, checkpoint, dataset, db, device=device, audit=audit, seed=seed,
                                  cache_dir=cache_dir, progress=progress, seen=seen, test=test))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            out.append(exc)
    return out


def evaluate_external(checkpoint: str | Path, dataset: Dataset, db: str | Path, *, device, audit: AuditConfig,
                      seed: int, cache_dir: str | None = None, progress: bool = False,
                      seen: set[tuple[str, str]] | None = None) -> ExternalResult:
    """Score `checkpoint` on `dataset` (classes it does not know and images in `seen` left out) and
    store the rows in one transaction."""
    (result,) = evaluate_external_sets(checkpoint, [dataset], db, device=device, audit=audit, seed=seed,
                                       cache_dir=cache_dir, progress=progress, seen=seen)
    if isinstance(result, Exception):
        raise result
    return result


def matrix_audit(audit: AuditConfig) -> AuditConfig:
    """What the external matrix measures on each set: CAMs with lung measures and the lung probes;
    no faithfulness and no sanity check (properties of the model, measured on its test split)."""
    return dataclasses.replace(audit, faithfulness_sample=0, probes=True, sanity_sample=0)


def experiment_pairs(experiment: Experiment, specs: list[JobSpec], loaded: dict) -> list[tuple[str, str]]:
    """The experiment's (train dataset, external set) pairs, its datasets' and named sets' classes
    read through `loaded` (each dataset once per grid)."""
    if not experiment.external or not specs:
        return []
    classes = {s.data.name: load_job_dataset(s, loaded).classes for s in specs}
    for name in experiment.external_sets():
        classes[name] = load_job_dataset(external_spec(specs[0], name), loaded).classes
    return experiment.external_pairs(classes)


def run_external_matrix(pairs: list[tuple[str, str]], specs: list[JobSpec], db: str | Path, *,
                        loaded: dict | None = None, force: bool = False) -> list[dict]:
    """Score every done run of `specs` trained on a pair's first dataset on its second one.

    Each run's model is loaded once for all of its sets. Lungs-only controls are left out (their
    inputs are not whole images). Pairs already stored are skipped unless `force`; a failing
    evaluation is logged and reported, and the rest go on.
    """
    loaded = {} if loaded is None else loaded
    with reader(db) as con:
        done, stored = queries.done_run_ids(con), queries.external_done(con)
        checkpoints = dict(con.execute("SELECT run_id, checkpoint_path FROM runs WHERE status = 'done'").fetchall())
    statuses, own = [], {s.data.name: s.data for s in specs}
    for spec in specs:
        if spec.run_id not in done or spec.data.lungs_only:
            continue
        targets, status_of = [], {}
        for train_name, test_name in pairs:
            if train_name != spec.data.name:
                continue
            target = load_job_dataset(external_spec(spec, test_name, own.get(test_name)), loaded)
            status = {"run_id": spec.run_id, "model": spec.model, "data": spec.data.name, "external": target.name}
            if (spec.run_id, f"external:{target.name}") in stored and not force:
                statuses.append({**status, "status": "skipped"})
                continue
            targets.append(target)
            status_of[target.name] = status
        if not targets:
            continue
        source = load_job_dataset(spec, loaded)
        seen = {image_identity(r) for r in source.records if r.split in ("train", "val")}
        try:
            results = evaluate_external_sets(
                checkpoints[spec.run_id], targets, db, device=resolve_device(spec.device),
                audit=matrix_audit(spec.audit), seed=spec.train.seed, cache_dir=spec.data.cache_dir,
                progress=spec.progress, seen=seen)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # the checkpoint itself could not be loaded
            results = [exc] * len(targets)
        for target, result in zip(targets, results):
            status = status_of[target.name]
            if isinstance(result, Exception):
                log.error("external %s on %s failed: %s", spec.run_id, target.name, result)
                statuses.append({**status, "status": "failed", "error": f"{type(result).__name__}: {result}"})
                continue
            log.info("%s", result.line())
            statuses.append({**status, "status": "done", "accuracy": result.accuracy})
    return statuses
