"""Leaderboard: every model x dataset with its accuracy beside how much of its CAMs lie on the lungs."""
import functools

import streamlit as st

from dashboard import cache, common, downloads, views

st.title("Leaderboard")
st.caption("Accuracy alone cannot tell a model that reads the lungs from one that reads a text marker. "
           "Each row puts a run's test metrics (95% CIs by patient bootstrap) beside its lung focus "
           "and the shortcut probes.")

if not common.require_results():
    st.stop()

cfg = cache.settings()
st.download_button("Replication report (HTML)", key="lb_report", icon=":material/download:",
                   data=functools.partial(cache.report_html, str(cfg.db_path), cache.db_stamp(cfg.db_path)),
                   file_name=f"{cfg.db_path.stem}-report.html", mime="text/html", on_click="ignore",
                   help="The study's table beside the audit, figures, data provenance, seeds and costs: one HTML "
                        "file that works offline (`cxr-audit report` writes the same). Built when clicked; "
                        "the first build of a large database takes a while.")

summary = cache.query("summary")
class_metrics = cache.query("class_metrics")
focus = cache.query("lung_focus_by_run")
methods = sorted(focus["method"].unique()) if not focus.empty else []
all_datasets = sorted(summary["dataset"].unique())

c1, c2, c3, c4 = st.columns([3, 1.2, 1.4, 1.8])
chosen = c1.multiselect("Datasets", all_datasets, default=all_datasets, key="lb_datasets",
                        persist_state="session")
method = c2.selectbox("CAM method", methods or ["(no CAMs stored)"],
                      index=views.preferred_method_index(methods),
                      key="lb_method", persist_state="session",
                      help="Lung focus is averaged over this method's maps of the predicted class on test images.")
class_choice = c3.selectbox("Sens. / spec. / AUC of", [views.MEAN_OVER_CLASSES] + views.class_choices(class_metrics),
                            key="lb_class", persist_state="session",
                            help="One class (one-vs-rest, with CIs) or the mean over classes (AUC: macro AUC).")
sort_label = c4.selectbox("Sort by", list(views.SORT_KEYS), key="lb_sort", persist_state="session")
by_group = cache.several_seeds() and st.toggle(
    "One row per seed group", value=True, key="lb_seed_groups", persist_state="session",
    help="Runs that differ only by their training seed (same dataset, model, weights, lungs-only, image size, "
         "epochs): the mean over seeds with the SD over seeds and how many seeds; the CI columns are then the "
         "mean of the per-seed 95% CI bounds, not a CI of the mean.")

base = cache.baselines(chosen)
baseline_values = {d: v for d, (v, _) in base.items()}
choice = views.LeaderboardChoice(datasets=tuple(chosen), method=method if methods else None,
                                 class_choice=class_choice, by_group=bool(by_group), sort_label=sort_label,
                                 baselines=tuple(sorted(baseline_values.items())))
view = cache.leaderboard(choice)
board, table = view.board, view.table
common.stale_notice()

if board.empty:
    st.info("No runs for the chosen datasets.")
    st.stop()

num = st.column_config.NumberColumn
seed_cols = ["n_seeds"] if by_group else []
# beside accuracy, so a model accurate at home that fails on another hospital's images shows at a glance
external_cols = (["internal_auc", "external_auc", "auc_drop"] + (["auc_drop_sd"] if by_group else [])
                 + ["external_set"]) if board["external_auc"].notna().any() else []
