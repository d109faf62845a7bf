"""One look for every figure: font, colour-blind-safe palette, column sizes, captions and the partial-run mark.

Runs still being written are found by :func:`dynamics.store.still_running` (which warns); a figure drawn
from them passes ``Caption(partial=True)`` and is stamped PARTIAL.

Every figure module builds its figure with :func:`new_figure` (a pyplot-free Agg figure, so nothing is
registered with pyplot and no display is needed) and writes it with :func:`save`, which writes a vector PDF
and a 300-dpi PNG with the caption in both files' metadata and beside them as ``<stem>.txt``. A caption
states what is drawn, over how many runs or seeds (n) and which interval, so that a figure copied out of
its folder still says what its bands mean.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#D55E00",  # vermillion
    "#CC79A7",  # reddish purple
    "#56B4E9",  # sky blue
    "#F0E442",  # yellow
    "#000000",  # black
)
"""Okabe-Ito colours (distinguishable under the common colour-vision deficiencies), in order of use."""
GREY = "0.45"
"""Secondary marks: raw curves under smoothed ones, reference lines."""
PERIOD_COLOR = "#E69F00"
"""Shade of the Enlightenment Period in every figure."""
PARTIAL_COLOR = "#D55E00"

WIDTHS: dict[int, float] = {1: 3.5, 2: 7.2}
"""Figure widths in inches: one column and two columns of a two-column paper."""
DPI = 300
FONT_FAMILY = "DejaVu Sans"
"""Shipped with matplotlib, so every machine draws the same glyphs (Greek letters and subscripts included)."""

RC: dict[str, Any] = {
    "font.family": FONT_FAMILY,
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "lines.markersize": 3.5,
    "legend.frameon": False,
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
}
"""Applied while a figure is built and saved (:func:`styled`), never to the global rcParams."""


@dataclass(frozen=True)
class Caption:
    """What a figure shows: ``text`` in words, ``n`` (runs or seeds behind each mark, None for one run) and the
    ``interval`` its bands or bars show (e.g. "95% t-interval over seeds"; None when it shows none)."""

    text: str
    n: int | None = None
    interval: str | None = None
    partial: bool = False
    """True when some runs drawn were still running: the figure shows part of their training."""

    def __str__(self) -> str:
        parts = [self.text.rstrip(".") + "."]
        if self.n is not None:
            parts.append(f"n = {self.n}.")
        if self.interval:
            parts.append(f"Bands/bars: {self.interval}.")
        if self.partial:
            parts.append("PARTIAL: some runs were still running when this was drawn.")
        return " ".join(parts)


@contextmanager
def styled() -> Iterator[None]:
    """The project's rcParams for the duration of the block (figure building and saving)."""
    with rc_context(RC):
        yield


