"""Models by name: an MLP and a 1-D CNN, built from one activation name and width/depth."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dynamics.errors import ConfigError
from dynamics.models.cnn1d import CNN1d
from dynamics.models.mlp import ACTIVATIONS, MLP, make_activation

MODELS: tuple[str, ...] = ("mlp", "cnn")

__all__ = ["ACTIVATIONS", "CNN1d", "MLP", "MODELS", "build_model", "make_activation"]


def build_model(
    name: str, *, input_shape: Sequence[int], num_classes: int, width: int, depth: int, activation: str
) -> nn.Module:
    """Model ``name`` ("mlp" or "cnn") for samples of ``input_shape``; bad arguments raise ConfigError."""
    if name == "mlp":
        return MLP(input_shape, num_classes, width=width, depth=depth, activation=activation)
    if name == "cnn":
        return CNN1d(input_shape, num_classes, width=width, depth=depth, activation=activation)
    raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)} (--model)")
