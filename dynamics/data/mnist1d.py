"""MNIST-1D generated locally from the ``mnist1d`` package's procedure and cached as ``.npz``."""

from __future__ import annotations

import importlib.metadata
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from dynamics.cache import default_cache_dir
from dynamics.data.base import Dataset
from dynamics.errors import ConfigError

NUM_CLASSES = 10


def generate_mnist1d(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Arrays ``x, y, x_test, y_test`` from ``mnist1d.data.make_dataset`` with the package's default args.

    ``make_dataset`` reseeds Python's and NumPy's global generators; their states are restored afterwards
    so that generating data does not perturb other seeded code. The package is imported here, not at
    module level, since it pulls in matplotlib and scipy (about a second) and cached data never needs it.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return {key: data[key] for key in ("x", "y", "x_test", "y_test")}


def cache_path(cache_dir: str | os.PathLike[str], num_samples: int, seed: int) -> Path:
    """Cache file for one (package version, num_samples, seed) combination."""
    version = importlib.metadata.version("mnist1d")
    return Path(cache_dir) / f"mnist1d-{version}-n{num_samples}-seed{seed}.npz"


def load_mnist1d(
    *, num_samples: int = 10_000, seed: int = 0, cache_dir: str | os.PathLike[str] | None = None
) -> Dataset:
    """MNIST-1D with ``num_samples`` signals of length 40, split 80/20 train/test, shaped ``(N, 1, 40)``.

    Values are kept as the package produces them (already centred and scaled to unit standard deviation
    over the whole set), so runs stay comparable with published MNIST-1D results. Arrays are generated
    once per (num_samples, seed) and cached in ``cache_dir``; the cache file is written atomically so
    concurrent runs never read a partial file.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < NUM_CLASSES:
        raise ConfigError(
            f"mnist1d num_samples must be an int >= {NUM_CLASSES}, got {num_samples!r}; raise it", key="num_samples"
        )
    if num_samples % NUM_CLASSES:
        raise ConfigError(
            f"mnist1d num_samples must be a multiple of {NUM_CLASSES} (one equal share per class), "
            f"got {num_samples}; round it",
            key="num_samples",
        )
    path = cache_path(cache_dir if cache_dir is not None else default_cache_dir(), num_samples, seed)
    if path.exists():
        with np.load(path) as cached:
            arrays = {key: cached[key] for key in cached.files}
    else:
        arrays = generate_mnist1d(num_samples, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    return Dataset(
        name="mnist1d",
        x_train=torch.from_numpy(arrays["x"]).float().unsqueeze(1),
        y_train=torch.from_numpy(arrays["y"]).long(),
        x_test=torch.from_numpy(arrays["x_test"]).float().unsqueeze(1),
        y_test=torch.from_numpy(arrays["y_test"]).long(),
        num_classes=NUM_CLASSES,
    )
