"""The report's tables as display strings (pandas only): the numbers of measures.py, pooled over
seed groups by seeds.py, written with their CIs, spread over seeds and the run ids behind them.

A cell reads `0.912 [0.851, 0.963]` for one run and `0.912 ± 0.013 [0.851, 0.963]` for a seed
group (mean ± SD over seeds, mean of the per-seed CI bounds); the table's notes say which.
"""
from __future__ import annotations

import math

import pandas as pd

from benchmark.analysis.seeds import SD_SUFFIX, SEEDS_NOTE
from benchmark.report.document import Table
from benchmark.store.schema import PHASES

DIGITS = 3
RUN_ID = "Run id"


def num(value, digits: int = DIGITS) -> str:
    """A number as text; '' for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or pd.isna(value):
        return ""
    return f"{float(value):.{digits}f}"


def count(value) -> str:
    return "" if value is None or pd.isna(value) else f"{int(round(float(value)))}"


def cell(row, col: str, ci: bool = True, digits: int = DIGITS) -> str:
    """`value [low, high]`, with `± sd` after the value when the row pools several seeds."""
    value = row.get(col)
    text = num(value, digits)
    if not text:
        return ""
    sd = row.get(col + SD_SUFFIX)
    if row.get("n_seeds", 1) > 1 and sd is not None and pd.notna(sd):
        text += f" ± {sd:.{digits}f}"
    low, high = row.get(f"{col}_ci_low"), row.get(f"{col}_ci_high")
    if ci and low is not None and high is not None and pd.notna(low) and pd.notna(high):
        text += f" [{low:.{digits}f}, {high:.{digits}f}]"
    return text


def _yes(value) -> str:
    return "yes" if value is True or (not pd.isna(value) and bool(value)) else "no"


def _seeds(row) -> str:
    """'1 (seed 0)' for a single run, '3 (seeds 0, 1, 2)' for a seed group."""
    n = int(row.get("n_seeds", 1) or 1)
    listed = row.get("seeds") or ""
    return f"{n} (seed{'s' if n > 1 else ''} {listed})" if listed else str(n)


def _seed_notes(frame: pd.DataFrame) -> tuple[str, ...]:
    """The pooling footnote, only where a row pools several seeds."""
    return (SEEDS_NOTE,) if "n_seeds" in frame and (frame["n_seeds"] > 1).any() else ()


def model_label(row) -> str:
    """The model with the variants that make it a different run: ImageNet weights, lungs-only control."""
    extra = [label for label, key in (("ImageNet", "pretrained"), ("lungs only", "lungs_only"))
             if key in row and not pd.isna(row[key]) and bool(row[key])]
    return f"{row['model']} ({', '.join(extra)})" if extra else str(row["model"])


def _text(value) -> str:
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _has_external_auc(frame: pd.DataFrame) -> bool:
    return "external_auc" in frame and pd.to_numeric(frame["external_auc"], errors="coerce").notna().any()


def study_table(groups: pd.DataFrame) -> Table:
    """The paper's table: accuracy, sensitivity, specificity and AUC with CIs per model x database;
    where any run was scored on an external set, its AUC there and the drop, so an accurate model
    that fails elsewhere shows in the first table."""
    external = _has_external_auc(groups)
    rows = []
    for r in _records(groups):
        row = {"Dataset": r["dataset"], "Model": model_label(r), "Seeds": _seeds(r), "n test": count(r.get("n_test")),
               "Accuracy": cell(r, "accuracy"), "Sensitivity (macro)": cell(r, "balanced_accuracy"),
               "Specificity (macro)": cell(r, "specificity", ci=False), "AUC (macro)": cell(r, "macro_auc")}
        if external:
            row.update({"Internal AUC (set's classes)": cell(r, "internal_auc", ci=False),
                        "External AUC": cell(r, "external_auc", ci=False), "AUC drop": cell(r, "auc_drop", ci=False),
                        "External set": _text(r.get("external_set"))})
        rows.append({**row, RUN_ID: r["run_id"]})
    return Table("Table 1. Test-split metrics per model and database", pd.DataFrame(rows), notes=(
        "95% CIs by patient bootstrap (all images of a drawn patient; stored per run in `metrics`).",
        "Sensitivity (macro) is the mean per-class sensitivity, i.e. balanced accuracy, with its own CI. "
        "Specificity (macro) is the mean per-class specificity; a mean of per-class CIs is not a CI, so none "
        "is shown: Table 2 gives each class's sensitivity, specificity and AUC with CIs.",
        "AUC (macro): binary data, the AUC of the second class; otherwise the mean one-vs-rest AUC.",
        *(("External AUC: on another hospital's images, the set where the AUC fell most; internal AUC: the same "
           "rule on the run's own test images of the set's classes; AUC drop = internal - external (Table 5 "
           "gives every set).",) if external else ()),
        *_seed_notes(groups)))


def class_table(groups: pd.DataFrame) -> Table:
    rows = [{"Dataset": r["dataset"], "Model": model_label(r), "Seeds": _seeds(r), "Class": r["class_name"],
             "Sensitivity": cell(r, "sensitivity"), "Specificity": cell(r, "specificity"), "AUC": cell(r, "auc"),
             RUN_ID: r["run_id"]} for r in _records(groups)
            if any(pd.notna(r.get(k)) for k in ("sensitivity", "specificity", "auc"))]  # classes the run has
    return Table("Table 2. Per-class sensitivity, specificity and AUC (one class against the rest)",
                 pd.DataFrame(rows), notes=("95% CIs by patient bootstrap.", *_seed_notes(groups)))


def audit_table(groups: pd.DataFrame, method: str | None) -> Table:
    """Beside Table 1, row for row: where the CAMs lie and what the probes found."""
    rows = [{"Dataset": r["dataset"], "Model": model_label(r), "Seeds": _seeds(r),
             "Lung mass": cell(r, "lung_mass"), "Uniform map": num(r.get("uniform_baseline")),
             "Ceiling": num(r.get("lung_mass_ceiling")), "Focus score": cell(r, "lung_focus_score", digits=2),
             "Pointing game": cell(r, "pointing_game"),
             "Acc. intact": cell(r, "probe_intact"), "Acc. lungs removed": cell(r, "probe_lungs_removed"),
             "Acc. lungs only": cell(r, "probe_lungs_only"), "Drop w/o lungs": cell(r, "lungs_removed_drop"),
             RUN_ID: r["run_id"]} for r in _records(groups)]
    return Table(f"Table 3. The audit: lung focus of the {method or '(no CAMs)'} maps and the lungs probes",
                 pd.DataFrame(rows), notes=(
        "Lung mass: mean share of a CAM's positive mass inside the lung mask (maps of the predicted class, test "
        "images). Uniform map: the lungs' share of the image over the dataset's test masks, what a map spread "
        "evenly scores. Ceiling: the lung mass of a perfect lungs-only map at the CAM's resolution.",
        "Focus score = (lung mass - uniform) / (ceiling - uniform): 0 = no better than a uniform map, 1 = as "
        "lung-focused as the resolution allows (blank where ceiling and uniform are closer than 0.05).",
        "Pointing game: share of CAM peaks on the lungs. Acc. intact / lungs removed / lungs only: accuracy on the "
        "test images that have a lung mask, as they are, with the lungs filled with the image mean, and with "
        "everything but the lungs filled; drop = intact - lungs removed (near 0: the lungs did not matter).",
        *_seed_notes(groups)), empty_text="No runs.")


def external_table(groups: pd.DataFrame) -> Table:
    rows = [{"Trained on": r["dataset"], "Model": model_label(r), "Seeds": _seeds(r), "External set": r["external_set"],
             "Internal test acc.": cell(r, "internal_accuracy", ci=False),
             "External acc.": cell(r, "external_accuracy"),
             "Drop": cell(r, "drop", ci=False), "Images": count(r.get("n_images")),
             "Left out (seen in training)": count(r.get("n_left_out_seen")), RUN_ID: r["run_id"]}
            for r in _records(groups)]
    return Table("Table 4. External validation: each model on another database", pd.DataFrame(rows), notes=(
        "A model scored on a database it was not trained on (classes it does not know left out, and images it "
        "trained or validated on left out and counted). Drop = internal test accuracy - external accuracy: "
        "a large drop means the model learned something about its own database, not the disease.",
        *_seed_notes(groups)), empty_text="No external validation stored (`cxr-audit evaluate`, or an experiment's "
                                "external pairs, add it).")


def external_drop_table(drops: pd.DataFrame, method: str | None) -> Table:
    """Per run and external set (analysis.external.drop_table): the AUC and balanced-accuracy drops
    beside the run's audit measures, largest AUC drop first."""
    rows = [{"Model": model_label(r), "Trained on": r["dataset"], "External set": r["external_set"],
             "Internal AUC": num(r.get("internal_set_auc")), "External AUC": cell(r, "set_auc"),
             "AUC drop": num(r.get("auc_drop")), "Bal. acc. drop": num(r.get("bacc_drop")),
             "Off-set share": num(r.get("off_set_share")), "Images": count(r.get("n_images")),
             "Lung mass - uniform": num(r.get("lung_mass_above_uniform")),
             "Focus score": num(r.get("lung_focus_score"), 2), "Pointing game": num(r.get("pointing_game")),
             "Acc. lungs removed": num(r.get("lungs_removed_acc")), "Acc. lungs only": num(r.get("lungs_only_acc")),
             "Source AUC": num(r.get("source_auc")), "Sanity rank corr.": num(r.get("sanity_rank_corr"), 2),
             RUN_ID: r["run_id"]} for r in _records(drops)]
    return Table("Table 5. The external drop beside the audit, per run", pd.DataFrame(rows), notes=(
        "External AUC: for a two-class set, the AUC of p(its last class, e.g. covid) over the set's images; for "
        "more classes, the mean one-vs-rest AUC over the set's classes (95% CI by patient bootstrap). Internal "
        "AUC: the same rule on the run's own test images whose class the set has, so a 3- or 4-class model is "
        "compared on the same question. Drop = internal - external; bal. acc. drop likewise with the mean "
        "recall over the set's classes.",
        "Off-set share: the share of the set's images the model put in a class the set does not have (a 4-class "
        "model calling covid images bacterial pneumonia).",
        f"Audit measures from the {method or '(no CAMs)'} maps and the probes on the run's own test images "
        "(Table 3), before it saw the external set. Lung mass - uniform: above 0 = the maps favour the lungs.",
        ), empty_text="No run has an external AUC stored.")


