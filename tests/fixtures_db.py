"""A realistic results.duckdb for dashboard tests and the dashboard benchmark, built with the store API.

Not a conftest: tests import it (`from tests.fixtures_db import build_results_db`) and
bench/dashboard_views.py imports it to build a 100k-CAM-row database. The numbers are invented
but shaped like a real audit: "shortcut" models reach high accuracy with CAMs on a corner
marker (low lung_mass) and keep their accuracy when the lungs are removed; "lung" models are
less accurate, look at the lungs and fall to chance without them. Image and mask files are
written as small PNGs so the dashboard can draw overlays and contours.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from benchmark.store import write_run
from benchmark.store.writes import RunBundle
from tests.conftest import REPO

#: model -> (test accuracy it aims at, looks at the lungs?)
MODEL_BEHAVIOUR = {
    "shallow": (0.70, True),
    "resnet18": (0.96, False),
    "densenet201": (0.90, False),
    "vgg16": (0.80, True),
    "alexnet": (0.75, True),
    "resnet50": (0.93, False),
    "mobilenet_v2": (0.88, False),
    "squeezenet1_1": (0.72, True),
    "googlenet": (0.85, True),
    "inception_v3": (0.94, False),
}
SOURCES = ("cohen", "kermany")
VIEWS = ("PA", "AP")


@dataclass(frozen=True)
class FakeResultsSpec:
    """Size and shape of the generated database; everything is drawn from `seed`."""

    datasets: tuple[str, ...] = ("phantom-shortcut", "phantom-clean")
    models: tuple[str, ...] = ("shallow", "resnet18", "densenet201")
    classes: tuple[str, ...] = ("normal", "pneumonia", "covid")
    n_test: int = 12
    n_train: int = 4
    methods: tuple[str, ...] = ("gradcam", "cam")
    image_size: int = 48
    cam_size: int = 7
    seed: int = 0
    with_failed_run: bool = True
    with_probes: bool = True
    compute_focus: bool = True  # lung_mass from the map and mask (slow for 100k maps)
    # Training seeds per (dataset, model): empty = one run `<dataset>-<model>` with seed `seed`;
    # otherwise one run `<dataset>-<model>-s<seed>` per seed (a seed group).
    seeds: tuple[int, ...] = ()
    with_phases: bool = True  # runs.<phase>_seconds filled (older result files have them NULL)
    # External sets every run is scored on, in the stored contract (split 'external:<set>': set_auc,
    # off_set_share, internal_* metrics, predictions, and the lungs probes '<probe>@external:<set>').
    # Each set has the classes normal and covid. Empty: none (what the older tests assert).
    external_sets: tuple[str, ...] = ()
    n_external: int = 8
    # Class-mean maps and clusters of the maps (audit/cam_patterns.py) computed from the fake maps;
    # the covid images carry the marker, and a model that does not look at the lungs reads it.
    with_patterns: bool = False


def lung_mask(size: int) -> np.ndarray:
    """Two vertical ellipses: a phantom's lungs, about a quarter of the image."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    left = ((xx - 0.32) / 0.14) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1
    right = ((xx - 0.68) / 0.14) ** 2 + ((yy - 0.5) / 0.3) ** 2 <= 1
    return left | right


