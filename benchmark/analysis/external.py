"""Does the audit predict external failure? Per run and external set, how much the model lost on
another hospital's images, beside what its audit said before it got there; and, across runs,
whether each audit measure ranks the runs the way the losses do.

Why these quantities (the stored contract, split `external:<set>`, written by the pipeline):
- `set_auc` is the AUC of p(the set's last class) over the set's images for a 2-class set (covid
  for external-covid-normal), the mean one-vs-rest AUC over the set's classes otherwise; and
  `internal_set_auc` is the same rule on the run's own test images whose label is one of the
  set's classes. So `auc_drop = internal_set_auc - set_auc` compares one quantity on two image
  sources, even for a 4-class model scored on a 2-class set. Likewise `bacc_drop` with balanced
  accuracy (mean recall over the set's classes).
- `off_set_share` is the share of the set's images sent to a class the set does not have.
The audit measures come from the leaderboard's own composition (`benchmark.analysis.board.
leaderboard`), which the caller passes in: this package never imports the report.

pandas only; scipy only through `correlation`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmark.analysis.correlation import MIN_RUNS_CI, N_BOOT, spearman_ci

EXTERNAL_PREFIX = "external:"
#: under this many runs the note beside a correlation says its CI is wide
FEW_RUNS = 20
FEW_RUNS_NOTE = (
    "Each rank correlation (Spearman's rho) rests on the runs counted beside it, resampled with replacement "
    "for its 95% bootstrap CI. Few runs mean wide CIs: at 10 runs |rho| must pass about 0.65 before chance "
    "alone stops being a good explanation, and one run can swing it. A CI that includes 0 is no evidence "
    "either way; the runs of one experiment share their data, so they are not independent trials either.")

#: per (run, external set), from external_frame
FRAME_COLUMNS = ["run_id", "external_set", "internal_set_auc", "set_auc", "set_auc_ci_low", "set_auc_ci_high",
                 "auc_drop", "internal_balanced_accuracy", "balanced_accuracy", "balanced_accuracy_ci_low",
                 "balanced_accuracy_ci_high", "bacc_drop", "internal_accuracy", "accuracy", "off_set_share",
                 "n_images"]
#: the leaderboard's external columns (board_columns): the set with the largest AUC drop
BOARD_COLUMNS = ["run_id", "internal_auc", "external_auc", "auc_drop", "external_set"]


@dataclass(frozen=True)
class Measure:
    """An audit measure of the leaderboard and the sign its correlation with the drop should have
    if the warning is right: -1 where more of it means more reliance on the lungs (so a smaller
    drop), +1 where more of it means a shortcut (a larger drop), 0 where no direction is claimed."""

    column: str
    label: str
    expected: int
    why: str


AUDIT_MEASURES = (
    Measure("lung_mass_above_uniform", "lung mass - uniform map", -1,
            "the maps lie on the lungs more than a map spread evenly would"),
    Measure("lung_focus_score", "focus score", -1, "lung mass between the uniform map (0) and the ceiling (1)"),
    Measure("pointing_game", "pointing game", -1, "the maps' peaks lie on the lungs"),
    Measure("lungs_removed_acc", "acc. lungs removed", 1, "accuracy kept with the lungs removed: decided elsewhere"),
    Measure("lungs_only_acc", "acc. lungs only", -1, "accuracy from the lungs alone"),
    Measure("source_auc", "source-probe AUC", 1, "the source database is recognisable in the model's features"),
    Measure("sanity_rank_corr", "CAM sanity rank corr.", 0,
            "a check of the maps, not of the model: high means the maps barely depend on the weights"),
    # not an audit measure: the bar one must clear (in study-cpu's covid-normal runs it ranked the drop
    # better than any of the above, bench/RESULTS.md)
    Measure("test_accuracy", "test accuracy (baseline)", -1,
            "how well the model does at home; an audit measure earns its cost where it ranks the drops better"),
)
#: drop column -> label
DROPS = {"auc_drop": "AUC drop", "bacc_drop": "bal.-acc. drop"}
#: the leaderboard columns a drop table carries beside the drops
AUDIT_SOURCE_COLUMNS = ("dataset", "model", "pretrained", "lungs_only", "accuracy", "lung_mass", "uniform_baseline",
                        "lung_focus_score", "pointing_game", "lungs_removed_acc", "lungs_only_acc", "source_auc",
                        "sanity_rank_corr")
CORRELATION_COLUMNS = ["measure", "measure_label", "drop", "drop_label", "expected_sign", "rho", "ci_low", "ci_high",
                       "n_runs", "n_boot", "verdict", "note"]


def external_frame(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per (run, external set) from `queries.external_metrics` rows (long: run_id,
    external_set, metric, value, ci_low, ci_high, n_images): FRAME_COLUMNS, NaN where a metric was
    not stored (an older external score has accuracy but no set_auc)."""
    if metrics is None or metrics.empty:
        return pd.DataFrame(columns=FRAME_COLUMNS)
    keys = ["run_id", "external_set"]
    wide = metrics.pivot_table(index=keys, columns="metric", values=["value", "ci_low", "ci_high"],
                               aggfunc="first", dropna=False)
    wide.columns = [name if part == "value" else f"{name}_{part}" for part, name in wide.columns]
    # only the (run, set) pairs that were scored: the pivot's index is every run x every set
    wide = metrics[keys].drop_duplicates().merge(wide.reset_index(), on=keys, how="left")
    if "n_images" in metrics:
        n = metrics.groupby(keys, sort=False)["n_images"].first().rename("n_images").reset_index()
        wide = wide.merge(n, on=keys, how="left")
    wide = wide.reindex(columns=[c for c in FRAME_COLUMNS if c not in ("auc_drop", "bacc_drop")])
    for col in wide.columns[2:]:
        wide[col] = pd.to_numeric(wide[col], errors="coerce")
    wide["auc_drop"] = wide["internal_set_auc"] - wide["set_auc"]
    wide["bacc_drop"] = wide["internal_balanced_accuracy"] - wide["balanced_accuracy"]
    return wide[FRAME_COLUMNS].sort_values(keys, kind="stable").reset_index(drop=True)