def drop_correlation_table(corr: pd.DataFrame, few_runs_note: str, within: pd.DataFrame | None = None) -> Table:
    """Across runs, per external set: each audit measure's rank correlation with each drop, its CI,
    the runs it rests on, the sign it should have if the warning is right, the verdict, and
    (`within`: analysis.external.within_training_sets) the same rho among the runs of each training set."""
    inside = {} if within is None or within.empty else {
        (w["external_set"], w["measure"], w["drop"]): w["within"] for w in _records(within)}
    rows = [{"External set": r.get("external_set", ""), "Measure": r["measure_label"], "Drop": r["drop_label"],
             "Expected sign": {-1: "negative", 1: "positive"}.get(int(r["expected_sign"]), "none"),
             "Spearman rho": num(r["rho"], 2),
             "95% CI": "" if pd.isna(r["ci_low"]) else f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
             "Runs": count(r["n_runs"]), "Verdict": r["verdict"], "Note": r["note"],
             "Within each training set": inside.get((r.get("external_set", ""), r["measure"], r["drop"]), "")}
            for r in _records(corr)]
    return Table("Table 6. Does the audit predict the external drop? Rank correlations across runs",
                 pd.DataFrame(rows), notes=(
        few_runs_note,
        "Expected sign: negative for measures of lung reliance (lung mass, focus score, pointing game, accuracy "
        "from the lungs alone): the more a model reads the lungs, the less it should lose elsewhere; positive "
        "for signs of a shortcut (accuracy kept with the lungs removed, a recognisable source). The CAM sanity "
        "check says whether the maps can be trusted at all, not which way the drop goes. Test accuracy is no audit "
        "measure but the baseline: the models weaker at home may simply fail more elsewhere, and an audit measure "
        "tells more than accuracy only where it ranks the drops better.",
        "95% CI: percentiles of rho over resamples of the runs (with replacement; a resample in which either "
        "variable is constant is skipped); where a model was trained with several seeds, its runs are resampled "
        "together (Note: the seed groups counted), since they are not independent trials. Blank: too few runs, a "
        "measure the same for every run, or one not measured (Note).",
        "Within each training set: rho [95% CI, as above] among the runs trained on one dataset (runs), where a "
        "set's runs come from several and one has at least 5. A pooled rho that no training set repeats ranks the "
        "training sets, not the models: a source probe, for one, describes the database a model learnt from."),
        empty_text="No run has an external AUC stored.")


