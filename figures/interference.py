"""Gradient interference and activation revival, over training (one run recorded with ``--interference``) and over
scale (the interference scale study, :mod:`analyses.interference`).

*Over training* (``interference``): at every measurement of the probe, the whole-model interference ratio r
coloured by how strongly the probe's batch was mixed (r follows min(lambda, 1 - lambda) closely, so the
strongly mixed measurements are joined by a line), the revival fraction per layer, revival against r, and
cos(g_clean, g_mixed); the Enlightenment Period shaded.

*Over scale* (``interference_scale``): interference ratio and revival averaged over the period against
training-set size and CNN width, and the final test-accuracy difference Mixup Pause - always-Mixup per cell
with its t-interval over seeds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm, TwoSlopeNorm
from matplotlib.figure import Figure

from analyses.interference import STRONG_MIX, SUMMARY_NAME, summarise
from analyses.overview import describe_run, run_period
from dynamics.store import open_run, still_running
from figures.registry import recorded, register_figure
from figures.style import Caption, color, new_figure, note, save, shade_period, step_axis, styled

RUN_NAME = "interference"
STUDY_NAME = "interference_scale"
RUN_VARIABLES = ("interference_ratio_model", "revival_frac")
"""What a run needs for the figure over training (``--interference``)."""


def _measured(ds: xr.Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of a per-step variable at its measurements (NaN between them is left out)."""
    values = np.asarray(ds[name].values, dtype=np.float64)
    finite = np.isfinite(values)
    return np.asarray(ds["step"].values)[finite], values[finite]


def _panel_ratio(fig: Figure, ax: Axes, ds: xr.Dataset) -> None:
    ax.set_title("a  interference ratio r (whole model)", loc="left")
    ax.set_ylabel("r = |g_mix ⊥ g_clean| / |g_mix|")
    steps, ratio = _measured(ds, "interference_ratio_model")
    if not steps.size:
        note(ax, "no interference measurement yet")
        return
    if "mix_strength" in ds.variables:
        strength = np.asarray(ds["mix_strength"].values, dtype=np.float64)[np.isfinite(ds["interference_ratio_model"])]
        points = ax.scatter(
            steps, ratio, c=strength, cmap="viridis", vmin=0, vmax=0.5, s=8, zorder=3, gid="interference_ratio_model"
        )
        fig.colorbar(points, ax=ax, label="mixing strength min(λ, 1−λ)")
        strong = strength >= STRONG_MIX
        ax.plot(steps[strong], ratio[strong], color=color(7), linewidth=0.8, label=f"strength ≥ {STRONG_MIX:g}")
        ax.legend(loc="lower right", frameon=True, framealpha=0.8)
    else:
        ax.plot(steps, ratio, "o-", markersize=2, color=color(0), gid="interference_ratio_model")
    ax.set_ylim(-0.02, 1.02)


def _panel_revival(ax: Axes, ds: xr.Dataset) -> None:
    ax.set_title("b  activation revival per layer", loc="left")
    ax.set_ylabel("revival fraction")
    revival = ds["revival_frac"].transpose("step", "layer")
    values = np.asarray(revival.values, dtype=np.float64)
    rows = np.isfinite(np.asarray(ds["interference_ratio_model"].values, dtype=np.float64))  # the measurements
    steps = np.asarray(ds["step"].values)[rows]  # NaN where no unit was flat for every clean sample
    for index, layer in enumerate(revival["layer"].values):
        ax.plot(
            steps,
            values[rows, index],
            "o-",
            markersize=2,
            color=color((0, 2, 3, 4, 5)[index % 5]),
            label=str(layer),
            gid=f"revival_frac/{layer}",
        )
    ax.legend(loc="upper right", fontsize=6, frameon=True, framealpha=0.8)


def _panel_against(fig: Figure, ax: Axes, ds: xr.Dataset) -> None:
    ax.set_title("c  revival against interference", loc="left")
    ratio = np.asarray(ds["interference_ratio_model"].values, dtype=np.float64)
    layers = np.asarray(ds["revival_frac"].transpose("step", "layer").values, dtype=np.float64)
    counts = np.isfinite(layers).sum(1)
    revival = np.where(counts > 0, np.nansum(layers, 1) / np.maximum(counts, 1), np.nan)
    both = np.isfinite(ratio) & np.isfinite(revival)
    steps = np.asarray(ds["step"].values)[both]
    if steps.size:
        points = ax.scatter(
            ratio[both], revival[both], c=steps + 1, cmap="magma", norm=LogNorm(1, max(steps.max() + 1, 2)), s=8
        )
        fig.colorbar(points, ax=ax, label="step + 1")
    ax.set_xlabel("interference ratio r")
    ax.set_ylabel("revival fraction (layer mean)")