def new_figure(
    columns: Literal[1, 2] = 2,
    height: float = 2.6,
    nrows: int = 1,
    ncols: int = 1,
    **subplots: Any,
) -> tuple[Figure, Any]:
    """A pyplot-free figure ``columns`` wide and ``height`` inches high with an ``nrows`` x ``ncols`` grid of axes
    (``subplots`` go to ``Figure.subplots``; ``squeeze`` as there). Build it inside :func:`styled`."""
    fig = Figure(figsize=(WIDTHS[columns], height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, **subplots)


def color(index: int) -> str:
    """The ``index``-th palette colour (cycling)."""
    return PALETTE[index % len(PALETTE)]


def colors_for(names: Sequence[str]) -> dict[str, str]:
    """A fixed colour per name, in the order given (conditions, layers)."""
    return {name: color(i) for i, name in enumerate(names)}


def mark_partial(fig: Figure) -> None:
    """Stamp ``PARTIAL`` across the figure, faint (a draft's watermark): some runs drawn were still running. It
    takes no room from the layout, so it moves and covers nothing; the caption says the same in words."""
    fig.text(
        0.5,
        0.5,
        "PARTIAL: runs still running",
        ha="center",
        va="center",
        rotation=25,
        fontsize=3.0 * fig.get_figwidth(),
        fontweight="bold",
        color=PARTIAL_COLOR,
        alpha=0.2,
        zorder=100,
        gid="partial",
    )


def note(ax: Axes, text: str) -> None:
    """A short grey note inside an axes (a flag, a missing variable), top left, above the data."""
    ax.text(
        0.02,
        0.97,
        text,
        transform=ax.transAxes,
        ha="left",
        va="top",
        fontsize=6.5,
        color="0.25",
        bbox={"boxstyle": "round,pad=0.25", "facecolor": "white", "edgecolor": "0.7", "alpha": 0.85},
        zorder=10,
    )


def shade_period(ax: Axes, end_step: float, *, start: float = 0.0, ended: bool = True) -> None:
    """Shade the Enlightenment Period ``[start, end_step]`` (in the axes' x units) behind the data, with a line at
    its end when it ``ended`` (a period still going on is shaded up to ``end_step``, the last step shown)."""
    ax.axvspan(start, end_step, color=PERIOD_COLOR, alpha=0.18, linewidth=0, zorder=0, gid="period")
    if ended:
        ax.axvline(end_step, color=PERIOD_COLOR, linewidth=1.0, zorder=0.5)


def log_axis(ax: Axes, *arrays: Any, axis: Literal["x", "y"] = "y") -> bool:
    """Log scale on ``axis`` with plain-number ticks ("0.2", not 2x10^-1) unless a value of ``arrays`` (all drawn
    values) is negative or none is positive; minor ticks are labelled when few decades are shown. Returns whether
    the scale is now logarithmic."""
    values = np.concatenate([np.ravel(np.asarray(a, dtype=np.float64)) for a in arrays]) if arrays else np.zeros(0)
    finite = values[np.isfinite(values)]
    positive = finite[finite > 0]
    if not positive.size or (finite < 0).any():
        return False
    decades = float(np.log10(positive.max() / positive.min()))

    def minor(value: float, _: int) -> str:
        leading = round(value / 10 ** np.floor(np.log10(value) + 1e-9))
        return f"{value:g}" if decades < 0.5 or (decades < 2 and leading in (2, 5)) else ""

    scale = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    scale.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    scale.set_minor_formatter(FuncFormatter(minor))
    return True


LINEAR_STEPS = 10.0
"""Steps drawn on a linear scale before a log-time axis turns logarithmic (step 0 stays visible)."""


def step_axis(ax: Axes, last_step: int, *, log_time: bool = True, label: bool = True) -> None:
    """The optimizer-step x axis from 0 to ``last_step``: symmetric-log (linear up to :data:`LINEAR_STEPS`, so an
    Enlightenment Period of a few percent of training is as wide as the rest) or linear."""
    if log_time:
        ax.set_xscale("symlog", linthresh=LINEAR_STEPS, linscale=0.5)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.set_xlim(0, max(last_step, 1))
    if label:
        ax.set_xlabel("optimizer step (log scale above 10)" if log_time else "optimizer step")


def save(fig: Figure, stem: str | os.PathLike[str], caption: Caption) -> tuple[Path, Path]:
    """Write ``<stem>.pdf`` (vector) and ``<stem>.png`` (300 dpi) with ``caption`` in their metadata, and the
    caption as ``<stem>.txt``; a partial caption also stamps the figure. Returns (PNG, PDF); the folder is
    created. The figure is cleared afterwards (it is not reused)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf, txt = Path(f"{stem}.png"), Path(f"{stem}.pdf"), Path(f"{stem}.txt")
    text = str(caption)
    if caption.partial:
        mark_partial(fig)
    keywords = [f"n={caption.n}" if caption.n is not None else "n=1 run", f"interval={caption.interval or 'none'}"]
    with styled():
        fig.savefig(png, dpi=DPI, metadata={"Title": stem.name, "Description": text, "Keywords": ", ".join(keywords)})
        fig.savefig(pdf, metadata={"Title": stem.name, "Subject": text, "Keywords": ", ".join(keywords)})
    txt.write_text(text + "\n", encoding="utf-8")
    fig.clear()
    return png, pdf
