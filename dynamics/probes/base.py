"""What a probe is: variables it declares, hooks it attaches, values it measures at a recorded step.

A probe separates *what* is computed (``measure``) from *when* (the recorder's cadence) and from *what it
needs* (hooks installed by ``attach``). Measured values are device tensors; they reach the host only when
the recorder flushes, so a probe never synchronises with the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from dynamics.errors import ConfigError


@dataclass(frozen=True)
class Variable:
    """A recorded variable: its name, its dimensions after ``step`` and its attributes (units, meaning)."""

    name: str
    dims: tuple[str, ...] = ()
    attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class StepData:
    """What the training loop hands to ``Recorder.step``: the loss, and optionally outputs, targets and inputs.

    ``inputs`` is the step's clean model input (before any mixing), for probes that run their own passes
    on the current batch (:mod:`dynamics.probes.interference`).
    """

    loss: torch.Tensor
    output: torch.Tensor | None = None
    target: torch.Tensor | None = None
    inputs: torch.Tensor | None = None

    def check(self) -> None:
        """Raise ConfigError when the loss is not one value or the output and target do not fit together."""
        if self.loss.numel() != 1:
            raise ConfigError(
                f"loss must be one value, got a tensor of shape {tuple(self.loss.shape)}; reduce it "
                "(e.g. loss.mean()) before Recorder.step"
            )
        output, target = self.output, self.target
        if output is None or target is None:
            return
        if output.dim() < 1 or not (target.shape == output.shape[:-1] or target.shape == output.shape):
            raise ConfigError(
                f"output of shape {tuple(output.shape)} and target of shape {tuple(target.shape)} do "
                "not fit: give class indices of shape output.shape[:-1] or soft targets of the "
                "output's shape"
            )
        if target.shape == output.shape[:-1] and target.is_floating_point():
            raise ConfigError(
                f"target holds class indices of shape {tuple(target.shape)} but is "
                f"{target.dtype}; give integer class indices (e.g. target.long())"
            )


class Context:
    """State shared by the probes of one recorder: the model, its trainable parameters, the cadence flag."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module  # the names and hooks of the model itself, as in a single-process run
        self.model = model
        self.optimizer = optimizer
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        """Processes training together (``torch.distributed``); above 1, probes reduce over all of them."""
        named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
        self.param_names: list[str] = [name for name, _ in named]
        self.params: list[torch.Tensor] = [p for _, p in named]
        self.recording = True
        """True while the current optimizer step is one the recorder will record (hooks check it)."""
        self.paused = False
        """True while another computation (an evaluation, a probe's extra pass) must not be recorded."""
        self.step = 0
        """The optimizer step being measured (set by the recorder before the probes measure)."""

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``tensor`` summed (or maxed, ``op="max"``) over the processes of a distributed run, in place; as is
        in a single process. Every process must call it at the same recorded steps, in the same order."""
        if self.world_size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor

    @property
    def capturing(self) -> bool:
        """Whether hooks should capture now: a recorded step, not paused, and a gradient-enabled pass."""
        return self.recording and not self.paused and torch.is_grad_enabled()


class Probe(ABC):
    """A family of recorded variables. Subclasses declare ``variables`` and implement ``measure``.

    A probe that carries state from one step to the next (initial parameters, a cadence counter, a
    generator) names those attributes in ``state_attrs``: a checkpoint saves them and a resumed run
    restores them after ``attach``, so it measures the same values as an uninterrupted run.
    """

    name: str = ""
    state_attrs: tuple[str, ...] = ()

    def attach(self, context: Context) -> None:  # noqa: B027 - optional hook installation
        """Install hooks; called once when the recorder starts."""

    def coords(self, context: Context) -> dict[str, list[str]]:
        """Coordinate labels of the dimensions this probe introduces (e.g. ``layer``)."""
        return {}

    @abstractmethod
    def variables(self, context: Context) -> list[Variable]:
        """The variables this probe records, in the order ``measure`` returns them."""

    @abstractmethod
    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        """Values of this step's variables as device tensors shaped like their non-step dimensions."""

    def before_recorded_step(self, context: Context) -> None:  # noqa: B027 - optional preparation
        """Called after the step preceding a recorded step, e.g. to keep a copy of the parameters."""

    def detach(self) -> None:  # noqa: B027 - optional hook removal
        """Remove hooks; called once when the recorder closes."""

    def state_dict(self) -> dict[str, Any]:
        """The ``state_attrs`` values; torch and NumPy generators are saved as their states."""
        state: dict[str, Any] = {}
        for name in self.state_attrs:
            value = getattr(self, name)
            if isinstance(value, torch.Generator):
                value = value.get_state()
            elif isinstance(value, np.random.Generator):
                value = value.bit_generator.state
            state[name] = value
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (generators are reset to the saved states, in place)."""
        for name in self.state_attrs:
            current = getattr(self, name)
            if isinstance(current, torch.Generator):
                current.set_state(state[name].cpu())
            elif isinstance(current, np.random.Generator):
                current.bit_generator.state = state[name]
            else:
                setattr(self, name, state[name])
