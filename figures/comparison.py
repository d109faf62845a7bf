"""Strategy comparison over seeds: every seed's value per condition and the paired differences against the baseline.

Drawn from a sweep folder (``python -m dynamics.sweep SWEEP.toml``) with at least two conditions and two seeds.
Every number comes from :mod:`analyses.compare`: the finished runs' values by seed (:func:`~analyses.compare.
load_runs`, :func:`~analyses.compare.seed_values`) and :func:`~analyses.compare.compare`'s means, Student-t
intervals, paired differences and Holm-corrected paired-t p-values. Per metric (``final_test_accuracy`` by
default: the last recorded ``val_accuracy``; accuracies in percent) two panels:

- *values*: each seed a point per condition, beside it the mean with its 95% Student-t interval over seeds;
- *paired differences*: condition - baseline for every seed both ran, the mean difference with its 95% t-interval,
  a line at 0 and the verdict: ``higher`` / ``lower than baseline`` when the interval excludes 0 and the
  Holm-corrected paired-t p is below alpha (0.05), else ``unresolved at this n``
  (:func:`analyses.claims.verdict`, in the direction of the observed difference).

The baseline is the one passed, else the first condition of the sweep (the experiments' sweep files list their
baseline first). Runs not finished are left out by :mod:`analyses.compare`; a sweep with runs still running is
drawn stamped PARTIAL.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory

from analyses.claims import verdict
from analyses.compare import FINAL, compare, is_accuracy, load_runs, read_sweep, seed_values
from dynamics.errors import ConfigError, DynamicsError
from dynamics.store import run_state
from figures.registry import register_figure
from figures.style import GREY, Caption, colors_for, new_figure, note, save, styled

METRICS: tuple[str, ...] = (FINAL,)
"""What :func:`draw` compares: the final test accuracy."""
JITTER = 0.12
"""Half the spread of a condition's seed points along x."""
MEAN_OFFSET = 0.3
"""Where the mean and its interval sit, right of the condition's points."""


@dataclass(frozen=True)
class Comparison:
    """What :func:`comparison_figure` draws: :func:`analyses.compare.compare`'s rows and every group's values."""

    frame: pd.DataFrame
    values: dict[str, dict[str, dict[int, float]]]
    """metric -> group label -> seed -> value (the finite values of finished runs, as ``compare`` uses them)."""


def default_baseline(sweep_dir: str | os.PathLike[str]) -> str:
    """The first condition of the sweep in ``sweep_dir`` (its first point's group when it has no conditions)."""
    first = read_sweep(sweep_dir)[1][0]
    return first.condition if first.condition is not None else first.label


def load_comparison(
    sweep_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    baseline: str | None = None,
    metrics: str | Sequence[str] = METRICS,
) -> Comparison:
    """The comparison of the sweeps' conditions with ``baseline`` (default: :func:`default_baseline` of the first
    folder) on ``metrics``; ConfigError for what :func:`analyses.compare.compare` refuses."""
    dirs = [sweep_dirs] if isinstance(sweep_dirs, str | os.PathLike) else list(sweep_dirs)
    if not dirs:
        raise ConfigError("sweep_dirs is empty; pass at least one sweep folder", key="sweep_dirs")
    frame = compare(dirs, baseline if baseline is not None else default_baseline(dirs[0]), metrics)
    names = list(dict.fromkeys(frame["metric"]))
    groups, _ = load_runs(dirs, names)
    values = {metric: {label: seed_values(runs, metric) for label, runs in groups.items()} for metric in names}
    return Comparison(frame, values)


def difference_verdict(diff_mean: float, diff_low: float, diff_high: float, p_holm: float, alpha: float) -> str:
    """``higher than baseline`` / ``lower than baseline`` when the interval excludes 0 and the Holm-corrected p is
    below ``alpha``; else ``unresolved at this n``."""
    direction = 1 if diff_mean >= 0 else -1
    state = verdict(direction, diff_low, diff_high, p_holm, alpha)
    return f"{'higher' if direction > 0 else 'lower'} than baseline" if state == "supported" else state


def _spread(count: int) -> np.ndarray:
    return np.linspace(-JITTER, JITTER, count) if count > 1 else np.zeros(count)


def _mean_bar(ax: Axes, x: float, mean: float, low: float, high: float) -> None:
    """The mean (a black tick, gid ``mean``) and, when it exists, its interval (a black line, gid ``interval``)."""
    if math.isfinite(low) and math.isfinite(high):
        ax.vlines(x, low, high, color="black", linewidth=1.0, zorder=4, gid="interval")
    ax.plot([x], [mean], "_", color="black", markersize=9, markeredgewidth=1.5, zorder=5, gid="mean")


def _values_panel(
    ax: Axes, part: pd.DataFrame, values: Mapping[str, Mapping[int, float]], colors: Mapping[str, str], scale: float
) -> None:
    for i, row in enumerate(part.itertuples(index=False)):
        by_seed = values[row.condition]
        seeds = sorted(by_seed)
        ax.scatter(
            i + _spread(len(seeds)),
            [scale * by_seed[s] for s in seeds],
            color=colors[row.condition],
            s=14,
            alpha=0.85,
            zorder=3,
            label=row.condition,
        )
        _mean_bar(ax, i + MEAN_OFFSET, scale * row.mean, scale * row.ci_low, scale * row.ci_high)
    ax.set_xticks(
        range(len(part)),
        [f"{row.condition}{' (baseline)' if row.is_baseline else ''}\nn = {row.n}" for row in part.itertuples()],
    )
    ax.set_xlim(-0.5, len(part) - 0.5 + MEAN_OFFSET)


