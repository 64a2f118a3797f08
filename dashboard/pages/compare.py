"""Compare: one X-ray, the top models' CAMs side by side (or one model under every CAM method),
downloadable as one PNG.

The URL carries dataset, image, run and method (?dataset=..&image=..&run=..&method=..), so the
misclassification gallery can open an image here and a view can be shared as a link.
"""
import functools

import pandas as pd
import streamlit as st

from dashboard import cache, common, downloads, render, views

DISPLAY_SIDE = 320
PICKER_WINDOW = 200  # images offered by the picker at once, around the current one
MODES = ("Top models by accuracy", "One model, every CAM method")
QP_TO_STATE = {"dataset": "cmp_dataset", "image": "cmp_image", "run": "cmp_run", "method": "cmp_method"}

st.title("Compare")
if not common.require_results():
    st.stop()

# A link (or the gallery) asks for a view: apply it once, before the widgets are drawn.
request = {k: st.query_params.get(k) for k in QP_TO_STATE}
if any(request.values()) and request != st.session_state.get("_cmp_applied"):
    for qp, state_key in QP_TO_STATE.items():
        if request[qp]:
            st.session_state[state_key] = request[qp]
    if request["run"] and not request["method"]:
        st.session_state["cmp_mode"] = MODES[1]
    st.session_state["cmp_label"] = "all"
    st.session_state["_cmp_applied"] = request


def _valid(key: str, options: list) -> None:
    """Drop a requested value the options do not hold (a stale link) instead of failing."""
    if st.session_state.get(key) is not None and st.session_state[key] not in options:
        del st.session_state[key]


datasets = cache.query("datasets")
_valid("cmp_dataset", datasets)
c1, c2, c3, c4, c5 = st.columns([1.3, 1, 2.4, 0.55, 0.55], vertical_alignment="bottom")
dataset = c1.selectbox("Dataset", datasets, key="cmp_dataset")
# The picker's list is ids, classes and sources only; the chosen image's row, predictions and maps
# are fetched for that image (and its shown runs) alone, so a rerun costs what the page shows.
images = cache.query("image_list", dataset)
if images.empty:
    st.info(f"No test predictions stored for {dataset}.")
    st.stop()
labels = ["all"] + sorted(images["label"].dropna().unique())
_valid("cmp_label", labels)
label = c2.selectbox("True class", labels, key="cmp_label")
shown = images if label == "all" else images[images.label == label]
ids = shown["image_id"].tolist()
_valid("cmp_image", ids)
# The selectbox offers a window of PICKER_WINDOW images around the current one (a widget with every
# image of a large dataset as an option is slow to build and send on each rerun); Prev/Next walk the
# whole list.
position = ids.index(st.session_state["cmp_image"]) if st.session_state.get("cmp_image") in ids else 0
window = views.window(len(ids), position, PICKER_WINDOW)
by_id = shown.iloc[window].set_index("image_id")


def _step(delta: int) -> None:
    current = st.session_state.get("cmp_image", ids[0])
    index = ids.index(current) if current in ids else 0
    st.session_state["cmp_image"] = ids[(index + delta) % len(ids)]


names = {i: f"{label} · {source or ''} · {i}" for i, label, source in zip(by_id.index, by_id["label"], by_id["source"])}
image_id = c3.selectbox(f"Image ({len(ids)})", list(names), key="cmp_image", format_func=names.__getitem__)
c4.button("Prev", key="cmp_prev", on_click=_step, args=(-1,), icon=":material/arrow_back:", width="stretch",
          help="previous image")
c5.button("Next", key="cmp_next", on_click=_step, args=(1,), icon=":material/arrow_forward:", width="stretch",
          help="next image")

preds = cache.query("image_predictions", image_id)
methods = cache.query("cam_methods", dataset)
row = cache.query("image_row", image_id).iloc[0]
m0, m1, m2 = st.columns([1.6, 1, 1.4], vertical_alignment="bottom")
mode = m0.radio("Show", MODES, horizontal=True, key="cmp_mode")
opacity, colormap, show_contour = common.overlay_controls("cmp")

picture = cache.display_image(row.get("path"), row.get("key"), row.get("source"), DISPLAY_SIDE)
mask = cache.display_mask(row.get("mask_path"), picture.shape) if picture is not None else None
common.stale_notice()

