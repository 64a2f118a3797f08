"""Performance: one run's (or seed group's) ROC curves with bands, confusion matrices, calibration and
accuracy per source database, from its stored predictions."""
import pandas as pd
import streamlit as st

from benchmark.analysis.performance import SOURCE_BOOT, confusion_frame, reliability_frame
from benchmark.analysis.roc import FPR_GRID, ROC_BOOT
from dashboard import cache, common, downloads, render, views

st.title("Performance")
st.caption("The plots a radiology reader looks for first, for one run or one seed group: ROC curves per class "
           "with 95% bands (patient bootstrap), the confusion matrix, calibration (reliability diagram and "
           "ECE), and accuracy per source database, where a shortcut shows as a source that is easy.")
if not common.require_results():
    st.stop()

keep = {"persist_state": "session"}
details = cache.query("run_details")
groups = views.seed_groups(details)
datasets = sorted(details["dataset"].unique())
c1, c2, c3 = st.columns([1.2, 3, 1.2], vertical_alignment="bottom")
dataset = c1.selectbox("Dataset", datasets, key="perf_dataset", **keep)
choices = views.performance_choices(details, groups, dataset)
if st.session_state.get("perf_run") not in (None, *choices):
    del st.session_state["perf_run"]  # a choice of another dataset (or of an older results file)
pick = c2.selectbox("Run or seed group", list(choices), key="perf_run", format_func=lambda k: choices[k][0],
                    help="A seed group pools runs that differ only by their training seed: ROC curves and bands "
                         "averaged over seeds, confusion counts summed, calibration over every seed's "
                         "predictions, per-source numbers averaged.", **keep)
n_bins = c3.select_slider("Calibration bins", [5, 10, 15, 20], value=10, key="perf_bins", **keep)
run_ids = choices[pick][1]
try:
    measured, sources = cache.performance(run_ids, n_bins)
except ValueError as exc:  # stored probabilities that do not match the run's classes
    st.error(f"The predictions of {', '.join(run_ids)} cannot be measured: {exc}")
    st.stop()
common.stale_notice()
if not measured:
    st.info("No predictions are stored for this run.")
    st.stop()

splits = sorted(measured, key=lambda s: (s != "test", s))
if st.session_state.get("perf_split") not in (None, *splits):
    del st.session_state["perf_split"]
split = st.radio("Predictions on", splits, horizontal=True, key="perf_split", format_func=views.split_label,
                 help="test: the run's own held-out patients; external:<dataset>: the model applied to another "
                      "dataset (`cxr-audit evaluate`).") if len(splits) > 1 else splits[0]
perf = measured[split]
if not perf.classes or not perf.reliability.n:
    st.warning("This run's classes or predictions are not stored in a form that can be measured.")
    st.stop()
seeds_note = f" over {perf.n_runs} seeds" if perf.n_runs > 1 else ""
st.caption(f"{perf.n_images} predictions per run on the {views.split_label(split)}{seeds_note}: "
           + ", ".join(run_ids))
stem = downloads.file_stem(f"{pick.removeprefix('group:')}-{split}")

st.subheader("ROC curves")
st.plotly_chart(render.roc_figure(perf.roc, FPR_GRID, perf.classes), key="perf_roc")
st.caption(f"One class against the rest. Shaded: the 95% band over {ROC_BOOT} resamples of the patients "
           "(all images of a drawn patient kept)" + (", curves and band bounds averaged over the seeds" if
                                                       perf.n_runs > 1 else "")
           + ". A class missing here has no positives or no negatives in this split.")
auc_table = pd.DataFrame([{"class_name": c, "auc": perf.roc[c].auc, "n_positive": perf.roc[c].n_pos,
                           "n_negative": perf.roc[c].n_neg} for c in perf.classes if c in perf.roc])
st.dataframe(auc_table, hide_index=True, key="perf_auc_table",
             column_config={"auc": st.column_config.NumberColumn("AUC", format="%.3f")})