def _panel_cos(ax: Axes, ds: xr.Dataset) -> None:
    ax.set_title("d  cos(g_clean, g_mix) (whole model)", loc="left")
    if "interference_cos_model" not in ds.variables:
        note(ax, "interference_cos_model not recorded")
        return
    steps, cos = _measured(ds, "interference_cos_model")
    ax.plot(steps, cos, "o-", markersize=2, color=color(0), label="batch gradients", gid="interference_cos_model")
    if "sample_align_cos" in ds.variables:
        steps, align = _measured(ds, "sample_align_cos")
        ax.plot(steps, align, "s--", markersize=2, color=color(3), label="per sample, mean", gid="sample_align_cos")
    ax.legend(loc="lower right", fontsize=6)
    ax.set_ylim(-1.02, 1.02)
    ax.set_ylabel("cosine")


def interference_figure(ds: xr.Dataset, *, log_time: bool = True) -> Figure:
    """Interference and revival over the training of run ``ds`` (recorded with ``--interference``)."""
    period = run_period(ds)
    last_step = int(ds["step"].values[-1]) if ds.sizes.get("step", 0) else 0
    with styled():
        fig, axes = new_figure(2, height=4.6, nrows=2, ncols=2)
        _panel_ratio(fig, axes[0, 0], ds)
        _panel_revival(axes[0, 1], ds)
        _panel_against(fig, axes[1, 0], ds)
        _panel_cos(axes[1, 1], ds)
        for ax in (axes[0, 0], axes[0, 1], axes[1, 1]):
            step_axis(ax, last_step, log_time=log_time)
            if period is not None and period.end_step is not None:
                shade_period(ax, period.end_step)
        every = (ds.attrs.get("config") or {}).get("interference_every")
        shaded = f"shaded: Enlightenment Period, steps 0–{period.end_step}" if period and period.reached else ""
        fig.suptitle(
            f"{describe_run(ds)}: clean vs mixed gradients"
            + (f", measured every {every} steps" if every else "")
            + (f"\n{shaded}" if shaded else ""),
            fontsize=8,
        )
    return fig


@register_figure(RUN_NAME, "run", lambda run: recorded(run, *RUN_VARIABLES))
def draw_interference(run_dir: Path, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Draw interference and revival over the training of the run in ``run_dir`` to ``<stem>.png/.pdf``."""
    partial = bool(still_running([run_dir], what="figures"))
    ds = open_run(run_dir)
    figure = interference_figure(ds)
    caption = Caption(
        f"Gradient interference of {describe_run(ds)} at every measurement of the interference probe (the step's "
        "clean batch and its mixed version, after the update): (a) whole-model interference ratio r, coloured by "
        f"the mixing strength min(λ, 1−λ) (line: measurements with strength ≥ {STRONG_MIX:g}); (b) fraction of the "
        "units flat for every clean sample that some mixed sample revives, per layer; (c) revival against r; "
        "(d) cosine of the clean and mixed gradients. Step axis logarithmic above step 10",
        partial=partial,
    )
    return save(figure, stem, caption)


# ------------------------------------------------------------------------------------------------ over scale


def _lines(ax: Axes, summary: dict[str, Any], x_key: str, hue_key: str, y_key: str, ylabel: str) -> None:
    """Per value of ``hue_key``, the cells' mean ``y_key`` against ``x_key`` (log x) and each seed as a dot."""
    cells, runs = summary["cells"], summary["runs"]
    hues = sorted({c[hue_key] for c in cells})
    for index, hue in enumerate(hues):
        row = sorted((c for c in cells if c[hue_key] == hue), key=lambda c: c[x_key])
        ax.plot(
            [c[x_key] for c in row],
            [c[y_key] for c in row],
            "o-",
            color=color(index),
            label=f"{hue_key} {hue}",
            gid=f"{y_key}/{hue_key}={hue}",
        )
        seeds = [r for r in runs if r[hue_key] == hue]
        shift = 1.0 + 0.03 * (index - (len(hues) - 1) / 2)  # side by side on the log axis
        ax.scatter([r[x_key] * shift for r in seeds], [r[y_key] for r in seeds], color=color(index), s=6, alpha=0.5)
    ticks = sorted({c[x_key] for c in cells})
    ax.set_xscale("log")
    ax.set_xticks(ticks, labels=[f"{v:g}" for v in ticks])
    ax.minorticks_off()
    ax.set_xlabel("training-set size" if x_key == "size" else "CNN width (channels)")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=6)


