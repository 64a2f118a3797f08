"""Source probe (Zech et al. 2018): how well can the source database of an image be told apart?

A shortcut is only available where the source can be recognised: if covid films all come from one
collection and normal films from another, a model that recognises the collection scores without
reading the lungs. This probe measures that availability with a cheap, frozen classifier:
a logistic regression (scikit-learn, L2, C=1, balanced class weights, standardised inputs) trained
on the run's TRAIN split to predict `images.source`, scored on its TEST split (the same
patient-level split as the run, so no patient is on both sides). Two inputs, two probes:

- `source`: the trained model's penultimate features (the input of its classifier layer,
  spatially averaged where it is a map), i.e. how much source information the model's own
  representation carries;
- `source_pixels`: the raw image area-pooled to 16 x 16 pixels, i.e. how recognisable the source
  is with no model at all (the same for every model trained on that dataset and input size).

Metric `auc`: the macro one-vs-rest AUC over sources (two sources: the AUC of the second), with
a patient-bootstrap 95% CI (training/metrics.py); 0.5 = sources indistinguishable, 1 = always told
apart. Where classes and sources coincide (covid only from one collection), that AUC partly
restates the class, so for every class whose images come from two or more sources the probe is
repeated within that class (metric `auc_within:<class>`): source recognisable with the label
held fixed. Datasets with a single source get one row per probe with no value and the reason in
`detail` ("skipped").
"""
from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from benchmark.training.device import autocast, to_input
from benchmark.training.metrics import metrics_with_ci

PROBES = ("source", "source_pixels")
PIXEL_GRID = 16
CLASSIFIER = "logistic regression (L2, C=1, balanced class weights) on standardised features"


@dataclass
class SourceSample:
    """Images (N x S x S uint8) of one split with their source names, class indices and patients."""

    images: np.ndarray
    sources: list[str]
    labels: np.ndarray
    patients: list[str]

    def subset(self, idx: np.ndarray) -> SourceSample:
        return SourceSample(self.images[idx], [self.sources[i] for i in idx], self.labels[idx],
                            [self.patients[i] for i in idx])


def penultimate_features(model, images: np.ndarray, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """N x D float32: the input of the model's classifier layer (spatially averaged if a map)."""
    layer = model.classifier_layer
    captured: list[torch.Tensor] = []

    def hook(module, inputs):
        x = inputs[0].detach().float()
        captured.append((x.flatten(2).mean(-1) if x.ndim > 2 else x).cpu())

    handle = layer.register_forward_pre_hook(hook)
    training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(images), batch_size):
                with autocast(device):
                    model(to_input(torch.from_numpy(images[s:s + batch_size]), device))
    finally:
        handle.remove()
        model.train(training)
    return torch.cat(captured).numpy() if captured else np.zeros((0, 0), np.float32)


def pixel_features(images: np.ndarray, grid: int = PIXEL_GRID, chunk: int = 512) -> np.ndarray:
    """N x grid^2 float32: each image area-pooled to grid x grid, in [0, 1]."""
    out = []
    for s in range(0, len(images), chunk):
        x = torch.from_numpy(images[s:s + chunk]).unsqueeze(1).float().div_(255.0)
        out.append(torch.nn.functional.adaptive_avg_pool2d(x, grid).flatten(1).numpy())
    return np.concatenate(out) if out else np.zeros((0, grid * grid), np.float32)


