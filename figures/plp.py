"""Parameter Linear Prediction: how straight the parameter path is, and the error PLP's prediction makes on it.

Registered for runs trained with ``--plp`` that recorded the trajectory sketch (``traj_proj``: the ``default`` and
``trajectory`` probe presets) or parameter snapshots: the path PLP produced, with its predictions marked. (For any
run, the trajectory figure draws the same local linearity; :func:`plp_figure` also draws a plain run, showing the
error PLP *would* make there.) PLP records only where it predicted (``plp_applied``), not the prediction or its
error, so both panels compute the error of PLP's three-point prediction ``m23 + k s`` against where the parameters went
(``m34``), ``|m23 + k s - m34| / |m34 - m23|``, with :mod:`analyses.trajectory` (0 on a straight line at constant
speed, about 1 when the prediction is no better than standing still at ``m23``):

- *trajectory linearity* (:func:`analyses.trajectory.linearity_error`): exact, over every four consecutive
  parameter snapshots, whose spacing grows from one step to many (the scale of PLP with a coarser unit, e.g.
  epochs), for the whole model and each module; absent without four snapshots;
- *prediction error at PLP's iteration unit* (:func:`analyses.trajectory.sketch_linearity`): estimated from the
  sketch at every recorded step, pooled over a centred window of ``window`` windows, whole model and modules; the
  steps at which PLP replaced the parameters are ticked along the bottom.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from analyses.trajectory import WHOLE, linearity_error, load_trajectory, sketch_linearity
from dynamics.store import open_run, still_running
from figures.registry import recorded, register_figure
from figures.style import GREY, PARTIAL_COLOR, Caption, color, new_figure, note, save, step_axis, styled

WINDOW = 25
"""Windows the sketch estimate pools (:func:`analyses.trajectory.sketch_linearity`)."""


def _curves(ax: Axes, error: xr.DataArray, steps: np.ndarray, marker: str) -> None:
    """The whole model's error in the first colour over each module's, thin and grey."""
    for group in error["group"].values:
        if str(group) != WHOLE:
            ax.plot(steps, error.sel(group=group).values, color=GREY, linewidth=0.5, alpha=0.6)
    ax.plot(steps, error.sel(group=WHOLE).values, marker, color=color(0), label="whole model (modules grey)")
    ax.axhline(1.0, color="black", linewidth=0.7, linestyle=":", label="no better than standing still")
    values = error.values[np.isfinite(error.values)]
    if values.size and (values > 0).all():
        ax.set_yscale("log")
    step_axis(ax, int(steps.max()) if steps.size else 1)
    ax.set_ylabel("relative prediction error")


def plp_figure(ds: xr.Dataset, *, window: int = WINDOW) -> Figure:
    """Two panels from run ``ds`` (``open_run``): the snapshot linearity error and the sketch estimate of PLP's error
    at its iteration unit, with PLP's predictions ticked (module docstring)."""
    with styled():
        fig, (left, right) = new_figure(2, height=2.5, ncols=2)
        left.set_title("trajectory linearity (snapshots, exact)")
        if "snapshot" in ds.variables and ds.sizes.get("snap_step", 0) >= 4:
            error = linearity_error(load_trajectory(ds))
            _curves(left, error, error["step"].values, ".-")
            left.legend(loc="upper right")
        else:
            note(left, "fewer than four parameter snapshots (record with --snapshots)")
        right.set_title(f"PLP prediction error per iteration (sketch, window {window})")
        if "traj_proj" in ds.variables:
            error = sketch_linearity(ds, window=window)
            _curves(right, error, error["step"].values, "-")
        else:
            note(right, "no trajectory sketch (record with probes default or trajectory)")
        if "plp_applied" in ds.data_vars:
            applied = ds["step"].values[np.asarray(ds["plp_applied"].values) > 0]
            right.plot(
                applied,
                np.zeros(applied.size),
                "|",
                color=PARTIAL_COLOR,
                markersize=6,
                transform=right.get_xaxis_transform(),
                label=f"PLP predictions ({applied.size})",
                clip_on=False,
            )
        if right.get_legend_handles_labels()[0]:
            right.legend(loc="upper right")
    return fig


def supports(folder: Path) -> bool:
    """A PLP run (``plp_applied``) with the trajectory sketch or parameter snapshots."""
    return recorded(folder, "plp_applied") and (recorded(folder, "traj_proj") or recorded(folder, "snapshot"))


@register_figure("plp", "run", supports)
def draw(folder: Path, stem: Path) -> tuple[Path, Path]:
    """The PLP figure of the PLP run in ``folder``."""
    ds = open_run(folder)
    config = ds.attrs.get("config", {})
    caption = Caption(
        f"{folder.name}, trained with PLP (k = {config.get('plp_k')}, unit {config.get('plp_unit')}): relative "
        "error of PLP's three-point prediction m23 + k s against where the parameters went (m34), "
        "|m23 + k s - m34| / |m34 - m23|: left over four consecutive parameter snapshots "
        f"(exact), right at every recorded step from the trajectory sketch (estimate pooled over {WINDOW} windows); "
        "whole model coloured, modules grey; ticks: steps where PLP replaced the parameters",
        partial=bool(still_running([folder], "the PLP figure")),
    )
    return save(plp_figure(ds), stem, caption)
