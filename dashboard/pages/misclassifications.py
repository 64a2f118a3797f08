"""Misclassifications: filter every test prediction, page through thumbnails, open one in Compare."""
import functools

import pandas as pd
import streamlit as st

from dashboard import cache, common, downloads, render, views

THUMB_SIDE = 160
PER_ROW = 4

st.title("Misclassifications")
st.caption("Which images does each model get wrong, how confident is it, and where does it look? "
           "Filters combine; empty selections mean all.")
if not common.require_results():
    st.stop()

keep = {"persist_state": "session"}
datasets = cache.query("datasets")
c1, c2, c3 = st.columns([1.2, 1, 2.6])
dataset = c1.selectbox("Dataset", datasets, key="mis_dataset", **keep)
methods = cache.query("cam_methods", dataset)
method = c2.selectbox("CAM method", methods or ["(none stored)"], key="mis_method",
                      index=views.preferred_method_index(methods), **keep)
method = method if methods else None
# Filters, order and paging run in SQL (benchmark.store.queries.gallery_*): a rerun reads one page of
# rows and a count, whatever the number of predictions stored.
choices = cache.query("gallery_facets", dataset)
if not choices["n_rows"]:
    st.info(f"No test predictions stored for {dataset}.")
    st.stop()
model_of = dict(choices["runs"])
run_ids = c3.multiselect("Models", list(model_of), default=[], key="mis_runs", format_func=model_of.get,
                         placeholder="all models", **keep)

classes = choices["classes"]
f1, f2, f3, f4 = st.columns([1, 1.4, 1.4, 1.2])
only_wrong = f1.toggle("Only misclassified", value=True, key="mis_only_wrong", **keep)
true_classes = f2.multiselect("True class", classes, key="mis_true", placeholder="all", **keep)
pred_classes = f3.multiselect("Predicted class", classes, key="mis_pred", placeholder="all", **keep)
confidence = f4.slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.01, key="mis_conf", **keep)

g1, g2, g3, g4, g5 = st.columns([1.2, 1, 1, 1, 1.2])
lung_mass = g1.slider("Lung mass", 0.0, 1.0, (0.0, 1.0), 0.01, key="mis_lung_mass", disabled=method is None,
                      help="Share of the CAM's positive mass on the lungs (rows without a value "
                           "are kept only while the range is full)", **keep)
facets = {}
for col, box, name in ((g2, "source", "Source"), (g3, "view", "View"), (g4, "sex", "Sex")):
    options = choices[box]
    facets[box] = tuple(col.multiselect(name, options, key=f"mis_{box}", placeholder="all", **keep)) \
        if options else ()
    if not options:
        col.caption(f"{name}: not recorded")
ages = views.slider_range(choices["age"])
age = None
if ages and ages[1] > ages[0]:
    age = g5.slider("Age", ages[0], ages[1], ages, 1.0, key="mis_age", **keep)
elif not ages:
    g5.caption("Age: not recorded")

flt = views.GalleryFilter(
    run_ids=tuple(run_ids), only_wrong=only_wrong, true_classes=tuple(true_classes),
    pred_classes=tuple(pred_classes), confidence=tuple(confidence), lung_mass=tuple(lung_mass),
    sources=facets["source"], views=facets["view"], sexes=facets["sex"], age=age, age_full_range=ages)
common.stale_notice()

s1, s2, s3, s4 = st.columns([2.2, 1.4, 1, 1.2], vertical_alignment="bottom")
order = s2.selectbox("Order", list(views.GALLERY_ORDERS), key="mis_order", **keep)
page_size = s3.selectbox("Per page", [12, 24, 48], key="mis_page_size", **keep)
wanted = views.gallery_query(flt, order)
n_picked = cache.query("gallery_count", dataset, method, **wanted["filters"])
s1.markdown(f"**{n_picked}** of {choices['n_rows']} predictions "
            f"({choices['n_wrong']} misclassified over {choices['n_runs']} models)")


def _export(encode):
    """Every row that passes the filters, fetched only when a download button is clicked."""
    rows = cache.query("gallery_page", dataset, method, limit=None, **wanted["order"], **wanted["filters"])
    return encode(views.export_rows(rows))


e1, e2 = s4.columns(2)
stem = downloads.file_stem(f"predictions-{dataset}")
e1.download_button("CSV", data=functools.partial(_export, downloads.csv_bytes), file_name=f"{stem}.csv",
                   mime="text/csv", key="mis_export_csv", icon=":material/download:", on_click="ignore",
                   help=f"Download the {n_picked} filtered predictions (every column) as CSV")
e2.download_button("Parquet", data=functools.partial(_export, downloads.parquet_bytes), file_name=f"{stem}.parquet",
                   mime=downloads.PARQUET_MIME, key="mis_export_parquet", icon=":material/download:",
                   on_click="ignore", help=f"Download the {n_picked} filtered predictions (every column, typed) "
                                           "as Parquet")

n_pages = max(1, -(-n_picked // page_size))
if st.session_state.get("mis_page", 1) > n_pages:
    st.session_state["mis_page"] = 1
page = st.number_input(f"Page (of {n_pages})", 1, n_pages, key="mis_page", width=160) if n_pages > 1 else 1
shown = cache.query("gallery_page", dataset, method, limit=page_size, offset=(int(page) - 1) * page_size,
                    **wanted["order"], **wanted["filters"])
if shown.empty:
    st.info("No prediction passes these filters.")
    st.stop()

opacity, colormap, show_contour = common.overlay_controls("mis")
cams = cache.query("cams_for_pairs", tuple(shown.run_id), tuple(shown.image_id), method) if method else None
cam_by_pair = {} if cams is None else {(c.run_id, c.image_id): c for c in cams.itertuples(index=False)}

for start in range(0, len(shown), PER_ROW):
    cols = st.columns(PER_ROW)
    for col, r in zip(cols, shown.iloc[start:start + PER_ROW].itertuples(index=False)):
        with col.container(border=True):
            picture = cache.display_image(r.path, r.key, r.source, THUMB_SIDE)
            cam_row = cam_by_pair.get((r.run_id, r.image_id))
            if picture is None:
                st.caption("image file not found (set $CXR_DATA)")
            else:
                mask = cache.display_mask(r.mask_path, picture.shape) if show_contour else None
                cam = views.cam_from_row(cam_row._asdict()) if cam_row is not None else None
                st.image(render.picture(render.overlay(picture, cam, opacity=opacity, colormap=colormap,
                                                       lung_mask=mask)), width="stretch")
            mass = f" · lung {r.lung_mass:.2f}" if pd.notna(r.lung_mass) else ""
            st.markdown(f"**{r.model}** · {r.label} → :red[{r.pred}] ({r.confidence:.2f}){mass}"
                        if r.pred != r.label else
                        f"**{r.model}** · {r.label} → :green[{r.pred}] ({r.confidence:.2f}){mass}")
            if st.button("Open in Compare", key=f"mis_open_{r.run_id}_{r.image_id}", icon=":material/compare:",
                         width="stretch"):
                st.switch_page("pages/compare.py", query_params={
                    "dataset": dataset, "image": r.image_id, "run": r.run_id})
