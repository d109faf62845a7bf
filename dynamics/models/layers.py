"""Building blocks and argument checks shared by the reference architectures (ResNets, VGG, GoogLeNet, ...)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

from torch import nn

from dynamics.errors import ConfigError
from dynamics.models.mlp import make_activation


def scaled(channels: int, width_mult: float) -> int:
    """``channels * width_mult`` rounded, at least 1: the width of a layer in a scaled model."""
    return max(1, round(channels * width_mult))


def check_width_mult(width_mult: object) -> float:
    """The width multiplier as a float; ConfigError unless it is a finite number > 0."""
    if (
        isinstance(width_mult, bool)
        or not isinstance(width_mult, int | float)
        or not (math.isfinite(width_mult) and width_mult > 0)
    ):
        raise ConfigError(f"width_mult must be a finite number > 0, got {width_mult!r}; fix it", key="width_mult")
    return float(width_mult)


def image_shape(input_shape: Sequence[int], model: str, smallest: int = 8) -> tuple[int, int, int]:
    """``(channels, height, width)`` of image samples; ConfigError for other data or too small images."""
    if len(input_shape) != 3 or min(input_shape[1:]) < smallest:
        raise ConfigError(
            f"{model} needs images shaped (channels, height, width) of at least {smallest}x{smallest}, "
            f"got samples shaped {tuple(input_shape)}; use an image data set",
            key="input_shape",
        )
    channels, height, width = input_shape
    return channels, height, width


def conv_bn_act(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    activation: str,
    *,
    stride: int = 1,
    dims: int = 2,
    bias: bool = False,
) -> nn.Sequential:
    """Convolution ("same" padding for stride 1), batch norm and a fresh activation module: ``conv``/``bn``/``act``."""
    conv = (nn.Conv2d if dims == 2 else nn.Conv1d)(
        in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=bias
    )
    norm = (nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d)(out_channels)
    return nn.Sequential(OrderedDict(conv=conv, bn=norm, act=make_activation(activation)))
