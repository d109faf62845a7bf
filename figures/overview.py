"""Run overview: loss, accuracy, the hyperparameters applied, gradient norm per module and flat-activation fraction
per layer against the optimizer step, with the Enlightenment Period shaded and a strategy's phases labelled.

The step axis is logarithmic above step 10 by default (``log_time=False``: linear), because the Enlightenment
Period, a few percent of training, is then as wide as what follows it. Accuracy and loss of mixed batches
(``mix_applied``; their accuracy is scored against the soft target's dominant label) are drawn apart from the
clean ones, and the clean probe set's smoothed accuracy (``enp_accuracy``, recorded while an auto period is
detected) with them. What is drawn comes from :mod:`analyses.overview`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from analyses.enlightenment import EnlightenmentPeriod, smooth_ema
from analyses.overview import (
    CUMULATIVE,
    HYPERPARAMETERS,
    ONLINE,
    Phase,
    aggregate_by_module,
    applied_hyperparameters,
    describe_run,
    hyperparameter_values,
    mixed_batches,
    run_period,
    strategy_phases,
)
from dynamics.store import open_run, still_running
from figures.registry import recorded, register_figure
from figures.style import (
    GREY,
    PALETTE,
    PERIOD_COLOR,
    Caption,
    color,
    log_axis,
    new_figure,
    note,
    save,
    shade_period,
    step_axis,
    styled,
)

NAME = "overview"
RAW_ALPHA = 0.3
"""Opacity of the raw per-batch curves drawn under their smoothed version."""
CLEAN, MIXED, VALIDATION, PROBE = color(0), color(4), color(3), color(2)
GROUP_COLORS = tuple(c for c in PALETTE if c not in (PERIOD_COLOR, PALETTE[6]))
"""Colours of modules and layers: the palette without the period's orange and the faint yellow."""


def _missing(ds: xr.Dataset, names: list[str]) -> str | None:
    """A "not recorded" note if a variable is absent or has no finite value, else None."""
    probes = ds.attrs.get("probes")
    how = f" (probes: {', '.join(map(str, probes))})" if isinstance(probes, list | tuple) else ""
    if ds.sizes.get("step", 0) == 0:
        return "no steps recorded yet"
    for name in names:
        if name not in ds.variables:
            return f"{name} not recorded{how}"
        if not np.isfinite(np.asarray(ds[name].values, dtype=np.float64)).any():
            return f"{name} not measured (NaN at every step)"
    return None


