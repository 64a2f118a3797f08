"""Score and audit a saved checkpoint on a set of records: what `cams` and `evaluate` share."""
from __future__ import annotations

import numpy as np
import torch

from benchmark.audit.tables import audit_tables
from benchmark.config import AuditConfig
from benchmark.data.decode import DecodeCache
from benchmark.training.fit import predict_probs
from benchmark.training.scoring import score_images


def score_and_audit(model, meta: dict, records: list, cache: DecodeCache, device, audit: AuditConfig, *,
                    split: str, seed: int, n_boot: int = 0, progress: bool = False):
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
                                                     device, split=split, n_boot=n_boot, seed=seed)
    else:
        probs = predict_probs(model, torch.from_numpy(decoded.images), device)
    tables = audit_tables(model, classes, decoded.records, decoded.images, masks, has_mask, labels, probs,
                          device, audit, split=split, seed=seed,
                          cache_dir=cache.root)
    return decoded, metric_rows, pred_rows, tables
