"""The overview figure of one run: loss, accuracy, per-layer gradient norms and per-layer flat-activation
fractions against the optimizer step, with the Enlightenment Period shaded in every panel.

Figures are built on a pyplot-free :class:`matplotlib.figure.Figure` with the Agg canvas, so nothing is
registered with pyplot (no figure leaks, no display needed) and the seaborn style is applied through
context managers instead of changing global rcParams.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from analyses.enlightenment import EnlightenmentPeriod, check_arguments, enlightenment_period, smooth_ema
from dynamics.errors import ConfigError

RAW_ALPHA = 0.3
"""Opacity of the raw per-batch curves drawn under their smoothed version."""
ENP_COLOR = "#E69F00"
"""Shade of the Enlightenment Period (Okabe-Ito orange, readable under the colorblind palette)."""
DPI = 150


def module_of(param: str) -> str:
    """Module owning parameter ``param``: its name without the last component (``a.b.weight`` -> ``a.b``).

    A parameter registered on the root module (no dot in its name) keeps its own name as its group.
    """
    return param.rsplit(".", 1)[0] if "." in param else param


def aggregate_by_module(grad_norm: xr.DataArray) -> xr.DataArray:
    """Per-module gradient norm: sqrt of the sum of squared per-parameter norms of each module.

    ``grad_norm`` has a ``param`` dim (e.g. ``(step, param)``); the result has ``module`` in its place, with
    modules in order of their first parameter. This is the L2 norm of the module's whole gradient, since
    the parameter tensors of a module are disjoint. A NaN in any parameter of a module makes it NaN.
    """
    if "param" not in grad_norm.dims:
        raise ConfigError(f"grad_norm needs a 'param' dim, got dims {grad_norm.dims}; pass run['grad_norm']")
    params = (
        [str(p) for p in grad_norm["param"].values]
        if "param" in grad_norm.coords
        else [str(i) for i in range(grad_norm.sizes["param"])]
    )
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(params):
        groups.setdefault(module_of(name), []).append(index)
    squared = grad_norm.astype(np.float64).drop_vars("param", errors="ignore") ** 2
    parts = [squared.isel(param=indices).sum("param", skipna=False) for indices in groups.values()]
    if parts:
        combined = xr.concat(parts, dim=xr.DataArray(list(groups), dims="module", name="module"))
    else:
        sizes = {d: n for d, n in grad_norm.sizes.items() if d != "param"}
        combined = xr.DataArray(
            np.zeros((*sizes.values(), 0)), dims=(*sizes, "module"), coords={"module": np.array([], dtype=str)}
        )
    dims = [("module" if d == "param" else d) for d in grad_norm.dims]
    result = np.sqrt(combined).transpose(*dims)
    result.name = "grad_norm_module"
    result.attrs = {
        "long_name": "gradient L2 norm per module",
        "units": grad_norm.attrs.get("units", ""),
        "description": "sqrt of the sum of squared grad_norm over the parameters of each module",
    }
    return result


def _describe_run(ds: xr.Dataset) -> str:
    """``dataset · model (width, depth, activation) · seed`` from the run's config, else the run name."""
    config = ds.attrs.get("config") or {}
    parts = []
    if isinstance(config, dict):
        if config.get("dataset"):
            parts.append(str(config["dataset"]))
        if config.get("model"):
            details = [f"{k} {config[k]}" for k in ("width", "depth") if config.get(k) is not None]
            if config.get("activation"):
                details.append(str(config["activation"]))
            parts.append(f"{config['model']} ({', '.join(details)})" if details else str(config["model"]))
        if config.get("seed") is not None:
            parts.append(f"seed {config['seed']}")
    run_dir = ds.attrs.get("run_dir")
    if run_dir:
        parts.append(Path(str(run_dir)).name)
    return " · ".join(parts) if parts else "run overview"


def _note(ax: Axes, text: str) -> None:
    """Mark a panel whose data is absent instead of failing."""
    ax.text(
        0.5,
        0.5,
        text,
        transform=ax.transAxes,
        ha="center",
        va="center",
        color="0.4",
        fontsize="medium",
        bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.8"},
    )
    ax.set_yticks([])


def _missing(ds: xr.Dataset, names: Sequence[str]) -> str | None:
    """A "not recorded" note if a variable is absent or has no finite value, else None."""
    probes = ds.attrs.get("probes")
    how = f" (probes: {', '.join(map(str, probes))})" if isinstance(probes, list | tuple) else ""
    if ds.sizes.get("step", 0) == 0:
        return "no steps recorded yet"
    for name in names:
        if name not in ds.variables:
            return f"{name} not recorded{how}"
        if ds[name].size == 0:
            return f"{name}: no steps recorded yet"
        if not np.isfinite(np.asarray(ds[name].values, dtype=np.float64)).any():
            return f"{name} not measured (NaN at every step)"
    return None


