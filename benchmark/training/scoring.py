"""Score a trained model on a set of decoded images: probabilities, predictions rows, metric rows."""
from __future__ import annotations

import dataclasses

import numpy as np
import torch

from benchmark.training.fit import predict_probs
from benchmark.training.metrics import metrics_with_ci


def score_images(model, images: np.ndarray, labels: np.ndarray, records: list, classes: list[str],
                 device: torch.device, *, split: str, n_boot: int, seed: int, progress: bool = False,
                 with_predictions: bool = True) -> tuple[list[dict], list[dict], np.ndarray]:
    """(metric rows, prediction rows, probs) for uint8 N x S x S images with integer labels."""
    if len(images) == 0:
        return [], [], np.zeros((0, len(classes)))
    probs = predict_probs(model, torch.from_numpy(images), device, progress=progress, desc=f"evaluate {split}")
    groups = [r.patient_id for r in records]
    metric_rows = [{"split": split, **dataclasses.asdict(m)}
                   for m in metrics_with_ci(labels, probs, classes, groups, n_boot=n_boot, seed=seed)]
    pred_rows = []
    if with_predictions:
        for r, p in zip(records, probs):
            pred_rows.append({"image_id": r.image_id, "split": split, "label": r.label,
                              "pred": classes[int(p.argmax())], "confidence": float(p.max()),
                              "probs": [float(v) for v in p]})
    return metric_rows, pred_rows, probs
