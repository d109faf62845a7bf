"""The quick setting of every figure: what ``python -m figures --quick`` trains before it draws everything.

- the sweep files in ``experiments/figures/*.toml``, run through the sweep machinery
  (:func:`dynamics.sweep.run_sweep`, local executor) into ``<out>/<sweep name>``: ``strategies`` (seeds x
  plain, Mixup, Mixup Pause, Alpha Boost, High-Loss Removal, PLP, cyclical weight decay) and ``probes`` (every
  probe on: representation, Fisher, interference with per-sample statistics, curvature, linear mode
  connectivity, snapshots);
- the loss surface of every snapshot run of those sweeps (``python -m dynamics.surface``), for the trajectory
  figure;
- a reduced interference scale study (:data:`STUDY`, ``python -m dynamics.studies.interference_scale``) into
  ``<out>/interference-scale``, summarised into its ``interference_study.json``.

Everything resumes: finished runs are kept, a surface already evaluated after its run finished is not evaluated
again, finished study runs are skipped. :func:`prepare` returns the folders to draw.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

from tqdm.auto import tqdm

from analyses.interference import finished, summarise, write_summary
from analyses.trajectory import SURFACE_NAME
from dynamics.errors import ConfigError, DynamicsError
from dynamics.store import run_state
from dynamics.sweep import Sweep, read_sweep, run_sweep
from dynamics.sweep.run import POLL_SECONDS, available_cores
from figures.registry import recorded

SWEEP_FILES = Path(__file__).resolve().parents[1] / "experiments" / "figures"
"""Where the quick sweeps live (a checkout's ``experiments/figures``)."""
STUDY_NAME = "interference-scale"
"""Folder of the reduced interference scale study under ``--out``."""
STUDY: tuple[str, ...] = ("--sizes", "1000,4000,16000", "--widths", "4,8,16", "--steps", "300")
"""The reduced study: 3 sizes x 3 widths x :data:`STUDY_SEEDS` x 2 strategies = 36 runs of ~300 steps."""
STUDY_SEEDS: tuple[int, ...] = (0, 1)
"""Seeds of the reduced study; each share of them trains in its own process."""
SURFACE: tuple[str, ...] = ("--resolution", "9", "--samples", "512", "--device", "cpu")
"""How the quick loss surfaces are evaluated (a coarse grid on few samples)."""


def sweep_files() -> list[Path]:
    """The quick sweep files, sorted; ConfigError when there are none (not a checkout)."""
    files = sorted(SWEEP_FILES.glob("*.toml"))
    if not files:
        raise ConfigError(f"no quick sweep files in {SWEEP_FILES}; run --quick from a checkout of the repository")
    return files


def plan() -> list[Sweep]:
    """Every quick sweep, read and checked point by point (a setting a capture would refuse raises ConfigError)."""
    return [read_sweep(path) for path in sweep_files()]


def _run(module: str, *args: str, progress: bool) -> None:
    """``python -m module args`` in a child process; DynamicsError naming the command when it fails."""
    argv = [sys.executable, "-m", module, *args, *([] if progress else ["--no-progress"])]
    done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=None if progress else subprocess.PIPE, text=True)
    if done.returncode:
        why = (done.stderr or "").strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        raise DynamicsError(f"{' '.join(argv[1:])} failed: {why[0]}")


def train_study(root: Path, *, workers: int, progress: bool = True) -> None:
    """Train the reduced interference study into ``root``: its seeds shared among up to ``workers`` processes of
    ``python -m dynamics.studies.interference_scale --train-only`` (each with cores // processes torch threads),
    with a progress bar over its runs; DynamicsError naming the command of a process that failed."""
    count = min(workers, len(STUDY_SEEDS))
    base = [sys.executable, "-m", "dynamics.studies.interference_scale", "--root", str(root), *STUDY, "--train-only"]
    commands = [[*base, "--seeds", ",".join(map(str, STUDY_SEEDS[i::count])), "--no-progress"] for i in range(count)]
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, available_cores() // count))}
    total = 2 * len(STUDY_SEEDS) * len(STUDY[1].split(",")) * len(STUDY[3].split(","))
    with ExitStack() as stack:
        logs = [stack.enter_context(tempfile.TemporaryFile("w+")) for _ in commands]
        children = [
            subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
            for argv, log in zip(commands, logs, strict=True)
        ]
        bar = stack.enter_context(
            tqdm(total=total, desc="interference study", unit="run", disable=not progress, dynamic_ncols=True)
        )
        while True:
            running = any(child.poll() is None for child in children)
            bar.update(sum(finished(run) for run in root.glob("*/")) - bar.n)
            if not running:
                break
            time.sleep(POLL_SECONDS)
        for argv, child, log in zip(commands, children, logs, strict=True):
            if child.returncode:
                log.seek(0)
                why = log.read().strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
                raise DynamicsError(f"{' '.join(argv[1:])} failed: {why[0]}")


def _surface_missing(run_dir: Path) -> bool:
    """Whether a finished snapshot run has no loss surface evaluated after it finished."""
    if run_state(run_dir) != "finished" or not recorded(run_dir, "snapshot"):
        return False
    surface = run_dir / SURFACE_NAME
    return not surface.exists() or surface.stat().st_mtime < (run_dir / "meta.json").stat().st_mtime


def prepare(
    out: Path, *, workers: int, progress: bool = True, error: Callable[[str], None] = print
) -> tuple[list[Path], int]:
    """Train what the quick figures need under ``out`` (``workers`` runs at a time); returns the folders to draw
    and how many steps failed (each reported through ``error``, the others still done)."""
    folders, failed = [], 0
    for sweep in plan():
        sweep_dir = out / sweep.name
        report = run_sweep(sweep, sweep_dir, workers=workers, progress=progress)
        for name, (why, log) in report.failed.items():
            error(f"{sweep_dir / name}: {why} (log: {log})")
        failed += len(report.failed)
        folders.append(sweep_dir)
        for point in sweep.points:
            if _surface_missing(sweep_dir / point.name):
                try:
                    _run("dynamics.surface", str(sweep_dir / point.name), *SURFACE, "--no-analysis", progress=progress)
                except DynamicsError as err:
                    error(str(err))
                    failed += 1
    study = out / STUDY_NAME
    try:
        train_study(study, workers=workers, progress=progress)
        write_summary(summarise(study), study)
        folders.append(study)
    except DynamicsError as err:
        error(str(err))
        failed += 1
    return folders, failed
