"""Linear-mode-connectivity instability (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket
Hypothesis"): from which step on does the rest of training no longer depend on the data order?

A run trained with ``lmc_spawn`` keeps its full training state before each spawn step s in
``RUN/lmc/spawn-<s>.pt`` (:func:`dynamics.checkpoint.spawn_path`; the run itself is unchanged). :func:`measure`
then, for each spawn state:

1. trains two children A and B for ``lmc_steps`` (K) steps each with the engine itself
   (:class:`dynamics.engine.Branch`): model, optimizer, learning-rate schedule, strategies and global generators
   continue from the spawn state, so the children train with the parent's hyperparameters at steps s..s+K-1;
   only the batch order (a fresh permutation, also for the rest of the spawn's epoch) and the augmentation draws
   are each child's own. They record only loss and accuracy, into a temporary run directory (the probe settings
   change what is recorded, not the training), and their final parameters are kept in
   ``RUN/lmc/child-<s>-{a,b}.pt``;
2. evaluates the test error and loss of theta(a) = (1 - a) theta_A + a theta_B at ``lmc_points`` evenly spaced a
   in [0, 1] (buffers too; integer buffers such as BatchNorm's batch counter are child A's);
3. stores the curve and the barrier ``max_a [err(a) - ((1 - a) err(0) + a err(1))]``
   (:func:`analyses.lmc.barrier`), also of the loss, in ``RUN/lmc.json`` (read by :mod:`analyses.lmc`).

Choices:

- *Seeds*: child ``a``/``b`` of spawn s draws its batch order and augmentation from two seeds of
  ``numpy.random.SeedSequence((seed, s, child))`` (child 0 or 1): different for the two children, for every
  spawn step and for every run seed, and unrelated to the parent's own generator (seeded with ``seed``).
  Strategy generators (Mixup's) continue from the spawn state in both children.
- *BatchNorm*: the running statistics of an interpolated model belong to no network, so for a model with
  BatchNorm they are recomputed for every a, end points included: reset, then one pass over the whole
  training split (un-augmented, ``eval_batch_size`` samples per batch) in train mode without gradients, as a
  cumulative average (``momentum=None``). A model without BatchNorm is evaluated as it is.
- *Reuse*: a spawn step already in ``lmc.json`` is skipped, and a child whose final parameters are kept (same K
  and seeds) is not trained again, unless ``overwrite``; ``lmc.json`` is rewritten after every spawn step. A
  child whose loss diverges (under the run's ``on_nonfinite``) stops the measurement with an error naming it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from analyses.lmc import FORMAT_VERSION, LMC_FILE, barrier, read_lmc
from dynamics.augment import InputPipeline
from dynamics.checkpoint import SPAWN_DIR, load_checkpoint, read_state, spawn_path, spawn_steps, write_state
from dynamics.config import RunConfig, make_config
from dynamics.engine import Branch, evaluate, load_data, model_options, resolve_device, train
from dynamics.errors import ConfigError, DynamicsError, NonFiniteLossError, StoreError, parameters_as
from dynamics.models import build_model
from dynamics.paths import check_path
from dynamics.steps import autocast, prepare_model
from dynamics.store import read_json, write_json_atomic

CHILDREN = ("a", "b")


def child_path(run_dir: Path, step: int, child: str) -> Path:
    """Where the final state of child ``child`` (``a`` or ``b``) of spawn step ``step`` is kept."""
    return run_dir / SPAWN_DIR / f"child-{step:09d}-{child}.pt"


def child_seeds(seed: int, step: int, child: str) -> tuple[int, int]:
    """The (data-order, augmentation) seeds of child ``child`` of spawn step ``step`` of a run of ``seed``."""
    sequence = np.random.SeedSequence((seed, step, CHILDREN.index(child)))
    order, augment = (int(value) >> 1 for value in sequence.generate_state(2, np.uint64))  # below 2**63
    return order, augment


def child_config(config: RunConfig) -> RunConfig:
    """The parent's settings for a child: the same training, recording only loss and accuracy (every on/off
    probe setting off, no snapshots), no spawns of its own, and one checkpoint, after its last step."""
    quiet = {f.name: False for f in fields(RunConfig) if f.metadata["section"] == "probes" and str(f.type) == "bool"}
    return make_config(
        {
            **config.to_dict(),
            **quiet,
            "probes": "loss",
            "lmc_spawn": None,
            "checkpoint_steps": 0,
            "checkpoint_seconds": 0.0,
            "checkpoint_keep": 1,
        }
    )


def train_child(run_dir: Path, config: RunConfig, step: int, child: str, *, progress: bool = True) -> Path:
    """Train child ``child`` of spawn step ``step`` of the run in ``run_dir`` (``config``: the run's) and keep its
    final state in :func:`child_path`; returns that path."""
    order_seed, augment_seed = child_seeds(config.seed, step, child)
    branch = Branch(spawn_path(run_dir, step), order_seed, augment_seed, config.lmc_steps)
    with tempfile.TemporaryDirectory(prefix=f"lmc-{step}-{child}-") as scratch:
        try:
            train(child_config(config), Path(scratch) / "run", progress=progress, branch=branch)
        except NonFiniteLossError as err:  # the parent's run is finished and unchanged: say whose loss diverged
            raise DynamicsError(
                f"child {child} of lmc spawn step {step} diverged ({err}); {run_dir} itself is unchanged"
            ) from None
        final = load_checkpoint(Path(scratch) / "run", torch.device("cpu"))
    return write_state(
        child_path(run_dir, step, child),
        {
            "spawn": step,
            "step": final["step"],
            "steps": config.lmc_steps,
            "order_seed": order_seed,
            "augment_seed": augment_seed,
            "model": final["model"],
        },
    )


def _kept_child(path: Path, config: RunConfig, step: int, child: str) -> bool:
    """Whether ``path`` holds the final state of this child as the run's settings define it."""
    if not path.is_file():
        return False
    try:
        kept = read_state(path, torch.device("cpu"))
    except StoreError:
        return False
    return (kept["steps"], (kept["order_seed"], kept["augment_seed"])) == (
        config.lmc_steps,
        child_seeds(config.seed, step, child),
    )


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """``(1 - alpha) * a + alpha * b`` entry by entry; entries that are not floating point are ``a``'s."""
    return {key: (1 - alpha) * a[key] + alpha * b[key] if a[key].is_floating_point() else a[key] for key in a}


def batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that keep running statistics."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batchnorm(
    model: nn.Module, x: torch.Tensor, batch_size: int, *, prepare: InputPipeline | None = None, precision: str = "fp32"
) -> None:
    """Reset the running statistics of ``model``'s BatchNorm layers and recompute them from ``x`` (un-augmented,
    ``batch_size`` samples per pass) as a cumulative average over the passes; the model is left in eval mode."""
    layers = batchnorms(model)
    momenta = [layer.momentum for layer in layers]
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    model.train()
    with autocast(x.device, precision):
        for start in range(0, len(x), batch_size):
            inputs = x[start : start + batch_size]
            model(inputs if prepare is None else prepare(inputs, False))
    for layer, momentum in zip(layers, momenta, strict=True):
        layer.momentum = momentum
    model.eval()