def _raw_and_smoothed(ax: Axes, steps: np.ndarray, values: np.ndarray, tau: float, color: Any, label: str) -> None:
    ax.plot(steps, values, color=color, alpha=RAW_ALPHA, linewidth=0.8)
    ax.plot(steps, smooth_ema(steps, values, tau), color=color, linewidth=1.8, label=label)


def _log_if_positive(ax: Axes, *arrays: np.ndarray) -> None:
    """Log y scale unless a value is negative; exact zeros (e.g. a frozen module's gradient) leave gaps."""
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.array([])
    positive = finite[finite > 0]
    if positive.size and not (finite < 0).any():
        ax.set_yscale("log")
        # plain numbers ("0.2", "1") instead of 2x10^-1; minor ticks labelled only when few decades are shown
        decades = float(np.log10(positive.max() / positive.min()))
        shown = (2, 5) if decades > 0.7 else tuple(range(2, 10))

        def minor(value: float, _: int) -> str:
            leading = round(value / 10 ** np.floor(np.log10(value) + 1e-9))
            return f"{value:g}" if decades < 0.5 or (decades < 2 and leading in shown) else ""

        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _legend(ax: Axes) -> None:
    """Legend outside the panel, on the right, so it never covers data."""
    handles, labels = ax.get_legend_handles_labels()
    if not handles:
        return
    ncol = 1 if len(handles) <= 10 else 2
    ax.legend(
        handles,
        labels,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        frameon=False,
        fontsize="small",
        ncol=ncol,
    )


def _per_group(ax: Axes, data: xr.DataArray, dim: str, tau: float) -> None:
    """One raw + smoothed line per label of ``dim``, colored by depth (dark = first)."""
    steps = np.asarray(data["step"].values)
    values = np.asarray(data.transpose("step", dim).values, dtype=np.float64)
    labels = [str(x) for x in data[dim].values]
    colors = colormaps["viridis"](np.linspace(0.0, 0.85, max(len(labels), 1)))
    for index, label in enumerate(labels):
        _raw_and_smoothed(ax, steps, values[:, index], tau, colors[index], label)


def _panel_loss(ax: Axes, ds: xr.Dataset, tau: float, palette: list[Any]) -> None:
    ax.set_title("(a) loss", loc="left")
    ax.set_ylabel("cross-entropy")
    note = _missing(ds, ["loss"])
    if note:
        _note(ax, note)
        return
    steps = np.asarray(ds["step"].values)
    loss = np.asarray(ds["loss"].values, dtype=np.float64)
    _raw_and_smoothed(ax, steps, loss, tau, palette[0], "train (batch)")
    arrays = [loss]
    if "val_loss" in ds.variables and ds["val_loss"].size:
        val = np.asarray(ds["val_loss"].values, dtype=np.float64)
        ax.plot(ds["eval_step"].values, val, "o-", color=palette[1], markersize=3.5, linewidth=1.2, label="validation")
        arrays.append(val)
    _log_if_positive(ax, *arrays)
    _legend(ax)


def _panel_accuracy(ax: Axes, ds: xr.Dataset, tau: float, palette: list[Any], threshold: float) -> None:
    ax.set_title("(b) accuracy", loc="left")
    ax.set_ylabel("top-1 accuracy")
    note = _missing(ds, ["accuracy"])
    if note:
        _note(ax, note)
        return
    steps = np.asarray(ds["step"].values)
    _raw_and_smoothed(ax, steps, np.asarray(ds["accuracy"].values, dtype=np.float64), tau, palette[0], "train (batch)")
    if "val_accuracy" in ds.variables and ds["val_accuracy"].size:
        ax.plot(
            ds["eval_step"].values,
            ds["val_accuracy"].values,
            "o-",
            color=palette[1],
            markersize=3.5,
            linewidth=1.2,
            label="validation",
        )
    ax.axhline(threshold, color="0.35", linestyle="--", linewidth=1.0, label=f"threshold {threshold:g}")
    ax.set_ylim(-0.02, 1.02)
    _legend(ax)


def _panel_grad(ax: Axes, ds: xr.Dataset, tau: float) -> None:
    ax.set_title("(c) gradient norm per module", loc="left")
    ax.set_ylabel("‖∇‖₂")
    note = _missing(ds, ["grad_norm"])
    if note:
        _note(ax, note)
        return
    per_module = aggregate_by_module(ds["grad_norm"])
    _per_group(ax, per_module, "module", tau)
    _log_if_positive(ax, np.asarray(per_module.values).ravel())
    _legend(ax)


