"""The linear-mode-connectivity figure: test error along the straight line between two children, and the error
barrier against the spawn step they were trained from.

Drawn from ``RUN/lmc.json`` (:mod:`analyses.lmc`; written by ``python -m dynamics.lmc RUN_DIR``); registered as
``lmc`` for run folders holding one. Several runs (seeds of one configuration) can be drawn together with
:func:`plot_lmc`: their curves overlay and the barrier is their mean with a 95% Student-t interval.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from analyses.lmc import barrier_by_step, has_lmc, spawns
from dynamics.store import still_running
from figures.registry import register_figure
from figures.style import GREY, Caption, color, new_figure, save, styled

BARRIER_GID = "barrier"
"""The ``gid`` of the barrier line (mean over runs), for readers of the drawn figure."""


def lmc_figure(run_dirs: Sequence[str | os.PathLike[str]]) -> Figure:
    """Two panels: (a) test error against the interpolation coefficient, one colour per spawn step, one line per
    run; (b) the error barrier against the spawn step (symmetric log axis, so step 0 shows), per run and as the
    mean over runs with its 95% t-interval."""
    runs = [spawns(run) for run in run_dirs]
    steps = sorted({spawn.step for measured in runs for spawn in measured})
    shade = {step: color(index) for index, step in enumerate(steps)}
    summary = barrier_by_step(run_dirs)
    with styled():
        fig, (curves, barriers) = new_figure(2, 2.6, ncols=2)
        for measured in runs:
            for spawn in measured:
                curves.plot(
                    spawn.alphas,
                    spawn.error,
                    color=shade[spawn.step],
                    marker="o",
                    alpha=1.0 if len(runs) == 1 else 0.5,
                    label=f"s = {spawn.step}, K = {spawn.steps}" if measured is runs[0] else None,
                )
            barriers.plot(
                [spawn.step for spawn in measured],
                [spawn.barrier for spawn in measured],
                color=GREY,
                marker=".",
                linestyle="none" if len(runs) > 1 else "-",
                alpha=0.6,
            )
        curves.set_xlabel("interpolation coefficient a: (1 − a) θ_A + a θ_B")
        curves.set_ylabel("test error")
        curves.set_title("(a) test error between the two children", loc="left")
        curves.legend(loc="best", fontsize=6)
        if len(runs) > 1:
            finite = np.isfinite(summary.low)
            barriers.fill_between(
                summary.steps[finite], summary.low[finite], summary.high[finite], color=color(0), alpha=0.2
            )
        barriers.plot(summary.steps, summary.mean, color=color(0), marker="o", gid=BARRIER_GID)
        barriers.set_xscale("symlog", linthresh=1.0)
        barriers.set_xlabel("spawn step s (symmetric log scale)")
        barriers.set_ylabel("error barrier")
        barriers.set_title("(b) instability: error barrier by spawn step", loc="left")
    return fig


def lmc_caption(run_dirs: Sequence[str | os.PathLike[str]], *, partial: bool = False) -> Caption:
    """What :func:`lmc_figure` of ``run_dirs`` shows, with n and the interval when there are several runs."""
    several = len(run_dirs) > 1
    return Caption(
        "Linear mode connectivity (Frankle et al. 2020): two children trained K steps from the run's state at "
        "spawn step s with different data orders; (a) test error of (1 - a) θ_A + a θ_B along a in [0, 1]; "
        "(b) error barrier max_a [err(a) - ((1 - a) err(0) + a err(1))] against s"
        + (" (grey: each run; blue: mean over runs)" if several else ""),
        n=len(run_dirs) if several else None,
        interval="95% Student-t interval of the mean barrier over runs" if several else None,
        partial=partial,
    )


def plot_lmc(run_dirs: Sequence[str | os.PathLike[str]], stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write the figure of ``run_dirs`` to ``<stem>.png``/``.pdf`` with its caption; returns (PNG, PDF)."""
    partial = bool(still_running(run_dirs, what="figures"))
    return save(lmc_figure(run_dirs), stem, lmc_caption(run_dirs, partial=partial))


@register_figure("lmc", "run", has_lmc)
def draw(run_dir: Path, stem: Path) -> tuple[Path, Path]:
    """The linear-mode-connectivity figure of one run, at ``<stem>.png``/``.pdf``."""
    return plot_lmc([run_dir], stem)
