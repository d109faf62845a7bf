"""The in-memory dataset container shared by every data source, and seeded class-stratified subsetting."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dynamics.errors import ConfigError


@dataclass
class Dataset:
    """A train/test classification split held as tensors.

    Inputs are float32 shaped ``(N, channels, length)`` so that both a flattening MLP and a 1-D CNN accept
    them; labels are int64 in ``[0, num_classes)``.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one sample, e.g. ``(1, 40)`` for MNIST-1D."""
        return tuple(self.x_train.shape[1:])


def stratified_subset(y: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of a seeded subset of ``size`` samples whose class mix follows that of ``y``.

    Per-class counts are the proportional quotas rounded by largest remainder, so they sum to exactly
    ``size`` and each lies within one of its quota; a class whose quota rounds to zero is raised to one
    sample (taken from the most over-allocated class) so that every class stays represented.
    """
    if y.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {tuple(y.shape)}; pass one label per sample")
    classes, counts = torch.unique(y, return_counts=True)
    n = y.numel()
    if not classes.numel() <= size <= n:
        raise ConfigError(
            f"subset size {size} must lie between the number of classes ({classes.numel()}) and the number "
            f"of samples ({n}); choose a size in that range (--train-size)"
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
