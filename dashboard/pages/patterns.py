"""Patterns: where one model looks over all of its images, per CAM method and predicted class.

Class-mean maps (the mean of the normalised maps in image coordinates, with the mean lung outline)
and the clusters of the maps (SpRAy: one cluster per strategy), each with the images nearest its
centre. A cluster whose map keeps less than half of what it could put on the lungs, in at least a
tenth of its class, is flagged. The page reads only the stored summaries (cam_class_maps,
cam_clusters), written by `benchmark run` or `benchmark cams --clusters`.
"""
import json

import pandas as pd
import streamlit as st

from dashboard import cache, common, render, views

MAP_SIDE = 192    # pixels of a mean-map picture
THUMB_SIDE = 160  # pixels of a nearest-image thumbnail
keep = {"persist_state": "session"}

st.title("Patterns")
st.caption("Where a model looks over all of its images, not one at a time: for each predicted class the mean of "
           "its CAMs (white: the images' mean lung outline), then the maps clustered by where their mass lies "
           "(SpRAy, Lapuschkin et al. 2019). A cluster is one strategy; a :red[flagged] cluster puts less than "
           "half of what its maps could on the lungs, in at least a tenth of the class: the model may be reading "
           "a marker, the border or the source there.")
if not common.require_results():
    st.stop()

index = cache.query("pattern_index")
if index.empty:
    st.info("No class-mean maps or clusters are stored yet. `python -m benchmark cams --clusters` computes them for "
            "finished runs from their stored maps; new runs compute them by default.")
    st.stop()
common.stale_notice()


def _valid(key: str, options) -> None:
    """Drop a remembered choice the current options do not hold (another run's method, say)."""
    if st.session_state.get(key) not in (None, *options):
        del st.session_state[key]


def _map_picture(row: dict) -> bytes:
    """A class-mean or cluster row's mean map with its images' mean lung outline, as an image."""
    return cache.mean_map_picture(bytes(row["mean_map"]), bytes(row["lung_map"]), int(row["grid"]), MAP_SIDE)


datasets = sorted(index["dataset"].unique())
c1, c2, c3, c4 = st.columns([1.2, 2.4, 1.4, 1.2], vertical_alignment="bottom")
_valid("pat_dataset", datasets)
dataset = c1.selectbox("Dataset", datasets, key="pat_dataset", **keep)
of_dataset = index[index.dataset == dataset]
runs = of_dataset.drop_duplicates("run_id")
labels = {r.run_id: f"{r.model} · accuracy {r.accuracy:.3f}" if pd.notna(r.accuracy) else r.model
          for r in runs.itertuples()}
_valid("pat_run", labels)
run_id = c2.selectbox("Model (by test accuracy)", list(labels), key="pat_run", format_func=labels.__getitem__, **keep)
of_run = of_dataset[of_dataset.run_id == run_id]
splits = sorted(of_run["split"].unique(), key=lambda s: (s != "test", s))
_valid("pat_split", splits)
split = c3.selectbox("Images", splits, key="pat_split", help="test: the run's own test split; external:<set>: "
                     "another hospital's images")
methods = sorted(of_run[of_run.split == split]["method"].unique())
_valid("pat_method", methods)
method = c4.selectbox("CAM method", methods, key="pat_method", index=views.preferred_method_index(methods))

means = cache.query("class_maps", (run_id,), split, method)
clusters = cache.query("cam_clusters", (run_id,), split, method)

st.subheader("Class-mean maps")
cols = st.columns(max(1, min(4, len(means))))
for col, row in zip(cols * (len(means) // len(cols) + 1), means.to_dict("records")):
    with col.container(border=True):
        st.image(_map_picture(row), width="stretch")
        st.markdown(f"**predicted {row['class_name']}** · {row['n_images']} images · accuracy {row['accuracy']:.2f}")
        st.caption(f"mass on {views.share_line(row)} · maps {row['cam_height']}x{row['cam_width']}")

st.subheader("Clusters of maps")
if clusters.empty:
    st.info("No clusters stored for this run and method.")
    st.stop()
n_flagged = int(clusters.flagged.sum())
st.caption(f"{len(clusters)} clusters over {clusters.class_name.nunique()} predicted classes, "
           f"{n_flagged} flagged. Each: its mean map, then the images nearest its centre (click to open one in "
           "Compare with this model).")
nearest_ids = tuple(dict.fromkeys(i for j in clusters.nearest_json for i in json.loads(j or "[]")))
rows = {r["image_id"]: r for r in cache.query("image_rows", nearest_ids).to_dict("records")}
for class_name, group in clusters.groupby("class_name", sort=True):
    st.markdown(f"#### predicted {class_name}: {group['k'].iloc[0]} cluster(s)")
    for row in group.to_dict("records"):
        with st.container(border=True):
            left, right = st.columns([1, 3.2])
            with left:
                st.image(_map_picture(row), width="stretch")
            with right:
                share = f"{row['class_share']:.0%} of the class"
                flag = (f":red[**flagged**: {share}, lung focus {row['lung_focus']:.2f}]" if row["flagged"]
                        else f"lung focus {row['lung_focus']:.2f}" if pd.notna(row["lung_focus"]) else "no lung mask")
                st.markdown(f"**cluster {row['cluster']}** · {row['n_images']} images ({share}) · "
                            f"accuracy {row['accuracy']:.2f} · {flag}")
                st.caption(f"mass on {views.share_line(row)} · sources: {views.counts_line(row['sources_json'])}"
                           f" · views: {views.counts_line(row['views_json'])}")
                thumbs = st.columns(4)
                for thumb, image_id in zip(thumbs, json.loads(row["nearest_json"] or "[]")):
                    image = rows.get(image_id)
                    with thumb:
                        if image is None:
                            st.caption(f"{image_id}: not in the images table")
                            continue
                        shown = cache.display_image(image.get("path"), image.get("key"), image.get("source"),
                                                    THUMB_SIDE)
                        if shown is None:
                            st.caption("image file not found (set $CXR_DATA)")
                        else:
                            st.image(render.picture(render.to_rgb(shown)), width="stretch")
                        if split != "test":  # Compare shows test images of the datasets trained on
                            st.caption(f"true {image.get('label')}")
                            continue
                        key = "_".join(("pat_open", row["run_id"], row["method"], row["class_name"],
                                        str(row["cluster"]), image_id))
                        if st.button(f"true {image.get('label')}", key=key, icon=":material/compare:",
                                     width="stretch", help="open this image in Compare with this model"):
                            st.switch_page("pages/compare.py", query_params={
                                "dataset": str(image.get("dataset") or dataset), "image": image_id, "run": run_id})
