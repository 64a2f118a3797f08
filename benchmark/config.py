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

    name: str = option("phantom", "dataset preset (`data list` shows them), a folder of class subfolders, or a "
                                  "CSV manifest (FILE.csv: path,label[,patient_id,view,sex,age,source], paths "
                                  "relative to the CSV); `run` takes a comma list", flag="--data")
    data_root: str | None = option(None, "folder holding the real sources (pack or upstream layouts); "
                                         "default $CXR_DATA")
    external_root: str | None = option(None, "folder holding the external-validation sources (hannover/, "
                                             "openist/) that external presets read; default $CXR_EXTERNAL")
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
    pretrained: bool = option(False, "start from ImageNet weights: --weights-dir, else the torch hub / Hugging Face "
                                     "caches, where torchvision / timm download them if missing (not with "
                                     "$CXR_OFFLINE=1)")
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
    source_probe: bool = option(True, "source probe: how well a logistic regression on the model's features "
                                      "and on pooled pixels tells the source database apart (train split -> "
                                      "test split; datasets with one source get a skipped row)", cli=False)
    clusters: bool = option(True, "no class-mean CAMs and clusters of CAMs (where the model looks over all its "
                                  "images, per method and predicted class)", flag="--no-clusters")
    sanity_sample: int = option(4, "test images per CAM method for the sanity check (maps of the trained model "
                                   "against the same architecture with randomised weights); 0 skips")
    sanity_threshold: float = option(0.5, "CAM sanity check: a method whose mean rank correlation between trained "
                                          "and randomised maps reaches this is flagged", cli=False)
    segmenter: str | None = option(None, "lung segmenter checkpoint stem for images without ground-truth "
                                         "masks (default $CXR_LUNG_SEGMENTER, else checkpoints/lungseg/lung_unet "
                                         "if trained, else the one shipped in the package)")
    n_boot: int = option(1000, "patient-bootstrap resamples for 95% CIs")


def _executor_names() -> list[str]:
    from benchmark.pipeline.executors import list_executors
    return list_executors()


CHECKPOINTS_SHARED = ("auto", "yes", "no")


@dataclass(frozen=True)
class ExecutorConfig:
    """Where the grid's jobs run (pipeline/executors/): here one after another, or as Ray tasks."""

    executor: str = option("inprocess", "where the jobs run: one after another in this process, or each a Ray "
                                        "task (several at once, here or on a cluster)", listing=_executor_names)
    ray_address: str | None = option(None, "Ray cluster to run on: 'auto' (the cluster this machine has joined) or "
                                           "HOST:PORT of its head; default: start a local Ray instance on this "
                                           "machine for the grid and stop it after")
    gpus_per_job: float | None = option(None, "GPUs each Ray task holds; fractional shares a GPU between small "
                                              "models (0.25: four jobs per GPU); default 1 when the cluster has "
                                              "GPUs and --device is not cpu, else 0")
    cpus_per_job: int = option(1, "CPUs each Ray task holds (also its torch threads)")
    checkpoints_shared: str = option(
        "auto", "whether Ray workers see --checkpoint-dir: yes (they write checkpoints there), no (checkpoints "
                "come back with the results and this process writes them), auto (yes on a local instance or a "
                "one-node cluster, else no)", choices=CHECKPOINTS_SHARED)
