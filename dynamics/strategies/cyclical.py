"""General Cyclical Training (Smith, arXiv 2202.08835): easy at the ends of training, hard in the middle.

One schedule drives every technique. With epoch ``e`` in ``0..E-1`` and cyclical factor ``f``::

    if f*e < E:  eta = 1 - f*e/(E-1)
    elif f == 1: eta = 0
    else:        eta = (f*e/(E-1) - 1)/(f - 1)
    value(e) = (1 - eta)*max + eta*min

so the value is ``min`` (easy) at the start, ``max`` (hard) near ``E/f`` and back at ``min`` at the end;
``f = 1`` is a plain ramp. The value is updated once per epoch. A one-epoch run stays at ``min``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dynamics.errors import ConfigError


def cyclical_eta(epoch: int, epochs: int, factor: float = 2.0) -> float:
    """The schedule's interpolation weight of ``min`` at ``epoch`` (1 at the start)."""
    if epochs < 1 or not 0 <= epoch < epochs:
        raise ConfigError(f"epoch {epoch} is outside 0..{epochs - 1}; pass 0 <= epoch < epochs", key="epoch")
    if not (math.isfinite(factor) and factor >= 1):
        raise ConfigError(f"factor must be a finite number >= 1, got {factor}; fix it", key="factor")
    if epochs == 1:
        return 1.0
    if factor * epoch < epochs:
        return 1.0 - factor * epoch / (epochs - 1)
    if factor == 1:
        return 0.0
    return (factor * epoch / (epochs - 1) - 1.0) / (factor - 1.0)


def cyclical_value(epoch: int, epochs: int, vmin: float, vmax: float, factor: float = 2.0) -> float:
    """``(1 - eta) * vmax + eta * vmin`` for the epoch's ``eta`` (see the module docstring)."""
    eta = cyclical_eta(epoch, epochs, factor)
    return (1.0 - eta) * vmax + eta * vmin


@dataclass(frozen=True)
class Range:
    """A ``MIN:MAX`` pair of a cyclical schedule."""

    low: float
    high: float

    @classmethod
    def parse(cls, text: str, name: str, *, positive: bool = False) -> Range:
        """Parse ``"MIN:MAX"``, the value of the parameter ``name`` (named in errors, and their ``key``).

        MIN > MAX, a missing part or (with ``positive``) a value <= 0 is an error.
        """
        parts = str(text).split(":")
        try:
            low, high = (float(part) for part in parts)
        except ValueError:
            raise ConfigError(f"{name} takes MIN:MAX (e.g. 1e-5:8e-5), got {text!r}; fix it", key=name) from None
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ConfigError(f"{name} takes finite numbers MIN:MAX, got {text!r}; fix it", key=name)
        if low > high:
            raise ConfigError(f"{name} MIN {low} exceeds MAX {high}; give MIN:MAX with MIN <= MAX", key=name)
        if low < 0 or (positive and low <= 0):
            bound = "> 0" if positive else ">= 0"
            raise ConfigError(f"{name} values must be {bound}, got {text!r}; fix them", key=name)
        return cls(low, high)

    def at(self, epoch: int, epochs: int, factor: float) -> float:
        """The scheduled value at ``epoch``."""
        return cyclical_value(epoch, epochs, self.low, self.high, factor)