sd_help = "SD over the group's seeds (sample SD; blank with one seed)"
st.dataframe(
    table, key="lb_table", hide_index=True, height=35 * (min(len(table), 15) + 1) + 3,
    column_order=["dataset", "model"] + seed_cols + ["accuracy", "accuracy_ci"]
                 + (["accuracy_sd"] if by_group else []) + external_cols + ["lung_mass", "n_scored"]
                 + (["lung_mass_sd"] if by_group else []) + ["uniform_baseline",
                  "lung_mass_vs_uniform", "lung_mass_ceiling", "lung_focus_score"]
                 + (["lung_focus_score_sd"] if by_group else []) + ["pointing_game"]
                 + (["marker_mass"] if board["marker_mass"].notna().any() else [])
                 + ["lungs_removed_acc", "lungs_removed_drop", "external_drop", "external_dataset"]
                 + (["source_auc", "source_auc_ci", "source_pixels_auc"]
                    if board[["source_auc", "source_pixels_auc"]].notna().any(axis=None) else [])
                 + (["sanity_rank_corr", "sanity_flagged", "sanity_flagged_methods"]
                    if board["sanity_flagged_methods"].notna().any() else [])
                 + ["sensitivity", "sensitivity_ci", "specificity", "specificity_ci", "auc", "auc_ci"]
                 + (["auc_sd"] if by_group else []) + ["pretrained", "n_test"],
    column_config={
        "dataset": "Dataset", "model": "Model", "pretrained": st.column_config.CheckboxColumn("ImageNet"),
        "n_test": num("n test", format="%d"),
        "accuracy": st.column_config.ProgressColumn("Accuracy", format="%.3f", min_value=0, max_value=1),
        "accuracy_ci": "Acc. 95% CI",
        "sensitivity": num("Sensitivity", format="%.3f"), "sensitivity_ci": "Sens. 95% CI",
        "specificity": num("Specificity", format="%.3f"), "specificity_ci": "Spec. 95% CI",
        "auc": num("AUC", format="%.3f"), "auc_ci": "AUC 95% CI",
        "lung_mass": st.column_config.ProgressColumn("Lung mass", format="%.3f", min_value=0, max_value=1,
                                                     help="Mean share of positive CAM mass inside the lung mask"),
        "n_scored": num("Maps scored", format="%.0f",
                        help="How many of this method's maps the lung-mass mean rests on: maps of test images "
                             "with a lung mask and a positive value somewhere (a map that is all zero, as a "
                             "1 x 1 last layer often gives, has no lung mass). Seed groups: the mean over seeds"),
        "uniform_baseline": num("Uniform map", format="%.3f",
                                help="Lungs' share of the image (mean over test masks): "
                                     "a CAM spread evenly scores this"),
        "lung_mass_vs_uniform": num("× uniform", format="%.2f",
                                    help="Lung mass / uniform map; 1 = no better than uniform"),
        "lung_mass_ceiling": num("Ceiling", format="%.3f",
                                 help="Lung mass of a perfect lungs-only map at this model's CAM resolution "
                                      "(a 7x7 map cannot reach 1)"),
        "lung_focus_score": num("Focus score", format="%.2f",
                                help="(lung mass - uniform) / (ceiling - uniform): 0 = uniform map, "
                                     "1 = as lung-focused as the map's resolution allows"),
        "pointing_game": num("Pointing game", format="%.3f", help="Share of CAM peaks that lie on the lungs"),
        "marker_mass": num("Marker mass", format="%.3f",
                           help="Phantom data: mean share of CAM mass on the planted text marker (the shortcut)"),
        "lungs_removed_acc": num("Acc. lungs removed", format="%.3f",
                                 help="Accuracy when everything inside the lungs is removed: near the full "
                                      "accuracy means the model decides from outside the lungs"),
        "lungs_removed_drop": num("Drop w/o lungs", format="%.3f",
                                  help="Accuracy on the same images intact minus with the lungs removed: "
                                       "near 0 = the lungs did not matter"),
        "external_drop": num("External drop", format="%.3f",
                             help="Test accuracy minus accuracy on another dataset (the worst one)"),
        "external_dataset": "External set",
        "internal_auc": num("Internal AUC", format="%.3f",
                            help="AUC on this run's own test images, counting only the classes the external set "
                                 "has (two-class set: the AUC of its last class, e.g. covid; more classes: the mean "
                                 "one-vs-rest AUC), so it asks the same question as the external AUC"),
        "external_auc": num("External AUC", format="%.3f",
                            help="The same AUC on another hospital's images (the external set in the next "
                                 "columns: where the AUC fell most when there are several)"),
        "auc_drop": num("AUC drop", format="%.3f",
                        help="Internal AUC minus external AUC: a large drop means the model learned something "
                             "about its own database rather than the disease; the report's section 'Does the "
                             "audit predict external failure?' sets it beside every audit measure"),
        "auc_drop_sd": num("AUC drop SD (seeds)", format="%.3f", help=sd_help),
        "external_set": st.column_config.TextColumn(
            "AUC drop on", help="The external set of the AUC columns: the one with the largest AUC drop"),
        "source_auc": num("Source AUC", format="%.3f",
                          help="Source probe (Zech et al. 2018): macro AUC of a logistic regression telling the "
                               "source database apart from the model's penultimate features (fitted on the train "
                               "split, scored on the test split); 0.5 = indistinguishable, 1 = always told apart"),
        "source_auc_ci": "Source AUC 95% CI",
        "source_pixels_auc": num("Source AUC (pixels)", format="%.3f",
                                 help="The same probe on the raw image pooled to 16 x 16: how recognisable the "
                                      "source is with no model at all, i.e. how available the shortcut is"),
        "sanity_rank_corr": num("Sanity rank corr.", format="%.2f",
                                help="CAM sanity check (Adebayo et al. 2018) of this method: mean Spearman "
                                     "correlation between the trained model's maps and those of the same "
                                     "architecture with randomised weights; high = the maps barely depend on "
                                     "what the model learned"),
        "sanity_flagged": num("Sanity flag", format="%.0f",
                              help="1 = this method's maps barely change under randomised weights, so they do "
                                   "not explain the model (seed groups: the share of seeds flagged)"),
        "sanity_flagged_methods": st.column_config.TextColumn(
            "Flagged methods", help="Every CAM method of the run flagged by the sanity check"),
        "n_seeds": num("Seeds", format="%d", help="Runs in the seed group"),
        "accuracy_sd": num("Acc. SD (seeds)", format="%.3f", help=sd_help),
        "lung_mass_sd": num("Lung mass SD (seeds)", format="%.3f", help=sd_help),
        "lung_focus_score_sd": num("Focus SD (seeds)", format="%.2f", help=sd_help),
        "auc_sd": num("AUC SD (seeds)", format="%.3f", help=sd_help),
    },
)
downloads.table_buttons(table, "leaderboard", "lb_table")
if by_group:
    st.caption("One row per seed group: each number is the mean over the group's seeds, beside its SD over seeds; "
               "the 95% CI columns are the mean of the per-seed bootstrap CI bounds (not a CI of the mean). "
               "Run ids: the group's runs.")

