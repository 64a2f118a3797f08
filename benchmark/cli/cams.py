"""`cams`: compute (or recompute) CAMs of chosen methods for runs already in the DB."""
from __future__ import annotations

import dataclasses

import pandas as pd

from benchmark import paths
from benchmark.audit.rescore import score_and_audit
from benchmark.data.decode import DecodeCache
from benchmark.errors import BenchmarkError
from benchmark.pipeline.imported import imported_test_records, is_imported
from benchmark.pipeline.job import load_job_dataset
from benchmark.pipeline.spec import spec_from_run
from benchmark.store import queries, reader, replace_run_tables
from benchmark.training.checkpoints import load_checkpoint
from benchmark.training.device import resolve_device


def cmd_cams(args) -> int:
    """Compute (or recompute) CAMs for the test images of runs already in the DB."""
    methods = args.cam_methods
    if not methods:
        raise BenchmarkError("--cam-methods names no method")
    db = paths.results_db(args.db)
    with reader(db) as con:
        runs = queries.runs(con, status="done")
    if args.run_id:
        runs = runs[runs.run_id.isin(args.run_id)]
    if runs.empty:
        raise BenchmarkError(f"no finished runs to compute CAMs for in {db}")
    device = resolve_device(args.device)
    for run in runs.to_dict("records"):
        spec = spec_from_run(run)
        model, meta = load_checkpoint(run["checkpoint_path"], device=device)
        test = (imported_test_records(db, run["run_id"], load_job_dataset(spec)) if is_imported(meta)
                else load_job_dataset(spec).split("test"))
        audit = dataclasses.replace(spec.audit, cam_methods=methods, faithfulness_sample=args.faithfulness_sample,
                                    sanity_sample=args.sanity_sample,
                                    probes=False, segmenter=args.segmenter or spec.audit.segmenter)
        cache = DecodeCache(spec.data.cache_dir)
        _, _, _, tables = score_and_audit(model, meta, test, cache, device, audit, split="test",
                                          seed=spec.train.seed, progress=args.progress)
        cams, faith = tables.get("cams", pd.DataFrame()), tables.get("faithfulness", pd.DataFrame())
        sanity = tables.get("cam_sanity", pd.DataFrame())
        for method in methods:  # one transaction per method: its maps and scores swap together
            replace_run_tables(db, run["run_id"], {
                "cams": (cams[cams.method == method] if not cams.empty else cams,
                         {"method": method, "split": "test"}),
                "faithfulness": (faith[faith.method == method] if not faith.empty else faith, {"method": method}),
                "cam_sanity": (sanity[sanity.method == method] if not sanity.empty else sanity, {"method": method}),
            })
        print(f"{run['run_id']}: {len(cams)} CAM rows ({', '.join(methods)})")
    return 0
