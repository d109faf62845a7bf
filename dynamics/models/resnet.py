"""CIFAR-style ResNet-18 and pre-activation ResNet-18/50 (He et al. 2016a/b), with a width multiplier.

CIFAR-style means a 3x3 stride-1 stem without max pooling, so 32x32 inputs keep 32x32 maps in the first
stage (4x4 before pooling); 64x64 inputs work unchanged (8x8 before the global average pool). Every use
of an activation is its own module (``act1``, ``act2``, ...) so that recorded layer statistics see each
one; the ReLU after a residual addition is the block's last activation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dynamics.models.layers import check_width_mult, image_shape, scaled
from dynamics.models.mlp import check_positive_int, make_activation

STAGES = (64, 128, 256, 512)


def _projection(in_channels: int, out_channels: int, stride: int, norm: bool) -> nn.Module:
    """1x1 strided convolution (plus batch norm for post-activation blocks), or identity when shapes match."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels)) if norm else conv


class BasicBlock(nn.Module):
    """conv-bn-act, conv-bn, + shortcut, act (the ResNet-18/34 block)."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, activation: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = make_activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = _projection(in_channels, channels, stride, norm=True)
        self.act2 = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """bn-act-conv, bn-act-conv, + shortcut taken after the first activation when it projects."""

    expansion = 1

    def __init__(self, in_channels: int, channels: int, stride: int, activation: str) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = make_activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.shortcut = _projection(in_channels, channels, stride, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        return self.conv2(self.act2(self.bn2(self.conv1(out)))) + shortcut


class PreActBottleneck(nn.Module):
    """bn-act-conv1x1, bn-act-conv3x3 (strided), bn-act-conv1x1 to 4x channels, + shortcut."""

    expansion = 4

    def __init__(self, in_channels: int, channels: int, stride: int, activation: str) -> None:
        super().__init__()
        out_channels = channels * self.expansion
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.act1 = make_activation(activation)
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.act2 = make_activation(activation)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)
        self.act3 = make_activation(activation)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.shortcut = _projection(in_channels, out_channels, stride, norm=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(x))
        shortcut = x if isinstance(self.shortcut, nn.Identity) else self.shortcut(out)
        out = self.conv2(self.act2(self.bn2(self.conv1(out))))
        return self.conv3(self.act3(self.bn3(out))) + shortcut


BLOCKS: dict[str, type[BasicBlock | PreActBlock | PreActBottleneck]] = {
    "basic": BasicBlock,
    "preact": PreActBlock,
    "preact_bottleneck": PreActBottleneck,
}


class ResNet(nn.Module):
    """Stem conv, four stages of residual blocks (64/128/256/512 x ``width_mult`` channels), pool, linear head.

    ``block`` is "basic" (post-activation ResNet: the stem has bn+act), "preact" or "preact_bottleneck"
    (pre-activation: a bare stem conv, and a final bn+act before pooling). Submodules: ``conv1`` (stem),
    ``bn1``/``act1`` (post-activation stem), ``layer1..4.<i>``, ``bn``/``act`` (pre-activation end), ``fc``.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        *,
        block: str,
        layers: Sequence[int],
        width_mult: float = 1.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        channels, _, _ = image_shape(input_shape, "a resnet")
        check_positive_int("num_classes", num_classes, "pass num_classes >= 1")
        width_mult = check_width_mult(width_mult)
        kind = BLOCKS[block]
        self.preact = block != "basic"
        stem = scaled(STAGES[0], width_mult)
        self.conv1 = nn.Conv2d(channels, stem, 3, padding=1, bias=False)
        if not self.preact:
            self.bn1 = nn.BatchNorm2d(stem)
            self.act1 = make_activation(activation)
        in_channels = stem
        for stage, (base, count) in enumerate(zip(STAGES, layers, strict=True)):
            blocks = []
            for i in range(count):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(kind(in_channels, scaled(base, width_mult), stride, activation))
                in_channels = scaled(base, width_mult) * kind.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        if self.preact:
            self.bn = nn.BatchNorm2d(in_channels)
            self.act = make_activation(activation)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        out = self.conv1(x)
        if not self.preact:
            out = self.act1(self.bn1(out))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        if self.preact:
            out = self.act(self.bn(out))
        return self.fc(self.flatten(self.pool(out)))


def resnet18(
    input_shape: Sequence[int], num_classes: int, *, width_mult: float = 1.0, activation: str = "relu"
) -> ResNet:
    """ResNet-18 (basic blocks 2-2-2-2): 11,173,962 parameters for 10 classes at width 1."""
    return ResNet(
        input_shape, num_classes, block="basic", layers=(2, 2, 2, 2), width_mult=width_mult, activation=activation
    )


def preact_resnet18(
    input_shape: Sequence[int], num_classes: int, *, width_mult: float = 1.0, activation: str = "relu"
) -> ResNet:
    """Pre-activation ResNet-18 (basic pre-activation blocks 2-2-2-2)."""
    return ResNet(
        input_shape, num_classes, block="preact", layers=(2, 2, 2, 2), width_mult=width_mult, activation=activation
    )


def preact_resnet50(
    input_shape: Sequence[int], num_classes: int, *, width_mult: float = 1.0, activation: str = "relu"
) -> ResNet:
    """Pre-activation ResNet-50 (bottleneck blocks 3-4-6-3, 4x expansion)."""
    return ResNet(
        input_shape,
        num_classes,
        block="preact_bottleneck",
        layers=(3, 4, 6, 3),
        width_mult=width_mult,
        activation=activation,
    )