def xray_image(size: int, rng: np.random.Generator, marker: bool) -> np.ndarray:
    """Bright body, dark lungs, noise, and optionally a bright corner marker (the shortcut)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    body = ((xx - 0.5) / 0.45) ** 2 + ((yy - 0.55) / 0.5) ** 2 <= 1
    img = np.where(body, 170.0, 25.0) + rng.normal(0, 12, (size, size))
    img[lung_mask(size)] -= 100
    if marker:
        s = max(3, size // 8)
        img[1:1 + s, 1:1 + s] = 250
    return np.clip(img, 0, 255).astype(np.uint8)


def cam_maps(n: int, size: int, on_lungs: bool, rng: np.random.Generator) -> np.ndarray:
    """n maps (size x size, in [0, 1]) peaked on a lung or on the top-left marker corner."""
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    if on_lungs:
        cx = np.where(rng.random(n) < 0.5, 0.32, 0.68)[:, None, None]
        cy = np.full((n, 1, 1), 0.5)
    else:
        cx = np.full((n, 1, 1), 0.05)
        cy = np.full((n, 1, 1), 0.05)
    maps = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.03) + rng.random((n, size, size)) * 0.15
    return (maps / maps.max(axis=(1, 2), keepdims=True)).astype(np.float16)


def _images(spec: FakeResultsSpec, dataset: str, folder: Path, rng) -> pd.DataFrame:
    rows = []
    out = folder / dataset
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    mask = lung_mask(spec.image_size)
    mask_file = out / "masks" / "lungs.png"
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_file)
    n_total = spec.n_test + spec.n_train
    for i in range(n_total):
        label = spec.classes[i % len(spec.classes)]
        source = SOURCES[0] if label == "covid" else SOURCES[1]  # the confounding the audit exposes
        path = out / "images" / f"{i:05d}.png"
        Image.fromarray(xray_image(spec.image_size, rng, marker=label == "covid")).save(path)
        rows.append({
            "image_id": f"{dataset}-{i:05d}", "dataset": dataset, "source": source, "path": str(path),
            "label": label, "patient_id": f"{source}-P{i // 2}", "split": "test" if i < spec.n_test else "train",
            "mask_path": str(mask_file), "mask_source": "gt-phantom", "view": VIEWS[i % 2],
            "sex": "" if source == "kermany" else ("M" if (i // 3) % 2 else "F"),
            "age": float("nan") if source == "kermany" else float(30 + i % 50),
            "key": f"images/{i:05d}.png",
        })
    return pd.DataFrame(rows)


def _predictions(labels: np.ndarray, classes, accuracy: float, rng) -> pd.DataFrame:
    k = len(classes)
    n = len(labels)
    correct = rng.random(n) < accuracy
    pred = np.where(correct, labels, (labels + rng.integers(1, k, n)) % k)
    conf = rng.uniform(0.5, 0.999, n)  # >= 0.5: the predicted class is always the arg-max
    probs = np.empty((n, k))
    for j in range(n):
        rest = rng.random(k - 1) + 0.1
        probs[j, np.arange(k) != pred[j]] = rest / rest.sum() * (1 - conf[j])
        probs[j, pred[j]] = conf[j]
    return pd.DataFrame({"label": [classes[i] for i in labels], "pred": [classes[i] for i in pred],
                         "confidence": conf, "probs": [list(map(float, p)) for p in probs]})


def _metrics(preds: pd.DataFrame, classes, rng) -> pd.DataFrame:
    def row(metric, value, cls="", width=0.08):
        return {"split": "test", "metric": metric, "class_name": cls, "value": value,
                "ci_low": max(0.0, value - width), "ci_high": min(1.0, value + width)}

    acc = float((preds.label == preds.pred).mean())
    rows, sens_all, f1_all = [row("accuracy", acc)], [], []
    for c in classes:
        tp = int(((preds.label == c) & (preds.pred == c)).sum())
        fn = int(((preds.label == c) & (preds.pred != c)).sum())
        fp = int(((preds.label != c) & (preds.pred == c)).sum())
        tn = len(preds) - tp - fn - fp
        sens = tp / (tp + fn) if tp + fn else 0.0
        spec = tn / (tn + fp) if tn + fp else 0.0
        prec = tp / (tp + fp) if tp + fp else 0.0
        f1 = 2 * prec * sens / (prec + sens) if prec + sens else 0.0
        auc = min(1.0, 0.5 + acc / 2 + rng.uniform(-0.03, 0.03))
        sens_all.append(sens)
        f1_all.append(f1)
        rows += [row("sensitivity", sens, c, 0.12), row("specificity", spec, c, 0.1),
                 row("precision", prec, c, 0.12), row("f1", f1, c, 0.12), row("auc", auc, c, 0.06)]
        for c2 in classes:
            n = int(((preds.label == c) & (preds.pred == c2)).sum())
            rows.append({"split": "test", "metric": "confusion", "class_name": f"{c}->{c2}", "value": n,
                         "ci_low": None, "ci_high": None})
    rows += [row("balanced_accuracy", float(np.mean(sens_all))), row("macro_f1", float(np.mean(f1_all))),
             row("macro_auc", min(1.0, 0.5 + acc / 2), width=0.05)]
    return pd.DataFrame(rows)


def _cams(spec, images: pd.DataFrame, preds: pd.DataFrame, on_lungs: bool, rng) -> pd.DataFrame:
    n = len(preds)
    mask = lung_mask(spec.image_size)
    frames = []
    for method in spec.methods:
        maps = cam_maps(n, spec.cam_size, on_lungs, rng)
        if spec.compute_focus:
            from benchmark.cams.lungfocus import lung_focus_batch
            focus = lung_focus_batch(maps.astype(np.float32), np.broadcast_to(mask, (n, *mask.shape)))
            mass = [f.lung_mass for f in focus]
            hit = [f.pointing_hit for f in focus]
            iou = [f.lung_iou for f in focus]
        else:
            centre = 0.65 if on_lungs else 0.12
            mass = np.clip(rng.normal(centre, 0.08, n), 0, 1)
            hit = rng.random(n) < (0.8 if on_lungs else 0.1)
            iou = np.clip(mass * 0.6, 0, 1)
        frames.append(pd.DataFrame({
            "image_id": images.image_id.to_numpy(), "split": "test", "method": method,
            "target_class": preds.pred.to_numpy(), "target_kind": "pred",
            "height": spec.cam_size, "width": spec.cam_size, "cam": [m.tobytes() for m in maps],
            "lung_mass": mass, "pointing_hit": hit, "lung_iou": iou, "mask_source": "gt-phantom",
            "marker_mass": np.clip(rng.normal(0.03 if on_lungs else 0.45, 0.02, n), 0, 1)}))
    return pd.concat(frames, ignore_index=True)


@dataclass(frozen=True)
class _Record:
    image_id: str
    source: str
    view: str


def _patterns(spec: FakeResultsSpec, test: pd.DataFrame, cams: pd.DataFrame, labels: np.ndarray,
              preds: pd.DataFrame) -> dict[str, pd.DataFrame]:
    from benchmark.audit.cam_patterns import cam_pattern_tables

    records = [_Record(r.image_id, r.source, r.view) for r in test.itertuples()]
    masks = np.broadcast_to(lung_mask(spec.image_size), (len(records), spec.image_size, spec.image_size))
    predicted = np.array([spec.classes.index(c) for c in preds.pred])
    return cam_pattern_tables(cams.assign(split="test"), records, masks, ["gt-phantom"] * len(records), labels,
                              predicted, split="test")


def _probes(accuracy: float, on_lungs: bool, other: str | None, k: int, n_test: int) -> pd.DataFrame:
    chance = 1.0 / k
    removed = chance + 0.03 if on_lungs else accuracy - 0.02
    only = accuracy - 0.05 if on_lungs else chance + 0.1
    rows = [("intact", accuracy, ""), ("lungs_removed", removed, ""), ("lungs_only", only, "")]
    if other:  # the detail `evaluate` stores beside an external accuracy
        rows.append((f"external:{other}", accuracy - (0.05 if on_lungs else 0.4),
                     json.dumps({"n_images": n_test, "n_left_out_seen": 1, "internal_test_accuracy": accuracy})))
    return pd.DataFrame([{"probe": p, "metric": "accuracy", "value": v, "ci_low": max(0, v - 0.1),
                          "ci_high": min(1, v + 0.1), "detail": d} for p, v, d in rows])


EXTERNAL_CLASSES = ("normal", "covid")
#: the overall metrics of an external split (stored contract) the fixture writes
EXTERNAL_METRIC_NAMES = ("accuracy", "balanced_accuracy", "macro_auc", "macro_f1", "set_auc", "off_set_share",
                         "internal_set_auc", "internal_balanced_accuracy", "internal_accuracy")


def external_drop(run_id: str, on_lungs: bool) -> float:
    """The AUC a run loses on an external set: small for a model that reads the lungs, large for a
    shortcut learner, with a per-run offset (drawn from the run id) so no two runs tie."""
    jitter = np.random.default_rng(zlib.crc32(run_id.encode())).uniform(-0.04, 0.04)
    return (0.05 if on_lungs else 0.35) + float(jitter)


def _external_tables(spec: FakeResultsSpec, run_id: str, accuracy: float, on_lungs: bool
                     ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(metrics, predictions, probes) rows of one run on each of `spec.external_sets`."""
    metrics, preds, probes = [], [], []
    internal_auc = min(0.99, 0.5 + accuracy / 2)
    for name in spec.external_sets:
        split = f"external:{name}"
        drop = external_drop(run_id + split, on_lungs)
        values = {"internal_set_auc": internal_auc, "set_auc": internal_auc - drop,
                  "internal_balanced_accuracy": accuracy, "balanced_accuracy": accuracy - 0.8 * drop,
                  "internal_accuracy": accuracy, "accuracy": accuracy - drop, "macro_auc": internal_auc - drop,
                  "macro_f1": accuracy - drop - 0.05, "off_set_share": 0.02 if on_lungs else 0.2}
        for metric in EXTERNAL_METRIC_NAMES:
            v = float(np.clip(values[metric], 0, 1))
            metrics.append({"split": split, "metric": metric, "class_name": "", "value": v,
                            "ci_low": max(0.0, v - 0.06), "ci_high": min(1.0, v + 0.06)})
        for cls in EXTERNAL_CLASSES:  # per-class rows, as scoring stores them: not the analysis's
            metrics.append({"split": split, "metric": "sensitivity", "class_name": cls, "value": 0.5,
                            "ci_low": 0.4, "ci_high": 0.6})
        for i in range(spec.n_external):
            label = EXTERNAL_CLASSES[i % 2]
            pred = label if i % 4 else "pneumonia"
            probs = [0.1, 0.1, 0.1]
            probs[list(spec.classes).index(pred) if pred in spec.classes else 0] = 0.8
            preds.append({"image_id": f"{name}-{i:05d}", "split": split, "label": label, "pred": pred,
                          "confidence": 0.8, "probs": probs})
        ext_acc = values["accuracy"]
        for probe, acc in ((split, ext_acc), (f"intact@{split}", ext_acc),
                           (f"lungs_removed@{split}", 0.5 if on_lungs else ext_acc - 0.02),
                           (f"lungs_only@{split}", ext_acc - 0.05 if on_lungs else 0.55)):
            for metric in ("accuracy",) if probe == split else ("accuracy", "balanced_accuracy", "macro_auc"):
                probes.append({"probe": probe, "metric": metric, "value": acc, "ci_low": max(0, acc - 0.1),
                               "ci_high": min(1, acc + 0.1), "detail": None})
    return pd.DataFrame(metrics), pd.DataFrame(preds), pd.DataFrame(probes)


