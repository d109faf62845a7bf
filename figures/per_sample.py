"""Per-sample gradient statistics over training: stiffness, gradient diversity, GSNR, clean-vs-mixed alignment.

Drawn from a run recorded with ``--interference --interference-samples`` (:mod:`dynamics.probes.interference`,
statistics from one per-sample gradient Gram of the step's clean batch and its mixed counterpart, every
``interference_every`` steps), one panel per statistic recorded:

- *stiffness*: mean cosine of two clean samples' gradients, same class (``stiffness_same``) and different classes
  (``stiffness_diff``) (Fort et al. 2019);
- *gradient diversity* ``sum_i |g_i|^2 / |sum_i g_i|^2`` (``grad_diversity``, Yin et al. 2018);
- *GSNR* per parameter tensor, ``|mean g|^2`` over the summed per-element variance (``gsnr``; Liu et al. 2020):
  the median over the tensors with their interquartile range as a band;
- *clean-vs-mixed alignment*: the mean per-sample cos(g_clean_i, g_mixed_i) (``sample_align_cos``);
- the *Fisher trace* ``tr F`` on the probe set (``fisher_trace``, with ``--fisher``), when recorded.

Only the measured steps are drawn (the variables are NaN between measurements).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from dynamics.errors import ConfigError
from dynamics.store import open_run, still_running
from figures.registry import recorded, register_figure
from figures.style import Caption, color, new_figure, save, step_axis, styled

PANELS: tuple[tuple[str, tuple[str, ...], str, bool], ...] = (
    ("stiffness", ("stiffness_same", "stiffness_diff"), "stiffness (mean cosine)", False),
    ("gradient diversity", ("grad_diversity",), "gradient diversity", True),
    ("GSNR", ("gsnr",), "GSNR per tensor", True),
    ("clean vs mixed alignment", ("sample_align_cos",), "mean cos(g_clean_i, g_mixed_i)", False),
    ("Fisher trace", ("fisher_trace",), "tr F (probe set)", True),
)
"""Each panel: its title, the variables it draws, its axis label and whether a positive series is drawn on a log
scale."""
PER_SAMPLE = ("stiffness_same", "stiffness_diff", "grad_diversity", "gsnr", "sample_align_cos")
"""The variables of ``--interference-samples``; a run with any of them gets the figure."""
_LEGEND = {"stiffness_same": "same class", "stiffness_diff": "different classes"}
GSNR_BAND = "GSNR band: interquartile range over parameter tensors"


def _values(ds: xr.Dataset, name: str) -> np.ndarray:
    return np.asarray(ds[name].transpose("step", ...).values, dtype=np.float64)


def _measured(ds: xr.Dataset, name: str) -> bool:
    """Whether run ``ds`` holds ``name`` with a value at some step."""
    return name in ds.data_vars and bool(np.isfinite(_values(ds, name)).any())


def _log_if_positive(ax: Axes, values: np.ndarray) -> None:
    finite = values[np.isfinite(values)]
    if finite.size and (finite > 0).all():
        ax.set_yscale("log")


def _gsnr(ax: Axes, ds: xr.Dataset, steps: np.ndarray) -> None:
    values = _values(ds, "gsnr")
    measured = np.isfinite(values).any(axis=1)
    low, median, high = np.nanquantile(values[measured], [0.25, 0.5, 0.75], axis=1)
    ax.fill_between(steps[measured], low, high, color=color(0), alpha=0.2, label="interquartile range")
    ax.plot(steps[measured], median, ".-", color=color(0), label=f"median of {values.shape[1]} tensors")


def per_sample_figure(ds: xr.Dataset) -> Figure:
    """One panel per per-sample statistic run ``ds`` (``open_run``) recorded, against step (module docstring)."""
    if not any(_measured(ds, name) for name in PER_SAMPLE):
        raise ConfigError(
            "the run records no per-sample gradient statistic; train with interference=True and "
            "interference_samples=True",
            key="interference_samples",
        )
    panels = [panel for panel in PANELS if any(_measured(ds, name) for name in panel[1])]
    steps = np.asarray(ds["step"].values)
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with styled():
        fig, axes = new_figure(2, height=2.0 * nrows + 0.2, nrows=nrows, ncols=ncols, squeeze=False)
        flat = list(axes.flat)
        for ax, (title, names, label, log) in zip(flat, panels, strict=False):
            drawn = [name for name in names if _measured(ds, name)]
            if drawn == ["gsnr"]:
                _gsnr(ax, ds, steps)
            else:
                for i, name in enumerate(drawn):
                    values = _values(ds, name)
                    finite = np.isfinite(values)
                    ax.plot(steps[finite], values[finite], ".-", color=color(i), label=_LEGEND.get(name, name))
            if log:
                _log_if_positive(ax, np.concatenate([_values(ds, name).ravel() for name in drawn]))
            ax.set_title(title)
            ax.set_ylabel(label)
            step_axis(ax, int(steps[-1]) if steps.size else 1, log_time=False)
            if len(ax.get_legend_handles_labels()[0]) > 1:
                ax.legend(loc="best")
        for ax in flat[len(panels) :]:
            ax.set_visible(False)
    return fig


def supports(folder: Path) -> bool:
    """A run with any per-sample gradient statistic (:data:`PER_SAMPLE`)."""
    return any(recorded(folder, name) for name in PER_SAMPLE)


@register_figure("per_sample", "run", supports)
def draw(folder: Path, stem: Path) -> tuple[Path, Path]:
    """The per-sample statistics of the run in ``folder``."""
    ds = open_run(folder)
    config = ds.attrs.get("config", {})
    caption = Caption(
        f"{folder.name}: per-sample gradient statistics of the clean training batch every "
        f"{config.get('interference_every', '?')} steps (stiffness within and between classes, gradient diversity, "
        "GSNR median over parameter tensors, mean per-sample cosine of clean and mixed gradients; Fisher trace on "
        "the probe set where recorded)",
        interval=GSNR_BAND if _measured(ds, "gsnr") else None,
        partial=bool(still_running([folder], "the per-sample figure")),
    )
    return save(per_sample_figure(ds), stem, caption)
