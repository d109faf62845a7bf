"""Linear-mode-connectivity instability of runs, read from their ``lmc.json``; nothing here trains.

``python -m dynamics.lmc RUN_DIR`` (:mod:`dynamics.studies.lmc`) writes ``RUN_DIR/lmc.json``: for each spawn step
s, the test error and loss of the interpolated parameters (1 - a) theta_A + a theta_B of two children trained
from the run's state at step s with different data orders, at evenly spaced a in [0, 1]. This module reads it
back and summarises it:

- *Barrier* (Frankle et al. 2020's instability) of a curve v(a): ``max_a [v(a) - ((1 - a) v(0) + a v(1))]``,
  the largest rise above the straight line between the end points (0 when the path never rises above it,
  as the end points themselves lie on it). :func:`barrier` is the one implementation; the study stores its
  value for the error and for the loss.
- *Over runs* (seeds of one configuration): per spawn step, the mean barrier and its two-sided 95% Student-t
  interval (:func:`analyses.stats.t_interval`; none below two runs), from the runs that measured that step.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from analyses.stats import t_interval
from dynamics.errors import StoreError
from dynamics.store import read_json

LMC_FILE = "lmc.json"
"""The file a run's linear-mode-connectivity measurement is kept in."""
FORMAT_VERSION = 1
_ENTRY_KEYS = ("step", "steps", "alphas", "error", "loss", "barrier", "loss_barrier", "seeds")


def barrier(alphas: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray) -> float:
    """``max_a [v(a) - ((1 - a) v(0) + a v(1))]`` of the curve ``values`` at ``alphas`` (first 0, last 1)."""
    a, v = np.asarray(alphas, dtype=np.float64), np.asarray(values, dtype=np.float64)
    if a.ndim != 1 or a.shape != v.shape or a.size < 2 or a[0] != 0.0 or a[-1] != 1.0:
        raise ValueError(f"alphas must run from 0 to 1 with one value each, got alphas {a} for values {v}")
    return float(np.max(v - ((1.0 - a) * v[0] + a * v[-1])))


@dataclass(frozen=True)
class Spawn:
    """The measurement at one spawn step: the children's interpolation curve and its barriers."""

    step: int
    """Spawn step s: the children start from the run's state after s optimizer steps."""
    steps: int
    """K: optimizer steps each child trained (its final step is s + K)."""
    alphas: np.ndarray
    error: np.ndarray
    """Test error (1 - accuracy) of the interpolated parameters at each alpha; alpha 0 is child A, 1 child B."""
    loss: np.ndarray
    """Mean test cross-entropy at each alpha."""
    barrier: float
    loss_barrier: float
    seeds: dict[str, dict[str, int]]
    """Each child's (``a``, ``b``) data-order and augmentation seeds."""


def has_lmc(run_dir: str | os.PathLike[str]) -> bool:
    """Whether ``run_dir`` holds a linear-mode-connectivity measurement."""
    return (Path(run_dir) / LMC_FILE).is_file()


def read_lmc(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """``run_dir``'s ``lmc.json`` as stored; StoreError when it is missing, damaged or of another format."""
    path = Path(run_dir) / LMC_FILE
    payload = read_json(path)
    if payload.get("format_version") != FORMAT_VERSION or not isinstance(payload.get("spawns"), list):
        raise StoreError(f"{path} is no linear-mode-connectivity measurement of format {FORMAT_VERSION}; measure again")
    for entry in payload["spawns"]:
        if not isinstance(entry, dict) or any(key not in entry for key in _ENTRY_KEYS):
            raise StoreError(f"{path} holds an incomplete spawn entry ({_ENTRY_KEYS} each); measure again")
    return payload


def spawns(run_dir: str | os.PathLike[str]) -> list[Spawn]:
    """The spawn steps ``run_dir`` measured, in step order."""
    entries = sorted(read_lmc(run_dir)["spawns"], key=lambda entry: entry["step"])
    return [
        Spawn(
            step=int(entry["step"]),
            steps=int(entry["steps"]),
            alphas=np.asarray(entry["alphas"], dtype=np.float64),
            error=np.asarray(entry["error"], dtype=np.float64),
            loss=np.asarray(entry["loss"], dtype=np.float64),
            barrier=float(entry["barrier"]),
            loss_barrier=float(entry["loss_barrier"]),
            seeds={name: {k: int(v) for k, v in seeds.items()} for name, seeds in entry["seeds"].items()},
        )
        for entry in entries
    ]


@dataclass(frozen=True)
class BarrierSummary:
    """The error barrier by spawn step over several runs: mean, 95% t-interval (NaN below two runs) and n."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n: np.ndarray


def barrier_by_step(run_dirs: Iterable[str | os.PathLike[str]], *, loss: bool = False) -> BarrierSummary:
    """Per spawn step measured by any of ``run_dirs``: the mean error barrier (``loss``: loss barrier) over the
    runs that measured it, with its two-sided 95% Student-t interval."""
    by_step: dict[int, list[float]] = {}
    for run in run_dirs:
        for spawn in spawns(run):
            by_step.setdefault(spawn.step, []).append(spawn.loss_barrier if loss else spawn.barrier)
    steps = sorted(by_step)
    rows = [t_interval(by_step[step]) for step in steps]
    mean, low, high = (np.asarray([row[i] for row in rows], dtype=np.float64) for i in range(3))
    return BarrierSummary(
        steps=np.asarray(steps, dtype=np.int64),
        mean=mean,
        low=low,
        high=high,
        n=np.asarray([len(by_step[step]) for step in steps], dtype=np.int64),
    )
