"""A plain 1-D convolutional network: the MNIST-1D reference CNN, without normalization layers."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from dynamics.errors import ConfigError
from dynamics.models.mlp import check_positive_int, make_activation


class CNN1d(nn.Module):
    """``depth`` blocks of length-preserving Conv1d(width channels) + activation, then Flatten and Linear.

    Inputs are ``(N, channels, length)``. Submodules are named ``blocks.<i>.conv``, ``blocks.<i>.act``,
    ``flatten`` and ``head``; these names are the layer coordinates of recorded data.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 32,
        depth: int = 3,
        activation: str = "relu",
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ConfigError(
                f"the cnn needs samples shaped (channels, length), got {tuple(input_shape)}; "
                "use a 1-D signal data set or the mlp",
                key="input_shape",
            )
        check_positive_int("width", width, "pass e.g. 32")
        check_positive_int("depth", depth, "pass e.g. 3")
        check_positive_int("num_classes", num_classes, "pass num_classes >= 1")
        check_positive_int("kernel_size", kernel_size, "pass 3, 5")
        if kernel_size % 2 == 0:
            raise ConfigError(f"kernel_size must be odd to keep the length, got {kernel_size}; pass 3, 5")
        channels, length = input_shape
        blocks = []
        for i in range(depth):
            conv = nn.Conv1d(channels if i == 0 else width, width, kernel_size, padding=kernel_size // 2)
            blocks.append(nn.Sequential(OrderedDict(conv=conv, act=make_activation(activation))))
        self.blocks = nn.Sequential(*blocks)
        self.flatten = nn.Flatten()
        self.head = nn.Linear(width * length, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of shape ``(N, num_classes)``."""
        return self.head(self.flatten(self.blocks(x)))