def seed_replication_table(replication: pd.DataFrame) -> Table:
    """Per external set and training dataset (analysis.replication.seed_replication): how much of the
    drop and of each audit measure lies between models rather than between seeds of one model."""
    rows = [{"External set": r["external_set"] or "(own test split)", "Trained on": r["dataset"],
             "Quantity": r["label"],
             "Models (runs)": f"{count(r['n_groups'])} ({count(r['n_runs'])})",
             "SD between models": num(r["between_sd"]), "SD between seeds": num(r["within_sd"]),
             "ICC(1)": num(r["icc"], 2), "Seed-vs-seed rho": num(r["seed_rho"], 2),
             "Seed pairs": count(r["n_seed_pairs"])}
            for r in _records(replication)]
    return Table("Table 6b. Does a model's external drop repeat when it is trained again?", pd.DataFrame(rows), notes=(
        "Over the models trained with two or more seeds on one dataset: the drops per external set (the runs "
        "scored on it), then the audit measures and the test accuracy on the runs' own test split. SD between "
        "models: of the models' means over seeds; SD between seeds: pooled over the models. ICC(1): the share of "
        "the variance that lies between models (one-way random effects; near 0 or below: the differences between "
        "models are those between seeds). Seed-vs-seed rho: Spearman's rho between two seeds' values over the "
        "models, the mean over pairs of seeds.",
        "An audit measure can rank the models of a training set by their drop only where the drop itself repeats "
        "across seeds (a clearly positive ICC and rho): where it does not, there is no ranking of models to find, "
        "and Table 6's rho within that training set is noise whatever its sign."),
        empty_text="No model has two seeds scored on an external set.")


