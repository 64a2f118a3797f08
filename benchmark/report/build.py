"""Gathering the replication report: read the results DB, pool seeds, draw, and lay out sections.

The DB is read in two short read-only connections (everything first, then only the few CAM maps
the report draws), never held while figures are drawn: a benchmark run that wants to write
waits for a reader, and a dashboard builds this report too.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from benchmark import __version__
from benchmark.analysis import external as ext_analysis
from benchmark.analysis import measures, performance, replication, seeds
from benchmark.analysis.board import preferred_method_index
from benchmark.analysis.roc import ROC_BOOT, mean_curve, roc_curves
from benchmark.data.stored import lung_share
from benchmark.errors import BenchmarkError
from benchmark.report import cam_panels, evidence_tables, figures, patterns, tables
from benchmark.report.document import Figure, Paragraph, Report, Section
from benchmark.store import queries, reader

log = logging.getLogger(__name__)

TITLE = "Shortcut audit of chest X-ray classifiers: replication report"
#: columns whose spread over seeds the tables show (others are pooled by their mean only)
SPREAD = ("accuracy", "balanced_accuracy", "specificity", "macro_auc", "lung_mass", "lung_focus_score",
          "pointing_game", "probe_intact", "probe_lungs_removed", "probe_lungs_only", "lungs_removed_drop",
          "sensitivity", "auc", "internal_accuracy", "external_accuracy", "drop", "external_auc", "auc_drop")
RUN_KEYS = ["run_id", "dataset", "model", "pretrained", "lungs_only"]


@dataclass
class Inputs:
    """Everything the report reads from the DB (done runs only)."""

    details: pd.DataFrame
    summary: pd.DataFrame
    class_metrics: pd.DataFrame
    overall: pd.DataFrame
    focus: pd.DataFrame
    by_class: pd.DataFrame
    probes: pd.DataFrame
    predictions: pd.DataFrame
    image_counts: pd.DataFrame
    rejected: pd.DataFrame
    skips: pd.DataFrame
    segmenters: pd.DataFrame
    failed: pd.DataFrame
    mask_paths: dict[str, list[str]]
    sanity: pd.DataFrame = field(default_factory=pd.DataFrame)  # queries.cam_sanity
    external_metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # queries.external_metrics
    class_maps: pd.DataFrame = field(default_factory=pd.DataFrame)  # queries.class_maps (test split)
    clusters: pd.DataFrame = field(default_factory=pd.DataFrame)  # queries.cam_clusters (test split)


def read_inputs(con) -> Inputs:
    details = queries.run_details(con)
    done = set(details.run_id)
    overall = queries.metrics(con, split="test")
    all_runs = queries.runs(con)
    return Inputs(
        details=details, summary=queries.summary(con), class_metrics=queries.class_metrics(con),
        overall=overall[overall.run_id.isin(done) & (overall.class_name.fillna("") == "")],
        focus=queries.lung_focus_by_run(con), by_class=queries.lung_focus_by_class(con),
        probes=queries.probe_results(con), predictions=queries.scored_predictions(con),
        image_counts=queries.image_counts(con), rejected=queries.rejected_summary(con),
        skips=queries.cam_skips(con), segmenters=queries.segmenters(con),
        failed=all_runs[all_runs.status != "done"],
        mask_paths={d: list(queries.mask_paths(con, d).mask_path) for d in queries.datasets(con)},
        sanity=queries.cam_sanity(con), external_metrics=queries.external_metrics(con),
        class_maps=queries.class_maps(con, tuple(done)), clusters=queries.cam_clusters(con, tuple(done)))


def build_report(db: str | Path, *, n_boot: int = ROC_BOOT) -> Report:
    """The whole report of the results DB at `db` (BenchmarkError when there is nothing to report)."""
    db = Path(db)
    if not db.is_file():
        raise BenchmarkError(f"no results database at {db}: make one with `cxr-audit run --db {db}`, "
                             "or name another with --db")
    try:
        with reader(db) as con:
            inputs = read_inputs(con)
    except duckdb.Error as exc:
        raise BenchmarkError(f"{db} cannot be read as a results database: {exc}") from exc
    if inputs.details.empty:
        raise BenchmarkError(f"{db} holds no finished runs, so there is nothing to report yet "
                             f"(`cxr-audit run --db {db}` adds some)")
    return compose(db, inputs, n_boot=n_boot)


def _method(focus: pd.DataFrame) -> str | None:
    methods = sorted(focus["method"].unique()) if not focus.empty else []
    return methods[preferred_method_index(methods)] if methods else None


def _order(frame: pd.DataFrame) -> pd.DataFrame:
    keys = [k for k in ("dataset", "accuracy", "model") if k in frame]
    asc = [k != "accuracy" for k in keys]
    return frame.sort_values(keys, ascending=asc, na_position="last", kind="stable").reset_index(drop=True)


def compose(db: Path, inputs: Inputs, *, n_boot: int = ROC_BOOT) -> Report:
    """Lay the report out from what was read; the DB is opened again only for the few CAM maps drawn."""
    baselines = {d: lung_share(paths)[0] for d, paths in inputs.mask_paths.items()}
    method = _method(inputs.focus)
    groups = seeds.seed_groups(inputs.details)
    keys = inputs.details[RUN_KEYS]

    board = measures.run_board(inputs.summary, inputs.class_metrics, inputs.focus, inputs.probes, inputs.overall,
                               method, baselines, sanity=inputs.sanity, external=inputs.external_metrics)
    grouped = _order(seeds.aggregate(board, groups, spread=SPREAD))
    per_class = measures.per_class(inputs.class_metrics).merge(keys, on="run_id")
    per_class = seeds.aggregate(per_class, groups, by=("class_name",), spread=SPREAD)
    external = measures.external(inputs.probes, inputs.summary).merge(keys, on="run_id")
    external = seeds.aggregate(external, groups, by=("external_set",), spread=SPREAD)
    costs = measures.phase_costs(inputs.details)

    header = (f"Database: {db.resolve()}", f"Written {dt.datetime.now():%Y-%m-%d %H:%M} by cxr-audit {__version__}",
              f"{len(inputs.details)} finished runs in {groups.seed_group.nunique()} seed groups over "
              f"{inputs.details.dataset.nunique()} datasets; lung focus from the '{method or 'none'}' maps of the "
              "predicted class on test images.")
    sections = (
        Section("What this is", (Paragraph(
            "A replication of Majeed et al. (2020), 'Covid-19 detection using CNN transfer learning from X-ray "
            "images', with an audit for shortcut learning beside it. Table 1 is the study's table: each model's "
            "test accuracy, sensitivity, specificity and AUC with 95% confidence intervals. Table 3 gives, row for "
            "row, where the models' class activation maps (CAMs) lie and whether the models still work without "
            "the lungs: a model that is accurate while its maps avoid the lungs, and that keeps its accuracy when "
            "the lungs are removed, decides from something else on the film (a text marker, the hospital's "
            "look)."),
            Paragraph(seeds.SEEDS_NOTE + " The run id behind every number is in each table's last column."))),
        Section("The study's table and the audit", (
            tables.study_table(grouped), tables.audit_table(grouped, method),
            Figure("accuracy-vs-lung-focus", "Figure 1. Accuracy against lung focus",
                   figures.accuracy_focus(grouped, baselines, method),
                   "One point per model and database (seed groups: the mean over seeds). Dashed lines: the uniform "
                   "map of each database (the lungs' share of the image). Points high up and left of their line "
                   "are accurate while looking at the lungs less than a map that looks everywhere."),
            tables.class_table(_order_like(per_class, grouped)))),
        Section("Lung focus per class", (_focus_per_class(inputs, groups, method, baselines),)),
        Section("ROC curves", tuple(_roc_figures(inputs, groups, n_boot))),
        Section("Confusion matrices and calibration", tuple(_confusion_calibration_figures(inputs, groups))),
        Section("CAMs of the likeliest shortcut learners", tuple(_cam_figures(db, board, groups, inputs, method))),
        Section("Where each model looks: class-mean maps and clusters of CAMs", (
            patterns.cluster_table(inputs.clusters, method),
            *patterns.class_map_figures(inputs.class_maps, dict(zip(board.run_id, board.accuracy)), method))),
        Section("External validation", (tables.external_table(_order_like(external, grouped)),)),
        Section("Does the audit predict external failure?", _external_failure(inputs, board, method, groups)),
        Section("Shortcut evidence beyond CAMs", (
            Paragraph("Two checks that do not rest on where the maps lie. The source probe asks whether the source "
                      "database can be recognised at all (if it can, a source shortcut is available to every "
                      "model); the CAM sanity check asks whether each CAM method's maps depend on the trained "
                      "weights at all (if they do not, their lung focus says nothing about the model)."),
            evidence_tables.source_report_table(inputs.probes), evidence_tables.sanity_report_table(inputs.sanity))),
        Section("Where the data came from", (
            tables.image_count_table(inputs.image_counts), tables.rejected_table(inputs.rejected),
            tables.cam_skip_table(inputs.skips), tables.segmenter_table(inputs.segmenters),
            tables.runs_table(inputs.details, groups), tables.failed_table(inputs.failed))),
        Section("Cost per phase", (tables.cost_table(costs),)),
    )
    return Report(TITLE, header, sections)


def _external_failure(inputs: Inputs, board: pd.DataFrame, method: str | None, groups: pd.DataFrame) -> tuple:
    """Per run, the drop on each external set beside its audit (Table 5); across runs, each audit
    measure's rank correlation with the drop (Table 6); one figure per set, each measure against the
    AUC drop. Runs, not seed groups: each run is one point of the correlation."""
    drops = ext_analysis.drop_table(inputs.external_metrics, board)
    intro = Paragraph(
        "The harm a shortcut warning exists to prevent is a model that fails in another hospital. Here each run "
        "scored on an external set shows how much it lost there (internal minus external AUC, on the same "
        "classes) beside what its audit said on its own test images; and, across runs, whether each audit "
        "measure ranks the runs the way their losses rank them: which warning would have caught the failure.")
    if drops.empty:
        return (intro, Paragraph("No external set is scored with AUCs yet: an experiment's `external` sets (for "
                                 "example `external = [\"auto\", \"external-covid-normal\"]`) add them to every "
                                 "checkpoint whose classes include the set's."),)
    drops = drops.assign(label=[tables.model_label(r) for r in drops.to_dict("records")]).merge(
        groups[["run_id", "seed_group"]], on="run_id", how="left")
    corr = ext_analysis.correlations(drops)  # seeds of one model resampled together (seed_group)
    within = ext_analysis.within_training_sets(drops)
    blocks = [intro, tables.external_drop_table(drops, method),
              tables.drop_correlation_table(corr, ext_analysis.FEW_RUNS_NOTE, within)]
    repeat = replication.seed_replication(drops, groups)
    if not repeat.empty:  # only with several seeds of the same models
        blocks.append(tables.seed_replication_table(repeat))
    for name, rows in drops.groupby("external_set", sort=True):
        stats = corr[(corr.external_set == name) & (corr["drop"] == "auc_drop")].set_index("measure")
        titles = {m: (f"rho {r.rho:.2f}" + (f" [{r.ci_low:.2f}, {r.ci_high:.2f}]" if pd.notna(r.ci_low) else "")
                      + f", n = {r.n_runs}" if pd.notna(r.rho) else f"n = {r.n_runs}: no rho")
                  for m, r in stats.iterrows()}
        blocks.append(Figure(
            f"external-drop-{_slug(str(name))}", f"Figure 6. Each audit measure against the AUC drop on {name}",
            figures.drop_scatter(rows, ext_analysis.AUDIT_MEASURES, titles),
            "One point per run, labelled with its model and coloured by the dataset it was trained on. y: internal "
            "minus external AUC (above 0: worse elsewhere). A warning that works puts the lung-reliance measures "
            "(lung mass, focus, pointing game, lungs-only accuracy) on a falling line and lungs-removed accuracy "
            "and the source probe on a rising one. Panel titles: Spearman's rho, its 95% bootstrap CI over runs, "
            "and the runs it rests on (few runs: a wide CI)."))
    return tuple(blocks)


def _order_like(frame: pd.DataFrame, grouped: pd.DataFrame) -> pd.DataFrame:
    """Rows in the order of the main tables' seed groups, then as they came."""
    if frame.empty:
        return frame
    rank = {g: i for i, g in enumerate(grouped["seed_group"])}
    return frame.assign(_rank=frame["seed_group"].map(rank)).sort_values(
        "_rank", kind="stable", na_position="last").drop(columns="_rank")