class Interpolator:
    """The run's model, test split and input pipeline, built once, to evaluate interpolated model states."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.device = device = resolve_device(config.device)
        self.data = load_data(config, device)
        with parameters_as({"name": "model", "input_shape": "dataset", "kind": "dataset"}):
            model = build_model(config.model, **model_options(config, self.data)).to(device)
        self.model = prepare_model(model, channels_last=config.channels_last)
        self.pipeline = InputPipeline(self.data, device, augment=False, channels_last=config.channels_last)
        self.batchnorm = bool(batchnorms(self.model))
        """Whether the model has BatchNorm layers, whose statistics are recomputed at every alpha."""

    def curve(
        self, a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alphas: np.ndarray
    ) -> tuple[list[float], list[float]]:
        """Test error (1 - accuracy) and mean test loss of the interpolations of ``a`` and ``b`` at ``alphas``."""
        config, data = self.config, self.data
        errors, losses = [], []
        for alpha in alphas:
            self.model.load_state_dict(interpolate(a, b, float(alpha)))
            if self.batchnorm:
                recompute_batchnorm(
                    self.model, data.x_train, config.eval_batch_size, prepare=self.pipeline, precision=config.precision
                )
            loss, accuracy = evaluate(
                self.model,
                data.x_test,
                data.y_test,
                config.eval_batch_size,
                prepare=self.pipeline,
                precision=config.precision,
            )
            errors.append(1.0 - accuracy)
            losses.append(loss)
        return errors, losses


def measure_spawn(
    run_dir: Path,
    config: RunConfig,
    step: int,
    interpolator: Interpolator,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train (or reuse) the two children of spawn step ``step`` and measure their interpolation: one entry of
    ``lmc.json``."""
    states, seeds = [], {}
    for child in CHILDREN:
        path = child_path(run_dir, step, child)
        if overwrite or not _kept_child(path, config, step, child):
            train_child(run_dir, config, step, child, progress=progress)
        states.append(read_state(path, interpolator.device)["model"])
        order_seed, augment_seed = child_seeds(config.seed, step, child)
        seeds[child] = {"order": order_seed, "augment": augment_seed}
    alphas = np.linspace(0.0, 1.0, config.lmc_points)
    errors, losses = interpolator.curve(states[0], states[1], alphas)
    return {
        "step": step,
        "steps": config.lmc_steps,
        "alphas": alphas.tolist(),
        "error": errors,
        "loss": losses,
        "barrier": barrier(alphas, errors),
        "loss_barrier": barrier(alphas, losses),
        "seeds": seeds,
        "children": [child_path(run_dir, step, child).relative_to(run_dir).as_posix() for child in CHILDREN],
    }


