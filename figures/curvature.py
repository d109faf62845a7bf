"""Curvature over training: sharpness against the edge of stability, the Hessian trace, the gradient noise scale.

Drawn from a run recorded with ``--sharpness``, ``--hessian-trace``, ``--noise-scale`` and/or
``--hessian-density`` (:mod:`dynamics.probes.sharpness`, :mod:`dynamics.probes.hessian_trace`,
:mod:`dynamics.probes.noise_scale`), one panel per family recorded, at the measured steps only (the variables
are NaN between measurements):

- *sharpness*: the top Hessian eigenvalue (``sharpness``, the further recorded eigenvalues thinner) against the
  optimizer's edge-of-stability threshold ``eos_threshold`` (2/lr for plain SGD, (2 + 2 beta)/lr - wd with
  momentum); under Adam the preconditioned sharpness ``sharpness_precond`` against its threshold
  (2 + 2 beta1)/((1 - beta1) lr), 38/lr at beta1 = 0.9;
- *Hessian trace*: Hutchinson's estimate with a band of +-1 standard error (``hessian_trace_se``);
- *noise scale*: B_simple = tr(Sigma)/|G|^2 (``noise_scale``); measurements whose |G|^2 estimate is not positive
  are left out (and counted);
- *spectral density*: the SLQ density (``hessian_density`` on ``hessian_density_grid``) at up to four measured
  steps, on a log scale.
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
from figures.style import GREY, Caption, color, new_figure, note, save, step_axis, styled

VARIABLES = ("sharpness", "hessian_trace", "noise_scale", "hessian_density")
"""The variables that give a panel each; a run with any of them gets the figure."""
TRACE_BAND = "Hessian trace band: +-1 standard error of the Hutchinson estimate"
DENSITY_CURVES = 4
"""Spectral densities drawn, at measured steps spread evenly over the run."""
DENSITY_RANGE = 1e-7
"""Lowest density drawn, relative to the highest (the log axis's floor)."""


def _values(ds: xr.Dataset, name: str) -> np.ndarray:
    return np.asarray(ds[name].transpose("step", ...).values, dtype=np.float64)


def _measured(ds: xr.Dataset, name: str) -> bool:
    return name in ds.data_vars and bool(np.isfinite(_values(ds, name)).any())


def _sharpness(ax: Axes, ds: xr.Dataset, steps: np.ndarray) -> None:
    """Top eigenvalue(s) and the threshold they are measured against (module docstring)."""
    precond = _measured(ds, "sharpness_precond")
    name = "sharpness_precond" if precond else "sharpness"
    values = _values(ds, name)
    finite = np.isfinite(values[:, 0])
    k = values.shape[1]
    labels = ["λ_max(P⁻¹H)" if precond else "λ_max(H)", "eigenvalue 2" if k == 2 else f"eigenvalues 2-{k}"]
    for i in range(k - 1, -1, -1):  # the top one last, on top
        ax.plot(
            steps[finite],
            values[finite, i],
            ".-" if i == 0 else "-",
            color=color(0),
            linewidth=1.2 if i == 0 else 0.6,
            alpha=1.0 if i == 0 else 0.5,
            label=labels[i] if i < 2 else None,
            gid=name if i == 0 else None,
        )
    if _measured(ds, "eos_threshold"):
        threshold = _values(ds, "eos_threshold")
        ok = np.isfinite(threshold)
        ax.plot(steps[ok], threshold[ok], "--", color=GREY, label="edge of stability", gid="eos_threshold")
    else:
        note(ax, "no stability threshold for this optimizer")
    ax.set_ylabel("top eigenvalue of P⁻¹H" if precond else "top Hessian eigenvalue")


def _trace(ax: Axes, ds: xr.Dataset, steps: np.ndarray) -> None:
    trace = _values(ds, "hessian_trace")
    error = _values(ds, "hessian_trace_se")
    ok = np.isfinite(trace)
    ax.fill_between(steps[ok], (trace - error)[ok], (trace + error)[ok], color=color(1), alpha=0.25, label="+-1 SE")
    ax.plot(steps[ok], trace[ok], ".-", color=color(1), label="tr H (Hutchinson)", gid="hessian_trace")
    ax.set_ylabel("Hessian trace")


def _noise(ax: Axes, ds: xr.Dataset, steps: np.ndarray) -> None:
    scale = _values(ds, "noise_scale")
    ok = np.isfinite(scale)
    positive = ok & (scale > 0)
    ax.plot(steps[positive], scale[positive], ".-", color=color(2), label="B_simple", gid="noise_scale")
    if positive.any():
        ax.set_yscale("log")
    if (ok & ~positive).any():
        note(ax, f"{int((ok & ~positive).sum())} of {int(ok.sum())} measurements with |G|^2 estimate <= 0 left out")
    ax.set_ylabel("B_simple (samples)")


def _density(ax: Axes, ds: xr.Dataset, steps: np.ndarray) -> None:
    density = _values(ds, "hessian_density")
    grid = _values(ds, "hessian_density_grid")
    measured = np.flatnonzero(np.isfinite(density).all(axis=1))
    picks = np.unique(np.linspace(0, len(measured) - 1, min(DENSITY_CURVES, len(measured))).round().astype(int))
    floor = DENSITY_RANGE * density[measured[picks]].max()
    for i, row in enumerate(measured[picks]):
        curve = np.clip(density[row], floor, None)  # the Gaussian tails underflow to 0, which a log axis drops
        ax.plot(grid[row], curve, color=color(i), label=f"step {int(steps[row])}")
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("spectral density (SLQ)")


PANELS = (
    ("sharpness", "sharpness", _sharpness),
    ("hessian_trace", "Hessian trace", _trace),
    ("noise_scale", "gradient noise scale", _noise),
    ("hessian_density", "Hessian spectral density", _density),
)
"""Each panel: the variable that decides whether it is drawn, its title and its drawing function."""


def curvature_figure(ds: xr.Dataset, log_step: bool = True) -> Figure:
    """One panel per curvature family run ``ds`` (``open_run``) recorded (module docstring); ``log_step`` draws
    the step axes on a symmetric-log scale (the probes' geometric cadence is dense early)."""
    panels = [panel for panel in PANELS if _measured(ds, panel[0])]
    if not panels:
        raise ConfigError(
            "the run records no curvature variable; train with sharpness, hessian_trace, hessian_density or "
            "noise_scale set",
            key=VARIABLES,
        )
    steps = np.asarray(ds["step"].values)
    ncols = min(2, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    with styled():
        fig, axes = new_figure(2, height=2.3 * nrows, nrows=nrows, ncols=ncols, squeeze=False)
        flat = list(axes.flat)
        for ax, (name, title, draw_panel) in zip(flat, panels, strict=False):
            draw_panel(ax, ds, steps)
            ax.set_title(title)
            if name != "hessian_density":
                step_axis(ax, int(steps[-1]) if steps.size else 1, log_time=log_step)
            ax.legend(loc="best")
        for ax in flat[len(panels) :]:
            ax.set_visible(False)
    return fig


def supports(folder: Path) -> bool:
    """A run with any curvature variable (:data:`VARIABLES`)."""
    return any(recorded(folder, name) for name in VARIABLES)


@register_figure("curvature", "run", supports)
def draw(folder: Path, stem: Path) -> tuple[Path, Path]:
    """The curvature figure of the run in ``folder``."""
    ds = open_run(folder)
    config = ds.attrs.get("config", {})
    caption = Caption(
        f"{folder.name}: curvature of the mean cross-entropy on the probe set's {config.get('probe_samples', '?')} "
        "training samples (eval mode) at geometrically spaced steps: top Hessian eigenvalue against the "
        "optimizer's edge-of-stability threshold, Hutchinson trace, gradient noise scale B_simple and SLQ spectral "
        "densities, where recorded",
        interval=TRACE_BAND if _measured(ds, "hessian_trace") else None,
        partial=bool(still_running([folder], "the curvature figure")),
    )
    return save(curvature_figure(ds), stem, caption)
