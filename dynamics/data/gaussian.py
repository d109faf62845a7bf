"""A synthetic Gaussian-mixture classification task whose difficulty is set by one number."""

from __future__ import annotations

import math

import torch

from dynamics.data.base import Dataset
from dynamics.errors import ConfigError


def make_gaussian_mixture(
    *, num_samples: int = 5000, num_classes: int = 10, dim: int = 40, separation: float = 3.0, seed: int = 0
) -> Dataset:
    """Balanced classes with means drawn uniformly on a sphere of radius ``separation`` plus unit noise.

    A controlled counterpart to MNIST-1D: same ``(N, 1, dim)`` layout, and larger ``separation`` makes the
    task easier. Samples are shuffled and split 80/20 train/test; everything depends only on ``seed``.
    """
    for what, value, least, fix in (
        ("num_samples", num_samples, 5, "raise it"),
        ("num_classes", num_classes, 2, "pass num_classes >= 2"),
        ("dim", dim, 1, "pass dim >= 1"),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ConfigError(f"gaussian {what} must be an int >= {least}, got {value!r}; {fix}", key=what)
    if not (math.isfinite(separation) and separation >= 0):
        raise ConfigError(
            f"gaussian separation must be a finite number >= 0, got {separation!r}; pass one", key="separation"
        )
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(num_classes, dim, generator=generator)
    means = separation * directions / directions.norm(dim=1, keepdim=True)
    y = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=generator)]
    x = (means[y] + torch.randn(num_samples, dim, generator=generator)).unsqueeze(1)
    n_train = num_samples * 4 // 5
    return Dataset(
        name="gaussian",
        x_train=x[:n_train],
        y_train=y[:n_train],
        x_test=x[n_train:],
        y_test=y[n_train:],
        num_classes=num_classes,
    )