def run_config(run_dir: Path) -> RunConfig:
    """The settings of the run in ``run_dir``, from its ``config.json``; ConfigError when it is no run directory."""
    check_path(run_dir, "run_dir")
    if not (run_dir / "config.json").is_file():
        raise ConfigError(f"run_dir={run_dir} is no run directory (no config.json); pass one", key="run_dir")
    return make_config(read_json(run_dir / "config.json"))


def measure(run_dir: str | os.PathLike[str], *, overwrite: bool = False, progress: bool = True) -> dict[str, Any]:
    """Measure each spawn state of the run in ``run_dir`` that its ``lmc.json`` lacks (every one with
    ``overwrite``, children retrained too), rewriting ``lmc.json`` after each; returns its content."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    steps = spawn_steps(run_dir)
    if not steps:
        raise ConfigError(
            f"{run_dir} holds no spawn states in {run_dir / SPAWN_DIR}; train the run with lmc_spawn set",
            key="lmc_spawn",
        )
    path = run_dir / LMC_FILE
    payload: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "formula": "theta(a) = (1 - a) theta_A + a theta_B; barrier = max_a [err(a) - ((1 - a) err(0) + a err(1))]",
        "lmc_steps": config.lmc_steps,
        "lmc_points": config.lmc_points,
        "spawns": [],
    }
    if path.is_file() and not overwrite:
        payload = read_lmc(run_dir)
    done = {int(entry["step"]) for entry in payload["spawns"]}
    todo = [step for step in steps if step not in done]
    if not todo:
        return payload
    interpolator = Interpolator(config)
    payload["batchnorm"] = "recomputed on the training split" if interpolator.batchnorm else "none in the model"
    for step in tqdm(todo, desc="lmc spawns", unit="spawn", disable=not progress, dynamic_ncols=True):
        entry = measure_spawn(run_dir, config, step, interpolator, overwrite=overwrite, progress=progress)
        payload["spawns"] = sorted([*payload["spawns"], entry], key=lambda item: int(item["step"]))
        write_json_atomic(path, payload)
    return payload


def summary(payload: dict[str, Any]) -> str:
    """One line per spawn step of an ``lmc.json``: the barrier and the children's errors."""
    return "\n".join(
        f"lmc spawn step {entry['step']:>7}  barrier {entry['barrier']:.4f}  loss barrier "
        f"{entry['loss_barrier']:.4f}  children's test error {entry['error'][0]:.4f} / {entry['error'][-1]:.4f}"
        for entry in payload["spawns"]
    )
