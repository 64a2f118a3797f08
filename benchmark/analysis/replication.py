"""Does a model's external drop repeat when it is trained again? Seeds as a test of the question.

An audit measure can rank models by how much they lose on another hospital's images only if that
loss belongs to the model and not to the luck of one training run. With several seeds of the same
models (seed groups, `analysis.seeds`), each quantity of a drop table (the drop itself, each audit
measure) is split into the spread between models and the spread between seeds of one model:

- ICC(1): the share of the quantity's variance that lies between seed groups (one-way random
  effects, Shrout and Fleiss 1979; unequal group sizes through the ANOVA's n0). Near 1: the models
  differ and a retrain keeps the difference. Near 0 or below: the differences between models are
  the seeds' (a negative estimate means the groups differ less than chance would make them).
- seed-vs-seed rho: Spearman's rho between two seeds' values over the models both trained, the mean
  over pairs of seeds. It asks the same in ranks: does the second seed order the models as the first?

Where the drop has an ICC near 0, no audit measure should be expected to rank the models of that
training set by their drop: there is no ranking to find. pandas, numpy and scipy only.
"""
from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from benchmark.analysis.external import AUDIT_MEASURES

#: quantities of a run on one external set (column -> label)
DROP_QUANTITIES = {"auc_drop": "AUC drop", "set_auc": "external AUC", "bacc_drop": "bal.-acc. drop"}
#: quantities of a run on its own test split, whatever set it is scored on: Table 6's measures (the
#: test-accuracy baseline among them), less the CAM sanity check (a property of the maps' method)
AUDIT_QUANTITIES = {m.column: m.label for m in AUDIT_MEASURES if m.column != "sanity_rank_corr"}
#: fewest seed groups with at least two seeds each for a row
MIN_GROUPS = 3
COLUMNS = ["external_set", "dataset", "quantity", "label", "n_groups", "n_runs", "between_sd", "within_sd", "icc",
           "seed_rho", "n_seed_pairs"]


def icc1(values: list[np.ndarray]) -> tuple[float, float, float]:
    """(ICC(1), SD between group means, pooled SD within groups) of groups of at least two values."""
    groups = [np.asarray(v, dtype=float) for v in values]
    a = len(groups)
    sizes = np.array([len(g) for g in groups], dtype=float)
    n = sizes.sum()
    means = np.array([g.mean() for g in groups])
    grand = np.concatenate(groups).mean()
    msb = float((sizes * (means - grand) ** 2).sum() / (a - 1))
    msw = float(sum(((g - g.mean()) ** 2).sum() for g in groups) / (n - a))
    n0 = (n - (sizes ** 2).sum() / n) / (a - 1)
    denominator = msb + (n0 - 1) * msw
    icc = (msb - msw) / denominator if denominator > 0 else float("nan")
    return float(icc), float(np.std(means, ddof=1)), float(np.sqrt(msw))


def _seed_rho(frame: pd.DataFrame, column: str) -> tuple[float, int]:
    """Mean Spearman rho between pairs of seeds over the groups both have (at least MIN_GROUPS)."""
    from scipy.stats import spearmanr

    wide = frame.pivot_table(index="seed_group", columns="seed", values=column, aggfunc="first")
    rhos = []
    for a, b in itertools.combinations(wide.columns, 2):
        both = wide[[a, b]].dropna()
        if len(both) >= MIN_GROUPS and both[a].nunique() > 1 and both[b].nunique() > 1:
            rhos.append(float(spearmanr(both[a], both[b]).statistic))
    return (float(np.mean(rhos)) if rhos else float("nan")), len(rhos)


def _rows(part: pd.DataFrame, quantities: dict[str, str], **where) -> list[dict]:
    rows = []
    for column, label in quantities.items():
        if column not in part:
            continue
        values = part.assign(_v=pd.to_numeric(part[column], errors="coerce")).dropna(subset=["_v"])
        kept = [g["_v"].to_numpy() for _, g in values.groupby("seed_group", sort=True) if len(g) >= 2]
        if len(kept) < MIN_GROUPS:
            continue
        icc, between, within = icc1(kept)
        rho, pairs = _seed_rho(values, "_v")
        rows.append({**where, "quantity": column, "label": label, "n_groups": len(kept),
                     "n_runs": int(sum(len(k) for k in kept)), "between_sd": between, "within_sd": within,
                     "icc": icc, "seed_rho": rho, "n_seed_pairs": pairs})
    return rows


def seed_replication(drops: pd.DataFrame, groups: pd.DataFrame, *, drop_quantities: dict[str, str] = DROP_QUANTITIES,
                     audit_quantities: dict[str, str] = AUDIT_QUANTITIES) -> pd.DataFrame:
    """COLUMNS over the seed groups (`groups`: analysis.seeds.seed_groups) that hold at least two
    seeds: per (external set, training dataset) for each drop quantity, over the runs scored on the
    set; then per training dataset (external_set '') for each audit quantity, over its runs of
    `drops` (analysis.external.drop_table's frame, one row per run and external set). Empty where
    nothing has MIN_GROUPS such groups: one seed per model says nothing about seeds."""
    if drops is None or drops.empty or groups is None or groups.empty:
        return pd.DataFrame(columns=COLUMNS)
    frame = drops.drop(columns=["seed", "seed_group"], errors="ignore").merge(
        groups[["run_id", "seed_group", "seed"]], on="run_id", how="inner")
    rows = []
    for (external_set, dataset), part in frame.groupby(["external_set", "dataset"], sort=True):
        rows += _rows(part, drop_quantities, external_set=external_set, dataset=dataset)
    for dataset, part in frame.drop_duplicates("run_id").groupby("dataset", sort=True):
        rows += _rows(part, audit_quantities, external_set="", dataset=dataset)
    return pd.DataFrame(rows, columns=COLUMNS)
