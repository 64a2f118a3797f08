"""`cams`: compute (or recompute) CAMs of chosen methods for runs already in the DB; with
`--clusters`, only their class-mean maps and clusters, from the maps already stored."""
from __future__ import annotations

import dataclasses
import time

import numpy as np
import pandas as pd

from benchmark import paths
from benchmark.audit.cam_patterns import PATTERN_TABLES, cam_pattern_tables
from benchmark.audit.lung_masks import complete_masks
from benchmark.audit.rescore import score_and_audit
from benchmark.data.decode import DecodeCache
from benchmark.errors import BenchmarkError
from benchmark.pipeline.imported import imported_test_records, is_imported
from benchmark.pipeline.job import load_job_dataset
from benchmark.pipeline.spec import spec_from_run
from benchmark.store import queries, reader, replace_run_tables
from benchmark.training.checkpoints import load_checkpoint, read_sidecar
from benchmark.training.device import resolve_device


def cmd_cams(args) -> int:
    """Compute (or recompute) CAMs for the test images of runs already in the DB."""
    methods = args.cam_methods
    if not methods and not args.clusters_only:
        raise BenchmarkError("--cam-methods names no method")
    db = paths.results_db(args.db)
    with reader(db) as con:
        runs = queries.runs(con, status="done")
    if args.run_id:
        runs = runs[runs.run_id.isin(args.run_id)]
    if runs.empty:
        raise BenchmarkError(f"no finished runs to compute CAMs for in {db}")
    device = resolve_device(args.device)
    if args.clusters_only:
        for run in runs.to_dict("records"):
            print(recluster_run(db, run, device, segmenter=args.segmenter).line)
        return 0
    for run in runs.to_dict("records"):
        spec = spec_from_run(run)
        model, meta = load_checkpoint(run["checkpoint_path"], device=device)
        test = _test_records(db, run, spec, meta)
        audit = dataclasses.replace(spec.audit, cam_methods=methods, faithfulness_sample=args.faithfulness_sample,
                                    sanity_sample=args.sanity_sample, clusters=args.clusters,
                                    probes=False, segmenter=args.segmenter or spec.audit.segmenter)
        cache = DecodeCache(spec.data.cache_dir)
        _, _, _, tables = score_and_audit(model, meta, test, cache, device, audit, split="test",
                                          seed=spec.train.seed, progress=args.progress)
        cams, faith = tables.get("cams", pd.DataFrame()), tables.get("faithfulness", pd.DataFrame())
        sanity = tables.get("cam_sanity", pd.DataFrame())
        patterns = {name: tables.get(name, pd.DataFrame()) for name in PATTERN_TABLES} if args.clusters else {}
        for method in methods:  # one transaction per method: its maps, scores and patterns swap together
            replace_run_tables(db, run["run_id"], {
                "cams": (_of(cams, method), {"method": method, "split": "test"}),
                "faithfulness": (_of(faith, method), {"method": method}),
                "cam_sanity": (_of(sanity, method), {"method": method}),
                **{name: (_of(df, method), {"method": method, "split": "test"}) for name, df in patterns.items()},
            })
        print(f"{run['run_id']}: {len(cams)} CAM rows ({', '.join(methods)})")
    return 0


def _of(df: pd.DataFrame, method: str) -> pd.DataFrame:
    return df[df.method == method] if not df.empty else df


def _test_records(db, run: dict, spec, meta: dict) -> list:
    return (imported_test_records(db, run["run_id"], load_job_dataset(spec)) if is_imported(meta)
            else load_job_dataset(spec).split("test"))


@dataclasses.dataclass(frozen=True)
class Reclustered:
    """What `recluster_run` did to one run: its clusters, how many are flagged, and the seconds of
    the pattern step alone (None: the run has no stored maps to cluster)."""

    run_id: str
    n_clusters: int = 0
    n_flagged: int = 0
    seconds: float | None = None

    @property
    def line(self) -> str:
        if self.seconds is None:
            return f"{self.run_id}: no stored CAMs of the test split; run `cams` first"
        return (f"{self.run_id}: {self.n_clusters} clusters of CAMs, {self.n_flagged} flagged "
                f"({self.seconds:.2f} s)")


def recluster_run(db, run: dict, device, *, segmenter: str | None = None) -> Reclustered:
    """Recompute one run's class-mean maps and clusters of its test split from its stored maps
    (no model is loaded): the images' lung masks are read again (ground truth, else the segmenter)."""
    spec = spec_from_run(run)
    meta = read_sidecar(run["checkpoint_path"])  # JSON only: whether the run is an imported model
    with reader(db) as con:
        cams = queries.stored_pred_cams(con, run["run_id"], "test")
        preds = queries.split_predictions(con, run["run_id"], "test").set_index("image_id")
    if cams.empty:
        return Reclustered(run["run_id"])
    predicted = set(preds.index)
    records = [r for r in _test_records(db, run, spec, meta) if r.image_id in predicted]
    cache = DecodeCache(spec.data.cache_dir)
    decoded = cache.load(records, int(run["image_size"]))
    masks, has_mask = cache.load_masks(decoded.records, int(run["image_size"]))
    masks, sources = complete_masks(decoded.images, masks, has_mask, [r.mask_source for r in decoded.records],
                                    segmenter=segmenter or spec.audit.segmenter, device=str(device))
    labels = np.array([preds.label[r.image_id] for r in decoded.records])
    chosen = np.array([preds.pred[r.image_id] for r in decoded.records])
    clock = time.perf_counter()
    tables = cam_pattern_tables(cams, decoded.records, masks, sources, labels, chosen, split="test",
                                seed=spec.train.seed, device=device)
    seconds = time.perf_counter() - clock
    replace_run_tables(db, run["run_id"], {name: (df, {"split": "test"}) for name, df in tables.items()})
    clusters = tables["cam_clusters"]
    return Reclustered(run["run_id"], len(clusters), int(clusters.flagged.sum()) if not clusters.empty else 0,
                       seconds)
