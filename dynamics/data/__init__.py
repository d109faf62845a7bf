"""Datasets by name: generated (MNIST-1D, Gaussian mixture, time series), image files, text; optional subsets."""

from __future__ import annotations

import os
from dataclasses import replace

from dynamics.cache import default_cache_dir
from dynamics.data.base import Dataset, channel_stats, random_subset, stratified_subset, to_device
from dynamics.data.cifar import load_cifar, write_cifar
from dynamics.data.gaussian import make_gaussian_mixture
from dynamics.data.imagefolder import load_imagefolder, load_tiny_imagenet
from dynamics.data.mnist1d import load_mnist1d
from dynamics.data.text import default_corpus, load_text
from dynamics.data.timeseries import make_timeseries
from dynamics.errors import ConfigError, parameters_as

DATASETS: tuple[str, ...] = (
    "mnist1d",
    "gaussian",
    "timeseries",
    "cifar10",
    "cifar100",
    "tinyimagenet",
    "imagefolder",
    "text",
)
GENERATED: tuple[str, ...] = ("mnist1d", "gaussian", "timeseries")
"""Data sets made locally from a seed: the only ones ``num_samples`` applies to."""
FROM_FILES: tuple[str, ...] = ("cifar10", "cifar100", "tinyimagenet", "imagefolder", "text")
"""Data sets read from ``data_dir`` (text: a file path, optional)."""

__all__ = [
    "DATASETS",
    "FROM_FILES",
    "GENERATED",
    "Dataset",
    "channel_stats",
    "default_cache_dir",
    "default_corpus",
    "load_cifar",
    "load_dataset",
    "load_imagefolder",
    "load_mnist1d",
    "load_text",
    "load_tiny_imagenet",
    "make_gaussian_mixture",
    "make_timeseries",
    "random_subset",
    "stratified_subset",
    "to_device",
    "write_cifar",
]


def _refuse(name: str, setting: str, value: object, applies_to: str) -> None:
    if value is not None:
        raise ConfigError(
            f"{setting} does not apply to {name} (only to {applies_to}); leave {setting} unset", key=setting
        )


def load_dataset(
    name: str,
    *,
    num_samples: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    image_size: int | None = None,
    seq_len: int | None = None,
) -> Dataset:
    """Load dataset ``name``; a setting that does not apply to it is a ConfigError rather than ignored.

    Generated sets take ``num_samples`` (defaults: mnist1d 10,000, gaussian and timeseries 5,000; split
    80/20) and ``seed``; timeseries also ``seq_len`` (default 128). File sets read ``data_dir``: cifar10
    and cifar100 (python-version archive or folder), tinyimagenet (zip or folder) and imagefolder (a
    ``train``/``val`` tree) decoded at ``image_size`` (default 64) and cached in ``cache_dir``; text reads
    the file ``data_dir`` (default: the Python reference documentation) in windows of ``seq_len`` (default
    128). ``train_size`` keeps a seeded subset of the training split (class-stratified for labelled data,
    uniform over windows for text), so that data-size sweeps share one test split.
    """
    if name not in DATASETS:
        choices = ", ".join(sorted(DATASETS))
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {choices}", key="name")
    if name not in GENERATED:
        _refuse(name, "num_samples", num_samples, ", ".join(GENERATED))
    if name not in FROM_FILES:
        _refuse(name, "data_dir", data_dir, ", ".join(FROM_FILES))
    if name not in ("tinyimagenet", "imagefolder"):
        _refuse(name, "image_size", image_size, "tinyimagenet, imagefolder")
    if name not in ("timeseries", "text"):
        _refuse(name, "seq_len", seq_len, "timeseries, text")
    if name == "mnist1d":
        n = 10_000 if num_samples is None else num_samples
        data = load_mnist1d(num_samples=n, seed=seed, cache_dir=cache_dir)
    elif name == "gaussian":
        data = make_gaussian_mixture(num_samples=5000 if num_samples is None else num_samples, seed=seed)
    elif name == "timeseries":
        with parameters_as({"length": "seq_len"}):
            data = make_timeseries(
                num_samples=5000 if num_samples is None else num_samples,
                length=128 if seq_len is None else seq_len,
                seed=seed,
            )
    elif name in ("cifar10", "cifar100"):
        data = load_cifar(name, data_dir)
    elif name == "tinyimagenet":
        data = load_tiny_imagenet(data_dir, image_size=64 if image_size is None else image_size, cache_dir=cache_dir)
    elif name == "imagefolder":
        with parameters_as({"root": "data_dir"}):
            data = load_imagefolder(data_dir, image_size=64 if image_size is None else image_size, cache_dir=cache_dir)
    else:
        with parameters_as({"path": "data_dir"}):
            data = load_text(data_dir, seq_len=128 if seq_len is None else seq_len)
    if train_size is None:
        return data
    with parameters_as({"size": "train_size"}):
        if data.kind == "sequence":
            keep = random_subset(len(data.y_train), train_size, seed)
        else:
            keep = stratified_subset(data.y_train, train_size, seed)
    return replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])
