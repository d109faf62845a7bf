"""Per-parameter-tensor norms: gradient (before clipping), parameter, distance from init, update size.

All four use ``torch._foreach_norm`` over the list of trainable parameters: one fused call per quantity.
The gradient norm is read in a post-accumulate-grad hook, i.e. the gradient exactly as backward produced
it, before any clipping or other in-place change by the training loop. A parameter that got no gradient
in a recorded step has gradient norm 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.hooks import RemovableHandle

from dynamics.probes.base import Context, Probe, StepData, Variable

_PARAM = ("param",)


def _param_coords(context: Context) -> dict[str, list[str]]:
    return {"param": list(context.param_names)}


class GradNorm(Probe):
    """``grad_norm(step, param)``: L2 norm of each parameter tensor's gradient before clipping."""

    name = "grad_norm"

    def __init__(self) -> None:
        self._norms: list[torch.Tensor] = []
        self._zero: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._context: Context | None = None

    def attach(self, context: Context) -> None:
        self._context = context
        self._zero = torch.zeros((), device=context.params[0].device) if context.params else None
        self._norms = [self._zero] * len(context.params)
        for index, param in enumerate(context.params):
            self._handles.append(param.register_post_accumulate_grad_hook(self._hook(index)))

    def _hook(self, index: int) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            if self._context.recording and not self._context.paused:
                self._norms[index] = torch.linalg.vector_norm(param.grad.detach())

        return hook

    coords = staticmethod(_param_coords)

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("grad_norm", _PARAM, {"units": "loss/param", "long_name": "gradient L2 norm",
                                               "description": "as backward produced it, before clipping"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        norms = torch.stack(self._norms).float()
        self._norms = [self._zero] * len(self._norms)
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
        return {"param_norm": torch.stack(torch._foreach_norm([p.detach() for p in context.params])).float()}


class DistanceFromInit(Probe):
    """``dist_from_init(step, param)``: |theta_t - theta_init| with theta_init taken when recording starts."""

    name = "dist_from_init"
    coords = staticmethod(_param_coords)

    def __init__(self) -> None:
        self.initial: list[torch.Tensor] = []

    def attach(self, context: Context) -> None:
        self.initial = [p.detach().clone() for p in context.params]

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("dist_from_init", _PARAM, {"units": "param", "long_name": "distance from initialisation"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        moved = torch._foreach_sub([p.detach() for p in context.params], self.initial)
        return {"dist_from_init": torch.stack(torch._foreach_norm(moved)).float()}


class UpdateNorm(Probe):
    """``update_norm(step, param)``: |theta_t - theta_{t-1}|, theta_{t-1} being the parameters one step earlier.

    A copy of the parameters is taken after the step before each recorded step (and at start, so step 0
    measures the first update from the initial parameters).
    """

    name = "update_norm"
    coords = staticmethod(_param_coords)

    def __init__(self) -> None:
        self.previous: list[torch.Tensor] = []

    def attach(self, context: Context) -> None:
        self.previous = [p.detach().clone() for p in context.params]

    def before_recorded_step(self, context: Context) -> None:
        torch._foreach_copy_(self.previous, [p.detach() for p in context.params])

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("update_norm", _PARAM, {"units": "param", "long_name": "update L2 norm"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        moved = torch._foreach_sub([p.detach() for p in context.params], self.previous)
        return {"update_norm": torch.stack(torch._foreach_norm(moved)).float()}
