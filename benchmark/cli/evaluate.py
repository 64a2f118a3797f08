"""`evaluate`: external validation of a checkpoint on another dataset or a folder of class subfolders."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from benchmark import paths
from benchmark.audit.rescore import score_and_audit
from benchmark.cli.options import config_from_args
from benchmark.config import AuditConfig
from benchmark.data.datasets import load_dataset
from benchmark.data.decode import DecodeCache
from benchmark.errors import BenchmarkError
from benchmark.pipeline.job import images_frame, rejected_frame
from benchmark.store import replace_run_tables
from benchmark.training.checkpoints import load_checkpoint
from benchmark.training.device import resolve_device

log = logging.getLogger(__name__)


def cmd_evaluate(args) -> int:
    """External validation of a checkpoint on another dataset or a folder of class subfolders."""
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device=device)
    classes = meta["classes"]
    dataset = load_dataset(args.name, data_root=args.data_root, max_per_class=args.max_per_class)
    known = [r for r in dataset.records if r.label in classes]
    unknown = sorted({r.label for r in dataset.records} - set(classes))
    if unknown:
        log.info("left out %d images of classes the model does not know: %s",
                 len(dataset.records) - len(known), ", ".join(unknown))
    if not known:
        raise BenchmarkError(f"{args.name}: no image has a class the model knows ({', '.join(classes)})")
    audit = config_from_args(AuditConfig, args, faithfulness_sample=0, probes=False)
    split = f"external:{dataset.name}"
    cache = DecodeCache(args.cache_dir)
    decoded, metric_rows, pred_rows, tables = score_and_audit(model, meta, known, cache, device, audit, split=split,
                                                              seed=args.seed, n_boot=args.n_boot, progress=args.progress)
    size = int(meta["input_size"])
    run_id = meta.get("run_id") or Path(args.checkpoint).stem
    acc = next(m for m in metric_rows if m["metric"] == "accuracy" and not m["class_name"])
    test_acc = (meta.get("metrics") or {}).get("accuracy")
    probe = pd.DataFrame([{"probe": split, "metric": "accuracy", "value": acc["value"], "ci_low": acc["ci_low"],
                           "ci_high": acc["ci_high"], "detail": json.dumps({"n_images": len(decoded.records),
                                                                             "internal_test_accuracy": test_acc})}])
    run_row = {"run_id": run_id, "model": meta["architecture"], "dataset": meta.get("dataset", ""),
               "pretrained": bool(meta.get("pretrained")), "status": "done", "checkpoint_path": str(args.checkpoint),
               "classes_json": json.dumps(classes), "image_size": size,
               "config_json": json.dumps(meta.get("config", {}))}
    for r in decoded.records:
        r.split = "external"
    replace_run_tables(paths.results_db(args.db), run_id, {
        "metrics": (pd.DataFrame(metric_rows), {"split": split}),
        "predictions": (pd.DataFrame(pred_rows), {"split": split}),
        "cams": (tables.get("cams", pd.DataFrame()), {"split": split}),
        "probes": (probe, {"probe": split}),
    }, images=images_frame(decoded.records), rejected=rejected_frame(decoded.rejected, dataset.name), run_row=run_row)
    drop = f" ({acc['value'] - test_acc:+.3f} against its internal test accuracy {test_acc:.3f})" if test_acc else ""
    print(f"{meta['architecture']} on {dataset.name}: accuracy {acc['value']:.3f} "
          f"[{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] on {len(decoded.records)} images{drop}")
    return 0
