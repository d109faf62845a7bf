"""Which figures exist and what each is drawn from: ``python -m figures`` draws every figure a folder supports.

A figure module registers its drawing function with :func:`register_figure`, naming the kind of folder it
reads and a cheap test of whether a given folder has what it needs (variables in the store, conditions in a
sweep). Kinds of folders:

- ``run``: one run directory (``meta.json`` and ``data.zarr``);
- ``sweep``: a sweep folder (``sweep.json`` and one run directory per point), see :mod:`dynamics.sweep`;
- ``study``: an interference scale study (``interference_study.json``), see :mod:`analyses.interference`.

A drawing function takes the folder and the output stem (``<out>/<name>``, no suffix) and returns the files
it wrote (PNG first, then PDF), through :func:`figures.style.save`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dynamics.snapshots import GROUP as SNAPSHOT_GROUP
from dynamics.store import DATA_NAME

Kind = Literal["run", "sweep", "study"]
Draw = Callable[[Path, Path], Sequence[Path]]

MODULES: tuple[str, ...] = (
    "figures.overview",
    "figures.phase",
    "figures.interference",
    "figures.trajectory",
    "figures.comparison",
    "figures.plp",
    "figures.cyclical",
    "figures.per_sample",
    "figures.curvature",
    "figures.lmc",
)
"""The figure modules, imported by :func:`load_figures` so that their registrations run."""


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure: its file ``name`` (the output stem), the ``kind`` of folder it reads, whether a
    folder ``supports`` it, and ``draw``."""

    name: str
    kind: Kind
    supports: Callable[[Path], bool]
    draw: Draw


FIGURES: dict[str, FigureSpec] = {}
FIGURE_DIR = "figures"
"""The folder inside a run, sweep or study folder that ``python -m figures`` writes its figures into."""


def register_figure(name: str, kind: Kind, supports: Callable[[Path], bool]) -> Callable[[Draw], Draw]:
    """Decorator listing a drawing function as figure ``name`` for folders of ``kind`` that ``supports`` accepts."""

    def register(draw: Draw) -> Draw:
        if name in FIGURES:
            raise ValueError(f"figure name {name!r} is registered twice; choose another")
        FIGURES[name] = FigureSpec(name, kind, supports, draw)
        return draw

    return register


def load_figures() -> dict[str, FigureSpec]:
    """Import every module in :data:`MODULES` (each registers its figures) and return the registry."""
    for module in MODULES:
        importlib.import_module(module)
    return FIGURES


def recorded(run_dir: Path, *names: str) -> bool:
    """Whether the store of run ``run_dir`` holds every variable in ``names`` (snapshot variables included): a
    look at the store's folders, cheap enough for a ``supports`` test, without opening it."""
    store = run_dir / DATA_NAME
    return all((store / name).is_dir() or (store / SNAPSHOT_GROUP / name).is_dir() for name in names)


def kind_of(folder: Path) -> Kind | None:
    """``run``, ``sweep`` or ``study`` for a folder holding one, else None."""
    if (folder / "meta.json").is_file() and (folder / "data.zarr").is_dir():
        return "run"
    if (folder / "sweep.json").is_file():
        return "sweep"
    if (folder / "interference_study.json").is_file():
        return "study"
    return None
