"""General Cyclical Training: the schedules a run applied, and their effect over seeds in a sweep.

Two figures:

- ``cyclical`` (a run with any ``cyclical_*`` setting or ``cyclical_focal``): each schedule the run applied, as it
  recorded it at every step (:data:`SCHEDULES`: weight decay, softmax temperature, max gradient norm, batch size,
  the Mixup alpha of ``cyclical_aug``, the focal loss's eta), with the training loss and accuracy beneath (raw in
  grey, an EMA of ``tau`` steps in colour; the test accuracy at each evaluation as points);
- ``cyclical_effect`` (a sweep with a cyclical and a constant condition): test accuracy and test loss per condition
  against the epochs completed, each seed a thin line, the mean over seeds with its 95% Student-t interval as a
  band (:func:`analyses.compare.seed_curves`; seeds are aligned on the epochs all of them evaluated).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from analyses.compare import SWEEP_FILE, read_sweep, seed_curves
from analyses.enlightenment import smooth_ema
from dynamics.errors import ConfigError, DynamicsError
from dynamics.store import open_run, read_json, run_state, still_running
from figures.registry import register_figure
from figures.style import GREY, Caption, color, colors_for, new_figure, note, save, step_axis, styled

SCHEDULES: dict[str, tuple[str, str]] = {
    "cyclical_wd": ("weight_decay", "weight decay"),
    "cyclical_temperature": ("temperature", "temperature"),
    "cyclical_clip": ("clip_norm", "max grad norm"),
    "cyclical_batch_size": ("batch_size", "batch size"),
    "cyclical_aug": ("mixup_alpha", "Mixup alpha"),
    "cyclical_focal": ("focal_eta", "focal eta"),
}
"""Each cyclical setting: the variable the run records it as, and its axis label."""
EFFECT_VARIABLES: tuple[str, ...] = ("val_accuracy", "val_loss")
"""What ``cyclical_effect`` draws per condition."""
TAU = 10.0
"""EMA time constant (steps) of the training loss and accuracy."""
_LABELS = {"val_accuracy": "test accuracy", "val_loss": "test loss"}


def cyclical_settings(config: Mapping[str, Any]) -> list[str]:
    """The cyclical settings a run configuration turns on (keys of :data:`SCHEDULES`), in that order."""
    return [key for key in SCHEDULES if config.get(key) not in (None, False)]


def cyclical_figure(ds: xr.Dataset, *, tau: float = TAU) -> Figure:
    """One panel per schedule run ``ds`` (``open_run``) applied against step, then its training loss and accuracy."""
    schedules = [SCHEDULES[key] for key in cyclical_settings(ds.attrs.get("config", {}))]
    schedules = [(name, label) for name, label in schedules if name in ds.data_vars]
    if not schedules:
        raise ConfigError(
            "the run records no cyclical schedule; train with a cyclical setting, e.g. cyclical_wd='1e-4:1e-3'",
            key="cyclical_wd",
        )
    steps = np.asarray(ds["step"].values)
    with styled():
        fig, axes = new_figure(1, height=0.9 * (len(schedules) + 2) + 0.3, nrows=len(schedules) + 2, sharex=True)
        for ax, (name, label) in zip(axes, schedules, strict=False):
            ax.plot(steps, np.asarray(ds[name].values), color=color(0), drawstyle="steps-post")
            ax.set_ylabel(label)
        loss_ax, accuracy_ax = axes[-2], axes[-1]
        for ax, name, label in ((loss_ax, "loss", "training loss"), (accuracy_ax, "accuracy", "accuracy")):
            if name not in ds.data_vars:
                note(ax, f"{name} not recorded")
                continue
            values = np.asarray(ds[name].values, dtype=np.float64)
            ax.plot(steps, values, color=GREY, linewidth=0.5, alpha=0.6)
            ax.plot(steps, smooth_ema(steps, values, tau), color=color(1), label=f"training (EMA {tau:g} steps)")
            ax.set_ylabel(label)
        if "val_accuracy" in ds.data_vars:
            accuracy_ax.plot(
                ds["eval_step"].values, ds["val_accuracy"].values, "o", color=color(2), markersize=3, label="test"
            )
        if accuracy_ax.get_legend_handles_labels()[0]:
            accuracy_ax.legend(loc="best")
        step_axis(axes[-1], int(steps[-1]) if steps.size else 1, log_time=False)
        fig.align_ylabels(axes)
    return fig


def cyclical_effect_figure(curves: Mapping[str, Mapping[str, xr.Dataset]]) -> Figure:
    """One panel per variable of ``curves`` (variable -> group label -> :func:`analyses.compare.seed_curves`'s
    Dataset): each seed a thin line, the mean with its interval band, one colour per condition."""
    labels = list(dict.fromkeys(label for groups in curves.values() for label in groups))
    colors = colors_for(labels)
    with styled():
        fig, axes = new_figure(2, height=2.4, ncols=len(curves), squeeze=False)
        for ax, (variable, groups) in zip(axes[0], curves.items(), strict=True):
            for label, band in groups.items():
                dim = str(band["mean"].dims[0])
                x = band[dim].values
                ax.plot(x, band["values"].values.T, color=colors[label], linewidth=0.5, alpha=0.45)
                ax.fill_between(x, band["ci_low"].values, band["ci_high"].values, color=colors[label], alpha=0.18)
                ax.plot(x, band["mean"].values, ".-", color=colors[label], label=f"{label} (n = {band.sizes['seed']})")
                ax.set_xlabel("epochs completed" if dim == "epoch" else dim)
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel(_LABELS.get(variable, variable))
            if groups:
                ax.legend(loc="best")
    return fig


def _finished_settings(folder: Path) -> list[tuple[dict[str, Any], bool]]:
    """Each point of the sweep in ``folder``: its settings and whether its run finished."""
    manifest = read_json(folder / SWEEP_FILE)
    return [
        (dict(point.get("settings") or {}), run_state(folder / str(point.get("run_dir"))) == "finished")
        for point in manifest.get("points") or []
    ]


def supports_run(folder: Path) -> bool:
    """A run configured with a cyclical setting."""
    try:
        return bool(cyclical_settings(read_json(folder / "config.json")))
    except DynamicsError:
        return False


@register_figure("cyclical", "run", supports_run)
def draw(folder: Path, stem: Path) -> tuple[Path, Path]:
    """The schedules, loss and accuracy of the run in ``folder``."""
    ds = open_run(folder)
    config = ds.attrs.get("config", {})
    settings = ", ".join(f"{key} {config[key]}" for key in cyclical_settings(config))
    caption = Caption(
        f"{folder.name}: the cyclical schedules it applied ({settings}; factor {config.get('cyclical_factor')}), "
        f"as recorded at every step, over the training loss and accuracy (grey: per batch; coloured: EMA of "
        f"{TAU:g} steps; points: test accuracy at each evaluation)",
        partial=bool(still_running([folder], "the cyclical figure")),
    )
    return save(cyclical_figure(ds), stem, caption)


def load_effect(
    sweep_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], variables: Sequence[str] = EFFECT_VARIABLES
) -> dict[str, dict[str, xr.Dataset]]:
    """:func:`analyses.compare.seed_curves` of each of ``variables`` for the sweeps (what
    :func:`cyclical_effect_figure` draws)."""
    return {variable: seed_curves(sweep_dirs, variable) for variable in variables}


def supports_sweep(folder: Path) -> bool:
    """A sweep with finished runs of a cyclical and of a non-cyclical condition."""
    try:
        kinds = {bool(cyclical_settings(settings)) for settings, finished in _finished_settings(folder) if finished}
    except DynamicsError:
        return False
    return kinds == {True, False}


@register_figure("cyclical_effect", "sweep", supports_sweep)
def draw_effect(folder: Path, stem: Path) -> tuple[Path, Path]:
    """Test accuracy and loss per condition of the sweep in ``folder``, mean over seeds with its interval."""
    curves = load_effect(folder)
    bands = [band for groups in curves.values() for band in groups.values()]
    running = still_running([point.run_dir for point in read_sweep(folder)[1]], "the cyclical effect figure")
    level = round(100 * float(bands[0].attrs["level"]))
    caption = Caption(
        f"{folder.name}: test accuracy and test loss per condition against the epochs completed; thin lines: "
        f"each seed; line and band: the mean over seeds and its {level}% Student-t interval (seeds aligned on the "
        "epochs all evaluated; finished runs only); n is the fewest seeds of a condition",
        n=min(band.sizes["seed"] for band in bands),
        interval=f"{level}% Student-t interval over seeds",
        partial=bool(running),
    )
    return save(cyclical_effect_figure(curves), stem, caption)