def phase_seconds(m_index: int, seed: int) -> dict[str, float]:
    """Invented but fixed cost per phase of a run (store_seconds is measured by write_run itself)."""
    base = 1.0 + m_index
    return {"decode_seconds": 0.5 * base, "train_seconds": 10.0 * base + seed, "eval_seconds": 0.25 * base,
            "cam_seconds": 2.0 * base, "faithfulness_seconds": 4.0 * base, "probe_seconds": 1.0 * base,
            "train_images_per_s": 100.0 / base}


@dataclass(frozen=True)
class _Data:
    """One generated dataset: its images, the test rows, their class indices, the external set."""

    name: str
    images: pd.DataFrame
    test: pd.DataFrame
    labels: np.ndarray
    other: str | None


def _write_model_run(db: Path, spec: FakeResultsSpec, folder: Path, data: _Data, m_index: int, model: str,
                     seed: int, run_id: str, rng) -> None:
    """One done run of `model`: predictions, metrics, CAMs, probes, in one transaction."""
    dataset, images, test, labels, other = data.name, data.images, data.test, data.labels, data.other
    k = len(spec.classes)
    accuracy, on_lungs = MODEL_BEHAVIOUR.get(model, (0.8, bool(m_index % 2)))
    if "clean" in dataset and not on_lungs:
        accuracy -= 0.2  # no marker to exploit on a clean dataset
    preds = _predictions(labels, spec.classes, accuracy, rng)
    preds.insert(0, "image_id", test.image_id)
    preds.insert(1, "split", "test")
    tables = {"predictions": preds, "metrics": _metrics(preds, spec.classes, rng),
              "cams": _cams(spec, test, preds, on_lungs, rng)}
    if spec.with_probes:
        tables["probes"] = _probes(float((preds.label == preds.pred).mean()), on_lungs, other, k, spec.n_test)
    if spec.with_patterns:
        tables.update(_patterns(spec, test, tables["cams"], labels, preds))
    if spec.external_sets:
        ext_metrics, ext_preds, ext_probes = _external_tables(spec, run_id, accuracy, on_lungs)
        tables["metrics"] = pd.concat([tables["metrics"], ext_metrics], ignore_index=True)
        tables["predictions"] = pd.concat([tables["predictions"], ext_preds], ignore_index=True)
        tables["probes"] = pd.concat([tables.get("probes", pd.DataFrame()), ext_probes], ignore_index=True)
    run = {"run_id": run_id, "model": model, "dataset": dataset, "pretrained": m_index % 2 == 1,
           "epochs": 3, "epochs_run": 3, "device": "cpu", "status": "done",
           "started_at": dt.datetime(2026, 1, 1), "finished_at": dt.datetime(2026, 1, 1, 0, 5),
           "image_size": spec.image_size, "classes_json": json.dumps(list(spec.classes)),
           "n_train": spec.n_train, "n_val": 0, "n_test": spec.n_test, "seed": seed,
           "config_json": json.dumps(dataclasses.asdict(spec))}
    if spec.with_phases:
        run.update(phase_seconds(m_index, seed))
    write_run(db, RunBundle(run=run, tables=tables, images=images, rejected=pd.DataFrame(
        [{"path": str(folder / "bad.png"), "source": "cohen", "reason": "empty file", "dataset": dataset}])))


