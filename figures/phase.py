"""The phase-transition figure: psi(t) of each order parameter with both fits, t_c with its bootstrap interval
and the flags of the fit, then the susceptibility and the Fisher trace.

:func:`analyses.phase.analyse_phase` computes everything drawn here. The figure is registered as ``phase`` for
run folders that recorded training accuracy (``python -m figures RUN_DIR`` draws it among the run's figures);
``python -m figures.phase RUN_DIR [RUN_DIR ...] [--log-time] [--out STEM]`` draws several seeds of one
configuration together (default ``<first RUN_DIR>/phase.png/.pdf``) and prints the analysis summary.

How it reads: the interval of t_c is a band over the whole height of its panel, the Enlightenment Period
[0, t_50] a strip along the bottom of every panel, so neither hides the other. A flagged fit (see
:data:`analyses.phase.FLAGS`) has its t_c line dashed and its band hatched, and a note in its panel names the
flags; the step axis runs from step 0 to the last step, so a t_c outside is not visible and the note says why.
"""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from analyses.phase import (
    FLAG_NAMES,
    FLAGS,
    ORDER_PARAMETERS,
    analyse_arguments,
    analyse_phase,
    argument_parser,
    fmt,
    meta_num_classes,
)
from dynamics.cli import fail, flag_message, one_line_errors
from dynamics.errors import ConfigError, DynamicsError
from dynamics.store import open_run
from figures.registry import recorded, register_figure
from figures.style import GREY, PERIOD_COLOR, Caption, color, new_figure, note, save, styled

USAGE_ERROR = 2
PANEL_HEIGHT = 1.45
"""Inches per panel; the figure is two columns wide."""
PERIOD_STRIP = 0.05
"""Height of the Enlightenment Period strip, as a fraction of each panel."""
BAND_ALPHA = 0.2
NOTE_WIDTH = 100
"""Characters per line of a panel's flag note, which stays within the panel's width."""


def _period_strip(ax: Axes, result: xr.Dataset) -> None:
    """The Enlightenment Period [0, mean t_50] as a strip along the bottom of ``ax``."""
    t50 = result["t_50"].values
    if np.isfinite(t50).any():
        ax.axvspan(
            0,
            float(np.nanmean(t50)),
            ymin=0,
            ymax=PERIOD_STRIP,
            color=PERIOD_COLOR,
            alpha=0.8,
            linewidth=0,
            zorder=4,
            gid="period",
        )


def _order_parameter_panel(ax: Axes, result: xr.Dataset, name: str, index: int) -> None:
    """psi of every run, both fits, t_c and its interval, the flags of the fit."""
    row = result.sel(order_parameter=name)
    t = result["t"].values
    tint = color(index)
    for run in range(result.sizes["run"]):
        values = row["psi"].isel(run=run).values
        finite = np.isfinite(values)
        ax.plot(
            t[finite],
            values[finite],
            color=tint,
            alpha=0.45,
            linewidth=0.7,
            marker="." if finite.sum() < 300 else None,
            markersize=2.5,
            label="ψ per run" if run == 0 else None,
            zorder=2,
        )
    fits = row["psi_fit"]
    ax.plot(t, fits.sel(model="logistic").values, color="0.1", linewidth=1.3, label="logistic fit", zorder=3)
    ax.plot(t, fits.sel(model="stretched_exp").values, color=GREY, linestyle="--", label="stretched exp.", zorder=3)
    flags = [flag for flag in FLAGS if bool(row["flags"].sel(flag=flag))]
    t_c, (low, high) = float(row["t_c"]), row["t_c_interval"].values.tolist()
    if np.isfinite([low, high]).all():
        ax.axvspan(
            low,
            high,
            facecolor=tint,
            alpha=BAND_ALPHA,
            hatch="///" if flags else None,
            edgecolor=tint if flags else "none",
            linewidth=0,
            zorder=1,
            label=f"t_c {result.attrs['level']:.0%} interval",
            gid="t_c_interval",
        )
    if np.isfinite(t_c):
        ax.axvline(t_c, color=tint, linewidth=1.2, linestyle="--" if flags else "-", zorder=3, gid="t_c")
    if flags:
        note(ax, textwrap.fill("flags: " + "; ".join(FLAGS[flag] for flag in flags), NOTE_WIDTH))
    _period_strip(ax, result)
    ax.set_ylabel(f"ψ {name}")
    ax.set_title(
        f"({chr(97 + index)}) {name}: t_c = {fmt(t_c)} [{fmt(low)}, {fmt(high)}], "
        f"R² = {fmt(float(row['r2'].sel(model='logistic')), 3)}, AIC prefers {row['best_model'].values}",
        loc="left",
    )


