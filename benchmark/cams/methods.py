"""Registry of CAM methods over pytorch-grad-cam, keyed by the lowercase names stored in `cams.method`.

Each entry wraps a pytorch-grad-cam class so that its maps stay at the target layer's own
resolution: the store keeps maps there (docs/contract.md) and upsamples only for display and measures, and
pytorch-grad-cam would otherwise resize every map to the input size inside `__call__`.
`get_target_width_height` is the one hook `BaseCAM.compute_cam_per_layer` asks for that size;
returning None makes `scale_cam_image` min-max normalise without resizing.

Adding a method is one `register_cam_method(...)` line (or decorator on a BaseCAM subclass).
Methods with a batched on-device implementation name it in `fast` (see fast.py); the engine
uses it unless asked for the reference path.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from pytorch_grad_cam import (
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
)
from pytorch_grad_cam.activations_and_gradients import ActivationsAndGradients
from pytorch_grad_cam.base_cam import BaseCAM

from benchmark.cams import fast as fast_paths
from benchmark.cams.hooks import remove_hooks, scoped_forward_hook
from benchmark.errors import BenchmarkError, UnknownNameError


class CamMethodNotApplicable(BenchmarkError):
    """A CAM method was asked for on a model it cannot explain (e.g. `cam` without a GAP head)."""

    def __init__(self, method: str, model_name: str, reason: str, choices):
        self.method, self.model_name, self.choices = method, model_name, sorted(choices)
        super().__init__(
            f"CAM method {method!r} does not apply to model {model_name!r}: {reason}; "
            f"methods that apply: {', '.join(self.choices)}"
        )


class AtLayerResolution:
    """Mixin for BaseCAM subclasses: keep maps at the target layer's resolution (no resize)."""

    def get_target_width_height(self, input_tensor: torch.Tensor) -> None:
        return None


class ScopedActivationsAndGradients(ActivationsAndGradients):
    """pytorch-grad-cam's activation/gradient recorder with hooks that see only this thread.

    Its own constructor hooks the layer for every thread's forward, so on a model shared by
    dashboard sessions one request's map could be built from another's activations. Gradients
    are recorded by tensor hooks on this call's own activations, so they need no filter.
    """

    def __init__(self, model, target_layers, reshape_transform=None, detach: bool = True):
        super().__init__(model, [], reshape_transform, detach)  # registers nothing
        for layer in target_layers:
            self.handles.append(scoped_forward_hook(layer, self.save_activation))
            self.handles.append(scoped_forward_hook(layer, self.save_gradient))

    def release(self):
        self.clear()
        remove_hooks(self.handles)
        self.handles.clear()


class CallOnlyView:
    """What pytorch-grad-cam is given instead of the model: it can call it, read it and find its
    device, but its `eval()` and `zero_grad()` (BaseCAM calls both) touch nothing. Another
    session's forward on the same model must not see its mode or gradients change."""

    def __init__(self, model):
        self._model = model

    def __call__(self, *args, **kwargs):
        return self._model(*args, **kwargs)

    def eval(self):
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        return None

    def parameters(self, recurse: bool = True):
        return self._model.parameters(recurse)

    def __getattr__(self, name):  # .net, .spec for ClassActivationMap
        return getattr(self._model, name)


@dataclass(frozen=True)
class CamMethod:
    """One registry entry.

    `cam_class` is the layer-resolution pytorch-grad-cam class; `requires_gap_head` marks
    methods whose definition needs logits = Linear(GAP(target layer)) (the original CAM);
    `fast` is the batched on-device implementation, or None; `from_gradients`, for a method
    whose map is a function of one layer's activation and gradient, that function: such methods
    share one forward and backward when several are asked at once (engine.compute_cams_many).
    """

    name: str
    cam_class: type
    requires_gap_head: bool = False
    fast: Callable | None = None
    summary: str = ""
    from_gradients: Callable | None = None

    def applies_to(self, model, layer: str | None = None) -> bool:
        """Whether the method explains `model` at `layer` (None: the registry's CAM layer). A
        GAP-head method applies only at the registry's layer: only that one feeds the head."""
        return not self.requires_gap_head or (layer is None and bool(model.spec.gap_head))

    def build(self, model, target_layer: torch.nn.Module) -> BaseCAM:
        """A pytorch-grad-cam object for one call, hooked on `target_layer` for the calling
        thread only; the caller releases it (`.activations_and_grads.release()`).

        It gets a CallOnlyView of the model, so BaseCAM's `model.eval()` and `zero_grad()` change
        nothing: the maps use the caller's mode, as the fast path does.
        """
        cam = self.cam_class(CallOnlyView(model), [])  # no layers: BaseCAM registers no hooks
        cam.target_layers = [target_layer]
        cam.activations_and_grads = ScopedActivationsAndGradients(cam.model, [target_layer],
                                                                  cam.reshape_transform, cam.detach)
        return cam