panels = []  # (title, cam row or None, prediction row)
if mode == MODES[0]:
    _valid("cmp_method", methods)
    method = m1.selectbox("CAM method", methods or ["(none stored)"], key="cmp_method",
                          index=views.preferred_method_index(methods))
    k_max = max(1, min(8, len(preds)))
    k = m2.slider("Top k models by test accuracy", 1, k_max, min(4, k_max), key="cmp_k") if k_max > 1 else 1
    top = preds.head(k)
    cams = cache.query("run_image_cams", image_id, tuple(top.run_id), method) if methods else None
    for _, p in top.iterrows():
        match = cams[cams.run_id == p.run_id] if cams is not None else None
        panels.append((f"{p.model}" + (" (ImageNet)" if p.pretrained else ""),
                       match.iloc[0] if match is not None and not match.empty else None, p))
    st.query_params.update({"dataset": dataset, "image": image_id, "method": method})
    st.query_params.pop("run", None)
else:
    run_ids = list(preds["run_id"])
    _valid("cmp_run", run_ids)
    model_of = dict(zip(preds.run_id, preds.model))
    run_id = m1.selectbox("Model", run_ids, key="cmp_run", format_func=lambda r: f"{model_of[r]} ({r})")
    p = preds[preds.run_id == run_id].iloc[0]
    cams = cache.query("run_image_cams", image_id, (run_id,), None)
    for _, c in cams.iterrows():
        panels.append((c.method, c, p))
    if cams.empty:
        panels.append((p.model, None, p))
    st.query_params.update({"dataset": dataset, "image": image_id, "run": run_id})
    st.query_params.pop("method", None)
st.session_state["_cmp_applied"] = {k: st.query_params.get(k) for k in QP_TO_STATE}

st.divider()
tiles = []  # (title, picture, caption lines): the comparison as one PNG
outline = render.lung_outline(mask) if show_contour else None  # one contour for every panel of this X-ray
left, right = st.columns([1, 3.2])
with left:
    st.markdown(f"**True class: {row['label']}**")
    facts = [f"{name} {row[col]}" for name, col in (("source", "source"), ("view", "view"), ("sex", "sex"))
             if isinstance(row.get(col), str) and row[col]]
    if pd.notna(row.get("age")):
        facts.append(f"age {row['age']:.0f}")
    st.caption(" · ".join(f for f in facts if f) or "no metadata")
    if picture is None:
        st.warning("The image file is not on this machine (set $CXR_DATA to the data pack).")
    else:
        xray = render.overlay(picture, None, outline=outline)
        st.image(render.picture(xray), width="stretch",
                 caption="X-ray" + (" with lung contour" if mask is not None and show_contour else ""))
        tiles.append((f"true class: {row['label']}", xray, [" · ".join(facts)[:60], image_id[-40:]]))
        if mask is None:
            st.caption("No lung mask for this image.")
with right:
    if not panels:
        st.info("No model has a prediction for this image.")
    per_row = 4  # fixed: one model alone must not fill the page at 4x zoom
    for start in range(0, len(panels), per_row):
        cols = st.columns(per_row)
        for col, (title, cam_row, p) in zip(cols, panels[start:start + per_row]):
            with col:
                st.markdown(f"**{title}**")
                cam = None if cam_row is None else views.cam_from_row(cam_row)
                shown = None
                if picture is not None:
                    shown = render.overlay(picture, cam, opacity=opacity, colormap=colormap, outline=outline)
                    st.image(render.picture(shown), width="stretch")
                verdict = ":green[correct]" if p.pred == p.label else ":red[wrong]"
                st.markdown(f"pred **{p.pred}** ({p.confidence:.2f}) {verdict}")
                if cam_row is None:
                    note = "no CAM stored for this method"
                else:
                    mass = f"{cam_row.lung_mass:.2f}" if pd.notna(cam_row.lung_mass) else "n/a"
                    on = cam_row.pointing_hit
                    hit = "" if pd.isna(on) else ("peak on lungs" if on else "peak off lungs")
                    note = f"lung mass {mass} · {hit}" if hit else f"lung mass {mass}"
                st.caption(note)
                if shown is not None:
                    tiles.append((str(title), shown, [
                        f"pred {p.pred} ({p.confidence:.2f}) {'correct' if p.pred == p.label else 'wrong'}", note]))

if tiles:
    what = f"{method} maps" if mode == MODES[0] else f"{model_of[run_id]}, every CAM method"
    st.download_button(
        "Comparison (PNG)", key="cmp_png", icon=":material/download:", on_click="ignore", mime="image/png",
        data=functools.partial(render.comparison_png, tiles, columns=min(len(tiles), 5),
                               title=f"{dataset} · {image_id} · {what}"),
        file_name=f"compare-{downloads.file_stem(image_id)}.png",
        help="The X-ray and the overlays above side by side, with their titles and numbers, as one PNG")
