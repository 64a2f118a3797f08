"""`evaluate`: external validation of a checkpoint on another dataset or a folder of class subfolders.

An imported checkpoint (`cxr-audit import`) has no test split of its own: the dataset evaluated
becomes the test split of a run of its own (pipeline/imported.py).
"""
from __future__ import annotations

from benchmark import paths
from benchmark.cli.options import config_from_args
from benchmark.config import AuditConfig, DataConfig
from benchmark.data.datasets import load_dataset
from benchmark.pipeline.external import evaluate_external, matrix_audit
from benchmark.training.checkpoints import read_sidecar
from benchmark.training.device import resolve_device


def cmd_evaluate(args) -> int:
    """Score a checkpoint on a preset or folder; rows go under its run id, split external:<dataset>
    (an imported checkpoint: a run of its own, split test)."""
    from benchmark.pipeline.imported import evaluate_imported, is_imported

    imported = is_imported(read_sidecar(args.checkpoint))
    device = resolve_device(args.device)
    dataset = load_dataset(args.name, data_root=args.data_root, max_per_class=args.max_per_class,
                           cache_dir=args.cache_dir, external_root=args.external_root)
    db = paths.results_db(args.db)
    if imported:  # its own test split: probes too (cheap), faithfulness as `evaluate` always does (none)
        audit = config_from_args(AuditConfig, args, faithfulness_sample=0)
        result = evaluate_imported(args.checkpoint, dataset, db, data=config_from_args(DataConfig, args),
                                   device=device, audit=audit, seed=args.seed, progress=args.progress)
    else:
        audit = matrix_audit(config_from_args(AuditConfig, args))
        result = evaluate_external(args.checkpoint, dataset, db, device=device, audit=audit,
                                   seed=args.seed, cache_dir=args.cache_dir, progress=args.progress)
    print(result.line())
    return 0
