"""Every option of a run, its default and its help, written once as frozen dataclass fields.

A job is a `JobSpec` (pipeline/spec.py) composed of a `DataConfig`, a `TrainConfig` and an
`AuditConfig`; the CLI builds its flags from these fields (cli/options.py), so a default or a
help text changed here changes everywhere. Fields whose metadata has `cli=False` are settings
of the library only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from benchmark.cams import DEFAULT_CAM_METHODS
from benchmark.cams.names import parse_cam_methods

DEVICES = ("auto", "cpu", "cuda")


def option(default: Any, help: str, *, cli: bool = True, flag: str | None = None,
           choices: tuple | None = None, parse=None, show=None, listing=None) -> Any:
    """A config field with what the CLI needs: help, optional flag name (default --field-name),
    choices, a parser for the flag's text, how to show the default in help, and `listing`, a
    callable naming the registry entries the value may hold (shown in help)."""
    return field(default=default, metadata={"help": help, "cli": cli, "flag": flag, "choices": choices,
                                            "parse": parse, "show": show, "listing": listing})


def device_option() -> Any:
    return option("auto", "where to compute", choices=DEVICES)


def _cam_method_names() -> list[str]:
    from benchmark.cams.methods import list_cam_methods
    return list_cam_methods()


@dataclass(frozen=True)
class DataConfig:
    """Which images a job reads and how they are prepared."""

    name: str = option("phantom", "dataset preset (`data list` shows them) or a folder of class subfolders; "
                                  "`run` takes a comma list", flag="--data")
    data_root: str | None = option(None, "folder holding the real sources (pack or upstream layouts); "
                                         "default $CXR_DATA")
    data_seed: int = option(0, "seed of the phantom and of the patient split")
    max_per_class: int | None = option(None, "cap images per class (whole patients, seeded) for quick runs")
    n_phantom: int | None = option(None, "phantom images to generate (default: the phantom's own, 600)")
    image_size: int | None = option(None, "input size (default: the preset's, else each model's own)")
    lungs_only: bool = option(False, "control run: train and test on images with everything outside the "
                                     "lungs removed")
    cache_dir: str | None = option(None, "decode cache (default $CXR_CACHE or ~/.cache/cxr-audit)")


@dataclass(frozen=True)
class TrainConfig:
    """How one model is fitted: class-weighted CE, AdamW, cosine schedule, early stopping."""

    epochs: int = option(8, "maximum epochs (early stopping on val loss)")
    batch_size: int = option(32, "training batch size")
    lr: float = option(1e-3, "AdamW learning rate")
    weight_decay: float = option(1e-4, "AdamW weight decay", cli=False)
    patience: int = option(3, "early-stopping patience in epochs")
    augment: bool = option(True, "small affine jitter and exposure change on the device", cli=False)
    seed: int = option(0, "training seed (also seeds bootstraps and the faithfulness sample)")
    pretrained: bool = option(False, "start from ImageNet weights (library caches or --weights-dir)")
    weights_dir: str | None = option(None, "folder with ImageNet weight files")


@dataclass(frozen=True)
class AuditConfig:
    """What is measured on a trained model: CAMs and lung focus, faithfulness, probes, CIs."""

    cam_methods: tuple[str, ...] = option(
        DEFAULT_CAM_METHODS,
        "CAM methods for every test image (comma list of registered methods; 'none' skips). "
        "METHOD@LAYER explains at another layer: a dotted path (gradcam@layer3) or a stride alias, the last "
        "layer N times smaller than the input (hirescam@stride16), the same resolution on every architecture",
        parse=parse_cam_methods, show=",".join, listing=_cam_method_names)
    faithfulness_sample: int = option(8, "test images per CAM method scored for faithfulness (ROAD, "
                                         "confidence drop); 0 skips")
    probes: bool = option(True, "accuracy with the lungs removed and with only the lungs", cli=False)
    segmenter: str | None = option(None, "lung segmenter checkpoint stem for images without ground-truth "
                                         "masks (default $CXR_LUNG_SEGMENTER or checkpoints/lungseg/lung_unet)")
    n_boot: int = option(1000, "patient-bootstrap resamples for 95% CIs")