def _legend(ax: Axes) -> None:
    """Legend outside the panel, on the right, so it never covers data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _raw_and_smoothed(
    ax: Axes, steps: np.ndarray, values: np.ndarray, mask: np.ndarray, tau: float, line_color: Any, label: str, gid: str
) -> None:
    """The values at the steps in ``mask`` (faint) and their EMA over those steps only (solid)."""
    raw = np.where(mask, values, np.nan)
    smoothed = smooth_ema(steps, raw, tau)
    smoothed[~mask] = np.nan
    ax.plot(steps, raw, color=line_color, alpha=RAW_ALPHA, linewidth=0.6, gid=f"{gid}/raw")
    ax.plot(steps, smoothed, color=line_color, label=label, gid=f"{gid}/ema")


def _batches(ax: Axes, ds: xr.Dataset, name: str, mixed: np.ndarray, tau: float) -> np.ndarray:
    """Training ``name`` of clean and of mixed batches, apart; returns the values drawn."""
    steps = np.asarray(ds["step"].values)
    values = np.asarray(ds[name].values, dtype=np.float64)
    if mixed.any():
        if not mixed.all():
            _raw_and_smoothed(ax, steps, values, ~mixed, tau, CLEAN, "train, clean batches", f"{name}/clean")
        _raw_and_smoothed(ax, steps, values, mixed, tau, MIXED, "train, mixed batches", f"{name}/mixed")
    else:
        _raw_and_smoothed(ax, steps, values, np.ones(len(steps), dtype=bool), tau, CLEAN, "train batch", name)
    return values


def _validation(ax: Axes, ds: xr.Dataset, name: str) -> np.ndarray:
    if name not in ds.variables or not ds[name].size:
        return np.zeros(0)
    values = np.asarray(ds[name].values, dtype=np.float64)
    ax.plot(ds["eval_step"].values, values, "o-", color=VALIDATION, label="validation (test split)", gid=name)
    return values


def _panel_loss(ax: Axes, ds: xr.Dataset, mixed: np.ndarray, tau: float) -> None:
    ax.set_title("loss", loc="left")
    ax.set_ylabel("cross-entropy")
    missing = _missing(ds, ["loss"])
    if missing:
        note(ax, missing)
        return
    arrays = [_batches(ax, ds, "loss", mixed, tau), _validation(ax, ds, "val_loss")]
    log_axis(ax, *arrays)
    _legend(ax)


def _panel_accuracy(ax: Axes, ds: xr.Dataset, mixed: np.ndarray, tau: float, threshold: float) -> None:
    ax.set_title(
        "accuracy (mixed batches: agreement with the dominant label)" if mixed.any() else "accuracy", loc="left"
    )
    ax.set_ylabel("top-1 accuracy")
    ax.set_ylim(-0.02, 1.02)
    missing = _missing(ds, ["accuracy"])
    if missing:
        note(ax, missing)
        return
    _batches(ax, ds, "accuracy", mixed, tau)
    if "enp_accuracy" in ds.variables and np.isfinite(np.asarray(ds["enp_accuracy"].values, dtype=float)).any():
        ax.plot(
            ds["step"].values,
            np.asarray(ds["enp_accuracy"].values, dtype=np.float64),
            color=PROBE,
            linewidth=1.4,
            label="clean probe set, smoothed (period detection)",
            gid="enp_accuracy",
        )
    _validation(ax, ds, "val_accuracy")
    ax.axhline(threshold, color=GREY, linestyle="--", linewidth=0.8, label=f"threshold {threshold:.0%}")
    _legend(ax)


def _panel_hyperparameter(ax: Axes, ds: xr.Dataset, name: str) -> None:
    values = hyperparameter_values(ds, name)
    ax.plot(ds["step"].values, values, color=color(7), drawstyle="steps-post", linewidth=1.0, gid=f"hyper/{name}")
    ax.set_ylabel(HYPERPARAMETERS[name] + (" (count)" if name in CUMULATIVE else ""), rotation=0, ha="right")
    finite = values[np.isfinite(values)]
    if finite.size and np.ptp(finite) == 0:
        ax.set_yticks([finite[0]], labels=[f"{finite[0]:g}"])
    else:
        ax.yaxis.set_major_locator(MaxNLocator(nbins=2))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.grid(False, axis="y")


def _groups(ax: Axes, data: xr.DataArray, dim: str, tau: float) -> None:
    """One raw + smoothed line per label of ``dim``: palette colours, or viridis (dark = first) for many."""
    steps = np.asarray(data["step"].values)
    values = np.asarray(data.transpose("step", dim).values, dtype=np.float64)
    labels = [str(x) for x in data[dim].values]
    many = len(labels) > len(GROUP_COLORS)
    colors = colormaps["viridis"](np.linspace(0.0, 0.85, len(labels))) if many else GROUP_COLORS
    everywhere = np.ones(len(steps), dtype=bool)
    for index, label in enumerate(labels):
        _raw_and_smoothed(ax, steps, values[:, index], everywhere, tau, colors[index], label, f"{dim}/{label}")


def _panel_grad(ax: Axes, ds: xr.Dataset, tau: float) -> None:
    ax.set_title("gradient norm per module", loc="left")
    ax.set_ylabel("‖∇‖₂")
    missing = _missing(ds, ["grad_norm"])
    if missing:
        note(ax, missing)
        return
    per_module = aggregate_by_module(ds["grad_norm"])
    _groups(ax, per_module, "module", tau)
    log_axis(ax, np.asarray(per_module.values).ravel())
    _legend(ax)


def _panel_flat(ax: Axes, ds: xr.Dataset, tau: float) -> None:
    ax.set_title("fraction of activations in the flat region per layer (ReLU: == 0)", loc="left")
    ax.set_ylabel("fraction")
    ax.set_ylim(-0.02, 1.02)
    missing = _missing(ds, ["act_zero_frac"])
    if missing:
        note(ax, missing)
        return
    _groups(ax, ds["act_zero_frac"], "layer", tau)
    _legend(ax)


def _panel_phases(ax: Axes, phases: list[Phase]) -> None:
    """A bar of the strategy's phases, each span shaded and labelled in words (placed in axes coordinates)."""
    ax.set_yticks([])
    ax.set_ylim(0, 1)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    to_axes = ax.transData + ax.transAxes.inverted()
    for index, phase in enumerate(phases):
        shade = PERIOD_COLOR if phase.in_period else GREY
        ax.axvspan(phase.start, phase.stop, color=shade, alpha=0.35 if phase.in_period else 0.12, gid="phase")
        left, right = (to_axes.transform((x, 0.0))[0] for x in (phase.start, phase.stop))
        # the first label starts at the left edge, the last ends at the right one: long labels of short phases
        # then spread into the room of their neighbours instead of over each other
        where, align = (
            (left + 0.005, "left")
            if index == 0
            else (right - 0.005, "right")
            if index == len(phases) - 1
            else ((left + right) / 2, "center")
        )
        ax.text(where, 0.5, phase.label, transform=ax.transAxes, ha=align, va="center", fontsize=6.5)


