"""`shallow`: the small CNN the study trains from scratch next to the ImageNet architectures.

Majeed et al. (2020) report a shallow CNN trained from scratch but do not publish its layers, so
this is our own design, chosen for the audit rather than copied:

* four blocks conv3x3 -> BatchNorm -> ReLU -> maxpool2, with 16-32-64-128 channels. Four poolings
  give a 14 x 14 feature map at 224 px: finer than the 7 x 7 of the ImageNet nets, so its CAMs
  can separate lung fields from the clavicles, labels and borders that shortcuts live on;
* global average pooling, dropout, one linear layer. GAP + linear is what makes the original CAM
  method (Zhou et al. 2016) exact: logits = W . mean(features), so the CAM of class k is
  W_k . features, with no gradient approximation;
* one input channel: X-rays are grayscale, so repeating them to three channels (as the ImageNet
  nets need) would only triple the first layer's cost;
* about 98 k parameters (< 0.5 M): small enough to train on a CPU in minutes, and a capacity
  contrast to the 1-140 M parameter ImageNet nets.
"""
from __future__ import annotations

import torch
from torch import nn

CHANNELS = (16, 32, 64, 128)


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    """conv-BN-ReLU-maxpool; the conv has no bias because BatchNorm's shift replaces it."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=2),
    )


class ShallowCNN(nn.Module):
    """Four conv blocks, GAP, dropout, linear (see the module docstring for why).

    `features` is the CAM target layer and `classifier` the layer a new task replaces; the
    names follow torchvision so the registry addresses every net the same way.
    """

    def __init__(self, num_classes: int, in_chans: int = 1, channels: tuple[int, ...] = CHANNELS,
                 dropout: float = 0.3):
        super().__init__()
        widths = (in_chans, *channels)
        self.features = nn.Sequential(*(_block(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=dropout)
        self.classifier = nn.Linear(channels[-1], num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        """He init for ReLU convs, the PyTorch default elsewhere; deterministic under torch's seed."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        x = torch.flatten(self.pool(x), 1)
        return self.classifier(self.dropout(x))
