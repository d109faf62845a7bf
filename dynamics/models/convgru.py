"""A small convolutional-recurrent classifier for time series: two 1-D conv-bn-act layers, a GRU, a linear head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from dynamics.errors import ConfigError
from dynamics.models.layers import check_width_mult, conv_bn_act, scaled
from dynamics.models.mlp import check_positive_int


class ConvGRU(nn.Module):
    """``features`` (conv-bn-act, 32 x ``width_mult`` channels; strided conv-bn-act, 64 x ``width_mult``) read
    local shape at half the length, a one-layer ``gru`` of the same width integrates it over time, and
    ``head`` classifies its last hidden state. Inputs are ``(N, channels, length)``.
    """

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, *, width_mult: float = 1.0, activation: str = "relu"
    ) -> None:
        super().__init__()
        if len(input_shape) != 2:
            raise ConfigError(
                f"cnn_gru needs samples shaped (channels, length), got {tuple(input_shape)}; "
                "use a time-series data set",
                key="input_shape",
            )
        check_positive_int("num_classes", num_classes, "pass num_classes >= 1")
        width_mult = check_width_mult(width_mult)
        narrow, wide = scaled(32, width_mult), scaled(64, width_mult)
        self.features = nn.Sequential(
            conv_bn_act(input_shape[0], narrow, 5, activation, dims=1),
            conv_bn_act(narrow, wide, 5, activation, stride=2, dims=1),
        )
        self.gru = nn.GRU(wide, wide, batch_first=True)
        self.head = nn.Linear(wide, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, num_classes)`` of series ``(N, channels, length)``."""
        _, hidden = self.gru(self.features(x).transpose(1, 2))
        return self.head(hidden[-1])
