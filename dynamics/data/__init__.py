"""Datasets by name: MNIST-1D and a synthetic Gaussian mixture, optionally subset to a training size."""

from __future__ import annotations

import os
from dataclasses import replace

from dynamics.data.base import Dataset, stratified_subset
from dynamics.data.gaussian import make_gaussian_mixture
from dynamics.data.mnist1d import default_cache_dir, load_mnist1d
from dynamics.errors import ConfigError

DATASETS: tuple[str, ...] = ("mnist1d", "gaussian")

__all__ = [
    "DATASETS",
    "Dataset",
    "default_cache_dir",
    "load_dataset",
    "load_mnist1d",
    "make_gaussian_mixture",
    "stratified_subset",
]


def load_dataset(
    name: str,
    *,
    num_samples: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Dataset:
    """Load dataset ``name`` with its default size (mnist1d 10,000, gaussian 5,000 samples, 80/20 split).

    ``train_size`` keeps a seeded, class-stratified subset of the training split, so that data-size
    sweeps share one test split. ``cache_dir`` only matters for mnist1d.
    """
    if name == "mnist1d":
        n = 10_000 if num_samples is None else num_samples
        data = load_mnist1d(num_samples=n, seed=seed, cache_dir=cache_dir)
    elif name == "gaussian":
        data = make_gaussian_mixture(num_samples=5000 if num_samples is None else num_samples, seed=seed)
    else:
        choices = ", ".join(sorted(DATASETS))
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {choices} (--dataset)")
    if train_size is None:
        return data
    keep = stratified_subset(data.y_train, train_size, seed)
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
