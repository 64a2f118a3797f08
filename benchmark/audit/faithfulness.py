"""Faithfulness rows of the audit: how much each CAM method's maps matter to the model's output."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from benchmark.audit.cam_rows import applicable_methods, method_maps
from benchmark.cams.faithfulness import faithfulness_scores
from benchmark.training.metrics import bootstrap_mean_ci


def faithfulness_rows(model, images: np.ndarray, preds: np.ndarray, patients: list[str],
                      methods: Sequence[str], device: torch.device, *, sample: int,
                      seed: int) -> pd.DataFrame:
    """ROAD (combined) and confidence drop per CAM method on a seeded sample of images."""
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(images), size=min(sample, len(images)), replace=False))
    if len(pick) == 0:
        return pd.DataFrame()
    x = torch.from_numpy(images[pick]).unsqueeze(1).float().div(255)  # ROAD perturbs float images
    targets = torch.from_numpy(preds[pick].astype(np.int64))
    rows = []
    model.eval()
    for method in applicable_methods(model, methods):
        maps = method_maps(model, x, targets, method, device)
        scores = faithfulness_scores(model, x, targets, maps, device=device, seed=seed)
        for metric, values in scores.items():
            value, lo, hi = bootstrap_mean_ci(np.asarray(values, float), [patients[i] for i in pick], seed=seed)
            rows.append({"method": method, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi,
                         "n_images": int(len(pick))})
    return pd.DataFrame(rows)