st.subheader("Accuracy against lung focus")
focus_col = st.radio("Lung-focus measure", ["lung_mass", "pointing_game"], horizontal=True, key="lb_focus",
                     format_func=lambda c: "lung mass" if c == "lung_mass" else "pointing game",
                     persist_state="session")
if board[focus_col].notna().any():
    st.plotly_chart(cache.leaderboard_scatter(choice, focus_col, board), key="lb_scatter")
else:
    st.info("No CAMs with lung-focus measures are stored for this method yet; "
            "runs with `--cam-methods gradcam` add them.")
notes = [f"{d}: {v:.3f} over {n} test masks" for d, (v, n) in sorted(base.items()) if v is not None]
missing = [d for d, (v, _) in sorted(base.items()) if v is None]
st.caption("Dashed lines: the uniform-map baseline, i.e. the lungs' share of the image, computed from the "
           "dataset's test lung-mask files (not stored in the DB). "
           + ("; ".join(notes) if notes else "")
           + (f". No masks for {', '.join(missing)}." if missing else ""))

st.subheader("Shortcut probes")
st.caption("lungs_removed: test images with the lungs blanked out; lungs_only: everything but the lungs "
           "blanked out; external:<dataset>: the model applied to another dataset; <probe>@external:<dataset>: "
           "the lungs probes on that dataset's images. A model that keeps its accuracy without the lungs, or "
           "loses it on another hospital's images, learned a shortcut.")
probe_rows = view.probes
if probe_rows.empty:
    st.info("No probe results stored yet.")
else:
    st.dataframe(probe_rows, key="lb_probes", hide_index=True, column_config={
        "accuracy": num(format="%.3f"), "reference": num("compared with", format="%.3f",
                                                         help="intact accuracy on the same images (lungs "
                                                              "probes, also intact@external:<dataset> for those "
                                                              "on an external set) or test accuracy (external "
                                                              "sets)"),
        "change": num(format="%+.3f")})
    downloads.table_buttons(probe_rows, "shortcut-probes", "lb_probes")

st.subheader("Source probe and CAM sanity check")
st.caption("Source probe (Zech et al. 2018): a logistic regression fitted on the train split to tell which source "
           "database an image came from, scored on the test split (macro AUC, 95% CI by patient bootstrap): on the "
           "model's penultimate features and on the image pooled to 16 x 16 pixels. Near 1 = the source is "
           "recognisable, so a source shortcut is available; `auc_within:<class>` repeats it within one class. "
           "CAM sanity check (Adebayo et al. 2018): each method's maps of the trained model against the same "
           "architecture with all weights re-initialised; a high rank correlation (flagged) means the maps barely "
           "depend on what the model learned.")
src_rows, sanity_rows = view.sources, view.sanity
if src_rows.empty and sanity_rows.empty:
    st.info("No source probe or CAM sanity check stored for these runs.")
if not src_rows.empty:
    st.dataframe(src_rows, key="lb_source", hide_index=True, column_config={
        "auc": num("AUC", format="%.3f"), "n_test": num("n test", format="%d"),
        "note": st.column_config.TextColumn("note", help="why a probe was skipped")})
    downloads.table_buttons(src_rows, "source-probe", "lb_source")
if not sanity_rows.empty:
    st.dataframe(sanity_rows, key="lb_sanity", hide_index=True, column_config={
        "rank_corr": num("rank corr.", format="%.3f"), "n_images": num("images", format="%d"),
        "flagged": st.column_config.CheckboxColumn("flagged")})
    downloads.table_buttons(sanity_rows, "cam-sanity", "lb_sanity")

with st.expander("Cost per phase (wall seconds per run)"):
    costs = view.costs
    if costs.empty:
        st.info("No runs for the chosen datasets.")
    else:
        secs = {f"{p}_seconds": num(p, format="%.1f") for p in views.PHASES}
        st.dataframe(costs, key="lb_costs", hide_index=True, column_config={
            **secs, "total_seconds": num("total", format="%.1f"),
            "train_images_per_s": num("train img/s", format="%.1f")})
        downloads.table_buttons(costs, "phase-costs", "lb_costs")
        st.caption("decode: reading and resizing images; train: fitting; eval: scoring the test split; cam: CAMs "
                   "and their measures, with the CAM sanity check; faithfulness: ROAD and confidence drop; probe: "
                   "lungs probes and source probes; store: writing the run. Blank: not recorded (results written "
                   "before the phases were timed).")