def _period_words(ds: xr.Dataset, period: EnlightenmentPeriod | None, steps: int) -> str:
    """Where the period ended and how it was found, in words."""
    if period is None:
        return "Enlightenment Period unknown (no clean training accuracy: every batch mixed, or none measured)"
    config = ds.attrs.get("config") if isinstance(ds.attrs.get("config"), dict) else {}
    epochs = config.get("enp_epochs")
    if period.method == ONLINE:
        signal = "batch" if config.get("enp_signal") == "batch" else "clean-probe"
        how = (
            f"detected online from the smoothed {signal} accuracy"
            if epochs == "auto"
            else f"the strategy's first {epochs} epoch(s)"
            if epochs is not None
            else "as the strategy recorded it"
        )
    else:
        how = f"first step with EMA-smoothed clean-batch accuracy ≥ {period.threshold:.0%}"
    if not period.reached:
        return f"Enlightenment Period not ended in {steps} steps ({how})"
    return f"Enlightenment Period: steps 0–{period.end_step}, {period.fraction:.1%} of {steps} steps ({how})"


def overview_figure(
    ds: xr.Dataset, *, log_time: bool = True, threshold: float = 0.5, tau: float = 10.0, columns: Literal[1, 2] = 2
) -> Figure:
    """The overview of run ``ds`` (from ``open_run``): curves smoothed by the EMA of ``tau`` steps, the period from
    :func:`analyses.overview.run_period` (``threshold``), a log step axis above step 10 unless not ``log_time``.

    Panels whose variables were not recorded carry a note instead. ``columns``: 1 or 2 (figure width).
    """
    period = run_period(ds, threshold=threshold, tau=tau)
    steps = np.asarray(ds["step"].values) if ds.sizes.get("step", 0) else np.zeros(0, dtype=np.int64)
    last_step = int(steps[-1]) if steps.size else 0
    mixed = mixed_batches(ds)
    phases = strategy_phases(ds)
    hypers = applied_hyperparameters(ds)
    kinds = (["phases"] if phases else []) + ["loss", "accuracy"] + hypers + ["grad", "flat"]
    heights = {"phases": 0.22, **dict.fromkeys(hypers, 0.45)}
    ratios = [heights.get(kind, 1.6) for kind in kinds]
    with styled():
        fig, axes = new_figure(
            columns,
            height=sum(ratios) + 1.0,
            nrows=len(kinds),
            sharex=True,
            squeeze=False,
            gridspec_kw={"height_ratios": ratios},
        )
        panel = dict(zip(kinds, axes[:, 0], strict=True))
        for kind, ax in panel.items():
            step_axis(ax, last_step, log_time=log_time, label=kind == "flat")
        _panel_loss(panel["loss"], ds, mixed, tau)
        _panel_accuracy(panel["accuracy"], ds, mixed, tau, threshold)
        for name in hypers:
            _panel_hyperparameter(panel[name], ds, name)
        _panel_grad(panel["grad"], ds, tau)
        _panel_flat(panel["flat"], ds, tau)
        if phases:
            _panel_phases(panel["phases"], phases)
        if period is not None and steps.size:
            for kind, ax in panel.items():
                if kind != "phases":
                    shade_period(ax, period.end_step if period.reached else last_step, ended=period.reached)
        summary = _period_words(ds, period, last_step + 1) if steps.size else "no steps recorded yet"
        key = [
            Patch(facecolor=PERIOD_COLOR, alpha=0.35, label="Enlightenment Period"),
            Line2D([], [], color=GREY, alpha=RAW_ALPHA, linewidth=0.6, label="per batch"),
            Line2D([], [], color=GREY, label=f"EMA, τ = {tau:g} steps"),
        ]
        fig.legend(handles=key, loc="outside lower center", ncol=3)
        fig.suptitle(f"{describe_run(ds)}\n{summary}", fontsize=8)
    return fig


def overview_caption(ds: xr.Dataset, *, log_time: bool = True, tau: float = 10.0, partial: bool = False) -> Caption:
    """The caption of :func:`overview_figure` for run ``ds``."""
    period = run_period(ds, tau=tau)
    steps = ds.sizes.get("step", 0)
    words = _period_words(ds, period, steps) if steps else "no steps recorded yet"
    hypers = ", ".join(HYPERPARAMETERS[name] for name in applied_hyperparameters(ds))
    return Caption(
        f"Run overview of {describe_run(ds)}: training loss and accuracy (faint: per batch; solid: EMA over "
        f"{tau:g} steps; mixed batches drawn apart, their accuracy scored against the dominant label), validation "
        f"at epoch ends, applied hyperparameters ({hypers or 'none recorded'}), gradient norm per module and "
        f"flat-activation fraction per layer against the optimizer step"
        f"{' (log scale above step 10)' if log_time else ''}. Shaded: {words}",
        partial=partial,
    )


@register_figure(NAME, "run", lambda run: recorded(run, "loss"))
def draw_overview(run_dir: Path, stem: str | os.PathLike[str], *, log_time: bool = True) -> tuple[Path, Path]:
    """Draw the overview of the run in ``run_dir`` to ``<stem>.png/.pdf`` (partial while it is still running)."""
    partial = bool(still_running([run_dir], what="figures"))
    ds = open_run(run_dir)
    figure = overview_figure(ds, log_time=log_time)
    return save(figure, stem, overview_caption(ds, log_time=log_time, partial=partial))
