"""The model zoo: one registry entry per architecture of Majeed et al. (2020), plus `shallow`.

As in timm, an architecture is one decorated builder carrying a typed spec (input size, CAM
layer, head, weights), and everything else (tests, CLI, CAM engine) iterates the registry.
Every net is wrapped in XrayClassifier, so callers feed the same grayscale [0, 1] batches to all
of them and normalisation travels with the model instead of with each data loader.
"""
from __future__ import annotations

import difflib
import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

from benchmark.errors import UnknownNameError, WeightsMissingError
from benchmark.models import weights as weights_lib
from benchmark.models.shallow import ShallowCNN

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = INCEPTION_STD = (0.5, 0.5, 0.5)  # TF-ported weights expect inputs in [-1, 1]
FAMILIES = ("torchvision", "timm", "scratch")

# (num_classes, weights_file) -> net. With a weights file the builder must build the layout of
# the ImageNet checkpoint (1000 classes, aux heads) and load it; create_model then adapts it.
NetBuilder = Callable[[int, "Path | None"], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """Everything the benchmark needs to know about an architecture, validated once.

    `cam_target_layer` and `classifier` are dotted paths inside the raw net. `gap_head` is True
    where logits = classifier(GAP(cam_target_layer output)), the condition for the original
    CAM method to be exact. `weights` is a torchvision weights enum name or a timm pretrained
    tag. `mean`/`std`/`in_chans` are the input normalisation the weights were trained with.
    """

    name: str
    family: str
    input_size: int
    min_input_size: int
    cam_target_layer: str
    classifier: str
    gap_head: bool
    weights: str
    builder: NetBuilder = field(repr=False, compare=False)
    description: str = ""
    in_chans: int = 3
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"{self.name}: family {self.family!r} is not one of {FAMILIES}")
        if not 0 < self.min_input_size <= self.input_size:
            raise ValueError(f"{self.name}: need 0 < min_input_size {self.min_input_size} <= {self.input_size}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ValueError(f"{self.name}: mean/std need {self.in_chans} values")
        if self.family != "scratch" and not self.weights:
            raise ValueError(f"{self.name}: a {self.family} model needs a weights name")


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(**spec_fields) -> Callable[[NetBuilder], NetBuilder]:
    """Decorator: register the builder under its function name (or name=) with its spec fields."""

    def decorate(builder: NetBuilder) -> NetBuilder:
        spec = ModelSpec(**{"name": builder.__name__, **spec_fields}, builder=builder)
        if spec.name in _REGISTRY:
            raise ValueError(f"model {spec.name!r} is registered twice")
        _REGISTRY[spec.name] = spec
        return builder

    return decorate


def list_models(pattern: str = "*") -> list[str]:
    """Registered names matching a shell-style pattern, sorted (as timm.list_models)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model; UnknownNameError lists every name and the closest ones."""
    key = name.strip().lower()
    if key in _REGISTRY:
        return _REGISTRY[key]
    error = UnknownNameError("model", name, _REGISTRY)
    close = difflib.get_close_matches(key, list(_REGISTRY), n=3, cutoff=0.6)
    if close:
        error.args = (f"{error.args[0]} (did you mean {', '.join(close)}?)",)
    error.suggestions = close
    raise error


def resolve_models(text: str) -> list[str]:
    """'paper', 'default', or a comma list of names, rosters and patterns -> validated names."""
    names: list[str] = []
    for item in (part.strip().lower() for part in text.split(",")):
        if not item:
            continue
        if item in ROSTERS:
            names += ROSTERS[item]
        elif any(ch in item for ch in "*?[") and list_models(item):
            names += list_models(item)
        else:
            names.append(get_spec(item).name)
    if not names:
        raise UnknownNameError("model list", text, [*ROSTERS, *_REGISTRY])
    return list(dict.fromkeys(names))


class XrayClassifier(nn.Module):
    """A registry net behind one contract: grayscale N x 1 x H x W in [0, 1] -> logits N x C.

    The channel repeat and the normalisation live here, as buffers, so checkpoints, the CAM
    engine and the dashboard's live CAMs cannot disagree on preprocessing. The buffers are not
    persistent: they follow from the spec, and checkpoints hold only learned weights.
    """

    def __init__(self, spec: ModelSpec, net: nn.Module, num_classes: int, pretrained: bool):
        super().__init__()
        self.spec = spec
        self.net = net
        self.num_classes = num_classes
        self.pretrained = pretrained
        shape = (1, spec.in_chans, 1, 1)
        self.register_buffer("mean", torch.tensor(spec.mean).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(shape), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels = x.shape[1] if x.dim() == 4 else -1
        if channels not in (1, self.spec.in_chans):
            raise ValueError(f"{self.spec.name} expects N x 1 x H x W images, got shape {tuple(x.shape)}")
        if channels != self.spec.in_chans:
            x = x.expand(-1, self.spec.in_chans, -1, -1)
        return self.net((x - self.mean) / self.std)

    @property
    def cam_target_layer(self) -> nn.Module:
        return self.net.get_submodule(self.spec.cam_target_layer)

    @property
    def classifier_layer(self) -> nn.Module:
        return self.net.get_submodule(self.spec.classifier)

    @property
    def normalization(self) -> dict:
        """For the checkpoint sidecar: how a raw [0, 1] grayscale image is fed to the net."""
        return {"mean": list(self.spec.mean), "std": list(self.spec.std), "in_chans": self.spec.in_chans}


def create_model(name: str, num_classes: int, *, pretrained: bool = False,
                 weights_dir: Path | None = None) -> XrayClassifier:
    """Build a registered model for num_classes, with ImageNet weights when pretrained.

    Pretrained weights come from a local file or the library's cache, downloaded there by
    torchvision/timm when missing (see weights.py), and load strictly with their ImageNet head,
    which is then replaced, so a mismatched file fails loudly instead of half-loading.
    """
    spec = get_spec(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if pretrained and spec.family == "scratch":
        log.warning("%s is trained from scratch: no pretrained weights exist, ignoring pretrained=True", spec.name)
        pretrained = False
    weights_file = weights_lib.find_weights(spec, weights_dir) if pretrained else None
    net = spec.builder(num_classes, weights_file)
    _drop_aux_heads(net)
    head = net.get_submodule(spec.classifier)
    if weights_file is not None or _out_features(head) != num_classes:
        _set_submodule(net, spec.classifier, _new_head(head, num_classes))
    return XrayClassifier(spec, net, num_classes, pretrained=weights_file is not None)


def _drop_aux_heads(net: nn.Module) -> None:
    """GoogLeNet/Inception v3 auxiliary classifiers only exist to load their checkpoints."""
    for attr in ("aux1", "aux2", "AuxLogits"):
        if getattr(net, attr, None) is not None:
            setattr(net, attr, None)
    if hasattr(net, "aux_logits"):
        net.aux_logits = False


def _out_features(head: nn.Module) -> int:
    return head.out_features if isinstance(head, nn.Linear) else head.out_channels


def _new_head(head: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, num_classes)
    if isinstance(head, nn.Conv2d):  # squeezenet's 1x1 conv classifier
        return nn.Conv2d(head.in_channels, num_classes, kernel_size=head.kernel_size)
    raise TypeError(f"cannot replace a classifier of type {type(head).__name__}")


def _set_submodule(net: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    setattr(net.get_submodule(parent_path) if parent_path else net, child, module)


def _torchvision(factory: Callable[..., nn.Module], num_classes: int, weights_file: Path | None,
                 what: str, **kwargs) -> nn.Module:
    """Build with torchvision, then load the file find_weights found (in torch hub's cache when downloaded)."""
    if weights_file is None:
        return factory(weights=None, num_classes=num_classes, **kwargs)
    net = factory(weights=None, num_classes=1000, **kwargs)
    weights_lib.load_into(net, weights_file, what)
    return net


def _timm(tag: str, num_classes: int, weights_file: Path | None) -> nn.Module:
    """Build with timm; a local file goes in through pretrained_cfg_overlay, the only source timm sees."""
    import timm

    if weights_file is None:
        return timm.create_model(tag, pretrained=False, num_classes=num_classes)
    try:
        net = timm.create_model(tag, pretrained=True, num_classes=1000,
                                pretrained_cfg_overlay={"file": str(weights_file)})
    except (RuntimeError, KeyError, OSError, ValueError) as exc:
        detail = str(exc) if len(str(exc)) < 600 else str(exc)[:600] + " ..."
        raise WeightsMissingError(f"weights file {weights_file} does not fit {tag}: {detail}") from None
    log.info("loaded %s ImageNet weights from %s", tag, weights_file)
    return net


class _PostReluDenseNet201(tvm.DenseNet):
    """torchvision's DenseNet-201 with its final ReLU inside `features`, not in-place after it.

    torchvision applies F.relu in place to the output of `features`, so a hook on `features`
    sees that tensor change under it (pre-ReLU if the hook copied it to another device,
    post-ReLU if not) and CAM would not be exact. Here `features` ends in ReLU and logits =
    classifier(GAP(features)) exactly; the state dict is unchanged (ReLU has no parameters),
    so the ImageNet files still load. A subclass rather than a patched forward, so deepcopy
    and pickling keep working.
    """

    def __init__(self, weights=None, num_classes: int = 1000):
        if weights is not None:
            raise ValueError("weights are loaded from local files by create_model, not by the builder")
        super().__init__(growth_rate=32, block_config=(6, 12, 48, 32), num_init_features=64,
                         num_classes=num_classes)
        self.features.add_module("relu5", nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(out, 1))


# ---------------------------------------------------------------- the registry entries

_TV = dict(family="torchvision", input_size=224)
_INCEPTION_NORM = dict(mean=INCEPTION_MEAN, std=INCEPTION_STD)


@register_model(**_TV, min_input_size=64, cam_target_layer="features", classifier="classifier.6", gap_head=False,
                weights="AlexNet_Weights.IMAGENET1K_V1", description="AlexNet (2012): 5 convs + 3 FC layers")
def alexnet(num_classes, weights_file):
    return _torchvision(tvm.alexnet, num_classes, weights_file, "alexnet")


@register_model(**_TV, min_input_size=32, cam_target_layer="features", classifier="classifier.6", gap_head=False,
                weights="VGG16_Weights.IMAGENET1K_V1", description="VGG-16 (2014): 13 convs + 3 FC layers")
def vgg16(num_classes, weights_file):
    return _torchvision(tvm.vgg16, num_classes, weights_file, "vgg16")


@register_model(**_TV, min_input_size=32, cam_target_layer="features", classifier="classifier.6", gap_head=False,
                weights="VGG19_Weights.IMAGENET1K_V1", description="VGG-19 (2014): 16 convs + 3 FC layers")
def vgg19(num_classes, weights_file):
    return _torchvision(tvm.vgg19, num_classes, weights_file, "vgg19")


@register_model(**_TV, **_INCEPTION_NORM, min_input_size=32, cam_target_layer="inception5b", classifier="fc",
                gap_head=True, weights="GoogLeNet_Weights.IMAGENET1K_V1",
                description="GoogLeNet / Inception v1 (2014); TF-ported weights, so inputs scaled to [-1, 1]")
def googlenet(num_classes, weights_file):
    return _torchvision(tvm.googlenet, num_classes, weights_file, "googlenet", transform_input=False,
                        aux_logits=weights_file is not None, init_weights=weights_file is None)


@register_model(**_TV, min_input_size=32, cam_target_layer="layer4", classifier="fc", gap_head=True,
                weights="ResNet18_Weights.IMAGENET1K_V1", description="ResNet-18 (2015)")
def resnet18(num_classes, weights_file):
    return _torchvision(tvm.resnet18, num_classes, weights_file, "resnet18")


@register_model(**_TV, min_input_size=32, cam_target_layer="layer4", classifier="fc", gap_head=True,
                weights="ResNet50_Weights.IMAGENET1K_V1", description="ResNet-50 (2015), original weights")
def resnet50(num_classes, weights_file):
    return _torchvision(tvm.resnet50, num_classes, weights_file, "resnet50")


@register_model(**_TV, min_input_size=32, cam_target_layer="layer4", classifier="fc", gap_head=True,
                weights="ResNet101_Weights.IMAGENET1K_V1", description="ResNet-101 (2015), original weights")
def resnet101(num_classes, weights_file):
    return _torchvision(tvm.resnet101, num_classes, weights_file, "resnet101")


@register_model(family="torchvision", input_size=299, **_INCEPTION_NORM, min_input_size=75,
                cam_target_layer="Mixed_7c", classifier="fc", gap_head=True,
                weights="Inception_V3_Weights.IMAGENET1K_V1",
                description="Inception v3 (2015) at 299 px; TF-ported weights, so inputs scaled to [-1, 1]")
def inception_v3(num_classes, weights_file):
    return _torchvision(tvm.inception_v3, num_classes, weights_file, "inception_v3", transform_input=False,
                        aux_logits=weights_file is not None, init_weights=weights_file is None)


@register_model(family="timm", input_size=299, **_INCEPTION_NORM, min_input_size=75, cam_target_layer="conv2d_7b",
                classifier="classif", gap_head=True, weights="inception_resnet_v2.tf_in1k",
                description="Inception-ResNet v2 (2016) at 299 px, timm port of the TF weights")
def inception_resnet_v2(num_classes, weights_file):
    return _timm("inception_resnet_v2.tf_in1k", num_classes, weights_file)


@register_model(**_TV, min_input_size=32, cam_target_layer="features", classifier="classifier", gap_head=True,
                weights="DenseNet201_Weights.IMAGENET1K_V1",
                description="DenseNet-201 (2016); final ReLU moved into `features` so CAM is exact")
def densenet201(num_classes, weights_file):
    return _torchvision(_PostReluDenseNet201, num_classes, weights_file, "densenet201")


@register_model(family="timm", input_size=299, **_INCEPTION_NORM, min_input_size=32, cam_target_layer="act4",
                classifier="fc", gap_head=True, weights="legacy_xception.tf_in1k",
                description="Xception (Chollet 2017) at 299 px: timm's legacy_xception, the original network")
def xception(num_classes, weights_file):
    return _timm("legacy_xception.tf_in1k", num_classes, weights_file)


@register_model(**_TV, min_input_size=32, cam_target_layer="features", classifier="classifier.1", gap_head=True,
                weights="MobileNet_V2_Weights.IMAGENET1K_V1", description="MobileNet v2 (2018)")
def mobilenet_v2(num_classes, weights_file):
    return _torchvision(tvm.mobilenet_v2, num_classes, weights_file, "mobilenet_v2")


@register_model(**_TV, min_input_size=32, cam_target_layer="features", classifier="classifier.1", gap_head=False,
                weights="SqueezeNet1_1_Weights.IMAGENET1K_V1",
                description="SqueezeNet 1.1 (2016): 1x1 conv classifier + ReLU before pooling, so no exact CAM")
def squeezenet1_1(num_classes, weights_file):
    return _torchvision(tvm.squeezenet1_1, num_classes, weights_file, "squeezenet1_1")


@register_model(**_TV, min_input_size=32, cam_target_layer="conv5", classifier="fc", gap_head=True,
                weights="ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1", description="ShuffleNet v2 1.0x (2018)")
def shufflenet_v2_x1_0(num_classes, weights_file):
    return _torchvision(tvm.shufflenet_v2_x1_0, num_classes, weights_file, "shufflenet_v2_x1_0")


@register_model(family="scratch", input_size=224, min_input_size=16, cam_target_layer="features",
                classifier="classifier", gap_head=True, weights="", in_chans=1, mean=(0.5,), std=(0.25,),
                description="our 4-block CNN (~98 k parameters) trained from scratch; see shallow.py")
def shallow(num_classes, weights_file):
    return ShallowCNN(num_classes)


PAPER_MODELS = ["alexnet", "vgg16", "vgg19", "googlenet", "resnet18", "resnet50", "resnet101", "inception_v3",
                "inception_resnet_v2", "densenet201", "xception", "mobilenet_v2", "squeezenet1_1",
                "shufflenet_v2_x1_0"]
ROSTERS: dict[str, list[str]] = {"paper": [*PAPER_MODELS, "shallow"], "default": ["shallow", "resnet18"]}
