"""Patient-level stratified train/val/test split: no patient's images in two splits.

Images of one patient are correlated (same body, same scanner, same markers); splitting by image
would leak them into the test set and inflate accuracy, the very thing this project audits.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from benchmark.data.records import ImageRecord


@dataclass(frozen=True)
class SplitFractions:
    train: float = 0.7
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self):
        if min(self.train, self.val, self.test) <= 0 or abs(self.train + self.val + self.test - 1) > 1e-6:
            raise ValueError(f"split fractions must be positive and sum to 1, got {self}")


def patient_split(records: list[ImageRecord], *, seed: int,
                  fractions: SplitFractions = SplitFractions()) -> list[ImageRecord]:
    """Assign `split` in place (and return the records), stratified by each patient's majority label.

    Patients of each class are shuffled with the seed and cut by patient count; every class with
    at least 3 patients gets at least one in val and one in test.
    """
    by_patient: dict[str, list[ImageRecord]] = defaultdict(list)
    for r in records:
        by_patient[r.patient_id].append(r)
    patients_of_class: dict[str, list[str]] = defaultdict(list)
    for pid, recs in sorted(by_patient.items()):
        label = Counter(r.label for r in recs).most_common(1)[0][0]
        patients_of_class[label].append(pid)
    rng = np.random.default_rng(seed)
    for label in sorted(patients_of_class):
        pids = patients_of_class[label]
        order = rng.permutation(len(pids))
        n = len(pids)
        n_test = max(1, round(n * fractions.test)) if n >= 3 else 0
        n_val = max(1, round(n * fractions.val)) if n >= 3 else 0
        for rank, idx in enumerate(order):
            split = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
            for r in by_patient[pids[idx]]:
                r.split = split
    return records


def split_counts(records: list[ImageRecord]) -> dict[str, dict[str, int]]:
    """{split: {label: count}} for the report printed before training."""
    out: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        out[r.split][r.label] += 1
    return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}
