"""Class-mean maps and clusters of CAMs (audit/cam_patterns.py): the grid, the clustering, the tables.

Maps here are drawn where their truth is known: a blob on a lung or on the top-left corner marker
(tests/fixtures_db.py), with noise and jitter. The proof on trained models is in
tests/test_phantom_proof.py.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from benchmark.audit.cam_clusters import MAX_CLUSTERS, choose_k, cluster_maps, map_features
from benchmark.audit.cam_grid import (
    GRID,
    edge_regions,
    lung_ceiling,
    maps_to_grid,
    masks_to_grid,
    mass_share,
    region_areas,
)
from benchmark.audit.cam_patterns import FLAG_MIN_SHARE, N_NEAREST, cam_pattern_tables
from benchmark.store.queries import grid_array
from tests.fixtures_db import lung_mask

SIZE = 64


def blob_maps(n: int, side: int, where: str, rng: np.random.Generator) -> np.ndarray:
    """n maps (side x side) with jittered blobs on both lungs ('lungs') or on the top-left corner ('corner')."""
    yy, xx = np.mgrid[0:side, 0:side] / (side - 1)
    def blob(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        return np.exp(-((xx - cx[:, None, None]) ** 2 + (yy - cy[:, None, None]) ** 2) / 0.01)

    if where == "lungs":  # both lungs, each blob jittered on its own
        maps = sum(blob(x + rng.normal(0, 0.03, n), 0.5 + rng.normal(0, 0.05, n)) for x in (0.32, 0.68))
    else:
        maps = blob(0.06 + rng.normal(0, 0.02, n), 0.06 + rng.normal(0, 0.02, n))
    maps = maps + rng.random((n, side, side)) * 0.1
    return (maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float32)


def test_the_grid_regions_and_shares():
    edges = edge_regions(GRID)
    assert edges["border"].mean() == pytest.approx(1 - (24 / 32) ** 2)  # the outer eighth of each side
    assert edges["corners"].sum() == 4 * 4 * 4 and (edges["corners"] <= edges["border"]).all()
    corner = np.zeros((GRID, GRID), np.float32)
    corner[0, 0] = 1
    lungs = masks_to_grid(lung_mask(SIZE)[None])[0]
    assert mass_share(corner, edges["corners"]) == 1 and mass_share(corner, lungs >= 0.5) == 0
    assert np.isnan(mass_share(np.zeros((GRID, GRID)), edges["border"]))  # no mass, no share
    areas = region_areas(lungs)
    assert 0.15 < areas["lung_area"] < 0.4 and areas["corner_area"] == pytest.approx(0.0625)
    # a coarser map cannot keep its mass inside the lungs' outline: its best share is lower
    coarse, fine = lung_ceiling(lungs, (4, 4)), lung_ceiling(lungs, (16, 16))
    assert areas["lung_area"] < coarse < fine <= 1
    # maps of any resolution land on the same grid; a blob in the corner stays in the corner
    grid_maps = maps_to_grid([np.eye(5, dtype=np.float32)[::-1], corner[:8, :8]])
    assert grid_maps.shape == (2, GRID, GRID) and grid_maps[1, 0, 0] > grid_maps[1, -1, -1]
    assert np.array_equal(grid_array(grid_maps[0].tobytes(), GRID), grid_maps[0])


def test_features_compare_where_the_mass_lies_not_how_much():
    rng = np.random.default_rng(0)
    maps = maps_to_grid(list(blob_maps(2, 8, "corner", rng)))
    f = map_features(np.stack([maps[0], 3 * maps[0], np.zeros_like(maps[0])]))
    assert np.allclose(f[0], f[1]) and f[0].sum() == pytest.approx(1) and not f[2].any()


def test_two_strategies_make_two_clusters_and_one_makes_one():
    rng = np.random.default_rng(1)
    marker, lungs = blob_maps(30, 8, "corner", rng), blob_maps(45, 8, "lungs", rng)
    maps = maps_to_grid(list(np.concatenate([marker, lungs])))
    truth = np.array([1] * 30 + [0] * 45)
    found = cluster_maps(maps, seed=0)
    assert found.k == 2 and adjusted_rand_score(truth, found.labels) == 1.0
    assert (found.labels[30:] == 0).all()  # clusters are numbered by size: the larger first
    assert len(found.eigenvalues) == MAX_CLUSTERS + 1 and found.eigenvalues[0] == pytest.approx(0, abs=1e-8)
    one = cluster_maps(maps_to_grid(list(blob_maps(40, 8, "corner", rng))), seed=0)
    assert one.k == 1 and not one.labels.any()
    few = cluster_maps(maps[:5], seed=0)  # too few maps to cluster
    assert few.k == 1 and len(few.labels) == 5 and len(few.eigenvalues) == 0


def test_the_eigengap_is_bounded():
    values = np.array([0, 0.05, 0.1, 0.3, 0.35, 0.4, 0.95])  # the largest gap after the sixth, then the third
    assert choose_k(values, n=100) == 6
    assert choose_k(values, n=9) == 3  # n / 3 maps per cluster at least
    assert choose_k(np.array([0, 0.5, 0.52, 0.54]), n=100) == 1


@dataclass(frozen=True)
class Rec:
    image_id: str
    source: str
    view: str = "PA"


def _cams(maps: np.ndarray, ids: list[str], target: list[str], method: str = "gradcam") -> pd.DataFrame:
    half = maps.astype(np.float16)
    return pd.DataFrame({"image_id": ids, "method": method, "target_class": target, "target_kind": "pred",
                         "height": maps.shape[1], "width": maps.shape[2], "cam": [m.tobytes() for m in half]})


def test_tables_flag_the_cluster_off_the_lungs_and_only_it():
    rng = np.random.default_rng(2)
    # covid: 20 images decided by the corner marker, 30 by the lungs; normal: 40, all by the lungs
    maps = np.concatenate([blob_maps(20, 8, "corner", rng), blob_maps(30, 8, "lungs", rng),
                           blob_maps(40, 8, "lungs", rng)])
    n = len(maps)
    records = [Rec(f"i{i:03d}", "cohen" if i < 20 else "nih") for i in range(n)]
    predicted = ["covid"] * 50 + ["normal"] * 40
    cams = _cams(maps, [r.image_id for r in records], predicted)
    cams = pd.concat([cams, cams.head(3).assign(target_kind="true", target_class="normal")])  # not clustered
    masks = np.broadcast_to(lung_mask(SIZE), (n, SIZE, SIZE))
    labels = np.array([1] * 45 + [0] * 45)  # five lung-read covid images are really normal
    preds = np.array([1] * 50 + [0] * 40)
    t = cam_pattern_tables(cams, records, masks, ["gt-phantom"] * n, labels, preds, split="test")

    means = t["cam_class_maps"].set_index("class_name")
    assert list(means.index) == ["covid", "normal"] and means.n_images.tolist() == [50, 40]
    assert means.at["covid", "corner_share"] > means.at["normal", "corner_share"]
    assert means.at["normal", "lung_share"] > means.at["normal", "lung_area"]  # better than uniform
    assert means.at["covid", "accuracy"] == pytest.approx(45 / 50)

    clusters = t["cam_clusters"]
    covid = clusters[clusters.class_name == "covid"].set_index("cluster")
    assert covid.k.tolist() == [2, 2] and covid.n_images.tolist() == [30, 20]
    assert covid.flagged.tolist() == [False, True]  # the marker cluster, and only it
    assert covid.at[1, "lung_focus"] < 0.5 < covid.at[0, "lung_focus"]
    assert covid.at[1, "accuracy"] == 1.0 and covid.at[0, "accuracy"] == pytest.approx(25 / 30)
    assert covid.at[1, "sources_json"] == '{"cohen": 20}' and covid.class_share.sum() == pytest.approx(1)
    assert not clusters[clusters.class_name == "normal"].flagged.any()

    members = t["cam_cluster_members"]
    assert len(members) == n and members.image_id.is_unique
    marker_ids = set(members[(members.class_name == "covid") & (members.cluster == 1)].image_id)
    assert marker_ids == {f"i{i:03d}" for i in range(20)}
    nearest = json.loads(covid.at[1, "nearest_json"])
    assert len(nearest) == N_NEAREST and set(nearest) <= marker_ids
    stored = grid_array(covid.at[1, "mean_map"], GRID)
    assert stored.shape == (GRID, GRID) and stored[:4, :4].mean() > stored[12:20, 12:20].mean()


def test_a_small_off_lung_cluster_is_not_flagged_and_no_maps_no_rows():
    rng = np.random.default_rng(3)
    n_marker = 3  # under FLAG_MIN_SHARE of the class
    maps = np.concatenate([blob_maps(n_marker, 8, "corner", rng), blob_maps(40, 8, "lungs", rng)])
    n = len(maps)
    assert n_marker / n < FLAG_MIN_SHARE
    records = [Rec(f"i{i}", "x") for i in range(n)]
    masks = np.broadcast_to(lung_mask(SIZE), (n, SIZE, SIZE))
    t = cam_pattern_tables(_cams(maps, [r.image_id for r in records], ["covid"] * n), records, masks,
                           ["gt"] * n, np.ones(n, int), np.ones(n, int), split="test")
    assert not t["cam_clusters"].flagged.any()
    # images without a lung mask: shares and focus unknown, never flagged
    t = cam_pattern_tables(_cams(maps, [r.image_id for r in records], ["covid"] * n), records, masks,
                           [""] * n, np.ones(n, int), np.ones(n, int), split="test")
    assert t["cam_class_maps"].lung_share.isna().all() and not t["cam_clusters"].flagged.any()
    assert all(df.empty for df in cam_pattern_tables(pd.DataFrame(), records, masks, [""] * n, np.ones(n, int),
                                                     np.ones(n, int), split="test").values())


@pytest.mark.slow
def test_a_run_fills_the_tables_and_cams_clusters_recomputes_them(tmp_path, cache_env, capsys):
    from benchmark.cli import main
    from benchmark.store import queries, reader
    from benchmark.store.connection import writer

    db = tmp_path / "r.duckdb"
    assert main(["run", "--data", "phantom", "--models", "shallow", "--epochs", "1", "--image-size", "64",
                 "--n-phantom", "90", "--device", "cpu", "--no-progress", "--db", str(db),
                 "--checkpoint-dir", str(tmp_path / "ck"), "--cam-methods", "gradcam,hirescam@stride16",
                 "--faithfulness-sample", "0"]) == 0
    with reader(db) as con:
        run = queries.runs(con).iloc[0]
        means = queries.class_maps(con, (run.run_id,))
        clusters = queries.cam_clusters(con, (run.run_id,))
        members = con.execute("SELECT * FROM cam_cluster_members ORDER BY method, image_id").df()
        n_pred = con.execute("SELECT count(*) FROM cams WHERE target_kind = 'pred'").fetchone()[0]
    assert run.cluster_seconds > 0
    assert set(means.method) == set(clusters.method) == {"gradcam", "hirescam@stride16"}
    assert means.groupby("method").n_images.sum().tolist() == [run.n_test, run.n_test]
    shares = clusters.groupby(["method", "class_name"]).class_share.sum()
    assert len(members) == n_pred and (shares - 1).abs().max() < 1e-9

    with writer(db) as con:  # as a results file written before the patterns existed
        for table in ("cam_class_maps", "cam_clusters", "cam_cluster_members"):
            con.execute(f"DELETE FROM {table}")
    capsys.readouterr()
    assert main(["cams", "--db", str(db), "--clusters", "--device", "cpu"]) == 0
    assert f"{run.run_id}: {len(clusters)} clusters of CAMs" in capsys.readouterr().out
    with reader(db) as con:
        again = queries.class_maps(con, (run.run_id,))
        clusters_again = queries.cam_clusters(con, (run.run_id,))
        members_again = con.execute("SELECT * FROM cam_cluster_members ORDER BY method, image_id").df()
    for before, after in ((means, again), (clusters, clusters_again)):  # the same, up to summation order
        for a, b in zip(before.mean_map, after.mean_map):
            assert np.allclose(grid_array(a, GRID), grid_array(b, GRID), atol=1e-6)
        pd.testing.assert_frame_equal(after.drop(columns="mean_map"), before.drop(columns="mean_map"),
                                      check_exact=False, atol=1e-6)
    pd.testing.assert_frame_equal(members_again, members, check_exact=False, atol=1e-6)