CAM_METHODS: dict[str, CamMethod] = {}


def register_cam_method(
    name: str,
    *,
    requires_gap_head: bool = False,
    fast: Callable | None = None,
    summary: str = "",
    from_gradients: Callable | None = None,
) -> Callable[[type], type]:
    """Decorator (or call on an existing class) adding a BaseCAM subclass under `name`.

    Returns the class unchanged; the registry holds a layer-resolution subclass of it.
    """
    if name != name.lower():
        raise ValueError(f"CAM method names are lowercase (stored in cams.method): {name!r}")

    def add(cls: type) -> type:
        if name in CAM_METHODS:
            raise ValueError(f"CAM method {name!r} is already registered")
        at_layer = type(f"{cls.__name__}AtLayer", (AtLayerResolution, cls), {})
        CAM_METHODS[name] = CamMethod(
            name=name,
            cam_class=at_layer,
            requires_gap_head=requires_gap_head,
            fast=fast,
            summary=summary or (cls.__doc__ or "").strip().split("\n")[0],
            from_gradients=from_gradients,
        )
        return cls

    return add


def list_cam_methods(model=None, layer: str | None = None) -> list[str]:
    """Registered method names; with a model, only those that apply to it (at `layer`)."""
    return sorted(n for n, m in CAM_METHODS.items() if model is None or m.applies_to(model, layer))


def get_cam_method(name: str) -> CamMethod:
    try:
        return CAM_METHODS[name.lower()]
    except KeyError:
        raise UnknownNameError("CAM method", name, CAM_METHODS) from None


def resolve_cam_method(name: str, model, layer: str | None = None) -> CamMethod:
    """The entry for `name`, checked against the model and layer: a clear error instead of a wrong map."""
    method = get_cam_method(name)
    if not method.applies_to(model, layer):
        why = ("and this model's spec has gap_head=False" if layer is None
               else f"and is defined only at the layer feeding that head, not at {layer!r}")
        raise CamMethodNotApplicable(
            method.name,
            getattr(model.spec, "name", type(model).__name__),
            f"it needs a global-average-pooling head (logits = Linear(GAP(target layer))) {why}",
            list_cam_methods(model, layer),
        )
    return method


class ClassActivationMap(BaseCAM):
    """CAM (Zhou et al. 2016): weights = the classifier's row of the target class; GAP heads only."""

    def __init__(self, model, target_layers, reshape_transform=None):
        super().__init__(model, target_layers, reshape_transform, uses_gradients=False)

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads) -> np.ndarray:
        rows = [int(t.category) for t in targets]
        return fast_paths.classifier_weight(self.model, activations.shape[1])[rows].cpu().numpy()


register_cam_method("cam", requires_gap_head=True, fast=fast_paths.class_activation_maps,
                    summary="class activation mapping: classifier row of the target class")(ClassActivationMap)
register_cam_method("gradcam", fast=fast_paths.grad_cams, from_gradients=fast_paths.gradcam_map,
                    summary="Grad-CAM: channel weights = spatial mean of the gradients")(GradCAM)
register_cam_method("gradcam++", summary="Grad-CAM++: higher-order gradient weights")(GradCAMPlusPlus)
register_cam_method("hirescam", fast=fast_paths.hires_cams, from_gradients=fast_paths.hirescam_map,
                    summary="HiResCAM: element-wise gradient x activation")(HiResCAM)
register_cam_method("scorecam", summary="Score-CAM: weights from the score of masked inputs")(ScoreCAM)
register_cam_method("layercam", summary="LayerCAM: positive gradients x activation")(LayerCAM)
register_cam_method("eigencam", summary="Eigen-CAM: first principal component (class-agnostic)")(EigenCAM)
