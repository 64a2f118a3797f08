"""analysis.replication: does a model's external drop repeat across seeds? ICC(1) against a hand
computation and against the population value of simulated data, and seed_replication on drop
tables whose truth is planted: a model effect that every seed keeps, or none at all."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from benchmark.analysis import replication as rep


def test_icc1_by_hand():
    # means 2 and 6 (grand 4): MSB = 2*4 + 2*4 = 16 over 1 df; MSW = (2 + 2) / 2 = 2; n0 = 2
    icc, between, within = rep.icc1([np.array([1.0, 3.0]), np.array([5.0, 7.0])])
    assert icc == pytest.approx((16 - 2) / (16 + 2))
    assert between == pytest.approx(np.std([2.0, 6.0], ddof=1)) and within == pytest.approx(np.sqrt(2.0))


@pytest.mark.parametrize("var_between,var_within", [(1.0, 1.0), (3.0, 1.0), (0.0, 1.0)])
def test_icc1_recovers_the_population_share(var_between, var_within):
    rng = np.random.default_rng(0)
    groups = []
    for i in range(600):  # unequal sizes: 2 to 4 seeds
        effect = rng.normal(0, np.sqrt(var_between))
        groups.append(effect + rng.normal(0, np.sqrt(var_within), size=2 + i % 3))
    icc, _, within = rep.icc1(groups)
    assert icc == pytest.approx(var_between / (var_between + var_within), abs=0.06)
    assert within == pytest.approx(np.sqrt(var_within), rel=0.06)


def _drops(n_models: int, seeds: tuple[int, ...], effect_sd: float, noise_sd: float, rng) -> tuple:
    rows, groups = [], []
    for m in range(n_models):
        effect = rng.normal(0, effect_sd)
        for s in seeds:
            run = f"m{m}-s{s}"
            rows.append({"run_id": run, "dataset": "covid-normal", "external_set": "external-covid-normal",
                         "auc_drop": 0.3 + effect + rng.normal(0, noise_sd),
                         "source_auc": rng.uniform(0.5, 1.0)})  # no model effect at all
            groups.append({"run_id": run, "seed_group": m, "seed": s, "n_seeds": len(seeds)})
    return pd.DataFrame(rows), pd.DataFrame(groups)


def test_a_drop_that_belongs_to_the_model_repeats_and_noise_does_not():
    rng = np.random.default_rng(1)
    drops, groups = _drops(12, (0, 1, 2), effect_sd=0.2, noise_sd=0.02, rng=rng)
    out = rep.seed_replication(drops, groups).set_index("quantity")
    assert set(out.index) == {"auc_drop", "source_auc"}  # only the quantities the table has
    # the drop belongs to the external set; an audit measure to the run's own test split
    assert out.loc["auc_drop"].external_set == "external-covid-normal" and out.loc["source_auc"].external_set == ""
    drop = out.loc["auc_drop"]
    assert drop.n_groups == 12 and drop.n_runs == 36 and drop.n_seed_pairs == 3
    assert drop.icc > 0.9 and drop.seed_rho > 0.9 and drop.between_sd > 5 * drop.within_sd
    noise = out.loc["source_auc"]  # drawn afresh for every run: seeds do not agree
    assert noise.icc < 0.3 and abs(noise.seed_rho) < 0.5
    assert drop.label == "AUC drop" and noise.label == "source-probe AUC"


def test_noise_alone_gives_an_icc_near_zero():
    rng = np.random.default_rng(2)
    drops, groups = _drops(60, (0, 1, 2), effect_sd=0.0, noise_sd=0.05, rng=rng)
    drop = rep.seed_replication(drops, groups).set_index("quantity").loc["auc_drop"]
    assert abs(drop.icc) < 0.2 and abs(drop.seed_rho) < 0.2


def test_one_seed_per_model_says_nothing():
    rng = np.random.default_rng(3)
    drops, groups = _drops(12, (0,), effect_sd=0.2, noise_sd=0.02, rng=rng)
    assert rep.seed_replication(drops, groups).empty
    # two models with two seeds are too few groups (MIN_GROUPS); a third makes a row
    drops, groups = _drops(3, (0, 1), effect_sd=0.2, noise_sd=0.02, rng=rng)
    assert len(rep.seed_replication(drops[drops.run_id.str[:2] != "m2"], groups)) == 0
    assert rep.seed_replication(drops, groups).set_index("quantity").loc["auc_drop"].n_groups == 3


def test_groups_are_per_training_set_and_external_set():
    rng = np.random.default_rng(4)
    a, ga = _drops(5, (0, 1), effect_sd=0.2, noise_sd=0.01, rng=rng)
    b, gb = _drops(4, (0, 1), effect_sd=0.2, noise_sd=0.01, rng=rng)
    b = b.assign(run_id="b" + b.run_id, dataset="cohen-nih")
    gb = gb.assign(run_id="b" + gb.run_id, seed_group=gb.seed_group + 100)
    second = a.assign(external_set="cohen-kermany")  # the same runs scored on a second set
    out = rep.seed_replication(pd.concat([a, b, second]), pd.concat([ga, gb]))
    drop = out[out.quantity == "auc_drop"]
    assert sorted(zip(drop.external_set, drop.dataset, drop.n_groups)) == [
        ("cohen-kermany", "covid-normal", 5), ("external-covid-normal", "cohen-nih", 4),
        ("external-covid-normal", "covid-normal", 5)]
    measure = out[out.quantity == "source_auc"]  # once per training set, over its distinct runs
    assert sorted(zip(measure.dataset, measure.n_runs)) == [("cohen-nih", 8), ("covid-normal", 10)]
