"""Read queries, split by what they read: `runs`, `metrics` (and predictions), `images`, `cams`,
`evidence` (probes, sanity check, skips), `gallery` (the misclassification gallery in SQL) and
`patterns` (class-mean maps and clusters of CAMs). Each is a plain function of a connection that
returns a DataFrame or a value, with values always as parameters.

The dashboard (by name, through `dashboard.cache.query`), the report and the CLI call them as
`queries.<name>`; every name is exported here. No query branches on the file's schema age: the
store adds every missing table and column when it opens an older file (connection.py).
"""
from benchmark.store.queries.cams import (  # noqa: F401
    cam_array,
    cam_methods,
    cams_for_pairs,
    lung_focus_by_class,
    lung_focus_by_run,
    run_image_cams,
    stored_pred_cams,
)
from benchmark.store.queries.evidence import (  # noqa: F401
    cam_sanity,
    cam_skips,
    probe_results,
)
from benchmark.store.queries.gallery import (  # noqa: F401
    GALLERY_ORDER_COLUMNS,
    gallery_count,
    gallery_facets,
    gallery_page,
)
from benchmark.store.queries.images import (  # noqa: F401
    image_counts,
    image_list,
    image_predictions,
    image_row,
    image_rows,
    images,
    mask_paths,
    predicted_images,
    rejected,
    rejected_summary,
)
from benchmark.store.queries.metrics import (  # noqa: F401
    EXTERNAL_METRICS,
    class_metrics,
    external_done,
    external_metrics,
    metrics,
    performance_predictions,
    predictions,
    scored_predictions,
    split_predictions,
)
from benchmark.store.queries.patterns import (  # noqa: F401
    cam_clusters,
    class_maps,
    grid_array,
    pattern_index,
)
from benchmark.store.queries.runs import (  # noqa: F401
    datasets,
    db_overview,
    done_run_ids,
    run_details,
    runs,
    segmenters,
    summary,
)

__all__ = [
    "done_run_ids",
    "runs",
    "summary",
    "run_details",
    "db_overview",
    "datasets",
    "segmenters",
    "metrics",
    "class_metrics",
    "predictions",
    "split_predictions",
    "scored_predictions",
    "performance_predictions",
    "external_done",
    "external_metrics",
    "EXTERNAL_METRICS",
    "images",
    "rejected",
    "mask_paths",
    "image_counts",
    "rejected_summary",
    "image_list",
    "image_row",
    "image_rows",
    "predicted_images",
    "image_predictions",
    "cam_array",
    "cam_methods",
    "lung_focus_by_run",
    "lung_focus_by_class",
    "run_image_cams",
    "cams_for_pairs",
    "stored_pred_cams",
    "probe_results",
    "cam_sanity",
    "cam_skips",
    "gallery_page",
    "gallery_count",
    "gallery_facets",
    "GALLERY_ORDER_COLUMNS",
    "class_maps",
    "grid_array",
    "cam_clusters",
    "pattern_index",
]
