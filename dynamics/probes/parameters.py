"""Per-parameter-tensor norms: gradient (before clipping), parameter, distance from init, update size.

Each is one ``torch._foreach_norm`` over the parameter list (a fused multi-tensor kernel on GPUs), stacked into
one vector on the device. The gradient norm is read at the end of the backward pass (post-accumulate-grad
hooks note which gradients changed, an engine callback reads them), i.e. the gradient exactly as backward
produced it, before any clipping or other in-place change by the training loop. A parameter that got no
gradient in a recorded step has gradient norm NaN (there is no gradient to measure).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.hooks import RemovableHandle

from dynamics.probes.base import Context, Probe, StepData, Variable

_PARAM = ("param",)


def _dense(grad: torch.Tensor) -> torch.Tensor:
    """The tensor whose norm is the gradient's, for ``_foreach_norm``: a sparse gradient (``nn.Embedding(sparse=True)``)
    gives its coalesced values (duplicate indices summed)."""
    return grad.coalesce().values() if grad.is_sparse else grad


def _param_coords(context: Context) -> dict[str, list[str]]:
    return {"param": list(context.param_names)}


class GradNorm(Probe):
    """``grad_norm(step, param)``: L2 norm of each parameter tensor's gradient before clipping.

    Each parameter's post-accumulate-grad hook only notes that its gradient changed; at the end of the
    backward pass (an autograd engine callback, before control returns to the training loop and so before
    any clipping) one ``_foreach_norm`` reads all the changed gradients. With gradient accumulation every
    backward pass refreshes the norms of the gradients it touched, so the last one wins.
    """

    name = "grad_norm"

    def __init__(self) -> None:
        self._norms: list[torch.Tensor] = []
        self._missing: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._context: Context | None = None
        self._touched: list[int] = []
        self._queued = False
        self.absent: dict[int, list[int]] = {}
        """Steps measured since the recorder's last flush at which some parameters had no gradient (their NaN
        norms): step -> parameter indices. The recorder tells them from diverged gradients."""

    def attach(self, context: Context) -> None:
        self._context = context
        device = context.params[0].device if context.params else torch.device("cpu")
        self._missing = torch.full((), float("nan"), device=device)
        self._norms = [self._missing] * len(context.params)
        for index, param in enumerate(context.params):
            self._handles.append(param.register_post_accumulate_grad_hook(self._hook(index)))

    def _hook(self, index: int) -> Callable[[torch.Tensor], None]:
        context = self._context
        touched = self._touched

        def hook(param: torch.Tensor) -> None:
            if context.recording and not context.paused:
                touched.append(index)
                if not self._queued:
                    self._queue()

        return hook

    def _queue(self) -> None:
        """Have the engine call ``_read_norms`` at the end of this backward pass (right away outside one).

        In a distributed (DDP) run the reducer queues its own end-of-backward callback, which waits for the
        gradients' all-reduce, only when the last bucket is ready, after this one: the read then queues itself
        once more, to run after it and measure the synchronised gradient.
        """
        read = self._read_norms if self._context.world_size == 1 else self._read_after_reducer
        try:
            torch.autograd.Variable._execution_engine.queue_callback(read)
        except RuntimeError:  # not inside an engine-run backward: read right away
            self._read_norms()
        else:
            self._queued = True

    def _read_after_reducer(self) -> None:
        torch.autograd.Variable._execution_engine.queue_callback(self._read_norms)

    def _read_norms(self) -> None:
        """Norms of every gradient touched since the last call, in one fused call."""
        self._queued = False
        if not self._touched:
            return
        indices = list(dict.fromkeys(self._touched))
        self._touched.clear()
        params = self._context.params
        with torch.no_grad():
            norms = torch._foreach_norm([_dense(params[i].grad) for i in indices])
        for i, norm in zip(indices, norms, strict=True):
            self._norms[i] = norm

    coords = staticmethod(_param_coords)

    def variables(self, context: Context) -> list[Variable]:
        return [
            Variable(
                "grad_norm",
                _PARAM,
                {
                    "units": "loss/param",
                    "long_name": "gradient L2 norm",
                    "description": "as backward produced it, before clipping; NaN where the parameter got no gradient",
                },
            )
        ]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        self._read_norms()  # gradients noted outside a backward callback, if any
        absent = [i for i, norm in enumerate(self._norms) if norm is self._missing]
        if absent:
            self.absent[context.step] = absent
        norms = torch.stack(self._norms)
        self._norms = [self._missing] * len(self._norms)  # a parameter without a gradient next time: NaN
        return {"grad_norm": norms}

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class ParamNorm(Probe):
    """``param_norm(step, param)``: L2 norm of each parameter tensor after the optimizer step."""

    name = "param_norm"
    coords = staticmethod(_param_coords)

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("param_norm", _PARAM, {"units": "param", "long_name": "parameter L2 norm"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        return {"param_norm": torch.stack(torch._foreach_norm(context.params))}


class DistanceFromInit(Probe):
    """``dist_from_init(step, param)``: |theta_t - theta_init| with theta_init taken when recording starts."""

    name = "dist_from_init"
    state_attrs = ("initial",)
    coords = staticmethod(_param_coords)

    def __init__(self) -> None:
        self.initial: list[torch.Tensor] = []

    def attach(self, context: Context) -> None:
        self.initial = [p.detach().clone() for p in context.params]

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("dist_from_init", _PARAM, {"units": "param", "long_name": "distance from initialisation"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        return {"dist_from_init": torch.stack(torch._foreach_norm(torch._foreach_sub(context.params, self.initial)))}


class UpdateNorm(Probe):
    """``update_norm(step, param)``: |theta_t - theta_{t-1}|, theta_{t-1} being the parameters one step earlier.

    A copy of the parameters is taken after the step before each recorded step (and at start, so step 0
    measures the first update from the initial parameters).
    """

    name = "update_norm"
    state_attrs = ("previous",)
    coords = staticmethod(_param_coords)

    def __init__(self) -> None:
        self.previous: list[torch.Tensor] = []

    def attach(self, context: Context) -> None:
        self.previous = [p.detach().clone() for p in context.params]

    def before_recorded_step(self, context: Context) -> None:
        with torch.no_grad():
            torch._foreach_copy_(self.previous, context.params)

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("update_norm", _PARAM, {"units": "param", "long_name": "update L2 norm"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        return {"update_norm": torch.stack(torch._foreach_norm(torch._foreach_sub(context.params, self.previous)))}
