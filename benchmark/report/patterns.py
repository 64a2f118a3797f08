"""The report's "Where each model looks" section: class-mean maps and flagged clusters of CAMs.

Renders the stored summaries (tables cam_class_maps and cam_clusters, audit/cam_patterns.py) of the
test split for the report's CAM method: one figure per dataset (rows: runs, columns: predicted
classes) and one table of every run's clusters with the flagged ones named.
"""
from __future__ import annotations

import json

import pandas as pd

from benchmark.cams.engine import upsample_cam
from benchmark.report import figures
from benchmark.report.document import Figure, Paragraph, Table
from benchmark.report.tables import num
from benchmark.store.queries import grid_array

FIGURE_SIDE = 128   # pixels of a mean-map tile
MAX_RUNS = 12       # rows of a dataset's figure: the most accurate runs


def _cell(row: dict) -> figures.CamCell:
    grid = int(row["grid"])
    cam = upsample_cam(grid_array(row["mean_map"], grid), (FIGURE_SIDE, FIGURE_SIDE))
    lungs = upsample_cam(grid_array(row["lung_map"], grid), (FIGURE_SIDE, FIGURE_SIDE)) >= 0.5
    title = (f"pred {row['class_name']} (n={row['n_images']})\nlungs {num(row['lung_share'], 2)} "
             f"(uniform {num(row['lung_area'], 2)}), border {num(row['border_share'], 2)}")
    return figures.CamCell(None, cam, lungs if lungs.any() else None, title)


def class_map_figures(class_maps: pd.DataFrame, accuracy: dict[str, float], method: str | None) -> list:
    """One figure per dataset: each run's class-mean maps of the predicted classes."""
    if method is None or class_maps.empty:
        return [Paragraph("No class-mean maps are stored (`cxr-audit cams --clusters` computes them for "
                          "finished runs).")]
    maps = class_maps[(class_maps.method == method) & (class_maps.split == "test")]
    out = []
    for dataset, of_dataset in maps.groupby("dataset", sort=True):
        runs = sorted(of_dataset.run_id.unique(), key=lambda r: -accuracy.get(r, float("-inf")))[:MAX_RUNS]
        classes = sorted(of_dataset.class_name.unique())
        cells, titles = [], []
        for run_id in runs:
            rows = {r["class_name"]: r for r in of_dataset[of_dataset.run_id == run_id].to_dict("records")}
            model = next(iter(rows.values()))["model"]
            titles.append(f"{model}\nacc {num(accuracy.get(run_id), 2)}")
            cells.append([_cell(rows[c]) if c in rows else figures.CamCell(None, None, None, f"pred {c}",
                                                                            "no image predicted")
                          for c in classes])
        out.append(Figure(f"class-maps-{_slug(dataset)}", f"Figure 5. Where each model looks on {dataset}: "
                          "class-mean maps", figures.cam_grid(titles, cells),
                          f"Mean of the {method} maps of the predicted class over the run's test images, in image "
                          "coordinates (rows: the most accurate runs; columns: the predicted class). Green: the "
                          "images' mean lung outline. Shares: of the mean map's mass on the lungs (beside what a "
                          "uniform map would put there) and on the outer eighth of the image."))
    return out


def cluster_table(clusters: pd.DataFrame, method: str | None) -> Table:
    """Per run and predicted class: the clusters of its maps, flagged ones described."""
    rows = []
    if method is not None and not clusters.empty:
        chosen = clusters[(clusters.method == method) & (clusters.split == "test")]
        for (run_id, class_name), group in chosen.groupby(["run_id", "class_name"], sort=False):
            flagged = group[group.flagged]
            first = group.iloc[0]
            described = "; ".join(
                f"{r.n_images} images ({r.class_share:.0%}), lung focus {num(r.lung_focus, 2)}, border "
                f"{num(r.border_share, 2)}, sources {_top(r.sources_json)}" for r in flagged.itertuples())
            rows.append({"Dataset": first["dataset"], "Model": first["model"], "Predicted class": class_name,
                         "Clusters": str(len(group)), "Flagged": str(len(flagged)),
                         "Share in flagged": f"{flagged.n_images.sum() / group.n_images.sum():.0%}",
                         "Flagged clusters": described, "Run": run_id})
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame = frame.sort_values(["Dataset", "Model", "Predicted class"], kind="stable")
    return Table("Table 7. Clusters of CAMs per run and predicted class", frame, notes=(
        f"The {method or '(no CAMs)'} maps of each predicted class on the test images, clustered by where their mass "
        "lies (spectral clustering, the number of clusters from the eigengap; SpRAy, Lapuschkin et al. 2019).",
        "Flagged: a cluster holding at least a tenth of its class whose mean map keeps less than half of what a map "
        "of its resolution could put on the lungs (lung focus = lung share / that ceiling < 0.5): a strategy that "
        "reads something other than the lungs. The dashboard's Patterns page shows each cluster's map and images."),
        empty_text="No clusters of CAMs are stored.")


def _top(counts_json: str | None, limit: int = 2) -> str:
    counts = json.loads(counts_json or "{}")
    return ", ".join(f"{k} {v}" for k, v in list(counts.items())[:limit]) or "unknown"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()