def _differences_panel(
    ax: Axes,
    part: pd.DataFrame,
    values: Mapping[str, Mapping[int, float]],
    colors: Mapping[str, str],
    scale: float,
    alpha: float,
) -> None:
    compared = part[part["pairs"] > 0]
    ax.axhline(0.0, color=GREY, linewidth=0.8, linestyle="--", zorder=1)
    if compared.empty:
        note(ax, "no condition shares seeds with the baseline")
        return
    above = blended_transform_factory(ax.transData, ax.transAxes)
    for j, row in enumerate(compared.itertuples(index=False)):
        mine, base = values[row.condition], values[row.baseline]
        shared = sorted(set(mine) & set(base))
        ax.scatter(
            j + _spread(len(shared)),
            [scale * (mine[s] - base[s]) for s in shared],
            color=colors[row.condition],
            s=14,
            alpha=0.85,
            zorder=3,
        )
        _mean_bar(ax, j + MEAN_OFFSET, scale * row.diff_mean, scale * row.diff_low, scale * row.diff_high)
        holm = f"Holm p = {row.p_holm:.2g}" if math.isfinite(row.p_holm) else "Holm p: -"
        ax.text(
            j + MEAN_OFFSET / 2,
            1.0,
            f"{difference_verdict(row.diff_mean, row.diff_low, row.diff_high, row.p_holm, alpha)}\n{holm}",
            transform=above,
            ha="center",
            va="bottom",
            fontsize=6,
        )
    ax.set_xticks(
        range(len(compared)), [f"{row.condition}\n- {row.baseline}\n{row.pairs} pairs" for row in compared.itertuples()]
    )
    ax.set_xlim(-0.5, len(compared) - 0.5 + MEAN_OFFSET)


def _metric_label(metric: str) -> str:
    return metric.replace("_", " ") + (" (%)" if is_accuracy(metric) else "")


def comparison_figure(data: Comparison) -> Figure:
    """Per metric, a row of two panels: values by seed with the mean and its interval per condition, and the paired
    differences against the baseline with their intervals and verdicts (module docstring)."""
    frame = data.frame
    metrics = list(dict.fromkeys(frame["metric"]))
    labels = list(dict.fromkeys(frame["condition"]))
    colors = colors_for(labels)
    alpha = float(frame.attrs.get("alpha", 0.05))
    with styled():
        fig, axes = new_figure(
            2, height=2.5 * len(metrics), nrows=len(metrics), ncols=2, squeeze=False, width_ratios=[3, 2]
        )
        for (left, right), metric in zip(axes, metrics, strict=True):
            part = frame[frame["metric"] == metric]
            scale = 100.0 if is_accuracy(metric) else 1.0
            _values_panel(left, part, data.values[metric], colors, scale)
            left.set_ylabel(_metric_label(metric))
            _differences_panel(right, part, data.values[metric], colors, scale, alpha)
            unit = " (points)" if scale == 100 else ""
            right.set_ylabel(f"paired difference{unit}")
    return fig


def comparison_caption(data: Comparison) -> Caption:
    """The caption of :func:`comparison_figure`: what is drawn, the fewest seeds of a condition and the interval."""
    frame = data.frame
    level = round(100 * float(frame.attrs.get("level", 0.95)))
    alpha = float(frame.attrs.get("alpha", 0.05))
    metrics = ", ".join(dict.fromkeys(frame["metric"]))
    text = (
        f"{metrics} of sweep(s) {', '.join(frame.attrs.get('sweeps', []))} ({frame.attrs.get('dataset', '?')}), "
        f"baseline {frame.attrs.get('baseline')}: left, each seed a point and the mean with its {level}% Student-t "
        f"interval per condition; right, paired differences condition - baseline by seed, their mean with its "
        f"{level}% t-interval and the verdict (interval excluding 0 and Holm-corrected paired-t p < {alpha:g}); "
        f"n is the fewest seeds of a condition"
    )
    return Caption(
        text,
        n=int(frame["n"].min()),
        interval=f"{level}% Student-t interval over seeds",
        partial=bool(frame.attrs.get("partial", False)),
    )


def supports(folder: Path) -> bool:
    """A sweep whose finished runs hold at least two conditions (groups) and two seeds."""
    try:
        points = [point for point in read_sweep(folder)[1] if run_state(point.run_dir) == "finished"]
    except DynamicsError:
        return False
    return len({point.label for point in points}) >= 2 and len({point.seed for point in points}) >= 2


@register_figure("comparison", "sweep", supports)
def draw(folder: Path, stem: Path) -> tuple[Path, Path]:
    """The comparison of the sweep in ``folder`` with its first condition on the final test accuracy."""
    data = load_comparison(folder)
    return save(comparison_figure(data), stem, comparison_caption(data))
