"""Analyses of recorded runs: read stores from ``dynamics.open_run`` and never import training code paths."""

from analyses.enlightenment import EnlightenmentPeriod, enlightenment_period, smooth_ema
from analyses.overview import aggregate_by_module, overview_figure, plot_overview

__all__ = [
    "EnlightenmentPeriod",
    "aggregate_by_module",
    "enlightenment_period",
    "overview_figure",
    "plot_overview",
    "smooth_ema",
]
