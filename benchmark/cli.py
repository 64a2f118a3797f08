"""Command line: python -m benchmark {run,data,cams,lungs,evaluate} (--help everywhere)."""
from __future__ import annotations

import argparse
import logging
import sys

from .cams import DEFAULT_CAM_METHODS
from .errors import BenchmarkError

log = logging.getLogger("benchmark")

DEFAULT_DB = "results.duckdb"
REAL_DATA_HINT = (
    "Real X-rays: python -m benchmark run --data cohen-kermany --data-root ../shared/data/cxr "
    "--models shallow,resnet18 (or set $CXR_DATA); presets: cohen-kermany, cohen-nih, covid-normal; "
    "any folder of class subfolders works too (--data PATH). `python -m benchmark data list` shows them.")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default="phantom",
                   help="dataset preset (phantom, phantom-shortcut, phantom-clean, cohen-kermany, cohen-nih, "
                        "covid-normal) or a folder of class subfolders (default: phantom)")
    p.add_argument("--data-root", default=None,
                   help="folder holding the real sources (pack or upstream layouts); default $CXR_DATA")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the phantom and of the patient split")
    p.add_argument("--max-per-class", type=int, default=None,
                   help="cap images per class (whole patients, seeded) for quick runs")
    p.add_argument("--n-phantom", type=int, default=None, help="phantom images to generate (default 600)")
    p.add_argument("--cache-dir", default=None, help="decode cache (default $CXR_CACHE or ~/.cache/cxr-audit)")


def _add_cam_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cam-methods", default=",".join(DEFAULT_CAM_METHODS),
                   help="CAM methods for every test image (comma list of cam, gradcam, gradcam++, hirescam, "
                        f"scorecam, layercam, eigencam; 'none' to skip; default {','.join(DEFAULT_CAM_METHODS)}). "
                        "METHOD@LAYER explains at another layer: a dotted path (gradcam@layer3) or a stride "
                        "alias, the last layer N times smaller than the input (hirescam@stride16), which "
                        "names the same resolution on every architecture")
    p.add_argument("--segmenter", default=None,
                   help="lung segmenter checkpoint stem for images without ground-truth masks "
                        "(default checkpoints/lungseg/lung_unet; train: python -m benchmark lungs train)")
    p.add_argument("--faithfulness-sample", type=int, default=8,
                   help="test images per CAM method scored for faithfulness (ROAD, confidence drop); 0 skips")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmark", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate model x dataset pairs into the results DB",
                         description="Train and evaluate every (model, dataset) pair asked for; pairs "
                                     "already done in the DB are skipped. With no arguments: the phantom "
                                     "with the default roster (shallow, resnet18), CPU-friendly.")
    _add_data_args(run)
    run.add_argument("--models", default="default",
                     help="comma-separated roster names, 'default' (shallow,resnet18) or 'paper' (all 15)")
    run.add_argument("--epochs", type=int, default=8, help="maximum epochs (early stopping on val loss)")
    run.add_argument("--db", default=DEFAULT_DB, help=f"results database (default {DEFAULT_DB})")
    run.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    run.add_argument("--pretrained", action="store_true",
                     help="start from ImageNet weights (timm/torchvision caches or --weights-dir; never downloaded)")
    run.add_argument("--weights-dir", default=None, help="folder with ImageNet weight files")
    run.add_argument("--seed", type=int, default=0, help="training seed")
    run.add_argument("--image-size", type=int, default=None, help="input size (default: each model's own)")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--lr", type=float, default=1e-3)
    run.add_argument("--patience", type=int, default=3, help="early-stopping patience in epochs")
    run.add_argument("--lungs-only", action="store_true",
                     help="control run: train and test on images with everything outside the lungs removed")
    _add_cam_args(run)
    run.add_argument("--checkpoint-dir", default="checkpoints")
    run.add_argument("--force", action="store_true", help="redo pairs already done")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    data = sub.add_parser("data", help="list dataset presets, check a data folder")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("list", help="presets, layouts, and what the data root holds")
    dl.add_argument("--data-root", default=None, help="default $CXR_DATA")
    dc = dsub.add_parser("check", help="read every image of a folder or file; report counts and rejections")
    dc.add_argument("path")
    dc.add_argument("--size", type=int, default=224, help="decode size to check at")
    dc.add_argument("--cache-dir", default=None)
    cams = sub.add_parser("cams", help="compute CAMs and lung focus for runs already in the DB",
                          description="Compute (or recompute) CAMs of the chosen methods for the test images "
                                      "of finished runs, replacing their earlier maps of those methods.")
    cams.add_argument("--db", default=DEFAULT_DB)
    cams.add_argument("--run-id", action="append", help="only this run (repeatable; default: all done runs)")
    cams.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    _add_cam_args(cams)

    ev = sub.add_parser("evaluate", help="external validation of a checkpoint on another dataset or folder",
                        description="Evaluate a trained checkpoint on a dataset preset or a folder of class "
                                    "subfolders (images of classes it does not know are left out); writes "
                                    "metrics, predictions and CAMs with split external:<dataset>.")
    ev.add_argument("--checkpoint", required=True, help="a .safetensors file with its .json sidecar")
    ev.add_argument("--data", required=True, help="preset name or folder of class subfolders")
    ev.add_argument("--data-root", default=None, help="default $CXR_DATA")
    ev.add_argument("--max-per-class", type=int, default=None)
    ev.add_argument("--db", default=DEFAULT_DB)
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--n-boot", type=int, default=1000)
    ev.add_argument("--cache-dir", default=None)
    _add_cam_args(ev)

    lungs = sub.add_parser("lungs", help="train the lung segmenter or predict lung masks")
    lsub = lungs.add_subparsers(dest="lungs_command", required=True)
    lt = lsub.add_parser("train", help="train the compact U-Net on the pack's cohen masks (+ phantom masks)",
                         description="Train the lung segmenter on ground-truth masks (cohen V7/lungVAE masks "
                                     "under --data-root, plus phantom masks), report Dice on held-out cohen "
                                     "patients (V7 masks, native size), save safetensors + JSON.")
    lt.add_argument("--data-root", default=None, help="folder holding cohen/ (default $CXR_DATA)")
    lt.add_argument("--out", default=str(_default_segmenter()), help="checkpoint stem")
    lt.add_argument("--size", type=int, default=128)
    lt.add_argument("--epochs", type=int, default=30)
    lt.add_argument("--n-phantom", type=int, default=48)
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    lt.add_argument("--db", default=None, help="also record the segmenter and its Dice in this results DB")
    lp = lsub.add_parser("predict", help="write predicted lung masks (0/255 PNG) for an image or folder")
    lp.add_argument("path")
    lp.add_argument("--out-dir", required=True)
    lp.add_argument("--segmenter", default=str(_default_segmenter()))
    return parser


def _default_segmenter():
    from .lungseg.predict import DEFAULT_SEGMENTER_STEM
    return DEFAULT_SEGMENTER_STEM


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    from . import commands
    try:
        return commands.dispatch(args)
    except BenchmarkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: runs not finished were not stored; rerun to resume", file=sys.stderr)
        return 130
