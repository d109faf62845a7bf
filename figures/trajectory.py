"""Parameter trajectory of one run: PCA spectrum of the snapshot path, the path in the PC1-PC2 plane over the loss
surface (when ``python -m dynamics.surface RUN_DIR`` has evaluated it), how low-dimensional the path is over
time, the share of the path travelled, and PLP's local linearity. Computed by :mod:`analyses.trajectory`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analyses.overview import describe_run
from analyses.trajectory import WHOLE, TrajectoryReport, analyse_trajectory
from dynamics.store import open_run, still_running
from figures.registry import recorded, register_figure
from figures.style import (
    GREY,
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

NAME = "trajectory"


def _steps_axis(ax: Axes, report: TrajectoryReport) -> None:
    """Log axis of steps taken (snap_step + 1: the initial point at 0), with the Enlightenment Period shaded."""
    step_axis(ax, int(report.trajectory.steps[-1]) + 1, label=False)
    ax.set_xlabel("steps taken (log above 10)")
    period = report.period
    if period is not None and period.reached:
        shade_period(ax, period.end_step + 1)


def _group_colors(groups: tuple[str, ...]) -> dict[str, Any]:
    """Black for the whole model, then palette colours (viridis beyond six modules)."""
    modules = groups[1:]
    colors = (
        colormaps["viridis"](np.linspace(0.0, 0.85, len(modules)))
        if len(modules) > 6
        else [color(i) for i in (0, 2, 3, 4, 5, 6)]
    )
    return {WHOLE: color(7), **{g: colors[i] for i, g in enumerate(modules)}}


def _panel_spectrum(ax: Axes, report: TrajectoryReport, colors: Mapping[str, Any]) -> None:
    ratio = report.pca["explained_ratio"]
    components = ratio["component"].values
    ax.bar(components, ratio.sel(group=WHOLE).values, color="0.8", label=WHOLE, gid="spectrum")
    for group in report.trajectory.groups[1:]:
        ax.plot(components, ratio.sel(group=group).values, "o-", markersize=2.5, color=colors[group], label=group)
    log_axis(ax, ratio.values)
    ax.set_xticks(components)
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.set_title("a  PCA spectrum of the snapshot path", loc="left")
    ax.legend(loc="upper right", fontsize=6)


def _panel_plane(ax: Axes, report: TrajectoryReport) -> None:
    surface = report.surface
    scores = report.pca["scores"].sel(group=WHOLE).values[:, :2]
    path = scores - scores[-1] if surface is None else surface.path
    ratio = report.pca["explained_ratio"].sel(group=WHOLE).values
    if surface is not None:
        grid = ax.contourf(surface.a, surface.b, np.log10(surface.loss), levels=20, cmap="viridis")
        ax.figure.colorbar(grid, ax=ax, label="log10 training loss")
        ax.set_title(f"b  path over the loss surface ({surface.samples} training samples)", loc="left")
    else:
        ax.set_title("b  path in the PC1-PC2 plane", loc="left")
        note(ax, "loss surface not computed: python -m dynamics.surface RUN_DIR")
    ax.plot(path[:, 0], path[:, 1], "-", color="white" if surface is not None else GREY, linewidth=0.8, gid="path")
    ax.scatter(path[:, 0], path[:, 1], c=np.log1p(report.trajectory.steps + 1), cmap="magma", s=6, zorder=3)
    ax.plot(*path[0], "s", color="white", markeredgecolor="black", markersize=5, label="initial", zorder=4)
    ax.plot(*path[-1], "*", color="white", markeredgecolor="black", markersize=8, label="final", zorder=4)
    period = report.period
    if period is not None and period.reached:
        index = min(int(np.searchsorted(report.trajectory.steps, period.end_step)), len(path) - 1)
        ax.plot(
            *path[index],
            "o",
            color=PERIOD_COLOR,
            markeredgecolor="black",
            markersize=5,
            zorder=4,
            label=f"end of the period (step {report.trajectory.steps[index]})",
        )
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%} of the path's variance)")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    ax.legend(loc="best", fontsize=6, framealpha=0.8, frameon=True)
    ax.grid(False)


def _panel_explained(ax: Axes, report: TrajectoryReport) -> None:
    over_time = report.pca["explained_over_time"].sel(group=WHOLE)
    x = report.trajectory.steps + 1
    for n in (1, 2, 3):
        values = over_time.sel(component=n).values
        finite = np.isfinite(values)
        ax.plot(x[finite], values[finite], "o-", markersize=1.5, color=color(n - 1), label=f"first {n} PC(s)")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("explained variance\nof the path so far")
    ax.set_title("c  dimension of the path so far (model)", loc="left")
    _steps_axis(ax, report)
    ax.legend(loc="lower left", fontsize=6)


def _panel_movement(ax: Axes, report: TrajectoryReport, colors: Mapping[str, Any]) -> None:
    movement = report.movement
    ax.set_title("d  path length travelled", loc="left")
    if movement is None:
        note(ax, "no training accuracy: Enlightenment Period unknown")
        return
    cumulative = movement.cumulative
    x = cumulative["step"].values + 1
    for group in cumulative["group"].values:
        ax.plot(
            x,
            cumulative.sel(group=group).values,
            color=colors[str(group)],
            linewidth=1.6 if group == WHOLE else 0.9,
            label=str(group),
            gid=f"movement/{group}",
        )
    if movement.end_step is not None:
        ax.annotate(
            f"{movement.path_share:.0%} of the path",
            (movement.end_step + 1, movement.path_share),
            xytext=(6, -10),
            textcoords="offset points",
            fontsize=6.5,
        )
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(f"cumulative path length\n/ total ({movement.source})")
    _steps_axis(ax, report)
    ax.legend(loc="upper left", fontsize=6)


def _panel_linearity(ax: Axes, report: TrajectoryReport, colors: Mapping[str, Any]) -> None:
    lin = report.linearity
    x = lin["step"].values + 1
    for group in lin["group"].values:
        values = lin.sel(group=group).values
        finite = np.isfinite(values) & (values > 0)
        ax.plot(
            x[finite],
            values[finite],
            "o-" if group == WHOLE else "-",
            markersize=2,
            linewidth=1.4 if group == WHOLE else 0.8,
            color=colors[str(group)],
            label=f"{group} (snapshot windows)" if group == WHOLE else str(group),
        )
    if report.sketch_linearity is not None:
        sketch = report.sketch_linearity.sel(group=WHOLE)
        finite = np.isfinite(sketch.values) & (sketch.values > 0)
        ax.plot(
            sketch["step"].values[finite] + 1,
            sketch.values[finite],
            "--",
            color=color(3),
            label=f"{WHOLE}, iteration unit (sketch, window {report.sketch_linearity.attrs['window']})",
        )
    ax.axhline(1.0, color=GREY, linestyle=":", linewidth=0.8)
    log_axis(ax, *(line.get_ydata() for line in ax.get_lines()))
    ax.set_ylabel("|prediction − m34| / |m34 − m23|")
    ax.set_title("e  local linearity: relative error of PLP's three-point prediction (low = PLP safe)", loc="left")
    _steps_axis(ax, report)
    ax.legend(loc="lower right", ncol=3, fontsize=6, frameon=True, framealpha=0.8)


def trajectory_figure(report: TrajectoryReport) -> Figure:
    """PCA spectrum, the path over the loss surface, explained variance over time, movement and linearity."""
    colors = _group_colors(report.trajectory.groups)
    with styled():
        fig, axes = new_figure(2, height=7.0, nrows=3, ncols=2)
        for ax in axes[2]:
            ax.remove()
        linearity = fig.add_subplot(axes[0, 0].get_gridspec()[2, :])
        _panel_spectrum(axes[0, 0], report, colors)
        _panel_plane(axes[0, 1], report)
        _panel_explained(axes[1, 0], report)
        _panel_movement(axes[1, 1], report, colors)
        _panel_linearity(linearity, report, colors)
        fig.suptitle(
            f"{describe_run(report.ds)}: parameter trajectory from {len(report.trajectory.steps)} snapshots\n"
            f"{_period_words(report)}",
            fontsize=8,
        )
    return fig


def _period_words(report: TrajectoryReport) -> str:
    period = report.period
    if period is not None and period.reached:
        return f"shaded: Enlightenment Period, steps 0–{period.end_step}"
    return "Enlightenment Period not reached or unknown"


def trajectory_caption(report: TrajectoryReport, *, partial: bool = False) -> Caption:
    """The caption of :func:`trajectory_figure`."""
    surface = report.surface
    return Caption(
        f"Parameter trajectory of {describe_run(report.ds)} from {len(report.trajectory.steps)} snapshots: "
        "(a) PCA spectrum (bars: whole model; lines: modules), (b) the path on its first two principal components"
        + (f" over the training loss on that plane ({surface.samples} samples)" if surface is not None else "")
        + ", (c) variance of the path so far explained by its first 1-3 components, (d) cumulative share of the "
        "path length, (e) relative error of PLP's three-point prediction over windows of four snapshots and, from "
        f"the sketch, at every step; {_period_words(report)}",
        partial=partial,
    )


@register_figure(NAME, "run", lambda run: recorded(run, "snapshot"))
def draw_trajectory(run_dir: Path, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Draw the trajectory of the run in ``run_dir`` (with its stored loss surface, if any) to ``<stem>.png/.pdf``."""
    partial = bool(still_running([run_dir], what="figures"))
    report = analyse_trajectory(open_run(run_dir))
    return save(trajectory_figure(report), stem, trajectory_caption(report, partial=partial))