def _heat_map(fig: Figure, ax: Axes, cells: list[dict[str, Any]]) -> None:
    """Accuracy difference (Pause - Mixup) per size x width, annotated mean +- CI, significant cells starred."""
    sizes = sorted({c["size"] for c in cells})
    widths = sorted({c["width"] for c in cells})
    grid = np.full((len(sizes), len(widths)), np.nan)
    for c in cells:
        grid[sizes.index(c["size"]), widths.index(c["width"])] = 100 * c["accuracy_diff"]
    limit = max(float(np.nanmax(np.abs(grid))) if np.isfinite(grid).any() else 0.0, 1e-3)
    image = ax.imshow(grid, cmap="RdBu", norm=TwoSlopeNorm(0.0, -limit, limit), origin="lower", aspect="auto")
    image.set_gid("accuracy_diff")
    for c in cells:
        i, j = sizes.index(c["size"]), widths.index(c["width"])
        half = f"\n±{100 * c['accuracy_diff_ci']:.1f}" if np.isfinite(c["accuracy_diff_ci"]) else ""
        star = "*" if c["significant"] else ""
        ax.text(
            j,
            i,
            f"{100 * c['accuracy_diff']:+.1f}{star}{half}",
            ha="center",
            va="center",
            fontsize=6,
            fontweight="bold" if star else "normal",
            color="white" if abs(grid[i, j]) > 0.6 * limit else "black",
        )
    ax.set_xticks(range(len(widths)), labels=[str(w) for w in widths])
    ax.set_yticks(range(len(sizes)), labels=[str(s) for s in sizes])
    ax.set_xlabel("CNN width (channels)")
    ax.set_ylabel("training-set size")
    ax.grid(False)
    fig.colorbar(image, ax=ax, label="test accuracy, Pause − Mixup (points)")


def study_figure(summary: dict[str, Any]) -> Figure:
    """Interference and revival over the Enlightenment Period against size and width, and the accuracy map, from
    :func:`analyses.interference.summarise`."""
    level = int(100 * summary["level"])
    with styled():
        fig, axes = new_figure(2, height=5.2, nrows=2, ncols=2)
        ratio = "interference ratio r\n(period mean, strong mixing)"
        _lines(axes[0, 0], summary, "size", "width", "interference", ratio)
        _lines(axes[0, 1], summary, "width", "size", "interference", ratio)
        _lines(axes[1, 0], summary, "size", "width", "revival", "revival fraction\n(period mean)")
        _heat_map(fig, axes[1, 1], summary["cells"])
        titles = (
            "a  interference vs size",
            "b  interference vs width",
            "c  activation revival vs size",
            f"d  accuracy difference, mean ± {level}% t-CI (* excludes 0)",
        )
        for ax, title in zip(axes.flat, titles, strict=True):
            ax.set_title(title, loc="left")
        fig.suptitle(f"MNIST-1D CNN, always-Mixup vs Mixup Pause\n{summary['conclusion']}", fontsize=7, wrap=True)
    return fig


def study_caption(summary: dict[str, Any], *, partial: bool = False) -> Caption:
    """The caption of :func:`study_figure`: n is the smallest number of seeds of a cell."""
    seeds = sorted({c["seeds"] for c in summary["cells"]})
    return Caption(
        "Interference scale study, always-Mixup vs Mixup Pause on MNIST-1D CNNs: (a, b) interference ratio of "
        f"strongly mixed batches (min(λ, 1−λ) ≥ {STRONG_MIX:g}) averaged over the Enlightenment Period against "
        "training-set size and width, (c) revival fraction likewise (lines: mean over seeds; dots: single seeds), "
        f"(d) final test-accuracy difference Pause − Mixup per cell ({'/'.join(map(str, seeds))} seeds per cell). "
        + summary["conclusion"],
        n=seeds[0] if seeds else None,
        interval=f"{int(100 * summary['level'])}% Student-t interval over seeds of the paired accuracy difference (d)",
        partial=partial,
    )


@register_figure(STUDY_NAME, "study", lambda folder: (folder / f"{SUMMARY_NAME}.json").is_file())
def draw_study(folder: Path, stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Summarise the finished study runs under ``folder`` again and draw them to ``<stem>.png/.pdf`` (partial
    when some of its runs are still running: they are left out)."""
    running = still_running([meta.parent for meta in sorted(Path(folder).rglob("meta.json"))], what="figures")
    summary = summarise(folder)
    return save(study_figure(summary), stem, study_caption(summary, partial=bool(running)))
