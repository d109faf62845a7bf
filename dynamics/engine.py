"""The built-in training loop: the whole data set on the device, a Recorder attached, evaluation per epoch.

Used by ``python -m dynamics.collect``, sweeps and notebooks. Each epoch draws a seeded permutation of the
training split and drops the last incomplete batch, so every step sees ``batch_size`` samples and a run
is reproducible from its config. Evaluation on the test split runs at every epoch end and is recorded as
``val_loss``/``val_accuracy`` at the epoch's last step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from dynamics.config import RunConfig
from dynamics.data import Dataset, load_dataset
from dynamics.errors import ConfigError
from dynamics.models import build_model
from dynamics.optim import build_optimizer, build_schedule
from dynamics.recorder import Recorder
from dynamics.runinfo import now_iso
from dynamics.strategies import StrategyPlan, check_strategies_fit_data, validate_strategies


@dataclass(frozen=True)
class RunResult:
    """What a finished run reports: where it is and its final accuracies on the full splits."""

    run_dir: Path
    steps: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU; asking for CUDA without it is a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA device is available; use --device cpu or auto")
    return torch.device(name)


def default_run_dir(config: RunConfig, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<UTC timestamp>-<dataset>-<model>-s<seed>``."""
    stamp = now_iso().replace(":", "").replace("-", "").split(".")[0].replace("+0000", "")
    return Path(root) / f"{stamp}-{config.dataset}-{config.model}-s{config.seed}"


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode, without recording."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for start in range(0, len(x), batch_size):
        out = model(x[start:start + batch_size])
        target = y[start:start + batch_size]
        loss_sum += F.cross_entropy(out.float(), target, reduction="sum").double()
        correct += (out.argmax(1) == target).sum()
    model.train(was_training)
    return float(loss_sum) / len(x), int(correct) / len(x)


def load_data(config: RunConfig, device: torch.device) -> Dataset:
    """The configured data set, moved to ``device`` whole."""
    data = load_dataset(config.dataset, num_samples=config.num_samples, train_size=config.train_size,
                        seed=config.data_seed)
    if len(data.x_train) < config.batch_size:
        raise ConfigError(f"batch_size {config.batch_size} exceeds the {len(data.x_train)} training samples; "
                          "lower --batch-size or raise --train-size")
    return Dataset(data.name, data.x_train.to(device), data.y_train.to(device), data.x_test.to(device),
                   data.y_test.to(device), data.num_classes)


def train(config: RunConfig, run_dir: str | os.PathLike[str], *, overwrite: bool = False,
          progress: bool = True) -> RunResult:
    """Train ``config`` and record it into ``run_dir``; raises NonFiniteLossError if the loss diverges."""
    validate_strategies(config)
    device = resolve_device(config.device)
    data = load_data(config, device)
    torch.manual_seed(config.seed)
    model = build_model(config.model, input_shape=data.input_shape, num_classes=data.num_classes,
                        width=config.width, depth=config.depth, activation=config.activation).to(device)
    optimizer = build_optimizer(config.optimizer, model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=config.nesterov, weight_decay=config.weight_decay)
    check_strategies_fit_data(config, data.input_shape, len(data.x_train))
    plan = StrategyPlan(config, model, optimizer, data.num_classes, config.seed)
    steps_per_epoch = [len(data.x_train) // plan.batch_size(epoch) for epoch in range(config.epochs)]
    total_steps = sum(steps_per_epoch)
    schedule = build_schedule(optimizer, config.schedule, total_steps=total_steps,
                              warmup_steps=config.warmup_steps)
    order = torch.Generator(device="cpu").manual_seed(config.seed)
    recorder = Recorder(model, optimizer, run_dir, every=config.every, probes=config.probes,
                        config=config.to_dict(), seed=config.seed, flush_seconds=config.flush_seconds,
                        overwrite=overwrite)
    bar = tqdm(total=total_steps, desc="training", unit="step", disable=not progress, dynamic_ncols=True)
    with recorder, bar:
        model.train()
        for epoch in range(config.epochs):
            recorder.epoch = epoch
            plan.start_epoch(epoch, recorder.steps_done)
            batch_size = plan.batch_size(epoch)
            permutation = torch.randperm(len(data.x_train), generator=order).to(device)
            for batch in range(steps_per_epoch[epoch]):
                index = permutation[batch * batch_size:(batch + 1) * batch_size]
                x, y = data.x_train[index], data.y_train[index]
                optimizer.zero_grad(set_to_none=True)
                inputs, target = plan.prepare(x, y)
                out = model(inputs)
                loss = plan.loss(out, target)
                loss.backward()
                plan.after_backward()
                optimizer.step()
                plan.after_step(recorder.steps_done, out, y, epoch_end=batch == steps_per_epoch[epoch] - 1)
                recorder.step(loss=loss, output=out, target=y, **plan.scalars())
                schedule.step()
                bar.update()
            val_loss, val_accuracy = evaluate(model, data.x_test, data.y_test, config.eval_batch_size)
            recorder.record_eval(val_loss=val_loss, val_accuracy=val_accuracy)
            bar.set_postfix(epoch=epoch + 1, val_acc=f"{val_accuracy:.3f}")
        train_loss, train_accuracy = evaluate(model, data.x_train, data.y_train, config.eval_batch_size)
        recorder.note(final_train_loss=train_loss, final_train_accuracy=train_accuracy,
                      final_test_loss=val_loss, final_test_accuracy=val_accuracy)
    return RunResult(Path(run_dir), total_steps, train_loss, train_accuracy, val_loss, val_accuracy)
