"""Analyses of recorded runs: read stores from ``dynamics.open_run`` and never import training code paths."""

from typing import Any

from analyses.enlightenment import EnlightenmentPeriod, enlightenment_period, smooth_ema
from analyses.overview import aggregate_by_module, overview_figure, plot_overview

_PHASE = ("ModelFit", "Transition", "analyse_phase", "fit_transition", "phase_figure", "plot_phase")
"""Exported from analyses.phase lazily, so that ``python -m analyses.phase`` does not import it twice."""

__all__ = [
    "EnlightenmentPeriod",
    "aggregate_by_module",
    "enlightenment_period",
    "overview_figure",
    "plot_overview",
    "smooth_ema",
    *_PHASE,
]


def __getattr__(name: str) -> Any:
    if name in _PHASE:
        from analyses import phase

        return getattr(phase, name)
    raise AttributeError(f"module 'analyses' has no attribute {name!r}")
