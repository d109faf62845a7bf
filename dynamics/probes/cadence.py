"""When a costly probe measures: a geometric cadence, dense at the start of training and sparser later.

The representation and Fisher probes run extra passes over a probe set, far too costly for every step and
unnecessary late in training, where little changes. After a measurement at step ``s`` the next one is due
``max(1, ceil(growth * s))`` steps later (capped at ``max_interval``), so measurements are spaced evenly in
``log(step)`` once ``growth * s > 1``: with ``growth = 0.1`` every step up to step 10, then about 24
measurements per decade. A probe measures at the first *recorded* step at or after each due step, so the
cadence also works with a recorder that records every ``every``-th step; at the other recorded steps it
returns NaN (the recorder stores one row per recorded step, so shapes stay fixed). A :class:`FixedCadence`
measures every ``interval_steps`` steps instead (the interference probe's cadence).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass

import torch

from dynamics.errors import ConfigError
from dynamics.probes.base import Context, Probe, StepData


@dataclass(frozen=True)
class GeometricCadence:
    """Measure at step 0, then ``max(1, ceil(growth * s))`` steps after each measurement at step ``s``.

    Args:
        growth: relative spacing of measurements (> 0); 0.1 gives ~24 measurements per decade of steps.
        max_interval: longest gap between measurements in steps; None leaves it unbounded.
    """

    growth: float = 0.1
    max_interval: int | None = None

    def __post_init__(self) -> None:
        if (
            isinstance(self.growth, bool)
            or not isinstance(self.growth, int | float)
            or not (math.isfinite(self.growth) and self.growth > 0)
        ):
            raise ConfigError(f"growth must be a finite number > 0, got {self.growth!r}; pass e.g. 0.1", key="growth")
        if self.max_interval is not None and (
            isinstance(self.max_interval, bool) or not isinstance(self.max_interval, int) or self.max_interval < 1
        ):
            raise ConfigError(
                f"max_interval must be a positive integer or None, got {self.max_interval!r}", key="max_interval"
            )

    def interval(self, step: int) -> int:
        """Steps from a measurement at ``step`` to the next due one."""
        gap = max(1, math.ceil(self.growth * step))
        return gap if self.max_interval is None else min(gap, self.max_interval)

    def steps(self, total: int, every: int = 1) -> list[int]:
        """The steps among ``0, every, 2*every, ... < total`` at which a probe with this cadence measures."""
        measured, due = [], 0
        for step in range(0, total, every):
            if step >= due:
                measured.append(step)
                due = step + self.interval(step)
        return measured

    def describe(self) -> str:
        """The cadence in words, stored in the variables' ``cadence`` attribute."""
        return f"geometric growth={self.growth:g} max_interval={self.max_interval}"


@dataclass(frozen=True)
class FixedCadence:
    """Measure at step 0 and then every ``interval_steps`` steps (at the first recorded step at or after each)."""

    interval_steps: int

    def __post_init__(self) -> None:
        if isinstance(self.interval_steps, bool) or not isinstance(self.interval_steps, int) or self.interval_steps < 1:
            raise ConfigError(f"cadence interval must be a positive integer, got {self.interval_steps!r}")

    def interval(self, step: int) -> int:
        """Steps from a measurement at ``step`` to the next due one."""
        return self.interval_steps

    def describe(self) -> str:
        """The cadence in words, stored in the variables' ``cadence`` attribute."""
        return f"fixed interval={self.interval_steps}"


class SparseProbe(Probe):
    """A probe that measures only at the steps its cadence makes due, and records NaN at the others.

    The recorder calls ``measure`` at each recorded step ``0, every, 2*every, ...``; the probe counts those
    calls to know the step, so ``every`` must be the recorder's. Subclasses implement ``measure_now``.
    """

    state_attrs: tuple[str, ...] = ("step", "_calls", "_due", "_skipped")

    def __init__(self, cadence: GeometricCadence | FixedCadence, every: int) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ConfigError(f"every must be the recorder's positive integer cadence, got {every!r}")
        self.cadence = cadence
        self.every = every
        self.step = -1
        """The step of the latest ``measure`` call."""
        self._calls = 0
        self._due = 0
        self._skipped: dict[str, torch.Tensor] | None = None

    @property
    def cadence_attrs(self) -> dict[str, str]:
        """Attributes that tell an analysis which variables share their measured steps."""
        return {"cadence": f"{self.cadence.describe()} every={self.every}"}

    @abstractmethod
    def measure_now(self, context: Context) -> dict[str, torch.Tensor]:
        """The variables' values at a due step (device tensors)."""

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        self.step = self._calls * self.every
        self._calls += 1
        if self.step < self._due:
            return self._skipped
        self._due = self.step + self.cadence.interval(self.step)
        values = self.measure_now(context)
        if self._skipped is None:  # NaN values of the same shapes, made once (the recorder copies every row)
            self._skipped = {name: torch.full_like(value, math.nan) for name, value in values.items()}
        return values
