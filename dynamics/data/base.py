"""The in-memory dataset container shared by every data source, and seeded (class-stratified) subsetting."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from dynamics.errors import ConfigError

DataKind = Literal["signal", "image", "sequence"]


@dataclass
class Dataset:
    """A train/test split held as tensors; ``kind`` says how inputs are laid out and how they are trained.

    - ``signal``: float32 inputs ``(N, channels, length)`` (a flattening MLP and a 1-D CNN both accept them),
      int64 labels ``(N,)`` in ``[0, num_classes)``.
    - ``image``: uint8 inputs ``(N, channels, height, width)``, kept as bytes (4x less memory, so whole sets
      fit on the device) and normalised on the device with the per-channel ``mean``/``std`` (of pixel/255,
      taken over the full training split); int64 labels ``(N,)``.
    - ``sequence``: int64 token ids ``(N, length)`` and their next tokens ``(N, length)`` as targets;
      ``num_classes`` is the vocabulary size and ``labels`` the vocabulary.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    kind: DataKind = "signal"
    mean: tuple[float, ...] | None = None
    """Per-channel mean of pixel/255 (image data only)."""
    std: tuple[float, ...] | None = None
    """Per-channel standard deviation of pixel/255 (image data only)."""
    labels: tuple[str, ...] = ()
    """Class names, or the vocabulary of a sequence set (token id -> character); may be empty."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 40)`` for MNIST-1D."""
        return tuple(self.x_train.shape[1:])


def to_device(data: Dataset, device: torch.device) -> Dataset:
    """``data`` with its four tensors on ``device``, dtypes unchanged (images stay uint8).

    On a GPU the whole set must fit in half of the free memory (the rest is left for the model and its
    activations); otherwise a ConfigError says how much it needs.
    """
    tensors = (data.x_train, data.y_train, data.x_test, data.y_test)
    if device.type == "cuda":
        need = sum(t.numel() * t.element_size() for t in tensors)
        free, _ = torch.cuda.mem_get_info(device)
        if need > free // 2:
            raise ConfigError(
                f"{data.name} takes {need / 2**30:.1f} GiB but only half of the {free / 2**30:.1f} GiB "
                f"free on {device} may hold data; load fewer samples (train_size) or smaller images "
                "(image_size)",
                key=("train_size", "image_size"),
            )
    x_train, y_train, x_test, y_test = (t.to(device) for t in tensors)
    return replace(data, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and standard deviation of ``pixel / 255`` over uint8 images ``(N, C, H, W)``.

    Computed from one 256-bin histogram per channel (``np.bincount``), which is exact and far cheaper than
    float sums over tens of millions of pixels.
    """
    levels = np.arange(256, dtype=np.float64) / 255.0
    means, stds = [], []
    for channel in range(images.shape[1]):
        counts = np.bincount(images[:, channel].reshape(-1), minlength=256).astype(np.float64)
        weights = counts / counts.sum()
        mean = float(weights @ levels)
        means.append(mean)
        stds.append(max(float(np.sqrt(weights @ (levels - mean) ** 2)), 1e-6))
    return tuple(means), tuple(stds)


def random_subset(n: int, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded uniform subset of ``size`` out of ``n`` samples (unlabelled sequences)."""
    if not 1 <= size <= n:
        raise ConfigError(
            f"size {size} must lie between 1 and the number of samples ({n}); choose one in that range", key="size"
        )
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)[:size].sort().values


def stratified_subset(y: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded subset of ``size`` samples whose class mix follows that of ``y``.

    Per-class counts are the proportional quotas rounded by largest remainder, so they sum to exactly
    ``size`` and each lies within one of its quota; a class whose quota rounds to zero is raised to one
    sample (taken from the most over-allocated class) so that every class stays represented.
    """
    if y.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {tuple(y.shape)}; pass one label per sample", key="y")
    classes, counts = torch.unique(y, return_counts=True)
    n = y.numel()
    if not classes.numel() <= size <= n:
        raise ConfigError(
            f"size {size} must lie between the number of classes ({classes.numel()}) and the number "
            f"of samples ({n}); choose one in that range",
            key="size",
        )
    quota = counts.double() * size / n
    take = quota.floor().long()
    remainder = quota - take
    take[remainder.argsort(descending=True)[: size - int(take.sum())]] += 1
    for c in (take == 0).nonzero().flatten().tolist():
        surplus = (take - quota).masked_fill(take <= 1, -float("inf"))
        take[int(surplus.argmax())] -= 1
        take[c] = 1
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label, k in zip(classes.tolist(), take.tolist(), strict=True):
        members = (y == label).nonzero().flatten()
        chosen.append(members[torch.randperm(members.numel(), generator=generator)[:k]])
    return torch.cat(chosen).sort().values
