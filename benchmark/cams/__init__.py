"""CAMs for the audit: a registry over pytorch-grad-cam, a batched on-device path, lung-focus measures.

Names are resolved lazily (PEP 562) so that `import benchmark.cams.lungfocus` (the dashboard,
the store) does not pay for importing pytorch-grad-cam, cv2 and scikit-learn.
"""
from __future__ import annotations

import importlib

# The paper's maps (last block) plus one fine enough for the lung measures: on the phantom the
# last-block Grad-CAM of resnet18 (7 x 7 at 224 px) does not tell a lung-reading model from a
# shortcut one, a stride-16 HiResCAM does (bench/RESULTS.md, "Proving the measure").
DEFAULT_CAM_METHODS = ("cam", "gradcam", "hirescam@stride16")

_EXPORTS = {
    "compute_cams": "engine",
    "explain_predictions": "engine",
    "upsample_cam": "engine",
    "CAM_METHODS": "methods",
    "CamMethod": "methods",
    "CamMethodNotApplicable": "methods",
    "register_cam_method": "methods",
    "list_cam_methods": "methods",
    "get_cam_method": "methods",
    "resolve_cam_method": "methods",
    "LungFocus": "lungfocus",
    "lung_focus": "lungfocus",
    "lung_focus_batch": "lungfocus",
    "uniform_baseline": "lungfocus",
    "faithfulness_scores": "faithfulness",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
