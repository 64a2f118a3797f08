"""Train the lung U-Net on the cohen masks (+ phantoms) and print a JSON summary.

    python bench/train_lung_segmenter.py --size 128 --epochs 10 --threads 2   # ~16 min on 2 busy CPU cores
    python bench/train_lung_segmenter.py --device cuda --epochs 40            # on a GPU

The same training as `cxr-audit lungs train` (its options come from LungTrainConfig), plus a
thread cap and a summary: val Dice per group (training size), held-out cohen Dice at native size,
wall time. The held-out set is cohen patients never trained on, with human (v7labs) masks.
"""
from __future__ import annotations

import argparse
import json
import logging

import torch

from benchmark import paths
from benchmark.cli.options import add_config_args, config_from_args
from benchmark.config import DataConfig
from benchmark.lungseg import LungTrainConfig, fit_lung_segmenter


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(ap, DataConfig, include=["data_root"])
    add_config_args(ap, LungTrainConfig)
    ap.add_argument("--phantom-only", action="store_true", help="ignore the data pack")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--out", default=None, help="checkpoint stem (default: the segmenter runs use)")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    out = paths.user_segmenter_stem(args.out)
    root = None if args.phantom_only else paths.data_root(args.data_root)
    _, report = fit_lung_segmenter(root, config_from_args(LungTrainConfig, args), out_stem=out)
    keys = ("best_val_dice", "best_epoch", "val_dice_by_group", "heldout_cohen_dice_native",
            "heldout_cohen_dice_native_min", "n_train", "n_val", "parameters", "device", "train_seconds",
            "wall_seconds")
    summary = {k: report.get(k) for k in keys}
    summary["data"] = {k: v for k, v in report["data"].items() if k != "heldout_patients"}
    summary["checkpoint"] = str(out)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
