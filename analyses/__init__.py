"""Analyses of recorded runs: read stores from ``dynamics.open_run`` and never import training code paths."""

from typing import Any

from analyses.enlightenment import EnlightenmentPeriod, enlightenment_period, smooth_ema
from analyses.overview import (
    aggregate_by_module,
    applied_hyperparameters,
    mixed_batches,
    run_period,
    strategy_phases,
)

_PHASE = ("ModelFit", "Transition", "analyse_phase", "fit_transition")
"""Exported from analyses.phase lazily, so that ``python -m analyses.phase`` does not import it twice."""

__all__ = [
    "EnlightenmentPeriod",
    "aggregate_by_module",
    "applied_hyperparameters",
    "enlightenment_period",
    "mixed_batches",
    "run_period",
    "smooth_ema",
    "strategy_phases",
    *_PHASE,
]


def __getattr__(name: str) -> Any:
    if name in _PHASE:
        from analyses import phase

        return getattr(phase, name)
    raise AttributeError(f"module 'analyses' has no attribute {name!r}")