def _focus_per_class(inputs: Inputs, groups, method, baselines) -> Figure | Paragraph:
    rows = inputs.by_class[inputs.by_class.method == method] if method else inputs.by_class.iloc[0:0]
    if rows.empty or rows.lung_mass.isna().all():
        return Paragraph("No lung-focus measures are stored (no CAMs, or no lung masks).")
    rows = rows.drop(columns=["method"]).merge(inputs.details[RUN_KEYS], on="run_id")
    pooled = seeds.aggregate(rows, groups, by=("class_name",))
    pooled["label"] = [tables.model_label(r) + (f" ({r['n_seeds']} seeds)" if r["n_seeds"] > 1 else "")
                       for r in pooled.to_dict("records")]
    return Figure("lung-focus-per-class", "Figure 2. Lung mass per true class",
                  figures.focus_per_class(pooled, baselines),
                  f"Mean lung mass of the {method} maps of the predicted class, by the image's true class. A "
                  "model that finds one class from outside the lungs (a marker on those films) shows a low bar for "
                  "that class. Dashed: the uniform map.")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _roc_figures(inputs: Inputs, groups: pd.DataFrame, n_boot: int) -> list:
    preds = inputs.predictions
    if preds.empty:
        return [Paragraph("No test predictions stored.")]
    details = inputs.details.merge(groups[["run_id", "seed_group", "n_seeds"]], on="run_id")
    out = []
    for dataset, runs in details.groupby("dataset", sort=True):
        panels = []
        for _, members in runs.groupby("seed_group", sort=True):
            per_class: dict[str, list] = {}
            for run in members.to_dict("records"):
                for cls, curve in _run_curves(run, preds[preds.run_id == run["run_id"]], n_boot).items():
                    per_class.setdefault(cls, []).append(curve)
            first = members.iloc[0].to_dict()
            title = tables.model_label(first) + (f"\n{len(members)} seeds, mean" if len(members) > 1 else "")
            panels.append((title, {cls: mean_curve(c) for cls, c in per_class.items()}))
        out.append(Figure(f"roc-{_slug(dataset)}", f"Figure 3. ROC curves on {dataset} (test split)",
                          figures.roc_grid(panels),
                          f"One class against the rest; shaded: 95% band over {n_boot} patient-bootstrap resamples "
                          "of the test images (seed groups: curves and band bounds averaged over seeds). Legend: the "
                          "class and its AUC."))
    return out


