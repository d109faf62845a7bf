"""Parameter Linear Prediction (arXiv 2310.10958): extrapolate parameters from three consecutive points.

Per cycle of three consecutive points ``theta1, theta2, theta3`` (after three optimizer updates, or at the
ends of three epochs with ``unit="epoch"``)::

    m12 = (theta1 + theta2)/2,  m23 = (theta2 + theta3)/2,  s = m23 - m12
    prediction = m23 + k s            (k = 1: theta3 + (theta2 - theta1)/2)

The prediction replaces ``theta3`` in place and the cycle restarts: the next three points are taken after
the prediction. Choices (documented and tested): optimizer state such as momentum buffers and Adam moments
is left unchanged, BatchNorm running statistics (buffers, not parameters) are not extrapolated, and with
``weights_only`` only tensors with more than one dimension (weights, not biases or norm scales) are
predicted. Copies are kept with foreach kernels on the parameters' device.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from dynamics.errors import ConfigError
from dynamics.plp_formula import plp_prediction as plp_prediction  # the formula, re-exported

UNITS = ("iteration", "epoch")


class PLP:
    """Call :meth:`observe` after every optimizer step (``unit="iteration"``) or epoch end (``"epoch"``).

    ``observe`` returns True when it replaced the parameters with the prediction.
    """

    def __init__(
        self, params: Iterable[torch.nn.Parameter], k: float = 1.0, unit: str = "iteration", weights_only: bool = False
    ) -> None:
        if unit not in UNITS:
            raise ConfigError(f"unknown unit {unit!r}; choose one of: {', '.join(UNITS)}", key="unit")
        if not k > 0:
            raise ConfigError(f"k must be > 0, got {k}; pass e.g. 1.0", key="k")
        self.params = [p for p in params if p.requires_grad and (p.ndim > 1 or not weights_only)]
        if not self.params:
            raise ConfigError(
                "PLP found no parameters to predict; set weights_only=False or check the model", key="weights_only"
            )
        self.k = k
        self.unit = unit
        self._points: list[list[torch.Tensor]] = []
        self.applied = 0
        """Number of predictions applied so far."""

    def state_dict(self) -> dict[str, Any]:
        """The points of the current cycle and the count of predictions, for a checkpoint."""
        return {"points": self._points, "applied": self.applied}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the cycle saved by :meth:`state_dict`."""
        self._points = [list(point) for point in state["points"]]
        self.applied = int(state["applied"])

    @torch.no_grad()
    def observe(self) -> bool:
        """Take the current parameters as the next point; at the third, apply the prediction."""
        if len(self._points) < 2:
            self._points.append([p.detach().clone() for p in self.params])
            return False
        first, second = self._points
        current = [p.detach() for p in self.params]
        # prediction = (theta2 + theta3)/2 + k (theta3 - theta1)/2
        update = torch._foreach_add(second, current)
        torch._foreach_mul_(update, 0.5)
        step = torch._foreach_sub(current, first)
        torch._foreach_add_(update, step, alpha=self.k / 2)
        torch._foreach_copy_(current, update)
        self._points = []
        self.applied += 1
        return True
