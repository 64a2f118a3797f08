"""Lung segmentation the project trains itself: compact U-Net, training set, prediction, checkpoints.

Ground-truth lung masks exist for the phantom and most cohen images; kermany and nih images get
masks predicted by this model, so every CAM can be scored for how much of it lies on the lungs.
"""
from benchmark.lungseg.data import build_training_set, phantom_samples, split_cohen_patients
from benchmark.lungseg.model import LungUNet, count_parameters, dice, dice_per_image
from benchmark.lungseg.pipeline import LungTrainConfig, fit_lung_segmenter, heldout_native_dice
from benchmark.lungseg.predict import (
                      keep_lung_components,
                      load_segmenter,
                      predict_lung_mask,
                      predict_lung_masks,
                      save_segmenter,
)
from benchmark.lungseg.train import train_lung_segmenter

__all__ = [
    "LungTrainConfig", "LungUNet", "build_training_set", "count_parameters",
    "dice", "dice_per_image", "fit_lung_segmenter", "heldout_native_dice",
    "keep_lung_components", "load_segmenter", "phantom_samples", "predict_lung_mask", "predict_lung_masks",
    "save_segmenter", "split_cohen_patients", "train_lung_segmenter",
]
