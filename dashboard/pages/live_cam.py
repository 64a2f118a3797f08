"""Live CAM: upload a chest X-ray, see each chosen model's prediction and CAM with the lung mask.

The upload lives only in this session's memory (never a file, never the DB). Results are kept
per (file digest, checkpoint, method) in session state so moving a slider does not rerun models.
"""
import hashlib
import logging
import time
from pathlib import Path

import streamlit as st

from benchmark.errors import ImageRejected
from dashboard import cache, common, live, render, views

log = logging.getLogger(__name__)
MAX_KEPT_RESULTS = 24

st.title("Live CAM")
st.caption("Upload a chest X-ray (PNG, JPEG or DICOM). Every chosen model predicts it and shows its CAM for "
           "the predicted class, with the lung mask from the project's segmenter and each map's lung mass. "
           "The file stays in memory: it is never written to disk or to the results database, and no DICOM "
           "header field (patient name, id) is read into the page.")

cfg = cache.settings()
try:  # checkpoints, methods and segmenter, from where the models run (the server itself needs no torch)
    checkpoints = cache.checkpoints(cfg.checkpoints_dir)
    offer = cache.live_offer(cfg)
except Exception as exc:  # a dead worker: say so; the next rerun asks a new one
    log.exception("the live CAM worker did not describe its models")
    st.error(f"Live CAMs are not available right now: {exc}", icon=":material/error:")
    st.stop()
by_path = {c["path"]: c for c in checkpoints}
methods = list(offer.methods)
c1, c2 = st.columns([3, 1])
chosen = c1.multiselect("Models", list(by_path), default=list(by_path)[:3], key="live_models",
                        format_func=lambda p: views.checkpoint_label(by_path[p]),
                        placeholder="choose checkpoints", persist_state="session")
method = c2.selectbox("CAM method", methods, index=views.preferred_method_index(methods),
                      key="live_method", persist_state="session",
                      help="CAM, Grad-CAM and HiResCAM are fast; "
                           "Score-CAM runs the model once per channel (slow on CPU). "
                           "@stride16 explains at the last layer 16 times smaller than the input (finer maps).")
if not checkpoints:
    st.info(f"No classifier checkpoints in `{cfg.checkpoints_dir}`. `python -m benchmark run` saves one per "
            "trained model (or start the dashboard with `--checkpoint-dir DIR`). The upload below still shows "
            "the image and its lung mask.")
opacity, colormap, show_contour = common.overlay_controls("live")

# No `type=` filter: the reader decides by content, and DICOMs from a PACS often have no extension.
upload = st.file_uploader(f"Chest X-ray: PNG, JPEG or DICOM, up to {cfg.max_upload_mb} MB", key="live_upload",
                          max_upload_size=cfg.max_upload_mb)
if upload is None:
    st.stop()

data = upload.getvalue()
digest = hashlib.sha256(data).hexdigest()
# decoded image, lung mask and each model's result per upload, kept across reruns (an overlay
# slider must not decode a 50 MB DICOM again)
kept = st.session_state.setdefault("_live_results", {})
image_key = ("image", digest)
if image_key not in kept:
    try:
        kept[image_key] = live.decode_upload(data, cfg.max_upload_bytes)
    except ImageRejected as exc:
        st.error(f"This file cannot be used as a chest X-ray: {exc.reason}.", icon=":material/block:")
        st.stop()
    except Exception:  # the app must stay up whatever the upload holds
        log.exception("unexpected failure decoding an upload")
        st.error("This file could not be read (unexpected error; details are in the server log).",
                 icon=":material/block:")
        st.stop()
image = kept[image_key]

segmenter_loaded, segmenter_note = offer.segmenter_loaded, offer.segmenter_note
mask_key = ("mask", digest)
# what this upload still lacks (its lung mask, the chosen models' answers for this method) comes
# from the model worker in one request, beside this session's thread (dashboard/model_worker.py)
missing = [path for path in chosen if (digest, path, method) not in kept]
worker_error = ""
started = time.perf_counter()
if missing or mask_key not in kept:
    needs_mask = mask_key not in kept and segmenter_loaded
    try:
        mask, answers = cache.model_worker(cfg.live_workers).explain_upload(
            image, [(path, Path(path).stat().st_mtime_ns, views.checkpoint_label(by_path[path])) for path in missing],
            method, kept.get(mask_key), cache.segmenter_stamp(cfg) if needs_mask else None)
        kept[mask_key] = mask
        kept.update({(digest, path, method): res for path, res in zip(missing, answers)})
    except Exception as exc:  # a dead worker: say so on every panel, keep nothing, the next rerun retries
        log.exception("live CAM request failed")
        worker_error = str(exc)
elapsed = time.perf_counter() - started
mask = kept.get(mask_key)
share = float(mask.mean()) if mask is not None and mask.any() else None

outline = render.lung_outline(mask) if show_contour else None  # one contour for every panel of this upload
left, right = st.columns([1, 3.2])
with left:
    st.image(render.picture(render.overlay(image, None, outline=outline)),
             width="stretch", caption=f"upload, {image.shape[1]} x {image.shape[0]} px as read" + (
                 " (green: predicted lungs)" if mask is not None and mask.any() and show_contour else ""))
    if not segmenter_loaded:
        st.info(segmenter_note)
    elif share is None:
        st.warning("The segmenter found no lungs in this image, so lung mass is not defined.")
    else:
        st.caption(f"Lungs cover {share:.2f} of the image: a CAM spread evenly would score lung mass {share:.2f}.")
    if segmenter_loaded:
        st.caption(segmenter_note)  # which segmenter (shipped or trained) and its held-out Dice

with right:
    if not chosen:
        st.info("Choose one or more models above.")
    results = [kept.get((digest, path, method)) or live.LiveCam(label=views.checkpoint_label(by_path[path]),
                                                                 classes=(), error=worker_error)
               for path in chosen]
    # evict the oldest entries of other uploads first: this upload's image and mask stay
    for old in [k for k in kept if digest not in k][:max(0, len(kept) - MAX_KEPT_RESULTS)]:
        kept.pop(old)
    # an earlier upload's decoded pixels and mask (up to tens of MB each) go at once: only the
    # current upload's are kept, so a session's memory does not grow with its uploads
    for old in [k for k in kept if digest not in k and k[0] in ("image", "mask")]:
        kept.pop(old)
    per_row = 3  # fixed width per model, however many are chosen
    for start in range(0, len(results), per_row):
        cols = st.columns(per_row)
        for col, res in zip(cols, results[start:start + per_row]):
            with col.container(border=True):
                st.markdown(f"**{res.label}**")
                if res.error:
                    st.warning(res.error)
                    continue
                st.image(render.picture(render.overlay(image, res.cam, opacity=opacity, colormap=colormap,
                                                       outline=outline)),
                         width="stretch")
                st.markdown(f"pred **{res.pred}** ({res.confidence:.2f})")
                for cls, p in zip(res.classes, res.probs):  # native bars: a plotly figure per panel cost
                    st.progress(float(p), text=f"**{cls}** {p:.2f}" if cls == res.pred else f"{cls} {p:.2f}")
                if res.lung_mass is not None:
                    hit = "peak on lungs" if res.pointing_hit else "peak off lungs"
                    st.caption(f"lung mass **{res.lung_mass:.2f}** · {hit}")
                else:
                    st.caption("lung mass n/a (no lung mask)")
    if results:
        st.caption(f"{method} on CPU: {elapsed:.2f} s for {len(results)} model(s) this run "
                   "(cached results take no time).")
