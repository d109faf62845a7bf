"""GoogLeNet (Inception v1) in its CIFAR form: a 3x3 stem, nine inception blocks, two max pools, a linear head."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from dynamics.models.layers import check_width_mult, conv_bn_act, image_shape, scaled
from dynamics.models.mlp import check_positive_int

BLOCKS: tuple[tuple[str, tuple[int, int, int, int, int, int]], ...] = (
    ("a3", (64, 96, 128, 16, 32, 32)),
    ("b3", (128, 128, 192, 32, 96, 64)),
    ("a4", (192, 96, 208, 16, 48, 64)),
    ("b4", (160, 112, 224, 24, 64, 64)),
    ("c4", (128, 128, 256, 24, 64, 64)),
    ("d4", (112, 144, 288, 32, 64, 64)),
    ("e4", (256, 160, 320, 32, 128, 128)),
    ("a5", (256, 160, 320, 32, 128, 128)),
    ("b5", (384, 192, 384, 48, 128, 128)),
)
"""Per block: 1x1, 3x3-reduce, 3x3, 5x5-reduce, "5x5" (two 3x3), pool-projection channels."""
POOL_AFTER = ("b3", "e4")


class Inception(nn.Module):
    """Four parallel branches concatenated on channels: 1x1; 1x1-3x3; 1x1-3x3-3x3; maxpool-1x1."""

    def __init__(self, in_channels: int, widths: Sequence[int], activation: str) -> None:
        super().__init__()
        n1, r3, n3, r5, n5, pool = widths
        self.branch1 = conv_bn_act(in_channels, n1, 1, activation, bias=True)
        self.branch2 = nn.Sequential(
            conv_bn_act(in_channels, r3, 1, activation, bias=True), conv_bn_act(r3, n3, 3, activation, bias=True)
        )
        self.branch3 = nn.Sequential(
            conv_bn_act(in_channels, r5, 1, activation, bias=True),
            conv_bn_act(r5, n5, 3, activation, bias=True),
            conv_bn_act(n5, n5, 3, activation, bias=True),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(3, stride=1, padding=1), conv_bn_act(in_channels, pool, 1, activation, bias=True)
        )
        self.out_channels = n1 + n3 + n5 + pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class GoogLeNet(nn.Module):
    """``stem`` (3x3 conv-bn-act, 192 channels), ``blocks`` (inception blocks ``a3``..``b5`` with 3x3/2 max
    pools after ``b3`` and ``e4``), global average pool and ``fc``: 6,166,250 parameters for 10 classes."""

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, *, width_mult: float = 1.0, activation: str = "relu"
    ) -> None:
        super().__init__()
        channels, _, _ = image_shape(input_shape, "googlenet")
        check_positive_int("num_classes", num_classes, "pass num_classes >= 1")
        width_mult = check_width_mult(width_mult)
        self.stem = conv_bn_act(channels, scaled(192, width_mult), 3, activation, bias=True)
        channels = scaled(192, width_mult)
        stages: list[tuple[str, nn.Module]] = []
        for name, widths in BLOCKS:
            block = Inception(channels, [scaled(w, width_mult) for w in widths], activation)
            stages.append((name, block))
            channels = block.out_channels
            if name in POOL_AFTER:
                stages.append((f"pool_{name}", nn.MaxPool2d(3, stride=2, padding=1)))
        self.blocks = nn.Sequential(OrderedDict(stages))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))
