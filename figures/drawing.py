"""Drawing the registered figures of folders: which folders, which figures each supports, in how many processes.

:func:`expand` turns the folders given (runs, sweeps, studies) into the folders to draw, a sweep's runs
included; :func:`draw_all` draws every figure each supports (:func:`draw_folder` per folder, in a process pool
when more than one worker is asked for); :func:`coverage` says which figures were drawn and which not, and why.
``python -m figures`` (:mod:`figures.__main__`) is the command line around them.
"""

from __future__ import annotations

import multiprocessing
import sys
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dynamics.cli import one_line, os_error_message
from dynamics.errors import DynamicsError, StoreError
from dynamics.store import still_running
from dynamics.sweep import read_manifest
from figures.registry import FIGURE_DIR, FigureSpec, Kind, kind_of, load_figures

MARKERS = ("meta.json", "sweep.json", "interference_study.json")
"""Files that make a folder a run, a sweep or a study (see :func:`figures.registry.kind_of`)."""


def error(message: str) -> None:
    """One ``error: ...`` line on stderr, without disturbing a progress bar."""
    tqdm.write(f"error: {one_line(message)}", file=sys.stderr)


@dataclass(frozen=True)
class Folder:
    """A folder to draw: its path, kind and the name of its output folder under ``--out``."""

    path: Path
    kind: Kind
    name: str


def find_folders(root: Path) -> list[Path]:
    """Run, sweep and study folders under ``root`` (``root`` itself included), sorted; stores are not searched."""
    found = {
        marker.parent
        for name in MARKERS
        for marker in root.rglob(name)
        if "data.zarr" not in marker.parent.parts and kind_of(marker.parent) is not None
    }
    return sorted(found)


def output_names(folders: Sequence[Path]) -> list[str]:
    """Unique names: each folder's name, with as many parent names as needed to tell them apart."""
    parts = [folder.resolve().parts for folder in folders]
    depth = 1
    while True:
        names = ["-".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def sweep_runs(sweep_dir: Path) -> list[Path]:
    """The run directories of a sweep's points that hold a run (pending points have none yet)."""
    points = read_manifest(sweep_dir)["points"]
    return [sweep_dir / point["run_dir"] for point in points if kind_of(sweep_dir / point["run_dir"]) == "run"]


def expand(paths: Sequence[Path], error: Callable[[str], None]) -> list[Folder]:
    """The folders to draw, as given: each path's kind, and the runs of every sweep, once each; a path that is
    none of them is reported through ``error``."""
    seen: dict[Path, tuple[Path, Kind]] = {}
    for path in paths:
        kind = kind_of(path)
        if kind is None:
            what = "does not exist" if not path.exists() else "holds no run (meta.json and data.zarr), sweep or study"
            error(f"{path} {what}; pass a run, sweep or study folder")
            continue
        seen.setdefault(path.resolve(), (path, kind))
        if kind == "sweep":
            try:
                runs = sweep_runs(path)
            except DynamicsError as err:
                error(str(err))
                continue
            for run in runs:
                seen.setdefault(run.resolve(), (run, "run"))
    names = output_names(list(seen)) if seen else []
    return [Folder(path, kind, name) for (path, kind), name in zip(seen.values(), names, strict=True)]


def runs_within(folder: Folder) -> list[Path]:
    """The run directories a folder's figures read (for the running-runs warning)."""
    if folder.kind == "run":
        return [folder.path]
    return sorted(meta.parent for meta in folder.path.rglob("meta.json") if "data.zarr" not in meta.parts)


Outcome = tuple[str, tuple[Path, ...] | None, str | None]
"""One figure of a folder: its name, the files written (None: not drawn) and the error line (None: none)."""


def draw_folder(
    folder: Folder, names: Sequence[str], out: Path | None, done: Callable[[], object] = bool
) -> list[Outcome]:
    """Draw the figures ``names`` of one folder that it supports, in order (``done`` is called after each). A
    damaged or vanished store ends the folder's figures with one error: every other figure would say the same."""
    figures = load_figures()
    outcomes: list[Outcome] = []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*still running")  # named once, before drawing
        for name in names:
            stem = (folder.path / FIGURE_DIR if out is None else out / folder.name) / name
            spec = figures[name]
            try:
                drawn = tuple(spec.draw(folder.path, stem)) if spec.supports(folder.path) else None
            except StoreError as err:
                outcomes.append((name, None, f"{folder.path}: {err}"))
                break
            except DynamicsError as err:
                outcomes.append((name, None, f"{name} of {folder.path}: {err}"))
            except OSError as err:
                outcomes.append((name, None, f"{name} of {folder.path}: {os_error_message(err)}"))
            except Exception as err:  # zarr codecs and plotting raise many types; one line each, the rest drawn
                outcomes.append((name, None, f"{name} of {folder.path}: unexpected {type(err).__name__}: {err}"))
            else:
                outcomes.append((name, drawn, None))
            done()
    return outcomes


def draw_all(
    folders: Sequence[Folder], figures: dict[str, FigureSpec], out: Path | None, *, workers: int, progress: bool
) -> tuple[dict[str, int], int]:
    """Draw every figure each folder supports, ``workers`` folders at a time (separate processes when more than
    one); returns how many times each figure was drawn and how many failed."""
    still_running(sorted({run for folder in folders for run in runs_within(folder)}), what="figures")
    tasks = [(folder, [name for name, spec in figures.items() if spec.kind == folder.kind]) for folder in folders]
    drawn = dict.fromkeys(figures, 0)
    failed = 0
    bar = tqdm(
        total=sum(len(names) for _, names in tasks),
        desc="figures",
        unit="figure",
        disable=None if progress else True,
        dynamic_ncols=True,
    )

    def report(outcomes: list[Outcome]) -> None:
        nonlocal failed
        for name, paths, message in outcomes:
            if message is not None:
                error(message)
                failed += 1
            elif paths is not None:
                drawn[name] += 1
                for path in paths:
                    tqdm.write(str(path))

    with bar:
        if workers == 1:
            for folder, names in tasks:
                report(draw_folder(folder, names, out, bar.update))
        else:
            with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                pending = {pool.submit(draw_folder, folder, names, out): len(names) for folder, names in tasks}
                for future in as_completed(pending):
                    report(future.result())
                    bar.update(pending[future])
    return drawn, failed


def coverage(figures: dict[str, FigureSpec], folders: Sequence[Folder], drawn: dict[str, int]) -> str:
    """Which figures were drawn (how often) and which were not, and why, one line each."""
    lines = ["figures drawn:"]
    for name, spec in figures.items():
        count = sum(folder.kind == spec.kind for folder in folders)
        if drawn[name]:
            lines.append(f"  {name:<18} {drawn[name]} of {count} {spec.kind} folder(s)")
        elif not count:
            lines.append(f"  {name:<18} not drawn: no {spec.kind} folder")
        else:
            module = spec.draw.__module__
            lines.append(f"  {name:<18} not drawn: none of the {count} {spec.kind} folder(s) has its data ({module})")
    return "\n".join(lines)
