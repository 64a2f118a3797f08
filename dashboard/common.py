"""Page furniture shared by every page: the sidebar, the no-results guard, overlay controls."""
from __future__ import annotations

import logging

import duckdb
import streamlit as st

from benchmark.errors import ResultsDatabaseError
from dashboard import cache
from dashboard.render import COLORMAPS

log = logging.getLogger(__name__)


def how_to_make_results(db_path) -> str:
    return (f"No results database at `{db_path}`. Make one with\n\n"
            f"```\npython -m benchmark run --db {db_path}\n```\n\n"
            "(the embedded default: phantom X-rays, a small CPU-friendly roster), then reload this page. "
            "Or open another database: `python -m dashboard --db PATH` "
            "(or `streamlit run dashboard/app.py -- --db PATH`, or set $CXR_RESULTS_DB).")


def require_results() -> bool:
    """Draw why there is nothing to show and return False, or return True when runs exist."""
    cfg = cache.settings()
    if cache.db_stamp(cfg.db_path) is None:
        st.warning(how_to_make_results(cfg.db_path), icon=":material/database_off:")
        return False
    try:
        overview = cache.query("db_overview")
    except ResultsDatabaseError as exc:  # corrupt, truncated, or a newer schema: the message says which
        log.warning("cannot read %s: %s", cfg.db_path, exc)
        st.error(str(exc), icon=":material/database_off:")
        return False
    except (duckdb.Error, OSError) as exc:
        log.warning("cannot read %s: %s", cfg.db_path, exc)
        st.error(f"`{cfg.db_path}` cannot be read as a results database: {exc}")
        return False
    if not overview["done_runs"]:
        st.info(f"`{cfg.db_path}` holds no finished runs yet. "
                f"`python -m benchmark run --db {cfg.db_path}` adds some.")
        return False
    return True


def stale_notice() -> None:
    since = st.session_state.pop(cache.STALE_KEY, None)
    if since is not None:
        st.caption(f":material/hourglass_top: A benchmark run is writing to the results database; "
                   f"showing results as read at {since:%H:%M:%S}.")


def overlay_controls(prefix: str, container=None) -> tuple[float, str, bool]:
    """Opacity slider, colormap and lung-contour toggle; widget keys are `<prefix>_...`."""
    box = container or st
    c1, c2, c3 = box.columns([2, 1, 1], vertical_alignment="bottom")
    opacity = c1.slider("CAM opacity", 0.0, 1.0, 0.5, 0.05, key=f"{prefix}_opacity", persist_state="session")
    colormap = c2.selectbox("Colormap", COLORMAPS, key=f"{prefix}_colormap", persist_state="session")
    contour = c3.toggle("Lung contour", value=True, key=f"{prefix}_contour", persist_state="session")
    return opacity, colormap, contour


def sidebar() -> None:
    cfg = cache.settings()
    with st.sidebar:
        st.markdown("#### Shortcut audit of chest X-ray classifiers")
        st.caption("Does a 98 %-accurate model look at the lungs, or at a text marker? "
                   "**lung mass** = share of a CAM's positive mass inside the lung mask; "
                   "a map spread evenly scores the lungs' share of the image (the *uniform baseline*).")
        st.caption(f"Results: `{cfg.db_path}`")
        if cache.db_stamp(cfg.db_path) is not None:
            try:
                o = cache.query("db_overview", stop_when_busy=False)
                st.caption(f"{o['done_runs']} finished runs, {o['images']} images, {o['cams']} CAMs"
                           + (f", {o['other_runs']} failed" if o["other_runs"] else ""))
            except (cache.DatabaseBusy, ResultsDatabaseError, duckdb.Error, OSError):
                st.caption("results database busy or unreadable")
        if st.button("Reload results", key="reload_results", icon=":material/refresh:"):
            cache.clear()
            st.rerun()
