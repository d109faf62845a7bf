"""What the framework callbacks share: the learning rate as applied, micro-batch pooling, JSON-safe settings."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from dynamics.errors import ConfigError


def missing_framework(err: ModuleNotFoundError, packages: Sequence[str], module: str, what: str, extra: str) -> None:
    """Re-raise ``err`` as one ImportError line naming the extra to install when a framework package is missing
    (an error inside an installed framework's own imports is raised unchanged)."""
    if (err.name or "").split(".")[0] in packages:
        raise ImportError(f"{module} needs {what}: pip install 'dynamics[{extra}]'") from None
    raise err


class AppliedLR:
    """The optimizer as the Recorder sees it, with the learning rate the step applied.

    Frameworks step the learning-rate schedule before their callbacks see the end of the step, so reading the
    optimizer then gives the next step's rate. The callbacks call :meth:`capture` before the optimizer step;
    ``param_groups`` then shows that rate in the first group (every other attribute is the optimizer's own).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._lr: float | torch.Tensor | None = None

    def capture(self) -> None:
        """Keep the first group's learning rate now (a tensor rate is copied on its device, not read)."""
        lr = self.optimizer.param_groups[0]["lr"]
        self._lr = lr.detach().clone() if isinstance(lr, torch.Tensor) else lr

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        groups = self.optimizer.param_groups
        if self._lr is None:
            return groups
        return [{**groups[0], "lr": self._lr}, *groups[1:]]

    def __getattr__(self, name: str) -> Any:
        if name in ("optimizer", "_lr"):  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.optimizer, name)


def refuse_skip(on_nonfinite: str) -> None:
    """``on_nonfinite="skip"`` needs the loop to skip ``optimizer.step()``, which a callback cannot do."""
    if on_nonfinite == "skip":
        raise ConfigError(
            "on_nonfinite='skip' needs the training loop to skip optimizer.step(), which a callback cannot; "
            "use 'stop' or 'record'",
            key="on_nonfinite",
        )


def pooled_loss(losses: list[torch.Tensor], scale: float = 1.0, total: bool = False) -> torch.Tensor:
    """One step's loss from its micro-batches' detached losses, on the device: their mean (``total``: their sum),
    times ``scale``. One micro-batch gives its loss unchanged."""
    if len(losses) == 1:
        loss = losses[0].reshape(())
    else:
        stacked = torch.stack([loss.reshape(()) for loss in losses])
        loss = stacked.sum() if total else stacked.mean()
    return loss if scale == 1.0 else loss * scale


def joined(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The micro-batches' outputs (or targets) of one step as one batch; None when there are none or their
    non-batch shapes differ."""
    if not tensors:
        return None
    if len(tensors) == 1:
        return tensors[0]
    if len({t.shape[1:] for t in tensors}) > 1:
        return None
    return torch.cat(tensors)


def json_safe(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` as plain JSON types (anything else as its ``str``; non-finite floats as strings), for
    ``config.json`` and the store's attributes."""

    def clean(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return str(item)
        if isinstance(item, dict):
            return {str(k): clean(v) for k, v in item.items()}
        if isinstance(item, list):
            return [clean(v) for v in item]
        return item

    return clean(json.loads(json.dumps(dict(value), default=str)))


def eval_values(metrics: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, float | torch.Tensor]:
    """The evaluation values to record: ``names`` maps a framework metric to the recorded variable; a metric
    that is missing, or not one number, is left out."""
    values: dict[str, float | torch.Tensor] = {}
    for metric, variable in names.items():
        value = metrics.get(metric)
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            values[variable] = value.detach().reshape(())
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values[variable] = float(value)
    return values
