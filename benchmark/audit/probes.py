"""Shortcut probes: does the model still work without the lungs, or with only the lungs?

lungs_removed: test images with the lung region filled with the image's mean intensity. A model
that reads the lungs falls to chance; one that learned a shortcut outside them keeps its accuracy.
lungs_only: everything outside the lungs filled the same way (the model trained on whole images).
Both are scored on the test images that have a lung mask, next to the intact accuracy on the
same images, with patient-bootstrap CIs.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import torch

from benchmark.training.fit import predict_probs
from benchmark.training.metrics import metrics_with_ci


def fill_region(images: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Replace `region` pixels of each image by the image's mean intensity."""
    means = images.reshape(len(images), -1).mean(1).round().astype(np.uint8)[:, None, None]
    return np.where(region, means, images).astype(np.uint8)


def probe_rows(model, images: np.ndarray, masks: np.ndarray, labels: np.ndarray, patients: list[str],
               classes: list[str], device: torch.device, *, seed: int, n_boot: int = 1000,
               mask_sources: list[str] | None = None, probs: np.ndarray | None = None) -> pd.DataFrame:
    """Rows of the `probes` table for the given test images (those with an empty mask are left out).

    `probs`, the model's probabilities on these images intact (the caller has scored them
    already), saves the "intact" forward pass."""
    has = masks.reshape(len(masks), -1).any(1)
    idx = np.flatnonzero(has)
    if len(idx) == 0:
        return pd.DataFrame()
    variants = {"intact": images[idx], "lungs_removed": fill_region(images[idx], masks[idx]),
                "lungs_only": fill_region(images[idx], ~masks[idx])}
    groups = [patients[i] for i in idx]
    detail = json.dumps({"n_images": int(len(idx)), "chance": 1 / len(classes),
                         "mask_sources": sorted(set(mask_sources[i] for i in idx)) if mask_sources else []})
    rows = []
    for probe, x in variants.items():
        if probe == "intact" and probs is not None:
            p = probs[idx]
        else:
            p = predict_probs(model, torch.from_numpy(x), device)
        for m in metrics_with_ci(labels[idx], p, classes, groups, n_boot=n_boot, seed=seed):
            if m.metric in ("accuracy", "balanced_accuracy", "macro_auc") and not m.class_name:
                rows.append({"probe": probe, "metric": m.metric, "value": m.value, "ci_low": m.ci_low,
                             "ci_high": m.ci_high, "detail": detail})
    return pd.DataFrame(rows)
