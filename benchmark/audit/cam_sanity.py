"""CAM sanity check rows (Adebayo et al. 2018): does each CAM method's map change when the
model's weights are randomised?

For a seeded sample of test images, each applicable method's maps of the trained model (for the
predicted class) are compared with its maps of a copy whose weights are all re-initialised
(cams/sanity.py: full randomisation, fixed seed), for the same target class. The Spearman rank
correlation of the two maps, per image, is averaged with a patient-bootstrap CI. A method whose
mean correlation reaches the threshold (AuditConfig.sanity_threshold) is flagged: its maps
barely depend on what the model learned, so they do not explain the model.
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from benchmark.audit.cam_rows import applicable_methods, method_maps
from benchmark.cams.sanity import RANDOM_WEIGHTS_SEED, randomized_copy, rank_correlation
from benchmark.training.metrics import bootstrap_mean_ci

COLUMNS = ["method", "n_images", "rank_corr", "ci_low", "ci_high", "flagged", "detail"]


def sanity_sample(n_images: int, sample: int, seed: int) -> np.ndarray:
    """Sorted positions of the seeded sample (at most `sample`, without replacement)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_images, size=min(sample, n_images), replace=False)) if n_images else np.zeros(0, int)


def cam_sanity_rows(model, images: np.ndarray, preds: np.ndarray, patients: list[str], methods: Sequence[str],
                    device: torch.device, *, sample: int, threshold: float, seed: int, n_boot: int = 1000,
                    batch_size: int = 32) -> pd.DataFrame:
    """Rows of the `cam_sanity` table (one per applicable method; run_id is added by the store).

    `images` N x H x W uint8 (test images), `preds` the trained model's predicted classes. The
    trained model is neither modified nor moved; its randomised twin lives only in this call."""
    pick = sanity_sample(len(images), sample, seed)
    if len(pick) == 0:
        return pd.DataFrame(columns=COLUMNS)
    model.eval()
    methods = applicable_methods(model, methods)
    if not methods:
        return pd.DataFrame(columns=COLUMNS)
    x = torch.from_numpy(images[pick]).unsqueeze(1)
    targets = torch.from_numpy(preds[pick].astype(np.int64))
    groups = [patients[i] for i in pick]
    random_model = randomized_copy(model, RANDOM_WEIGHTS_SEED)
    detail = json.dumps({"randomisation": "full: every weight re-initialised (framework defaults, seed "
                                          f"{RANDOM_WEIGHTS_SEED}), running statistics reset",
                         "target": "the trained model's predicted class", "threshold": threshold,
                         "correlation": "Spearman, per image, of the maps at the CAM layer's resolution"})
    rows = []
    try:
        for method in methods:
            trained = method_maps(model, x, targets, method, device, batch_size).numpy()
            randomised = method_maps(random_model, x, targets, method, device, batch_size).numpy()
            corr = rank_correlation(trained, randomised)
            value, low, high = bootstrap_mean_ci(corr, groups, n_boot=max(n_boot, 1), seed=seed)
            rows.append({"method": method, "n_images": int(len(pick)), "rank_corr": value, "ci_low": low,
                         "ci_high": high, "flagged": bool(value >= threshold), "detail": detail})
    finally:
        del random_model
    return pd.DataFrame(rows, columns=COLUMNS)
