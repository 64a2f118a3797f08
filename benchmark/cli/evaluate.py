"""`evaluate`: external validation of a checkpoint on another dataset or a folder of class subfolders."""
from __future__ import annotations

from benchmark import paths
from benchmark.cli.options import config_from_args
from benchmark.config import AuditConfig
from benchmark.data.datasets import load_dataset
from benchmark.pipeline.external import evaluate_external
from benchmark.training.device import resolve_device


def cmd_evaluate(args) -> int:
    """Score a checkpoint on a preset or folder; rows go under its run id, split external:<dataset>."""
    device = resolve_device(args.device)
    dataset = load_dataset(args.name, data_root=args.data_root, max_per_class=args.max_per_class,
                           cache_dir=args.cache_dir)
    audit = config_from_args(AuditConfig, args, faithfulness_sample=0, probes=False)
    result = evaluate_external(args.checkpoint, dataset, paths.results_db(args.db), device=device, audit=audit,
                               seed=args.seed, cache_dir=args.cache_dir, progress=args.progress)
    print(result.line())
    return 0