def board_columns(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per run: its internal and external AUC on the set where the AUC fell most, the drop and the
    set (BOARD_COLUMNS), so a leaderboard shows at a glance a model that is accurate at home and
    fails elsewhere. A run with no AUC drop keeps the set of its lowest external AUC."""
    frame = external_frame(metrics)
    if frame.empty:
        return pd.DataFrame(columns=BOARD_COLUMNS)
    worst = frame.sort_values(["run_id", "auc_drop", "set_auc"], ascending=[True, False, True],
                              na_position="last", kind="stable").drop_duplicates("run_id")
    worst = worst.rename(columns={"internal_set_auc": "internal_auc", "set_auc": "external_auc"})
    return worst[BOARD_COLUMNS].reset_index(drop=True)


def drop_table(metrics: pd.DataFrame, board: pd.DataFrame) -> pd.DataFrame:
    """One row per (run on `board`, external set): the drops (external_frame) beside the run's
    audit measures from `board` (the leaderboard of one CAM method, one row per run: not pooled over
    seeds, since each run is one point of a correlation), with `lung_mass_above_uniform`
    = lung mass - the uniform map's. Runs without an external score, or not on the board, are left out."""
    frame = external_frame(metrics)
    audit_cols = ["run_id", *AUDIT_SOURCE_COLUMNS]
    audit = board.reindex(columns=audit_cols) if board is not None and not board.empty else pd.DataFrame(
        columns=audit_cols)
    audit = audit.rename(columns={"accuracy": "test_accuracy"})
    out = frame.merge(audit, on="run_id", how="inner")
    for col in ("lung_mass", "uniform_baseline", *(m.column for m in AUDIT_MEASURES if m.column in out)):
        out[col] = pd.to_numeric(out[col], errors="coerce")
    out["lung_mass_above_uniform"] = out["lung_mass"] - out["uniform_baseline"]
    lead = ["run_id", "dataset", "model", "external_set"]
    return out[lead + [c for c in out.columns if c not in lead]].sort_values(
        ["external_set", "auc_drop", "model"], ascending=[True, False, True], na_position="last",
        kind="stable").reset_index(drop=True)


def verdict(expected: int, rho: float, low: float, high: float) -> str:
    """Whether a measure's warning points the right way, in words."""
    if not np.isfinite(rho):
        return ""
    if expected == 0:
        return "no direction expected"
    excludes_zero = np.isfinite(low) and np.isfinite(high) and (low > 0 or high < 0)
    if np.sign(rho) == expected:
        return "as expected" + ("" if excludes_zero else ", but the CI includes 0" if np.isfinite(low)
                                else ", no CI")
    if rho == 0:
        return "no relation"
    return "opposite to expected" + ("" if excludes_zero else ", but the CI includes 0" if np.isfinite(low)
                                     else ", no CI")


def correlations(drops: pd.DataFrame, *, by: tuple[str, ...] = ("external_set",),
                 measures: tuple[Measure, ...] = AUDIT_MEASURES, targets: dict[str, str] = DROPS,
                 n_boot: int = N_BOOT, seed: int = 0, cluster: str = "seed_group") -> pd.DataFrame:
    """Across the runs of each group of `drops` (drop_table rows; by default one group per external
    set, so each run is one point): each measure's Spearman rho with each drop, its 95% bootstrap CI
    over runs (`n_boot` resamples from `seed`), the runs it rests on, the expected sign and a verdict.
    `note` says why rho or its CI is missing, or that few runs make the CI wide. Where `drops` has
    a `cluster` column (analysis.seeds' seed_group) and a group holds several runs, the CI resamples
    groups (models), not runs, and the note says how many. To ask it of one experiment, pass only
    that experiment's runs."""
    by = tuple(by)
    cols = [*by, *CORRELATION_COLUMNS]
    if drops is None or drops.empty:
        return pd.DataFrame(columns=cols)
    rows = []
    for key, group in drops.groupby(list(by), sort=True, dropna=False) if by else [((), drops)]:
        key = key if isinstance(key, tuple) else (key,)
        for m in measures:
            for drop, drop_label in targets.items():
                x = pd.to_numeric(group.get(m.column, pd.Series(np.nan, index=group.index)), errors="coerce")
                y = pd.to_numeric(group.get(drop, pd.Series(np.nan, index=group.index)), errors="coerce")
                groups = group[cluster].to_numpy() if cluster in group else None
                r = spearman_ci(x.to_numpy(), y.to_numpy(), n_boot=n_boot, seed=seed, names=(m.label, drop_label),
                                clusters=groups)
                note = r.reason or (f"only {r.n} runs: the CI is wide" if r.n < FEW_RUNS else "")
                if r.n_clusters and not r.reason:
                    note = "; ".join(filter(None, (f"CI over {r.n_clusters} seed groups, each resampled whole",
                                                   note)))
                rows.append({**dict(zip(by, key)), "measure": m.column, "measure_label": m.label, "drop": drop,
                             "drop_label": drop_label, "expected_sign": m.expected, "rho": r.rho,
                             "ci_low": r.ci_low, "ci_high": r.ci_high, "n_runs": r.n, "n_boot": r.n_boot,
                             "verdict": verdict(m.expected, r.rho, r.ci_low, r.ci_high), "note": note})
    return pd.DataFrame(rows, columns=cols)


#: a training set's own rho is given when it has at least this many runs scored on the set
WITHIN_MIN_RUNS = MIN_RUNS_CI
WITHIN_COLUMNS = ["external_set", "measure", "drop", "within", "n_training_sets"]


def within_training_sets(drops: pd.DataFrame, *, measures: tuple[Measure, ...] = AUDIT_MEASURES,
                         targets: dict[str, str] = DROPS, min_runs: int = WITHIN_MIN_RUNS, n_boot: int = N_BOOT,
                         seed: int = 0, cluster: str = "seed_group") -> pd.DataFrame:
    """Per (external set, measure, drop): Spearman's rho among the runs of each training set
    (drop_table's `dataset`) that has at least `min_runs` of them, with its 95% bootstrap CI where
    there is one (a model's seeds resampled together where `cluster` groups them, as in
    `correlations`), in words ("cohen-nih -0.77 [-0.95, -0.30] (9); ..."), and how many training
    sets it covers. Across runs of several training sets a measure can
    rank the sets rather than the models (a source probe describes the database a model learnt
    from): a pooled rho that no training set repeats is the sets', not the models'. Blank where the
    set's runs come from one training set, or none has `min_runs`."""
    if drops is None or drops.empty:
        return pd.DataFrame(columns=WITHIN_COLUMNS)
    rows = []
    for external_set, group in drops.groupby("external_set", sort=True):
        several = group["dataset"].nunique() > 1
        for m in measures:
            for drop in targets:
                parts = []
                for dataset, runs in group.groupby("dataset", sort=True):
                    if len(runs) < min_runs or not several:
                        continue
                    x = pd.to_numeric(runs.get(m.column, pd.Series(np.nan, index=runs.index)), errors="coerce")
                    y = pd.to_numeric(runs[drop], errors="coerce")
                    both = x.notna() & y.notna()
                    if both.sum() < min_runs or x[both].nunique() < 2 or y[both].nunique() < 2:
                        continue
                    r = spearman_ci(x.to_numpy(), y.to_numpy(), n_boot=n_boot, seed=seed,
                                    clusters=runs[cluster].to_numpy() if cluster in runs else None)
                    ci = f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" if np.isfinite(r.ci_low) else ""
                    parts.append(f"{dataset} {r.rho:+.2f}{ci} ({r.n})")
                rows.append({"external_set": external_set, "measure": m.column, "drop": drop,
                             "within": "; ".join(parts), "n_training_sets": len(parts)})
    return pd.DataFrame(rows, columns=WITHIN_COLUMNS)


def expected_sign_text(sign: int) -> str:
    return {-1: "negative", 1: "positive"}.get(int(sign), "none")
