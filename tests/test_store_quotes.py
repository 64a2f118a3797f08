"""Names with quotes (' and ") round-trip through the store: written by write_run, read back
unchanged by every query in benchmark/store/queries/ (values are always parameters)."""
from __future__ import annotations

import datetime as dt
import inspect
import json

import numpy as np
import pandas as pd
import pytest

from benchmark.store import queries, reader, schema, write_run
from benchmark.store.writes import RunBundle

RUN = "q'run\"1; DROP TABLE runs;--"
MODEL = "res'net\"18"
DATASET = "phan'tom\"set"
CLASSES = ["nor'mal", 'pneu"monia', "co'v\"id"]
METHOD = "grad'cam\"@layer'3"
IMAGES = [f"img'{i}\"x" for i in range(3)]
SOURCE, VIEW, SEX = "coh'en\"", "P'A\"", "F'\""
PROBE = "lungs'removed\""
MASK = "/tmp/no'where\"/mask.png"
REASON = "not an image (looks like 'text'/\"HTML\")"


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("quotes") / "results.duckdb"
    cam = np.linspace(0, 1, 16, dtype=np.float16).reshape(4, 4)
    labels, preds = [CLASSES[0], CLASSES[1], CLASSES[2]], [CLASSES[0], CLASSES[2], CLASSES[2]]
    images = pd.DataFrame({
        "image_id": IMAGES, "dataset": DATASET, "source": SOURCE, "path": [f"/tmp/i'm\"{i}.png" for i in range(3)],
        "label": labels, "patient_id": ["p'1\"", "p'2\"", "p'1\""], "split": "test", "mask_path": MASK,
        "mask_source": "gt'\"", "view": VIEW, "sex": SEX, "age": [30.0, 40.0, 50.0], "key": ["k'1\"", "k'2\"", "k'3\""],
    })
    preds_df = pd.DataFrame({"image_id": IMAGES, "split": "test", "label": labels, "pred": preds,
                             "confidence": [0.9, 0.6, 0.8],
                             "probs": [[0.9, 0.05, 0.05], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8]]})
    metrics = pd.DataFrame([
        {"split": "test", "metric": "accuracy", "class_name": "", "value": 2 / 3, "ci_low": 0.3, "ci_high": 0.9},
        {"split": "test", "metric": "macro_auc", "class_name": "", "value": 0.8, "ci_low": 0.5, "ci_high": 0.95},
        *[{"split": "test", "metric": "sensitivity", "class_name": c, "value": 0.5, "ci_low": 0.1, "ci_high": 0.9}
          for c in CLASSES],
        {"split": f"external:{DATASET}", "metric": "accuracy", "class_name": "", "value": 0.5, "ci_low": 0.2,
         "ci_high": 0.8},
    ])
    cams = pd.DataFrame({"image_id": IMAGES, "split": "test", "method": METHOD, "target_class": preds,
                         "target_kind": "pred", "height": 4, "width": 4, "cam": [cam.tobytes()] * 3,
                         "lung_mass": [0.2, 0.5, 0.7], "pointing_hit": [True, False, True],
                         "lung_iou": [0.1, 0.2, 0.3], "mask_source": "gt'\""})
    tables = {
        "predictions": preds_df, "metrics": metrics, "cams": cams,
        "probes": pd.DataFrame([{"probe": PROBE, "metric": "accuracy", "value": 0.4, "ci_low": 0.1,
                                 "ci_high": 0.7, "detail": "d'\""}]),
        "faithfulness": pd.DataFrame([{"method": METHOD, "metric": "road'\"", "value": 0.1, "ci_low": 0.0,
                                       "ci_high": 0.2, "n_images": 3}]),
        "cam_skips": pd.DataFrame([{"split": "test", "method": "cam'\"@x", "reason": "not applicable: 'x' \"y\""}]),
        "cam_class_maps": pd.DataFrame([{"split": "test", "method": METHOD, "class_name": CLASSES[2], "n_images": 2,
                                         "accuracy": 0.5, "grid": 4, "mean_map": cam.astype(np.float32).tobytes(),
                                         "lung_map": cam.astype(np.float32).tobytes(), "lung_share": 0.4}]),
        "cam_clusters": pd.DataFrame([{"split": "test", "method": METHOD, "class_name": CLASSES[2], "cluster": 0,
                                       "k": 1, "n_images": 2, "class_share": 1.0, "flagged": True,
                                       "sources_json": json.dumps({SOURCE: 2}),
                                       "nearest_json": json.dumps(IMAGES[1:])}]),
        "cam_cluster_members": pd.DataFrame([{"split": "test", "method": METHOD, "class_name": CLASSES[2],
                                              "image_id": i, "cluster": 0, "distance": 0.1} for i in IMAGES[1:]]),
    }
    if "cam_sanity" in schema.RUN_TABLES:
        tables["cam_sanity"] = pd.DataFrame([{"method": METHOD, "n_images": 3, "rank_corr": 0.1, "ci_low": 0.0,
                                              "ci_high": 0.2, "flagged": False, "detail": "s'\""}])
    run = {"run_id": RUN, "model": MODEL, "dataset": DATASET, "pretrained": False, "epochs": 1, "device": "cpu",
           "status": "done", "started_at": dt.datetime(2026, 1, 1), "git_commit": "c'\"", "seed": 0,
           "config_json": json.dumps({"model": MODEL}), "classes_json": json.dumps(CLASSES), "n_test": 3,
           "image_size": 64, "lungs_only": False, "epochs_run": 1}
    rejected = pd.DataFrame([{"path": "/tmp/bad'\".png", "source": SOURCE, "reason": REASON, "dataset": DATASET}])
    write_run(path, RunBundle(run=run, tables=tables, images=images, rejected=rejected))
    return path