def cost_table(costs: pd.DataFrame) -> Table:
    phase_cols = [f"{p}_seconds" for p in PHASES]
    rows = []
    for r in _records(costs):
        row = {"Dataset": r["dataset"], "Model": r["model"], "Seed": count(r.get("seed")),
               "Device": r.get("device") or ""}
        row.update({p: num(r.get(col), 1) for p, col in zip(PHASES, phase_cols)})
        row.update({"total": num(r.get("total_seconds"), 1), "train img/s": num(r.get("train_images_per_s"), 1),
                    RUN_ID: r["run_id"]})
        rows.append(row)
    return Table("Cost per phase (wall seconds per run)", pd.DataFrame(rows), notes=(
        "decode: reading and resizing the images (cached on disk after the first run); train: fitting; eval: "
        "scoring the test split; cam: computing and measuring the CAMs, with the CAM sanity check; faithfulness: "
        "ROAD and confidence drop; probe: the lungs probes and the source probes; store: writing the run's rows. "
        "Blank: not recorded (results written before the phases were timed).",))


def image_count_table(counts: pd.DataFrame) -> Table:
    """Images per dataset, source and class, one column per split, plus the lung masks and their origin."""
    if counts.empty:
        return Table("Images per dataset, source, class and split", pd.DataFrame())
    keys = ["dataset", "source", "label"]
    wide = counts.pivot_table(index=keys, columns="split", values="n_images", aggfunc="sum", fill_value=0)
    splits = [s for s in ("train", "val", "test", "external") if s in wide.columns]
    splits += [s for s in wide.columns if s not in splits]
    masks = counts.groupby(keys).agg(n_masks=("n_masks", "sum"), mask_sources=("mask_sources", _join_unique))
    frame = wide[splits].join(masks).reset_index()
    rows = []
    for r in _records(frame):
        row = {"Dataset": r["dataset"], "Source": r["source"], "Class": r["label"]}
        row.update({s or "(none)": count(r[s]) for s in splits})
        row.update({"total": count(sum(r[s] for s in splits)), "with lung mask": count(r["n_masks"]),
                    "mask from": r["mask_sources"] or ""})
        rows.append(row)
    return Table("Images per dataset, source, class and split", pd.DataFrame(rows), notes=(
        "Splits are by patient (no patient in two splits). 'external': images a model was scored on by external "
        "validation only.",))


