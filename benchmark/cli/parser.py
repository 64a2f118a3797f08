"""The argument parser of `python -m benchmark` / `cxr-audit`; flags come from the config dataclasses."""
from __future__ import annotations

import argparse

from benchmark import paths
from benchmark.cli import command_names
from benchmark.cli.options import add_config_args
from benchmark.config import AuditConfig, DataConfig, ExecutorConfig, TrainConfig
from benchmark.lungseg.pipeline import LungTrainConfig
from benchmark.pipeline.experiment import shipped_experiments
from benchmark.pipeline.spec import JobSpec

DB_HELP = f"results database (default ${paths.ENV_RESULTS_DB} or {paths.DEFAULT_RESULTS_DB})"
CAM_OPTIONS = ("cam_methods", "segmenter", "faithfulness_sample", "sanity_sample", "clusters")


def _models_help() -> str:
    from benchmark.models import ROSTERS, list_models
    rosters = "; ".join(f"'{name}' ({', '.join(names)})" for name, names in ROSTERS.items())
    return f"comma list of models ({', '.join(list_models())}) or a roster: {rosters} (default: default)"


def _int_list(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or a comma list of integers, got {text!r}") from None


def _add_run(sub) -> None:
    run = sub.add_parser("run", help="train and evaluate model x dataset pairs into the results DB",
                         description="Train and evaluate every (model, dataset) pair asked for; pairs "
                                     "already done in the DB are skipped. With no arguments: the phantom "
                                     "with the default roster (shallow, resnet18), CPU-friendly.")
    run.add_argument("--experiment", default=None,
                     help=f"run an experiment: a shipped one ({', '.join(shipped_experiments())}) or a TOML file; "
                          "it sets datasets, models, seeds and the configs (--data-root, --cache-dir, --device, "
                          "--db, --checkpoint-dir still apply)")
    add_config_args(run, DataConfig)
    run.add_argument("--models", default="default", help=_models_help())
    add_config_args(run, TrainConfig, exclude=["seed"])
    run.add_argument("--seed", dest="seeds", type=_int_list, default=[TrainConfig.seed],
                     help=f"training seed, or a comma list for one run per seed (default {TrainConfig.seed})")
    add_config_args(run, AuditConfig)
    run.add_argument("--db", default=None, help=DB_HELP)
    add_config_args(run, JobSpec)
    run.add_argument("--force", action="store_true", help="redo pairs already done")
    add_config_args(run, ExecutorConfig)


def _add_data(sub) -> None:
    data = sub.add_parser("data", help="list dataset presets, check a data folder")
    dsub = data.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("list", help="presets, layouts, and what the data root holds")
    add_config_args(dl, DataConfig, include=["data_root", "external_root"])
    dc = dsub.add_parser("check", help="read every image of a folder, a CSV manifest or one file; report "
                                       "counts and rejections")
    dc.add_argument("path")
    dc.add_argument("--size", type=int, default=224, help="decode size to check at (default 224)")
    add_config_args(dc, DataConfig, include=["cache_dir"])


def _add_cams(sub) -> None:
    cams = sub.add_parser("cams", help="compute CAMs and lung focus for runs already in the DB",
                          description="Compute (or recompute) CAMs of the chosen methods for the test images "
                                      "of finished runs, replacing their earlier maps of those methods.")
    cams.add_argument("--db", default=None, help=DB_HELP)
    cams.add_argument("--run-id", action="append", help="only this run (repeatable; default: all done runs)")
    cams.add_argument("--clusters", dest="clusters_only", action="store_true",
                      help="only the class-mean maps and clusters of the CAMs already stored (no model is run)")
    add_config_args(cams, JobSpec, include=["device", "progress"])
    add_config_args(cams, AuditConfig, include=CAM_OPTIONS)


def _add_evaluate(sub) -> None:
    ev = sub.add_parser("evaluate", help="external validation of a checkpoint on another dataset or folder",
                        description="Evaluate a trained checkpoint on a dataset preset or a folder of class "
                                    "subfolders (images of classes it does not know are left out); writes "
                                    "metrics, predictions and CAMs with split external:<dataset>.")
    ev.add_argument("--checkpoint", required=True, help="a .safetensors file with its .json sidecar")
    add_config_args(ev, DataConfig, include=["name", "data_root", "external_root", "max_per_class", "cache_dir"],
                    required=["name"])
    ev.add_argument("--db", default=None, help=DB_HELP)
    add_config_args(ev, JobSpec, include=["device", "progress"])
    add_config_args(ev, TrainConfig, include=["seed"])
    add_config_args(ev, AuditConfig, include=["n_boot", "cam_methods", "segmenter"])


def _add_lungs(sub) -> None:
    lungs = sub.add_parser("lungs", help="train the lung segmenter or predict lung masks")
    lsub = lungs.add_subparsers(dest="lungs_command", required=True)
    lt = lsub.add_parser("train", help="train the compact U-Net on the pack's cohen masks (+ phantom masks)",
                         description="Train the lung segmenter on ground-truth masks (cohen V7/lungVAE masks "
                                     "under --data-root, plus phantom masks), report Dice on held-out cohen "
                                     "patients (V7 masks, native size), save safetensors + JSON. Runs and the "
                                     "dashboard use it instead of the segmenter shipped in the package "
                                     "(benchmark/lungseg/weights/lung_unet, trained by this command with "
                                     "--out benchmark/lungseg/weights/lung_unet and the defaults).")
    add_config_args(lt, DataConfig, include=["data_root"])
    lt.add_argument("--out", default=None, help="checkpoint stem (default $CXR_LUNG_SEGMENTER or "
                                                "checkpoints/lungseg/lung_unet)")
    add_config_args(lt, LungTrainConfig)
    lt.add_argument("--db", default=None, help="also record the segmenter and its Dice in this results DB")
    lp = lsub.add_parser("predict", help="write predicted lung masks (0/255 PNG) for an image or folder")
    lp.add_argument("path")
    lp.add_argument("--out-dir", required=True)
    add_config_args(lp, AuditConfig, include=["segmenter"])


def _add_report(sub) -> None:
    rep = sub.add_parser("report", help="write the replication report (self-contained HTML, or Markdown + PNGs)",
                         description="The study's table beside the audit, figures, data provenance and the run "
                                     "id behind each number, from a results DB.")
    rep.add_argument("--db", default=None, help=DB_HELP)
    rep.add_argument("--out", default="report.html", help="output file (default report.html)")
    rep.add_argument("--format", choices=("html", "md"), default=None,
                     help="html (one file, figures embedded, works offline) or md (Markdown with PNG figures "
                          "beside it); default: from --out's suffix, else html")


def _float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or a comma list of numbers, got {text!r}") from None


def _name_list(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _add_import(sub) -> None:
    from benchmark.models.imported import (
        DEFAULT_INPUT_SIZE,
        DEFAULT_NORMALIZATION,
        IMPORTED_DIR,
        LIBRARIES,
        NORMALIZATIONS,
    )

    imp = sub.add_parser("import", help="make a model trained elsewhere (torchvision/timm state dict) a checkpoint",
                         description="Turn the state dict of any torchvision or timm architecture (.pt/.pth read with "
                                     "torch.load(weights_only=True), or .safetensors) into a checkpoint the tool "
                                     "audits like its own: `evaluate`, `cams`, the leaderboard and Live CAM. Keys "
                                     "must match the architecture (prefixes such as module. are removed) and the "
                                     "classifier must have one output per class. Prints the checkpoint's path.")
    imp.add_argument("--arch", required=True, help="architecture name in torchvision or timm (e.g. resnet18, "
                                                   "densenet121, efficientnet_b0, convnext_tiny)")
    imp.add_argument("--weights", required=True, help="state dict file: .pt, .pth, .bin or .safetensors")
    imp.add_argument("--classes", required=True, type=_name_list,
                     help="comma list of class names, in the order of the model's outputs "
                          "(e.g. normal,pneumonia,covid)")
    imp.add_argument("--library", choices=("auto", *LIBRARIES), default="auto",
                     help="which library's architecture (default auto: torchvision, else timm; the one the "
                          "weights fit)")
    imp.add_argument("--input-size", type=int, default=DEFAULT_INPUT_SIZE,
                     help=f"square input size the model was trained at (default {DEFAULT_INPUT_SIZE})")
    imp.add_argument("--normalization", choices=tuple(NORMALIZATIONS), default=None,
                     help="input normalisation: " + "; ".join(f"{k}: {v[2]}" for k, v in NORMALIZATIONS.items())
                          + f" (default {DEFAULT_NORMALIZATION}, or --mean/--std)")
    imp.add_argument("--mean", type=_float_list, default=None,
                     help="per-channel mean of [0, 1] pixels (one value, or one per input channel)")
    imp.add_argument("--std", type=_float_list, default=None, help="per-channel std, with --mean")
    imp.add_argument("--out", default=None, help=f"checkpoint file or stem (default <checkpoints>/{IMPORTED_DIR}/"
                                                 "<arch>-<hash>.safetensors)")
    add_config_args(imp, JobSpec, include=["checkpoint_dir"])


#: command -> the function that adds its subparser; the commands and their order come from COMMANDS
SUBPARSERS = {"run": _add_run, "data": _add_data, "cams": _add_cams, "evaluate": _add_evaluate, "lungs": _add_lungs,
              "report": _add_report, "import": _add_import}


def build_parser() -> argparse.ArgumentParser:
    commands = command_names()
    missing = [c for c in commands if c not in SUBPARSERS]
    if missing:
        raise RuntimeError(f"commands registered in benchmark.cli.COMMANDS without a subparser: {missing}")
    parser = argparse.ArgumentParser(prog="cxr-audit", description="Shortcut-learning audit of chest X-ray "
                                     f"classifiers: python -m benchmark {{{','.join(commands)}}} (--help "
                                     "everywhere).")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        SUBPARSERS[command](sub)
    return parser
