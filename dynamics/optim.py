"""Optimizers and per-step learning-rate schedules by name, with arguments checked up front."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from dynamics.errors import ConfigError

OPTIMIZERS: tuple[str, ...] = ("sgd", "adamw")
SCHEDULES: tuple[str, ...] = ("constant", "step", "cosine")


def build_optimizer(
    name: str,
    params: Iterable[Any],
    *,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = False,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
) -> torch.optim.Optimizer:
    """SGD with heavy-ball or Nesterov momentum, or AdamW; bad arguments raise ConfigError before training.

    ``weight_decay`` is an L2 term for SGD and decoupled decay for AdamW, as torch defines them;
    ``momentum``/``nesterov`` apply to SGD only and ``betas`` to AdamW only.
    """
    if name not in OPTIMIZERS:
        choices = ", ".join(OPTIMIZERS)
        raise ConfigError(f"unknown optimizer {name!r}; choose one of: {choices}", key="name")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"lr must be a finite number > 0, got {lr!r}; pass a learning rate > 0", key="lr")
    if not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise ConfigError(
            f"weight_decay must be a finite number >= 0, got {weight_decay!r}; fix it", key="weight_decay"
        )
    if name == "adamw":
        if nesterov:
            raise ConfigError(
                "nesterov applies to sgd only; set nesterov=False or choose sgd", key=("nesterov", "name")
            )
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise ConfigError(
                f"betas must be two numbers in [0, 1), got {betas!r}; pass e.g. (0.9, 0.999)", key="betas"
            )
        return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    if not 0 <= momentum < 1:
        raise ConfigError(f"momentum must lie in [0, 1), got {momentum!r}; pass e.g. 0.9", key="momentum")
    if nesterov and momentum == 0:
        raise ConfigError(
            "nesterov needs momentum > 0; set momentum=0.9 (say) or nesterov=False", key=("nesterov", "momentum")
        )
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@dataclass(frozen=True)
class LRFactor:
    """Multiplier of the base learning rate at optimizer step ``t`` (the ``lr_lambda`` of ``LambdaLR``).

    A dataclass rather than a closure so ``LambdaLR.state_dict()`` saves its settings and it prints readably.
    Linear warmup ``t / warmup_steps`` multiplies every schedule; after it, "step" multiplies by ``gamma``
    every ``step_size`` steps (counted from step 0) and "cosine" decays from 1 to 0 over the remaining steps.
    """

    name: str
    total_steps: int
    warmup_steps: int
    step_size: int
    gamma: float

    def __call__(self, t: int) -> float:
        warmup = t / self.warmup_steps if t < self.warmup_steps else 1.0
        if self.name == "step":
            return warmup * self.gamma ** (t // self.step_size)
        if self.name == "cosine":
            if t >= self.total_steps:
                return 0.0
            if t < self.warmup_steps:
                return warmup
            progress = (t - self.warmup_steps) / (self.total_steps - self.warmup_steps)
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return warmup


def build_schedule(
    optimizer: torch.optim.Optimizer,
    name: str,
    *,
    total_steps: int,
    warmup_steps: int = 0,
    step_size: int | None = None,
    gamma: float = 0.1,
) -> LambdaLR:
    """Learning-rate schedule ``name`` for ``optimizer``; call ``.step()`` once after each optimizer step.

    All schedules start with a linear warmup from 0 to the base rate over ``warmup_steps`` (none if 0).
    "constant" then holds the base rate; "step" multiplies it by ``gamma`` every ``step_size`` steps
    (default ``total_steps // 3``); "cosine" decays it to 0 at ``total_steps`` and keeps it there.
    """
    if name not in SCHEDULES:
        choices = ", ".join(SCHEDULES)
        raise ConfigError(f"unknown schedule {name!r}; choose one of: {choices}", key="name")
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(f"total_steps must be an int >= 1, got {total_steps!r}; pass one", key="total_steps")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ConfigError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}; fix it", key="warmup_steps")
    if warmup_steps > total_steps:
        raise ConfigError(
            f"warmup_steps ({warmup_steps}) exceeds the run's total_steps ({total_steps}); shorten warmup_steps",
            key="warmup_steps",
        )
    if step_size is None:
        step_size = max(1, total_steps // 3)
    if isinstance(step_size, bool) or not isinstance(step_size, int) or step_size < 1:
        raise ConfigError(f"step_size must be an int >= 1, got {step_size!r}; pass one", key="step_size")
    if not (math.isfinite(gamma) and gamma > 0):
        raise ConfigError(f"gamma must be a finite number > 0, got {gamma!r}; pass e.g. 0.1", key="gamma")
    return LambdaLR(optimizer, LRFactor(name, total_steps, warmup_steps, step_size, gamma))