def _fit_score(train_x: np.ndarray, train_src: list[str], test_x: np.ndarray,
               seed: int) -> tuple[list[str], np.ndarray]:
    """(source names in column order, test probabilities) of the logistic-regression probe."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    names = sorted(set(train_src))
    y = np.array([names.index(s) for s in train_src])
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000, class_weight="balanced",
                                                               random_state=seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(train_x, y)
    return names, probe.predict_proba(test_x)


def _auc_row(probe: str, metric: str, train_x, train: SourceSample, test_x, test: SourceSample, *,
              features: str, seed: int, n_boot: int) -> dict:
    """One probes row: the source AUC of a probe fitted on `train`, scored on `test` (or why not)."""
    base = {"probe": probe, "metric": metric, "value": None, "ci_low": None, "ci_high": None}
    info = {"features": features, "classifier": CLASSIFIER, "split": "fit on train, scored on test",
            "sources": sorted(set(train.sources) | set(test.sources))}
    trained_on = sorted(set(train.sources))
    if len(trained_on) < 2:
        return {**base, "detail": json.dumps({**info, "skipped": f"one source in the train split ({trained_on})"})}
    keep = np.flatnonzero(np.isin(test.sources, trained_on))
    tested_on = sorted({test.sources[i] for i in keep})
    if len(tested_on) < 2:
        return {**base, "detail": json.dumps({**info, "skipped": f"fewer than two of the train split's sources in "
                                                                 f"the test split ({tested_on})"})}
    names, probs = _fit_score(train_x, train.sources, test_x[keep], seed)
    y = np.array([names.index(test.sources[i]) for i in keep])
    rows = metrics_with_ci(y, probs, names, [test.patients[i] for i in keep], n_boot=max(n_boot, 1), seed=seed)
    macro = next(r for r in rows if r.metric == "macro_auc" and not r.class_name)
    per_source = {r.class_name: r.value for r in rows if r.metric == "auc" and r.class_name}
    detail = {**info, "n_train": len(train.sources), "n_test": int(len(keep)),
              "n_test_patients": len({test.patients[i] for i in keep}), "chance": 0.5,
              "per_source_auc": {k: (None if np.isnan(v) else v) for k, v in per_source.items()},
              "left_out_test_images": int(len(test.sources) - len(keep))}
    if np.isnan(macro.value):
        return {**base, "detail": json.dumps({**detail, "skipped": "AUC undefined on the test split"})}
    return {**base, "value": macro.value, "ci_low": macro.ci_low, "ci_high": macro.ci_high,
            "detail": json.dumps(detail)}


def mixed_classes(train: SourceSample, test: SourceSample, classes: list[str]) -> list[int]:
    """Classes whose train and test images both come from two or more sources."""
    out = []
    for k in range(len(classes)):
        in_train = {s for s, y in zip(train.sources, train.labels) if y == k}
        in_test = {s for s, y in zip(test.sources, test.labels) if y == k}
        if len(in_train) >= 2 and len(in_train & in_test) >= 2:
            out.append(k)
    return out


def source_probe_rows(model, train: SourceSample, test: SourceSample, classes: list[str], device: torch.device, *,
                      seed: int, n_boot: int = 1000, with_model: bool = True) -> pd.DataFrame:
    """Rows of the `probes` table for the source probes (`source` on the model's features unless
    `with_model` is False or the model has no classifier layer, and `source_pixels`)."""
    inputs: dict[str, tuple[str, Callable[[SourceSample], np.ndarray]]] = {}
    if with_model and hasattr(model, "classifier_layer"):
        inputs["source"] = ("the trained model's penultimate features (frozen)",
                            lambda s: penultimate_features(model, s.images, device))
    inputs["source_pixels"] = (f"raw pixels area-pooled to {PIXEL_GRID} x {PIXEL_GRID}",
                               lambda s: pixel_features(s.images))
    one_source = len(set(train.sources) | set(test.sources)) < 2
    rows = []
    for probe, (features, extract) in inputs.items():
        if one_source:  # nothing to tell apart: say so without extracting anything
            rows.append({"probe": probe, "metric": "auc", "value": None, "ci_low": None, "ci_high": None,
                         "detail": json.dumps({"features": features, "sources": sorted(set(train.sources)),
                                               "skipped": "the dataset has a single source"})})
            continue
        train_x, test_x = extract(train), extract(test)
        rows.append(_auc_row(probe, "auc", train_x, train, test_x, test, features=features, seed=seed,
                              n_boot=n_boot))
        for k in mixed_classes(train, test, classes):
            tr, te = np.flatnonzero(train.labels == k), np.flatnonzero(test.labels == k)
            rows.append(_auc_row(probe, f"auc_within:{classes[k]}", train_x[tr], train.subset(tr), test_x[te],
                                  test.subset(te), features=features, seed=seed, n_boot=n_boot))
    return pd.DataFrame(rows, columns=["probe", "metric", "value", "ci_low", "ci_high", "detail"])