downloads.table_buttons(auc_table, f"auc-{stem}", "perf_auc")
with st.expander("Curve points (TPR and band on the FPR grid)"):
    points = pd.DataFrame([{"class_name": c, "fpr": float(x), "tpr": float(t), "tpr_low": float(lo),
                            "tpr_high": float(hi)}
                           for c in perf.classes if c in perf.roc
                           for x, t, lo, hi in zip(FPR_GRID, perf.roc[c].tpr, perf.roc[c].low, perf.roc[c].high)])
    st.dataframe(points, hide_index=True, key="perf_points_table", height=250)
    downloads.table_buttons(points, f"roc-points-{stem}", "perf_points")

st.subheader("Confusion matrix")
left, right = st.columns(2)
left.plotly_chart(render.confusion_figure(perf.confusion, perf.classes), key="perf_confusion")
right.plotly_chart(render.confusion_figure(perf.confusion, perf.classes, normalised=True),
                   key="perf_confusion_share")
st.caption("Rows: the true class; columns: the predicted class (the highest probability). Right: each row as "
           "shares of that class, so the diagonal is each class's sensitivity"
           + (f"; counts summed over the {perf.n_runs} seeds." if perf.n_runs > 1 else "."))
confusion = confusion_frame(perf)
with st.expander("As a table"):
    st.dataframe(confusion, hide_index=True, key="perf_confusion_table",
                 column_config={"row_share": st.column_config.NumberColumn("row share", format="%.3f")})
downloads.table_buttons(confusion, f"confusion-{stem}", "perf_confusion")

st.subheader("Calibration")
rel = perf.reliability
m1, m2, m3 = st.columns([1, 1, 3])
m1.metric("ECE", f"{rel.ece:.3f}", help="Expected calibration error: the gap between accuracy and confidence, "
                                        "averaged over the bins weighted by their images (0 = calibrated)")
m2.metric("MCE", f"{rel.mce:.3f}", help="Largest gap over the non-empty bins")
if perf.n_runs > 1:
    m3.caption("ECE per seed: " + ", ".join(f"{r} {e:.3f}" for r, e in perf.ece_per_run.items()))
st.plotly_chart(render.reliability_figure(rel), key="perf_reliability")
st.caption(f"Top-label calibration: each prediction's confidence is its highest class probability; the "
           f"{n_bins} bins split [0, 1] evenly (right-closed). Blue bars: the accuracy in each bin; red marks: the "
           "mean confidence there; grey: how many predictions fall in each bin. Bars below their mark: "
           "over-confident.")
bins = reliability_frame(rel)
with st.expander("Bins as a table"):
    st.dataframe(bins, hide_index=True, key="perf_bins_table")
downloads.table_buttons(bins, f"calibration-{stem}", "perf_calibration")

st.subheader("Per source database")
num = st.column_config.NumberColumn
st.dataframe(sources, hide_index=True, key="perf_sources_table", column_config={
    "split": "Split", "source": "Source", "n_images": num("Images", format="%d"), "class_counts": "Classes",
    "accuracy": num("Accuracy", format="%.3f"), "accuracy_ci_low": num("Acc. CI low", format="%.3f"),
    "accuracy_ci_high": num("Acc. CI high", format="%.3f"), "macro_auc": num("AUC (macro)", format="%.3f"),
    "macro_auc_ci_low": num("AUC CI low", format="%.3f"), "macro_auc_ci_high": num("AUC CI high", format="%.3f"),
    "n_seeds": num("Seeds", format="%d"), "accuracy_sd": num("Acc. SD (seeds)", format="%.3f")})
downloads.table_buttons(sources, f"per-source-{pick.removeprefix('group:')}", "perf_sources")
st.caption(f"Every split's predictions by the image's source database (`images.source`), 95% CIs over {SOURCE_BOOT} "
           "patient resamples. A source that holds one class only has no AUC: if its images are recognisable, "
           "a model gets its accuracy there without reading the lungs.")
