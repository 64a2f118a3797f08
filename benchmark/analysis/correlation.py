"""Spearman's rank correlation between two per-run measures, with a bootstrap CI over runs.

Why over runs: the question "does a measure go with a larger external drop?" is asked of the
runs of an experiment, so the unit that is resampled is the run (with replacement, seeded), not
an image. Why a rank correlation: the measures live on different scales (a share, an AUC, a
score between a baseline and a ceiling) and nothing says their relation to the drop is linear.

Runs of one model trained with several seeds are not independent trials: given `clusters` (each
run's seed group), a group holding several runs is resampled whole (a cluster bootstrap), so the CI
counts models, not runs, and widens as it should.

With few runs the answer is weak, and the code says so instead of printing a number that looks
firm: under `MIN_RUNS` runs no correlation is given (two points always rank at +1 or -1), under
`MIN_RUNS_CI` no CI, and a resample in which either variable is constant has no rank
correlation, so it is skipped rather than counted as 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_BOOT = 1000
MIN_RUNS = 3      # fewer: a rank correlation of two points is always +1 or -1
MIN_RUNS_CI = 5   # fewer: resamples hold too few distinct runs for their spread to mean anything
MIN_VALID_SHARE = 0.5  # fewer usable resamples than this share: the CI would describe an odd subset


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho of the `n` runs with both values, its percentile bootstrap CI, how many
    resamples it rests on, and `reason`: why rho or the CI is missing ('' when both are there)."""

    rho: float
    ci_low: float
    ci_high: float
    n: int
    n_boot: int
    reason: str = ""
    n_clusters: int = 0  # seed groups resampled whole (0: the runs themselves were resampled)


def _constant(values: np.ndarray) -> bool:
    return values.size == 0 or bool(np.all(values == values[0]))


def resampled_rhos(x: np.ndarray, y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Spearman's rho of each resample (`rows`: n_boot x n indices into x and y), NaN where x or y
    is constant in it. Average ranks, then Pearson's r on the ranks: what scipy.stats.spearmanr
    computes, done for every resample at once (a loop over spearmanr cost seconds per report)."""
    from scipy.stats import rankdata

    xs, ys = x[rows], y[rows]
    rx, ry = rankdata(xs, axis=1), rankdata(ys, axis=1)
    rx -= rx.mean(axis=1, keepdims=True)
    ry -= ry.mean(axis=1, keepdims=True)
    den = np.sqrt((rx ** 2).sum(axis=1) * (ry ** 2).sum(axis=1))
    usable = (np.ptp(xs, axis=1) > 0) & (np.ptp(ys, axis=1) > 0) & (den > 0)
    out = np.full(len(rows), np.nan)
    out[usable] = (rx * ry).sum(axis=1)[usable] / den[usable]
    return np.clip(out, -1.0, 1.0)


def _cluster_rows(labels: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of `n_boot` resamples that draw whole clusters with replacement."""
    _, index = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(index == k) for k in range(index.max() + 1)]
    picks = np.random.default_rng(seed).integers(0, len(members), size=(int(n_boot), len(members)))
    return [np.concatenate([members[k] for k in pick]) for pick in picks]


def spearman_ci(x, y, *, n_boot: int = N_BOOT, seed: int = 0, level: float = 0.95,
                names: tuple[str, str] = ("x", "y"), clusters=None) -> RankCorrelation:
    """Spearman's rho of x and y over the runs where both are finite, with a `level` percentile
    bootstrap CI (runs resampled with replacement, `n_boot` times, from `seed`). `names` word the
    reason when one of them is constant. `clusters` (one label per run, e.g. its seed group): where
    a label holds several runs, whole clusters are resampled instead, and the CI needs
    MIN_RUNS_CI clusters."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(keep.sum())
    labels = None if clusters is None else np.asarray(clusters)[keep]
    n_clusters = 0 if labels is None or len(np.unique(labels)) == n else len(np.unique(labels))
    nan = float("nan")
    if n == 0:
        return RankCorrelation(nan, nan, nan, 0, 0, f"no run has both {names[0]} and {names[1]}")
    if n < MIN_RUNS:
        return RankCorrelation(nan, nan, nan, n, 0, f"{n} run{'s' if n != 1 else ''} with both values: a rank "
                                                    f"correlation needs at least {MIN_RUNS}")
    for values, name in ((x, names[0]), (y, names[1])):
        if _constant(values):
            return RankCorrelation(nan, nan, nan, n, 0, f"{name} is the same for every run: no rank correlation")
    rho = float(spearmanr(x, y).statistic)
    if n < MIN_RUNS_CI:
        return RankCorrelation(rho, nan, nan, n, 0, f"{n} runs: too few for a bootstrap CI "
                                                    f"(at least {MIN_RUNS_CI})")
    if n_clusters and n_clusters < MIN_RUNS_CI:
        return RankCorrelation(rho, nan, nan, n, 0, f"{n_clusters} seed groups: too few for a bootstrap CI "
                                                    f"(at least {MIN_RUNS_CI})", n_clusters)
    if n_clusters:  # resamples of unequal length: one at a time
        rhos = np.array([resampled_rhos(x, y, rows[None, :])[0] for rows in _cluster_rows(labels, n_boot, seed)])
    else:
        rhos = resampled_rhos(x, y, np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n)))
    rhos = rhos[np.isfinite(rhos)]
    if len(rhos) < MIN_VALID_SHARE * n_boot:
        return RankCorrelation(rho, nan, nan, n, len(rhos), f"only {len(rhos)} of {n_boot} resamples had "
                                                            "both variables varying: no CI", n_clusters)
    tail = (1 - level) / 2
    low, high = np.quantile(rhos, [tail, 1 - tail])
    return RankCorrelation(rho, float(low), float(high), n, len(rhos), "", n_clusters)
