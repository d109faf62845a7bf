"""VGG16 with batch norm, CIFAR-style: thirteen 3x3 conv-bn-act layers, five max pools, one linear head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dynamics.models.layers import check_width_mult, conv_bn_act, image_shape, scaled
from dynamics.models.mlp import check_positive_int

CONFIG_16: tuple[int | str, ...] = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
)
"""Channels of each conv layer; "M" is a 2x2 max pool."""


class VGG(nn.Module):
    """``features`` (conv-bn-act blocks ``features.<i>.conv/bn/act`` and pools), global average pool, ``fc``.

    As in the CIFAR versions of VGG the three-layer classifier is one linear layer on the 512 pooled
    features; the global pool (1x1 at 32x32, 2x2 at 64x64) makes any input of at least 32x32 work. Conv
    layers keep their biases, as in torchvision's ``vgg16_bn``: 14,728,266 parameters for 10 classes.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        width_mult: float = 1.0,
        activation: str = "relu",
        config: Sequence[int | str] = CONFIG_16,
    ) -> None:
        super().__init__()
        channels, _, _ = image_shape(input_shape, "vgg16_bn", smallest=32)
        check_positive_int("num_classes", num_classes, "pass num_classes >= 1")
        width_mult = check_width_mult(width_mult)
        layers: list[nn.Module] = []
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(conv_bn_act(channels, scaled(int(item), width_mult), 3, activation, bias=True))
                channels = scaled(int(item), width_mult)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        return self.fc(self.flatten(self.pool(self.features(x))))