def _panel_zero(ax: Axes, ds: xr.Dataset, tau: float) -> None:
    ax.set_title("(d) fraction of activations in the flat region per layer (ReLU: == 0)", loc="left")
    ax.set_ylabel("fraction")
    note = _missing(ds, ["act_zero_frac"])
    if note:
        _note(ax, note)
        return
    _per_group(ax, ds["act_zero_frac"], "layer", tau)
    ax.set_ylim(-0.02, 1.02)
    _legend(ax)


def _shade(ax: Axes, enp: EnlightenmentPeriod | None, last_step: int) -> None:
    if enp is None:
        return
    end = enp.end_step if enp.reached else last_step
    ax.axvspan(0, end, color=ENP_COLOR, alpha=0.18, linewidth=0, zorder=0)
    if enp.reached:
        ax.axvline(end, color=ENP_COLOR, linewidth=1.2, zorder=0.5)


def overview_figure(ds: xr.Dataset, *, threshold: float = 0.5, tau: float = 10.0) -> Figure:
    """The overview figure of run ``ds`` (see module docstring); curves are smoothed with the EMA of ``tau`` steps.

    The Enlightenment Period uses :func:`~analyses.enlightenment.enlightenment_period` with ``threshold``
    and ``tau``; panels whose variables were not recorded carry a note instead.
    """
    threshold, tau = check_arguments(threshold, tau)  # bad arguments raise; missing data only drops the shade
    try:
        enp: EnlightenmentPeriod | None = enlightenment_period(ds, threshold=threshold, tau=tau)
    except ConfigError:
        enp = None
    steps = np.asarray(ds["step"].values) if "step" in ds.coords else np.array([], dtype=np.int64)
    last_step = int(steps[-1]) if steps.size else 0
    if not steps.size:
        enp = None

    import seaborn as sns  # here, not at the top: it pulls in scipy.stats (~0.7 s) for two style contexts

    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85):
        palette = sns.color_palette("colorblind")
        fig = Figure(figsize=(10, 11.5), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(4, 1, sharex=True)
        _panel_loss(axes[0], ds, tau, palette)
        _panel_accuracy(axes[1], ds, tau, palette, threshold)
        _panel_grad(axes[2], ds, tau)
        _panel_zero(axes[3], ds, tau)
        for ax in axes:
            _shade(ax, enp, last_step)
        axes[-1].set_xlabel("optimizer step")
        axes[-1].set_xlim(0, max(last_step, 1))

        if not steps.size:
            enp_label = "Enlightenment Period: no steps recorded yet"
            summary = "no steps recorded yet"
        elif enp is None:
            enp_label = "Enlightenment Period: no training accuracy recorded"
            summary = "Enlightenment Period unknown (no training accuracy)"
        elif enp.reached:
            enp_label = f"Enlightenment Period (smoothed acc ≥ {threshold:.0%})"
            summary = f"Enlightenment Period: steps 0–{enp.end_step}, {enp.fraction:.1%} of the {last_step + 1} steps"
        else:
            enp_label = f"Enlightenment Period, not ended (smoothed acc < {threshold:.0%})"
            summary = f"smoothed accuracy never reached {threshold:.0%} in {last_step + 1} steps"
        key = [
            Patch(facecolor=ENP_COLOR, alpha=0.35, label=enp_label),
            Line2D([], [], color="0.3", alpha=RAW_ALPHA, linewidth=0.8, label="raw (per batch)"),
            Line2D([], [], color="0.3", linewidth=1.8, label=f"EMA, τ = {tau:g} steps"),
        ]
        fig.legend(handles=key, loc="outside lower center", ncol=3, frameon=False, fontsize="small")
        fig.suptitle(f"{_describe_run(ds)}\n{summary}", fontsize="large")
    return fig


def save_figure(fig: Figure, out_stem: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``fig`` to ``<out_stem>.png`` (DPI) and ``<out_stem>.pdf`` (vector), creating the folder; clears it."""
    stem = Path(out_stem)
    png, pdf = Path(f"{stem}.png"), Path(f"{stem}.pdf")
    stem.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=DPI)
    fig.savefig(pdf)
    fig.clear()
    return png, pdf


def plot_overview(
    ds: xr.Dataset, out_stem: str | os.PathLike[str], *, threshold: float = 0.5, tau: float = 10.0
) -> tuple[Path, Path]:
    """Write the overview figure of run ``ds`` to ``<out_stem>.png`` (150 dpi) and ``<out_stem>.pdf``.

    Returns the two paths (PNG, PDF). ``out_stem`` gets the suffixes appended (``run/overview`` ->
    ``run/overview.png``), so dots in it are kept; its folder is created if needed.
    """
    return save_figure(overview_figure(ds, threshold=threshold, tau=tau), out_stem)