def phase_figure(result: xr.Dataset, *, log_time: bool = False) -> Figure:
    """The figure of an :func:`analyses.phase.analyse_phase` result (module docstring); ``log_time`` puts the
    step axis on a symmetric log scale (linear below one step)."""
    names = result["order_parameter"].values.tolist()
    runs = result.sizes["run"]
    t = result["t"].values
    with styled():
        fig, axes = new_figure(2, PANEL_HEIGHT * (len(names) + 2), nrows=len(names) + 2, sharex=True)
        for index, name in enumerate(names):
            _order_parameter_panel(axes[index], result, name, index)
        handles, labels = axes[0].get_legend_handles_labels()
        if np.isfinite(result["t_50"].values).any():
            handles.append(Patch(color=PERIOD_COLOR, alpha=0.8))
            labels.append("Enlightenment Period [0, t_50]")
        fig.legend(handles, labels, loc="outside upper center", ncols=len(handles), fontsize=6)
        ax = axes[len(names)]
        for index, name in enumerate(names):
            chi = result["chi"].sel(order_parameter=name).values
            finite = np.isfinite(chi)
            ax.plot(t[finite], chi[finite], color=color(index), label=name)
            peak = float(result["chi_peak"].sel(order_parameter=name))
            if np.isfinite(peak):
                ax.axvline(peak, color=color(index), linestyle=":", linewidth=1.0)
        _period_strip(ax, result)
        ax.set_ylabel("χ = Var ψ")
        ax.set_title(
            f"({chr(97 + len(names))}) susceptibility: variance of ψ across "
            f"{'runs' if runs > 1 else 'bootstrap resamples of the fit'} (dotted: peak)",
            loc="left",
        )
        ax.legend(loc="best", fontsize=6, ncols=len(names))
        ax = axes[-1]
        ax.set_title(f"({chr(98 + len(names))}) Fisher trace (labels sampled from the model)", loc="left")
        ax.set_ylabel("tr F")
        if "fisher_trace" in result.variables:
            for run in range(runs):
                values = result["fisher_trace"].isel(run=run).values
                finite = np.isfinite(values)
                ax.plot(t[finite], values[finite], color=color(0), alpha=0.8, marker=".", markersize=2.5)
            if (result["fisher_trace"].values > 0).any():
                ax.set_yscale("log")
        else:
            note(ax, "fisher_trace not recorded (record with the Fisher probe)")
        _period_strip(ax, result)
        axes[-1].set_xlabel("optimizer step" + (" (symmetric log scale)" if log_time else ""))
        if log_time:
            axes[-1].set_xscale("symlog", linthresh=1.0)
        axes[-1].set_xlim(0, max(float(t.max()), 1.0))
    return fig


def caption(result: xr.Dataset) -> Caption:
    """What the figure of ``result`` shows, with n (runs), the interval of t_c, its flags and whether it is partial."""
    runs = result.sizes["run"]
    flagged = []
    for name in result["order_parameter"].values.tolist():
        flags = [FLAGS[flag] for flag in FLAGS if bool(result["flags"].sel(order_parameter=name, flag=flag))]
        if flags:
            flagged.append(f"{name}: {', '.join(flags)}")
    described = "; ".join(f"{name}: {ORDER_PARAMETERS[name]}" for name in result["order_parameter"].values.tolist())
    text = (
        f"Order parameters ψ(t) ({described}) with the logistic (solid) and stretched-exponential "
        "(dashed) fits; vertical line: the logistic t_c, band: its interval; bottom strip: Enlightenment Period "
        f"[0, t_50] (mean over runs); then the susceptibility χ, the variance of ψ across "
        f"{'runs' if runs > 1 else 'bootstrap resamples of the fit'}, and the Fisher trace. "
        + (f"Flagged (dashed t_c, hatched band): {'; '.join(flagged)}" if flagged else "No fit flagged")
    )
    interval = (
        f"{result.attrs['level']:.0%} percentile bootstrap interval of t_c, {result.attrs['n_boot']} resamples "
        f"({result.attrs['bootstrap']})"
    )
    return Caption(text, n=runs if runs > 1 else None, interval=interval, partial=bool(result.attrs["partial"]))


def plot_phase(result: xr.Dataset, stem: str | os.PathLike[str], *, log_time: bool = False) -> tuple[Path, Path]:
    """Write the figure of ``result`` to ``<stem>.png``/``.pdf`` with its caption; returns (PNG, PDF)."""
    return save(phase_figure(result, log_time=log_time), stem, caption(result))


def supports(run_dir: Path) -> bool:
    """A run that recorded training accuracy (the one order parameter the analysis needs) and, in ``meta.json``,
    its class count: a run whose Recorder never saw an output has neither."""
    return recorded(run_dir, "accuracy") and meta_num_classes(run_dir) is not None


@register_figure("phase", "run", supports)
def draw(run_dir: Path, stem: Path) -> tuple[Path, Path]:
    """The phase figure of one run (200 bootstrap resamples), at ``<stem>.png``/``.pdf``."""
    return plot_phase(analyse_phase(open_run(run_dir)), stem)


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m figures.phase RUN_DIR [RUN_DIR ...]``: print the summary, write the figure; exit status."""
    parser = argument_parser("python -m figures.phase", "Draw the phase-transition figure of one run or of seeds.")
    parser.add_argument("--log-time", action="store_true", help="symmetric-log step axis")
    parser.add_argument("--out", type=Path, default=None, help="figure path stem (default: RUN_DIR/phase)")
    try:
        args = parser.parse_args(argv)
        result = analyse_arguments(args)
        png, pdf = plot_phase(result, args.out or args.run_dirs[0] / "phase", log_time=args.log_time)
    except ConfigError as err:
        fail(flag_message(err, FLAG_NAMES))
        return USAGE_ERROR
    except (DynamicsError, OSError) as err:
        fail(err)
        return USAGE_ERROR
    print(result.attrs["summary"])
    print(f"phase figure         {png.resolve()}\n                     {pdf.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
