"""Seed groups: runs that differ only by their training seed, and their numbers pooled over seeds.

Why: one training run's number mixes what the model learned with the luck of its initial weights
and batch order; the bootstrap CI of that run covers only the test images drawn. When the same
(dataset, model, pretrained, lungs_only, image_size, epochs) was trained with several seeds,
tables show the mean over seeds with the sample SD over seeds and how many seeds, beside the mean
of the per-seed CI bounds (which is not a CI of the mean; the tables say so). A group of one
seed shows that run's own value and CI. pandas only.
"""
from __future__ import annotations

import pandas as pd

#: what makes runs the same experiment up to the seed (columns of `queries.run_details`)
GROUP_KEYS = ("dataset", "model", "pretrained", "lungs_only", "image_size", "epochs")
SD_SUFFIX = "_sd"
SEEDS_NOTE = ("With several seeds: the mean over seeds ± the SD over seeds (n = seeds); the bracket is "
              "then the mean of the per-seed 95% bootstrap CI bounds, not a CI of the mean. With one seed: "
              "the run's own value and its 95% CI (patient bootstrap).")


def seed_groups(details: pd.DataFrame) -> pd.DataFrame:
    """run_id -> seed_group (int, numbered in the order of GROUP_KEYS), seed and n_seeds of its group."""
    cols = ["run_id", "seed_group", "seed", "n_seeds"]
    if details.empty:
        return pd.DataFrame(columns=cols)
    keys = [k for k in GROUP_KEYS if k in details]
    out = details[["run_id", "seed", *keys]].copy()
    out["seed_group"] = out.groupby(keys, dropna=False, sort=True).ngroup()
    out["n_seeds"] = out.groupby("seed_group")["run_id"].transform("nunique")
    return out[cols].reset_index(drop=True)


def several_seeds(groups: pd.DataFrame) -> bool:
    """Whether any seed group holds more than one run (else every group is a single run)."""
    return bool(not groups.empty and (groups["n_seeds"] > 1).any())


def aggregate(frame: pd.DataFrame, groups: pd.DataFrame, by: tuple[str, ...] = (),
              spread: tuple[str, ...] = ()) -> pd.DataFrame:
    """One row per (seed group, *by): numeric columns averaged over the group's runs (NaN skipped),
    the `spread` columns also as `<col>_sd` (sample SD, ddof=1; NaN with one seed), other columns
    taken from the first run; `run_id` becomes the group's run ids joined by ", " in seed order,
    plus `seed_group`, `n_seeds` and `seeds`.

    CI bounds are numeric columns like any other, so a bound comes out as the mean of the per-seed
    bounds. A run missing from `groups` stays a group of its own.
    """
    if frame.empty:
        return frame.assign(seed_group=pd.Series(dtype="int64"), n_seeds=pd.Series(dtype="int64"),
                            seeds=pd.Series(dtype="object"))
    df = frame.drop(columns=["seed", "seed_group"], errors="ignore").merge(
        groups[["run_id", "seed_group", "seed"]], on="run_id", how="left")
    alone = df["seed_group"].isna()
    if alone.any():
        base = int(groups["seed_group"].max()) + 1 if not groups.empty else 0
        df.loc[alone, "seed_group"] = base + pd.factorize(df.loc[alone, "run_id"])[0]
    keys = ["seed_group", *by]
    skip = {"run_id", "seed", *keys}
    numeric = [c for c in frame.columns if c not in skip and pd.api.types.is_numeric_dtype(frame[c])
               and not pd.api.types.is_bool_dtype(frame[c])]
    other = [c for c in frame.columns if c not in skip and c not in numeric]
    grouped = df.groupby(keys, dropna=False, sort=False)
    out = grouped[numeric].mean() if numeric else grouped.size().to_frame("_n").drop(columns="_n")
    for col in spread:
        if col in numeric:
            out[col + SD_SUFFIX] = grouped[col].std(ddof=1)
    for col in other:
        out[col] = grouped[col].first()
    by_seed = df.sort_values(["seed", "run_id"], kind="stable", na_position="last").groupby(keys, dropna=False,
                                                                                          sort=False)
    out["run_id"] = by_seed["run_id"].agg(lambda ids: ", ".join(dict.fromkeys(ids)))
    out["n_seeds"] = grouped["run_id"].nunique()
    out["seeds"] = by_seed["seed"].agg(lambda s: ", ".join(str(int(v)) for v in dict.fromkeys(s.dropna())))
    out = out.reset_index()
    out["seed_group"] = out["seed_group"].astype(int)
    return out[[c for c in frame.columns if c in out] + [c for c in out if c not in frame.columns]]