def _join_unique(values) -> str:
    parts = sorted({p.strip() for v in values if isinstance(v, str) for p in v.split(",") if p.strip()})
    return ", ".join(parts)


def rejected_table(rejected: pd.DataFrame) -> Table:
    rows = [{"Dataset": r["dataset"], "Source": r["source"], "Reason": r["reason"], "Files": count(r["n_files"]),
             "Example": r["example"]} for r in _records(rejected)]
    return Table("Files rejected as unreadable", pd.DataFrame(rows), notes=(
        "Corrupt, truncated, empty, not an image, or a decompression bomb: skipped and recorded in "
        "`rejected_images`; the runs went on without them.",), empty_text="No file was rejected.")


def cam_skip_table(skips: pd.DataFrame) -> Table:
    rows = [{"Dataset": r["dataset"], "Model": r["model"], "Split": r["split"], "Method": r["method"],
             "Reason": r["reason"], RUN_ID: r["run_id"]} for r in _records(skips)]
    return Table("CAM methods asked for but not run", pd.DataFrame(rows),
                 empty_text="Every CAM method asked for was run.")


def runs_table(details: pd.DataFrame, groups: pd.DataFrame) -> Table:
    n = groups.set_index("run_id")["n_seeds"] if not groups.empty else pd.Series(dtype=int)
    rows = [{"Dataset": r["dataset"], "Model": model_label(r), "Seed": count(r.get("seed")),
             "Seeds in group": count(n.get(r["run_id"], 1)), "Image size": count(r.get("image_size")),
             "Epochs (run)": f"{count(r.get('epochs'))} ({count(r.get('epochs_run'))})",
             "Train / val / test": "/".join(count(r.get(k)) for k in ("n_train", "n_val", "n_test")),
             "Device": r.get("device") or "", "Commit": r.get("git_commit") or "",
             "Finished": str(r.get("finished_at") or "")[:19], RUN_ID: r["run_id"]} for r in _records(details)]
    return Table("Runs", pd.DataFrame(rows), notes=(
        "Runs that differ only by their seed form a seed group (same dataset, model, ImageNet weights, lungs-only "
        "control, image size and epochs).",))


def failed_table(failed: pd.DataFrame) -> Table:
    rows = [{"Dataset": r["dataset"], "Model": r["model"], "Status": r["status"],
             "Error": str(r.get("error") or "")[:300], RUN_ID: r["run_id"]} for r in _records(failed)]
    return Table("Runs not finished (not in any table above)", pd.DataFrame(rows), empty_text="None.")


def segmenter_table(segmenters: pd.DataFrame) -> Table:
    rows = [{"Checkpoint": r["checkpoint_path"], "Created": str(r.get("created_at") or "")[:19],
             "Image size": count(r.get("image_size")), "Dice (held out)": num(r.get("dice_heldout")),
             "Held-out masks from": r.get("dice_heldout_source") or "", "n train": count(r.get("n_train")),
             "n held out": count(r.get("n_heldout"))} for r in _records(segmenters)]
    return Table("Lung segmenter used for predicted masks", pd.DataFrame(rows),
                 empty_text="No predicted lung masks were used (ground-truth masks only).")


def _records(frame: pd.DataFrame) -> list[dict]:
    return [] if frame is None or frame.empty else frame.to_dict("records")