def _text(value) -> str:
    """Every value a query returned, as plain text (not repr: that would escape the quotes)."""
    if isinstance(value, pd.DataFrame):
        return "\n".join("\t".join(str(v) for v in row) for row in value.itertuples(index=False))
    if isinstance(value, dict):
        return "\n".join(_text(k) + "\t" + _text(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return "\n".join(_text(v) for v in value)
    return str(value)


#: every public query, called with the quoted names; what each must give back
CALLS = {
    "done_run_ids": ((), [RUN]),
    "external_done": ((), [RUN]),
    "runs": (("done",), [RUN, MODEL, DATASET]),
    "images": ((DATASET,), IMAGES + [SOURCE, VIEW, SEX]),
    "rejected": ((DATASET,), [REASON]),
    "predictions": ((RUN,), IMAGES + CLASSES),
    "metrics": ((RUN, "test"), CLASSES),
    "summary": ((), [RUN, MODEL, DATASET]),
    "datasets": ((), [DATASET]),
    "cam_methods": ((DATASET,), [METHOD]),
    "class_metrics": ((), [RUN] + CLASSES),
    "lung_focus_by_run": ((), [RUN, METHOD]),
    "probe_results": ((), [RUN, PROBE, MODEL, DATASET, f"external:{DATASET}"]),
    "mask_paths": ((DATASET,), IMAGES + [MASK]),
    "predicted_images": ((DATASET,), IMAGES),
    "image_predictions": ((IMAGES[1],), [RUN, MODEL, CLASSES[1], CLASSES[2]]),
    "stored_pred_cams": ((RUN,), IMAGES + [METHOD]),
    "split_predictions": ((RUN,), IMAGES + CLASSES),
    "class_maps": (((RUN,), "test", METHOD), [RUN, MODEL, DATASET, METHOD, CLASSES[2]]),
    "cam_clusters": (((RUN,), "test", METHOD), [RUN, MODEL, DATASET, METHOD, CLASSES[2]]),
    "pattern_index": ((), [RUN, DATASET, MODEL, METHOD]),
    "cams_for_pairs": (([RUN], [IMAGES[2]], METHOD), [RUN, IMAGES[2]]),
    "db_overview": ((), []),
    "run_details": ((), [RUN, MODEL, DATASET]),
    "scored_predictions": ((), [RUN] + IMAGES),
    "lung_focus_by_class": ((), [RUN, METHOD] + CLASSES),
    "image_counts": ((), [DATASET, SOURCE]),
    "rejected_summary": ((), [DATASET, SOURCE, REASON]),
    "cam_skips": ((), [RUN, MODEL, "cam'\"@x", "not applicable: 'x' \"y\""]),
    "segmenters": ((), []),
    "performance_predictions": (([RUN],), [RUN, SOURCE, DATASET] + IMAGES),
    "cam_sanity": ((), [RUN, METHOD]),
    "external_metrics": ((), [RUN, MODEL, DATASET]),
    "image_list": ((DATASET,), IMAGES + [SOURCE]),
    "image_row": ((IMAGES[0],), [IMAGES[0], SOURCE, VIEW, SEX]),
    "image_rows": ((tuple(IMAGES),), IMAGES + [SOURCE, VIEW, SEX, DATASET]),
    "run_image_cams": ((IMAGES[1], (RUN,), METHOD), [RUN, METHOD, CLASSES[2]]),
    "gallery_page": ((DATASET, METHOD), [RUN, MODEL, IMAGES[1]]),
    "gallery_count": ((DATASET, METHOD), []),
    "gallery_facets": ((DATASET,), [RUN, MODEL, SOURCE, VIEW, SEX] + CLASSES),
}
NOT_QUERIES = {"cam_array", "grid_array"}  # decode a stored BLOB; read nothing


def test_every_query_is_covered():
    public = {name for name, fn in inspect.getmembers(queries, inspect.isfunction)
              if fn.__module__.startswith(queries.__name__ + ".") and not name.startswith("_")}
    assert len(public) > 30  # the package's modules export their queries
    assert public - NOT_QUERIES - set(CALLS) == set(), "add the new query to CALLS with quoted names"


@pytest.mark.parametrize("name", sorted(CALLS))
@pytest.mark.slow  # over a second: the fast tier (-m "not slow") keeps to quick tests
def test_quoted_names_round_trip(db, name):
    assert hasattr(queries, name), f"queries.{name} is gone (renamed?): update CALLS"
    args, expected = CALLS[name]
    with reader(db) as con:
        value = getattr(queries, name)(con, *args)
    text = _text(value)
    for item in expected:
        assert item in text, f"{name} lost {item!r}"
    if name == "gallery_count":
        assert value == 1  # one wrong prediction
    if name == "db_overview":
        assert value["done_runs"] == 1 and value["cams"] == 3


def test_quoted_filters_select_the_quoted_rows(db):
    with reader(db) as con:
        page = queries.gallery_page(con, DATASET, METHOD, only_wrong=False, true_classes=[CLASSES[1]],
                                    sources=[SOURCE], views=[VIEW], sexes=[SEX], run_ids=[RUN])
        maps = queries.cams_for_pairs(con, [RUN] * 3, IMAGES, METHOD)
    assert list(page.image_id) == [IMAGES[1]] and page.model.iloc[0] == MODEL
    assert sorted(maps.image_id) == sorted(IMAGES)
    assert queries.cam_array(maps.iloc[0]).shape == (4, 4)
