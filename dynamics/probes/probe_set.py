"""The fixed probe set that representation-level probes measure on, and how their extra passes stay invisible.

A probe set is a seeded, class-stratified sample of a few hundred training and test samples, chosen once
(from the data seed, so every training seed of a configuration measures the same samples). Probes run
their own forward/backward passes on it inside :func:`side_pass`: eval mode (dropout off, BatchNorm on its
running statistics, which eval mode reads but never updates; per-sample gradients are then well defined)
and ``context.paused``, so that activation statistics do not capture these passes. Training flags are
restored module by module afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from dynamics.data.base import Dataset, stratified_subset
from dynamics.errors import ConfigError
from dynamics.probes.base import Context


@dataclass(frozen=True)
class ProbeSet:
    """Fixed samples for probes: a training part (probes are fitted on it) and a held-out test part.

    ``index_train``/``index_test`` are the samples' indices in their data splits (for labelling stored
    features). All tensors live on the model's device.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    index_train: torch.Tensor
    index_test: torch.Tensor

    def __post_init__(self) -> None:
        for split, x, y, index in (
            ("train", self.x_train, self.y_train, self.index_train),
            ("test", self.x_test, self.y_test, self.index_test),
        ):
            if not (len(x) == len(y) == len(index)) or len(x) < 2:
                raise ConfigError(
                    f"probe set {split} part needs >= 2 samples with one label and index each, got "
                    f"{len(x)} inputs, {len(y)} labels, {len(index)} indices"
                )

    @property
    def x(self) -> torch.Tensor:
        """Training then test inputs, concatenated."""
        return torch.cat([self.x_train, self.x_test])

    @property
    def y(self) -> torch.Tensor:
        """Training then test labels, concatenated."""
        return torch.cat([self.y_train, self.y_test])

    @property
    def sample_labels(self) -> list[str]:
        """``train/<index>`` and ``test/<index>`` for each sample, in the order of ``x``."""
        return [f"train/{i}" for i in self.index_train.tolist()] + [f"test/{i}" for i in self.index_test.tolist()]


def make_probe_set(
    data: Dataset, samples: int = 256, seed: int = 0, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> ProbeSet:
    """A seeded class-stratified probe set of ``samples`` training and ``samples`` test samples of ``data``.

    A split with fewer samples is used whole. ``prepare`` turns stored inputs into model inputs (e.g. the
    normalisation of image bytes, without augmentation); tensors stay on the device of ``data``.
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ConfigError(f"samples must be an integer >= 2 (the probe set's size), got {samples!r}", key="samples")
    if data.kind == "sequence":
        raise ConfigError(
            f"the probe set needs one class label per sample, but {data.name} is sequence data; "
            "drop representation, fisher, interference, sharpness, hessian_trace, hessian_density and noise_scale",
            key=(
                "representation",
                "fisher",
                "interference",
                "sharpness",
                "hessian_trace",
                "hessian_density",
                "noise_scale",
            ),
        )
    parts = []
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        labels = y.cpu()
        n_classes = len(torch.unique(labels))
        index = stratified_subset(labels, max(min(samples, len(labels)), n_classes), seed)
        inputs = x[index.to(x.device)]
        parts.append((inputs if prepare is None else prepare(inputs), y[index.to(y.device)], index))
    (x_train, y_train, i_train), (x_test, y_test, i_test) = parts
    return ProbeSet(x_train, y_train, x_test, y_test, data.num_classes, i_train, i_test)


@contextmanager
def side_pass(context: Context) -> Iterator[None]:
    """Run a probe's own passes: eval mode, not captured by other probes, training flags restored afterwards."""
    modes = [(module, module.training) for module in context.model.modules()]
    paused = context.paused
    context.model.eval()
    context.paused = True
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        context.paused = paused