def build_results_db(folder: str | Path, spec: FakeResultsSpec = FakeResultsSpec()) -> Path:
    """Write images, masks and `folder/results.duckdb`; returns the database path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    db = folder / "results.duckdb"
    rng = np.random.default_rng(spec.seed)
    for d_index, dataset in enumerate(spec.datasets):
        images = _images(spec, dataset, folder, rng)
        test = images[images.split == "test"].reset_index(drop=True)
        labels = np.array([spec.classes.index(c) for c in test.label])
        other = spec.datasets[(d_index + 1) % len(spec.datasets)] if len(spec.datasets) > 1 else None
        data = _Data(dataset, images, test, labels, other)
        for m_index, model in enumerate(spec.models):
            for seed in spec.seeds or (spec.seed,):
                run_id = f"{dataset}-{model}" + (f"-s{seed}" if spec.seeds else "")
                _write_model_run(db, spec, folder, data, m_index, model, seed, run_id, rng)
        if spec.with_failed_run:
            write_run(db, RunBundle(run={"run_id": f"{dataset}-vgg19-failed", "model": "vgg19", "dataset": dataset,
                                         "pretrained": False, "status": "failed", "error": "out of memory"},
                                    tables={"metrics": pd.DataFrame([{"split": "test", "metric": "accuracy",
                                                                      "class_name": "", "value": 0.99}])}))
    return db


def make_checkpoint(folder: str | Path, *, architecture: str = "shallow", classes=("normal", "pneumonia", "covid"),
                    input_size: int = 64, dataset: str = "phantom-shortcut", accuracy: float = 0.9,
                    seed: int = 0) -> Path:
    """An untrained classifier saved as a real checkpoint (safetensors + sidecar) under folder."""
    import torch

    from benchmark.models import create_model
    from benchmark.training.checkpoints import save_checkpoint

    torch.manual_seed(seed)
    model = create_model(architecture, num_classes=len(classes))
    return save_checkpoint(model, Path(folder) / dataset / f"{dataset}-{architecture}-s{seed}", {
        "architecture": architecture, "classes": list(classes), "input_size": input_size,
        "normalization": model.normalization, "dataset": dataset, "pretrained": False,
        "run_id": f"{dataset}-{architecture}-s{seed}", "metrics": {"accuracy": accuracy}})


def make_segmenter(stem: str | Path, *, input_size: int = 64, seed: int = 0) -> Path:
    """An untrained lung U-Net checkpoint (masks are noise, but the code path is the real one)."""
    import torch

    from benchmark.lungseg import LungUNet, save_segmenter

    torch.manual_seed(seed)
    weights, _ = save_segmenter(LungUNet(base_channels=4, input_size=input_size), stem, {"note": "untrained"})
    return weights


APP = REPO / "dashboard" / "app.py"


def open_page(page: str | None = None, *, timeout: float = 60):
    """A streamlit AppTest of the dashboard, run once, then switched to `page` ("pages/x.py") and run.

    The app reads its DB, checkpoints and segmenter from $CXR_RESULTS_DB, $CXR_CHECKPOINTS and
    $CXR_LUNG_SEGMENTER: set them (monkeypatch.setenv) before calling.
    """
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=timeout).run()
    if page is not None:
        at.switch_page(page).run()
    return at


def texts(at) -> str:
    """Every markdown, caption, info, warning and error text of an AppTest, one string (for asserts)."""
    parts = []
    for kind in ("title", "markdown", "caption", "info", "warning", "error", "subheader"):
        parts += [str(e.value) for e in getattr(at, kind)]
    return "\n".join(parts)