def _confusion_calibration_figures(inputs: Inputs, groups: pd.DataFrame) -> list:
    """Per dataset: each seed group's confusion matrix (counts summed over seeds) and its reliability
    diagram with ECE (over every seed's predictions), from the same code as the dashboard's page."""
    preds = inputs.predictions
    if preds.empty:
        return [Paragraph("No test predictions stored.")]
    details = inputs.details.merge(groups[["run_id", "seed_group", "n_seeds"]], on="run_id")
    out = []
    for dataset, runs in details.groupby("dataset", sort=True):
        confusion, calibration = [], []
        for _, members in runs.groupby("seed_group", sort=True):
            scored = []
            for run in members.to_dict("records"):
                try:
                    scored.append(performance.scored(
                        preds[preds.run_id == run["run_id"]], performance.classes_of(run.get("classes_json")),
                        run_id=run["run_id"], split="test"))
                except ValueError as exc:
                    log.warning("%s; no confusion matrix or calibration for it", exc)
            scored = [s for s in scored if s.labels.size]
            if not scored:
                continue
            first = members.iloc[0].to_dict()
            title = tables.model_label(first) + (f", {len(scored)} seeds" if len(scored) > 1 else "")
            perf = performance.performance(scored, with_roc=False)
            confusion.append((title, perf.classes, perf.confusion))
            calibration.append((title, perf.reliability))
        if not confusion:
            continue
        out.append(Figure(f"confusion-{_slug(dataset)}", f"Figure 3b. Confusion matrices on {dataset} (test split)",
                          figures.confusion_grid(confusion),
                          "Rows: the true class; columns: the predicted class. Each cell: the share of its row (the "
                          "diagonal is each class's sensitivity) and the count; seed groups: counts summed over "
                          "seeds."))
        out.append(Figure(f"calibration-{_slug(dataset)}", f"Figure 3c. Calibration on {dataset} (test split)",
                          figures.reliability_grid(calibration),
                          "Reliability diagrams: the test predictions binned by confidence (their highest class "
                          "probability, 10 bins); bars: the accuracy in each bin, red marks: its mean confidence, "
                          "dotted: a calibrated model. ECE: the gap weighted by the images in each bin (seed "
                          "groups: over every seed's predictions)."))
    return out or [Paragraph("No run has test predictions with its classes stored.")]


