"""A plain multilayer perceptron, and the activation table and argument checks shared by all models."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

from dynamics.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
}


def make_activation(name: str) -> nn.Module:
    """A fresh activation module; one instance per use so that forward hooks see each layer separately."""
    if name not in ACTIVATIONS:
        choices = ", ".join(ACTIVATIONS)
        raise ConfigError(f"unknown activation {name!r}; choose one of: {choices}", key="activation")
    return ACTIVATIONS[name]()


def check_positive_int(what: str, value: object, fix: str) -> None:
    """Raise ConfigError (``key=what``, the parameter's name) unless ``value`` is an int >= 1 (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{what} must be a positive int, got {value!r}; {fix}", key=what)


class MLP(nn.Module):
    """Flatten, then ``depth`` blocks of Linear(width) + activation, then a linear head to the classes.

    Submodules are named ``flatten``, ``blocks.<i>.linear``, ``blocks.<i>.act`` and ``head``; these names
    are the layer coordinates of recorded data.
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 128,
        depth: int = 2,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        check_positive_int("width", width, "pass e.g. 128")
        check_positive_int("depth", depth, "pass e.g. 2")
        check_positive_int("num_classes", num_classes, "pass num_classes >= 1")
        self.flatten = nn.Flatten()
        in_features = math.prod(input_shape)
        blocks = []
        for i in range(depth):
            linear = nn.Linear(in_features if i == 0 else width, width)
            blocks.append(nn.Sequential(OrderedDict(linear=linear, act=make_activation(activation))))
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of shape ``(N, num_classes)``."""
        return self.head(self.blocks(self.flatten(x)))
