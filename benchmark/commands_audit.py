"""CLI commands that work on trained models: cams (existing runs), evaluate (external data), lungs."""
from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .audit import AuditOptions, audit_tables
from .checkpoints import load_checkpoint
from .data.datasets import load_dataset
from .data.decode import DecodeCache
from .device import resolve_device
from .errors import BenchmarkError
from .evaluate import score_images
from .train import predict_probs
from .job import JobSpec, images_frame, load_job_dataset, rejected_frame
from .store import queries, reader, replace_run_tables, write_segmenter

log = logging.getLogger(__name__)


def spec_from_run(run: dict) -> JobSpec:
    cfg = json.loads(run["config_json"])
    fields = {f.name for f in dataclasses.fields(JobSpec)}
    cfg = {k: (tuple(v) if isinstance(v, list) else v) for k, v in cfg.items() if k in fields}
    return JobSpec(**cfg)


def _score_and_audit(model, meta: dict, records: list, cache: DecodeCache, device, opts: AuditOptions, *,
                     split: str, n_boot: int = 0, progress: bool = False):
    """Decode `records` at the checkpoint's input size, predict, and audit them.

    Returns (decoded set, metric rows, prediction rows, audit tables); metrics and predictions
    only when `n_boot` > 0 (recomputing CAMs needs the predicted classes, not the metrics).
    """
    size, classes = int(meta["input_size"]), meta["classes"]
    decoded = cache.load(records, size, progress=progress)
    masks, has_mask = cache.load_masks(decoded.records, size)
    labels = np.array([classes.index(r.label) for r in decoded.records], dtype=np.int64)
    metric_rows, pred_rows = [], []
    if n_boot:
        metric_rows, pred_rows, probs = score_images(model, decoded.images, labels, decoded.records, classes,
                                                     device, split=split, n_boot=n_boot, seed=opts.seed)
    else:
        probs = predict_probs(model, torch.from_numpy(decoded.images), device)
    tables = audit_tables(model, classes, decoded.records, decoded.images, masks, has_mask, labels, probs,
                          device, opts, split=split)
    return decoded, metric_rows, pred_rows, tables


def cmd_cams(args) -> int:
    """Compute (or recompute) CAMs for the test images of runs already in the DB."""
    from .commands import parse_cam_methods

    methods = parse_cam_methods(args.cam_methods)
    if not methods:
        raise BenchmarkError("--cam-methods names no method")
    with reader(args.db) as con:
        runs = queries.runs(con, status="done")
    if args.run_id:
        runs = runs[runs.run_id.isin(args.run_id)]
    if runs.empty:
        raise BenchmarkError(f"no finished runs to compute CAMs for in {args.db}")
    device = resolve_device(args.device)
    for run in runs.to_dict("records"):
        spec = spec_from_run(run)
        model, meta = load_checkpoint(run["checkpoint_path"], device=device)
        test = load_job_dataset(spec).split("test")
        opts = AuditOptions(cam_methods=methods, faithfulness_sample=args.faithfulness_sample, probes=False,
                            segmenter=args.segmenter or spec.segmenter, cache_dir=spec.cache_dir, seed=spec.seed)
        cache = DecodeCache(Path(spec.cache_dir) if spec.cache_dir else None)
        _, _, _, tables = _score_and_audit(model, meta, test, cache, device, opts, split="test")
        cams, faith = tables.get("cams", pd.DataFrame()), tables.get("faithfulness", pd.DataFrame())
        for method in methods:  # one transaction per method: its maps and scores swap together
            replace_run_tables(args.db, run["run_id"], {
                "cams": (cams[cams.method == method] if not cams.empty else cams,
                         {"method": method, "split": "test"}),
                "faithfulness": (faith[faith.method == method] if not faith.empty else faith, {"method": method}),
            })
        print(f"{run['run_id']}: {len(cams)} CAM rows ({', '.join(methods)})")
    return 0


