"""Sweep folders for the tests of ``analyses.compare`` and ``analyses.claims``: synthetic runs with chosen numbers
(written with the store's own writer, no training) and one tiny real sweep trained by ``dynamics.collect``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynamics.store import RunWriter

REPO = Path(__file__).resolve().parent.parent


def write_run(
    run_dir: Path,
    seed: int,
    val_accuracy: Sequence[float],
    *,
    dataset: str = "mnist1d",
    status: str = "finished",
    config: Mapping[str, Any] | None = None,
    loss: Sequence[float] = (2.0, 1.0),
) -> Path:
    """A run directory whose store holds ``val_accuracy`` at one evaluation per entry (and a short ``loss``)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    writer = RunWriter(run_dir, {}, {})
    writer.append("step", {"step": (("step",), np.arange(len(loss))), "loss": (("step",), np.asarray(loss, float))})
    values = np.asarray(val_accuracy, dtype=np.float64)
    writer.append(
        "eval_step",
        {"eval_step": (("eval_step",), np.arange(1, values.size + 1) * 10), "val_accuracy": (("eval_step",), values)},
    )
    settings = {"dataset": dataset, "seed": seed, "model": "cnn", "lr": 0.05, **(config or {})}
    (run_dir / "config.json").write_text(json.dumps(settings))
    meta = {"status": status, "seed": seed, "results": {"final_test_accuracy": float(values[-1]), "num_classes": 10}}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    return run_dir


def write_manifest(folder: Path, name: str, points: Sequence[Mapping[str, Any]], **extra: Any) -> Path:
    """``folder/sweep.json`` listing ``points`` (each: run_dir, condition, seed, axes)."""
    folder.mkdir(parents=True, exist_ok=True)
    full = [{"name": p["run_dir"], "settings": {}, "axes": {"seed": p["seed"]}, "condition": None, **p} for p in points]
    manifest = {"name": name, "base": {}, "axes": {}, "conditions": {}, "points": full, **extra}
    (folder / "sweep.json").write_text(json.dumps(manifest))
    return folder


def synthetic_sweep(
    folder: Path, name: str, values: Mapping[str, Mapping[int, Sequence[float]]], **run_options: Any
) -> Path:
    """A sweep of synthetic runs: ``values[condition][seed]`` is the run's ``val_accuracy`` sequence."""
    points = []
    for condition, by_seed in values.items():
        for seed, accuracy in by_seed.items():
            run = f"{condition}-s{seed}"
            write_run(folder / run, seed, accuracy, **run_options)
            points.append({"run_dir": run, "condition": condition, "seed": seed})
    return write_manifest(folder, name, points)


TINY_SETTINGS = {"epochs": 1, "num_samples": 400, "probes": "loss", "snapshots": False, "checkpoint_seconds": 0}
"""The settings of ``python -m dynamics.collect --epochs 1 --num-samples 400 --probes loss --no-snapshots
--checkpoint-seconds 0``."""
TINY_CONDITIONS = {"plain": {}, "plp": {"plp": True}}
TINY_SEEDS = (0, 1)


def tiny_real_sweep(folder: Path) -> Path:
    """The sweep ``plp-quick`` in miniature: conditions plain and plp, seeds 0 and 1, each a real 1-epoch capture on
    400 MNIST-1D samples by the engine ``dynamics.collect`` runs (in one child process; without the overview
    figure, which takes ten times as long as the training), plus a point whose run never started. Built once per
    folder (a second call reuses it)."""
    if (folder / "sweep.json").is_file():
        return folder
    runs = [
        (str(folder / f"{condition}-s{seed}"), {**TINY_SETTINGS, **settings, "seed": seed})
        for condition, settings in TINY_CONDITIONS.items()
        for seed in TINY_SEEDS
    ]
    script = textwrap.dedent(f"""
        from pathlib import Path
        import torch
        from dynamics.config import make_config
        from dynamics.engine import train
        torch.set_num_threads(1)
        for path, settings in {runs!r}:
            train(make_config(settings), Path(path), progress=False)
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    points = [
        {"run_dir": f"{condition}-s{seed}", "condition": condition, "seed": seed}
        for condition in TINY_CONDITIONS
        for seed in TINY_SEEDS
    ]
    points.append({"run_dir": "plp-s2", "condition": "plp", "seed": 2})  # listed, never started: pending
    return write_manifest(
        folder,
        "plp-quick",
        points,
        axes={"seed": [0, 1, 2]},
        conditions={"plain": {}, "plp": {"plp": True}},
    )