def _run_curves(run: dict, preds: pd.DataFrame, n_boot: int) -> dict:
    try:
        classes = json.loads(run.get("classes_json") or "[]")
    except ValueError:
        classes = []
    if preds.empty or not classes:
        return {}
    index = {c: i for i, c in enumerate(classes)}
    known = preds[preds.label.isin(index)]
    probs = np.array([list(p) for p in known.probs], dtype=np.float64)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        log.warning("run %s: stored probabilities do not match its %d classes; no ROC", run["run_id"], len(classes))
        return {}
    patients = known.patient_id.fillna(known.image_id).tolist()
    curves = roc_curves(known.label.map(index).to_numpy(), probs, patients, n_boot=n_boot,
                        seed=int(run.get("seed") or 0) if pd.notna(run.get("seed")) else 0)
    return {classes[k]: c for k, c in curves.items()}


def _cam_figures(db: Path, board: pd.DataFrame, groups: pd.DataFrame, inputs: Inputs, method) -> list:
    if method is None:
        return [Paragraph("No CAMs are stored.")]
    chosen = cam_panels.suspects(board, groups)
    preds = inputs.predictions
    picks = {d: (runs, cam_panels.pick_images(preds, runs)) for d, runs in chosen.items()}
    picks = {d: (runs, images) for d, (runs, images) in picks.items() if runs and images}
    if not picks:
        return [Paragraph("No run has both lung-focus measures and test predictions to show.")]
    with reader(db) as con:
        fetched = {d: (queries.predicted_images(con, d),
                       queries.cams_for_pairs(con, [r for r in runs for _ in images], images * len(runs), method))
                   for d, (runs, images) in picks.items()}
    by_run = board.set_index("run_id")
    out = []
    for dataset, (runs, images) in picks.items():
        meta, cams = fetched[dataset]
        grid = cam_panels.cells(runs, images, meta, preds[preds.run_id.isin(runs)], cams)
        titles = [f"{by_run.at[r, 'model']}\nacc {by_run.at[r, 'accuracy']:.2f}, "
                  + (f"focus {by_run.at[r, 'lung_focus_score']:.2f}" if pd.notna(by_run.at[r, "lung_focus_score"])
                     else f"lung mass {by_run.at[r, 'lung_mass']:.2f}") for r in runs]
        out.append(Figure(f"cams-{_slug(dataset)}", f"Figure 4. CAMs of the likeliest shortcut learners on {dataset}",
                          figures.cam_grid(titles, grid),
                          f"Rows: the {len(runs)} runs with the largest accuracy minus lung focus (focus score, else "
                          f"lung mass; one run per seed group): {', '.join(runs)}. Columns: the same test images, one "
                          f"class after another. {method} map of the predicted class over the X-ray; green: the lung "
                          "mask's contour."))
    return out

