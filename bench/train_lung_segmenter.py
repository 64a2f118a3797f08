"""Train the lung U-Net on the cohen masks (+ phantoms) and save it to checkpoints/lungseg/.

    python bench/train_lung_segmenter.py --size 128 --epochs 10 --threads 2   # ~15 min on 2 busy CPU cores
    python bench/train_lung_segmenter.py --device cuda --epochs 60   # on a GPU

Prints a JSON summary: val Dice per group (training size), held-out cohen Dice at native size,
wall time. The held-out set is cohen patients never trained on, with human (v7labs) masks.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmark.lungseg import DEFAULT_SEGMENTER_STEM, LungTrainConfig, default_cxr_root, fit_lung_segmenter  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    defaults = LungTrainConfig()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", type=Path, default=None, help="data pack (default $CXR_DATA or ../shared/data/cxr)")
    ap.add_argument("--phantom-only", action="store_true", help="ignore the data pack")
    ap.add_argument("--size", type=int, default=defaults.size)
    ap.add_argument("--epochs", type=int, default=defaults.epochs)
    ap.add_argument("--batch-size", type=int, default=defaults.batch_size)
    ap.add_argument("--lr", type=float, default=defaults.lr)
    ap.add_argument("--n-phantom", type=int, default=defaults.n_phantom)
    ap.add_argument("--base-channels", type=int, default=defaults.base_channels)
    ap.add_argument("--no-lungvae", action="store_true", help="train on v7labs masks only")
    ap.add_argument("--seed", type=int, default=defaults.seed)
    ap.add_argument("--device", default="auto", help="auto|cpu|cuda")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave as is)")
    ap.add_argument("--out", type=Path, default=DEFAULT_SEGMENTER_STEM, help="checkpoint stem")
    args = ap.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    config = LungTrainConfig(size=args.size, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             n_phantom=args.n_phantom, seed=args.seed, device=device,
                             base_channels=args.base_channels, use_lungvae=not args.no_lungvae)
    root = None if args.phantom_only else (args.data_root or default_cxr_root())
    _, report = fit_lung_segmenter(root, config, out_stem=args.out)
    keys = ("best_val_dice", "best_epoch", "val_dice_by_group", "heldout_cohen_dice_native",
            "heldout_cohen_dice_native_min", "n_train", "n_val", "parameters", "device", "train_seconds",
            "wall_seconds")
    summary = {k: report.get(k) for k in keys}
    summary["data"] = {k: v for k, v in report["data"].items() if k != "heldout_patients"}
    summary["checkpoint"] = str(args.out)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