def cmd_evaluate(args) -> int:
    """External validation of a checkpoint on another dataset or a folder of class subfolders."""
    device = resolve_device(args.device)
    model, meta = load_checkpoint(args.checkpoint, device=device)
    classes = meta["classes"]
    dataset = load_dataset(args.data, data_root=args.data_root, max_per_class=args.max_per_class)
    known = [r for r in dataset.records if r.label in classes]
    unknown = sorted({r.label for r in dataset.records} - set(classes))
    if unknown:
        log.info("left out %d images of classes the model does not know: %s",
                 len(dataset.records) - len(known), ", ".join(unknown))
    if not known:
        raise BenchmarkError(f"{args.data}: no image has a class the model knows ({', '.join(classes)})")
    from .commands import parse_cam_methods
    opts = AuditOptions(cam_methods=parse_cam_methods(args.cam_methods), faithfulness_sample=0, probes=False,
                        segmenter=args.segmenter, cache_dir=args.cache_dir, seed=args.seed)
    split = f"external:{dataset.name}"
    cache = DecodeCache(Path(args.cache_dir) if args.cache_dir else None)
    decoded, metric_rows, pred_rows, tables = _score_and_audit(model, meta, known, cache, device, opts, split=split,
                                                               n_boot=args.n_boot, progress=True)
    size = int(meta["input_size"])
    run_id = meta.get("run_id") or Path(args.checkpoint).stem
    acc = next(m for m in metric_rows if m["metric"] == "accuracy" and not m["class_name"])
    test_acc = (meta.get("metrics") or {}).get("accuracy")
    probe = pd.DataFrame([{"probe": split, "metric": "accuracy", "value": acc["value"], "ci_low": acc["ci_low"],
                           "ci_high": acc["ci_high"], "detail": json.dumps({"n_images": len(decoded.records),
                                                                             "internal_test_accuracy": test_acc})}])
    run_row = {"run_id": run_id, "model": meta["architecture"], "dataset": meta.get("dataset", ""),
               "pretrained": bool(meta.get("pretrained")), "status": "done", "checkpoint_path": str(args.checkpoint),
               "classes_json": json.dumps(classes), "image_size": size, "config_json": json.dumps(meta.get("config", {}))}
    for r in decoded.records:
        r.split = "external"
    replace_run_tables(args.db, run_id, {
        "metrics": (pd.DataFrame(metric_rows), {"split": split}),
        "predictions": (pd.DataFrame(pred_rows), {"split": split}),
        "cams": (tables.get("cams", pd.DataFrame()), {"split": split}),
        "probes": (probe, {"probe": split}),
    }, images=images_frame(decoded.records), rejected=rejected_frame(decoded.rejected, dataset.name), run_row=run_row)
    drop = f" ({acc['value'] - test_acc:+.3f} against its internal test accuracy {test_acc:.3f})" if test_acc else ""
    print(f"{meta['architecture']} on {dataset.name}: accuracy {acc['value']:.3f} "
          f"[{acc['ci_low']:.3f}, {acc['ci_high']:.3f}] on {len(decoded.records)} images{drop}")
    return 0


def cmd_lungs(args) -> int:
    from .lungmasks import segmenter_row
    from .lungseg import LungTrainConfig, fit_lung_segmenter, load_segmenter, predict_lung_masks

    if args.lungs_command == "train":
        root = Path(args.data_root) if args.data_root else None
        cfg = LungTrainConfig(size=args.size, epochs=args.epochs, device=str(resolve_device(args.device)),
                              seed=args.seed, n_phantom=args.n_phantom)
        model, report = fit_lung_segmenter(root, cfg, out_stem=Path(args.out))
        dice = report.get("heldout_cohen_dice_native")
        print(f"lung segmenter saved to {args.out}.safetensors; held-out cohen Dice (native size): "
              f"{dice:.3f}" if dice is not None else f"lung segmenter saved to {args.out}.safetensors "
              "(no cohen masks found: phantom only)")
        if args.db:
            write_segmenter(args.db, segmenter_row(args.out))  # the row runs record, from the saved sidecar
        return 0
    from PIL import Image

    from .data.imageio import read_image
    from .errors import ImageRejected

    model, _ = load_segmenter(Path(args.segmenter), device="cpu")
    src = Path(args.path)
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = 0
    for f in files:
        try:
            img = read_image(f)
        except ImageRejected as exc:
            print(f"{f}: skipped: {exc.reason}")
            continue
        mask = predict_lung_masks(model, img[None])[0]
        Image.fromarray(mask.astype(np.uint8) * 255).save(out / f"{f.stem}.png")
        done += 1
    print(f"{done} masks written to {out}")
    return 0
