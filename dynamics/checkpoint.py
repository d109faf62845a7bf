"""Checkpoints of a built-in run: everything needed to continue it exactly where it stopped.

A checkpoint is one ``torch.save`` file ``<run>/checkpoints/step-<step>.pt`` (``step``: the optimizer steps
done) holding the model, optimizer, learning-rate schedule and strategy states, the Recorder's state (its
probes' initial parameters, cadence counters, generators), every random generator in use and the position
in the data order (epoch, batch within the epoch, the epoch's permutation). It is written to a temporary
file in the same directory, synced to disk and renamed over its final name, so a file under a final name
is always complete; the newest ``keep`` files are kept. The store is flushed right before, so it holds
exactly the steps before the checkpoint, and a resume cuts away whatever was recorded after it.

A run with ``lmc_spawn`` also keeps, in the same format, its state before each spawn step in
``<run>/lmc/spawn-<step>.pt`` (never pruned): the states the linear-mode-connectivity children start from
(:mod:`dynamics.studies.lmc`).
"""

from __future__ import annotations

import os
import random
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamics.errors import ConfigError, StoreError
from dynamics.recorder import write_failed

CHECKPOINT_DIR = "checkpoints"
SPAWN_DIR = "lmc"
_FILE = re.compile(r"step-(\d+)\.pt")
_SPAWN = re.compile(r"spawn-(\d+)\.pt")


def rng_states() -> dict[str, Any]:
    """The global generators: torch (CPU and every initialised CUDA device), NumPy and Python's ``random``."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"].cpu())
    if states["cuda"] is not None:
        torch.cuda.set_rng_state_all([state.cpu() for state in states["cuda"]])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def checkpoint_paths(run_dir: Path) -> list[Path]:
    """The run's checkpoint files, oldest first."""
    folder = run_dir / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir() if (match := _FILE.fullmatch(path.name))]
    return [path for _, path in sorted(found)]


def write_state(path: Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, rename); its folder is created."""
    tmp = None
    try:
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise write_failed(path, err) from None
    return path


def save_checkpoint(run_dir: Path, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` (with ``state["step"]``) atomically as the newest checkpoint; keep the last ``keep``."""
    path = write_state(run_dir / CHECKPOINT_DIR / f"step-{int(state['step']):09d}.pt", state)
    try:
        for old in checkpoint_paths(run_dir)[:-keep]:
            old.unlink()
    except OSError as err:
        raise write_failed(path, err) from None
    return path


def spawn_path(run_dir: Path, step: int) -> Path:
    """Where a run keeps its training state before step ``step`` for the linear-mode-connectivity children."""
    return run_dir / SPAWN_DIR / f"spawn-{step:09d}.pt"


def spawn_steps(run_dir: Path) -> list[int]:
    """The steps whose spawn states ``run_dir`` holds, in order."""
    folder = run_dir / SPAWN_DIR
    if not folder.is_dir():
        return []
    return sorted(int(match.group(1)) for path in folder.iterdir() if (match := _SPAWN.fullmatch(path.name)))


def read_state(path: Path, device: torch.device) -> dict[str, Any]:
    """The training state in the file ``path`` (a checkpoint or spawn state), its tensors on ``device``."""
    if not path.is_file():
        raise StoreError(f"{path} does not exist; the run did not save that state")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a damaged file
        raise StoreError(f"{path} is unreadable ({type(err).__name__}: {err}); train the run again") from None


def load_checkpoint(run_dir: Path, device: torch.device) -> dict[str, Any]:
    """The newest readable checkpoint of ``run_dir``, its tensors on ``device``."""
    paths = checkpoint_paths(run_dir)
    if not paths:
        raise ConfigError(
            f"{run_dir} holds no checkpoint to resume from; start it again in run_dir={run_dir} with overwrite=True",
            key=("run_dir", "overwrite"),
        )
    for path in reversed(paths):
        try:
            return torch.load(path, map_location=device, weights_only=False)
        except Exception:  # noqa: BLE001 - a damaged file (e.g. copied half-way): fall back to an older one
            continue
    raise StoreError(
        f"every checkpoint in {run_dir / CHECKPOINT_DIR} is unreadable; start the run again in "
        f"run_dir={run_dir} with overwrite=True"
    )


class CheckpointCadence:
    """When a checkpoint is due: every ``steps`` optimizer steps and every ``seconds`` seconds (0 turns either off)."""

    def __init__(self, steps: int, seconds: float) -> None:
        self.steps = steps
        self.seconds = seconds
        self._last = time.monotonic()

    def due(self, step: int) -> bool:
        """Whether to checkpoint after ``step`` steps are done."""
        by_steps = self.steps > 0 and step % self.steps == 0
        by_time = self.seconds > 0 and time.monotonic() - self._last >= self.seconds
        return by_steps or by_time

    def mark(self) -> None:
        """A checkpoint was just written: restart the clock."""
        self._last = time.monotonic()
