"""Model zoo: the study's 14 ImageNet architectures plus our scratch `shallow` CNN, one registry.

    create_model("resnet18", num_classes=3, pretrained=True, weights_dir=Path("weights"))
    resolve_models("paper")  # all 15 names, validated
"""
from benchmark.models.weights import find_weights
from benchmark.models.zoo import (
    ROSTERS,
    ModelSpec,
    XrayClassifier,
    create_model,
    get_spec,
    list_models,
    register_model,
    resolve_models,
)

__all__ = ["ROSTERS", "ModelSpec", "XrayClassifier", "create_model", "find_weights", "get_spec",
           "list_models", "register_model", "resolve_models"]
