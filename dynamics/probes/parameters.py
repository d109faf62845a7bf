"""Per-parameter-tensor norms: gradient (before clipping), parameter, distance from init, update size.

Parameter, distance and update norms are one call of the native kernels (``dynamics.native``: one pass
over all tensors, accumulated in double) for float32 CPU parameters, else ``torch._foreach_norm``; the
gradient norm is always ``torch._foreach_norm``.
The gradient norm is read at the end of the backward pass (post-accumulate-grad hooks note which
gradients changed, an engine callback reads them), i.e. the gradient exactly as backward produced it,
before any clipping or other in-place change by the training loop. Values are float32 when the
parameters are; the recorder stores every row as float32. A parameter that got no gradient
in a recorded step has gradient norm 0.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from dynamics import native
from dynamics.probes.base import Context, Probe, StepData, Variable

_PARAM = ("param",)


def _native_norms(context: Context, minus: native.TensorList | None, address: int, copy: bool = False) -> bool:
    """Write ``|theta_i|`` (or ``|theta_i - b_i|``, then with ``copy`` ``b_i = theta_i``) of every parameter as
    float32 at ``address`` in one native call; False where the kernels cannot be used."""
    library = context.param_kernels
    if library is None:
        return False
    params = context.param_list
    library.norms_f32(params.count, context.param_pointers, None if minus is None else minus.pointers(),
                      params.numel_address, address, copy)
    return True


def _param_coords(context: Context) -> dict[str, list[str]]:
    return {"param": list(context.param_names)}


class GradNorm(Probe):
    """``grad_norm(step, param)``: L2 norm of each parameter tensor's gradient before clipping.

    Each parameter's post-accumulate-grad hook only notes that its gradient changed; at the end of the
    backward pass (an autograd engine callback, before control returns to the training loop and so before
    any clipping) one ``_foreach_norm`` reads all the changed gradients. With gradient accumulation every
    backward pass refreshes the norms of the gradients it touched, so the last one wins. When every
    gradient changed and the native kernels can read them, one native call writes the norms into a host
    vector instead, which ``measure_into`` copies into the row.
    """

    name = "grad_norm"

    def __init__(self) -> None:
        self._norms: list[torch.Tensor] = []
        self._host = np.zeros(0, dtype=np.float32)
        self._host_fresh = False
        """Whether ``_host`` holds this step's norms (written natively), instead of ``_norms``."""
        self._grads: native.TensorList | None = None
        self._zero: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._context: Context | None = None
        self._touched: list[int] = []
        self._queued = False

    def attach(self, context: Context) -> None:
        self._context = context
        self._zero = torch.zeros((), device=context.params[0].device) if context.params else None
        self._norms = [self._zero] * len(context.params)
        self._host = np.zeros(len(context.params), dtype=np.float32)
        self._grads = native.TensorList(context.params)
        for index, param in enumerate(context.params):
            self._handles.append(param.register_post_accumulate_grad_hook(self._hook(index)))

    def _hook(self, index: int) -> Callable[[torch.Tensor], None]:
        context = self._context
        touched = self._touched

        def hook(param: torch.Tensor) -> None:
            if not context.recording or context.paused:
                return
            touched.append(index)
            if not self._queued:
                try:
                    torch.autograd.Variable._execution_engine.queue_callback(self._read_norms)
                except RuntimeError:  # not inside an engine-run backward: read right away
                    self._read_norms()
                else:
                    self._queued = True

        return hook

    def _read_norms(self) -> None:
        """Norms of every gradient touched since the last call, in one fused call."""
        self._queued = False
        if not self._touched:
            return
        indices = list(dict.fromkeys(self._touched))
        self._touched.clear()
        params = self._context.params
        if len(indices) == len(params):
            grads = [p.grad for p in params]
            library = self._context.native_for(grads)
            if library is not None:
                library.norms_f32(len(grads), self._grads.pointers(grads), None, self._grads.numel_address,
                                  self._host.ctypes.data, False)
                self._host_fresh = True
                return
        grads = [params[i].grad for i in indices]
        if self._host_fresh:  # an earlier backward of this step wrote natively: continue in tensors
            self._norms = list(torch.from_numpy(self._host.copy()).unbind())
            self._host_fresh = False
        with torch.no_grad():
            norms = torch._foreach_norm(grads)
        for i, norm in zip(indices, norms, strict=True):
            self._norms[i] = norm

    coords = staticmethod(_param_coords)

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("grad_norm", _PARAM, {"units": "loss/param", "long_name": "gradient L2 norm",
                                               "description": "as backward produced it, before clipping"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        self._read_norms()  # gradients noted outside a backward callback, if any
        norms = torch.from_numpy(self._host.copy()) if self._host_fresh else torch.stack(self._norms)
        self._reset()
        return {"grad_norm": norms}

    def measure_into(self, context: Context, data: StepData, address: int) -> bool:
        self._read_norms()
        if not self._host_fresh:
            return False
        ctypes.memmove(address, self._host.ctypes.data, self._host.nbytes)
        self._reset()
        return True

    def _reset(self) -> None:
        """Norms back to 0 for the next recorded step (a parameter without a gradient there has norm 0)."""
        self._norms = [self._zero] * len(self._norms)
        self._host_fresh = False

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

    def measure_into(self, context: Context, data: StepData, address: int) -> bool:
        return _native_norms(context, None, address)


class DistanceFromInit(Probe):
    """``dist_from_init(step, param)``: |theta_t - theta_init| with theta_init taken when recording starts."""

    name = "dist_from_init"
    state_attrs = ("initial",)
    coords = staticmethod(_param_coords)

    def __init__(self) -> None:
        self.initial: list[torch.Tensor] = []
        self._initial: native.TensorList | None = None

    def attach(self, context: Context) -> None:
        self.initial = [p.detach().clone() for p in context.params]

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("dist_from_init", _PARAM, {"units": "param", "long_name": "distance from initialisation"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        return {"dist_from_init": torch.stack(torch._foreach_norm(torch._foreach_sub(context.params, self.initial)))}

    def measure_into(self, context: Context, data: StepData, address: int) -> bool:
        self._initial = native.tensor_list(self.initial, self._initial)
        return _native_norms(context, self._initial, address)


class UpdateNorm(Probe):
    """``update_norm(step, param)``: |theta_t - theta_{t-1}|, theta_{t-1} being the parameters one step earlier.

    A copy of the parameters is taken after the step before each recorded step (and at start, so step 0
    measures the first update from the initial parameters). Natively, when the next step is recorded too,
    the copy is made in the same pass that measures the update.
    """

    name = "update_norm"
    state_attrs = ("previous",)
    coords = staticmethod(_param_coords)

    def __init__(self) -> None:
        self.previous: list[torch.Tensor] = []
        self._previous: native.TensorList | None = None
        self._copied = False
        """Whether the last measurement already copied the parameters for the next (recorded) step."""

    def attach(self, context: Context) -> None:
        self.previous = [p.detach().clone() for p in context.params]

    def before_recorded_step(self, context: Context) -> None:
        if self._copied:
            self._copied = False
            return
        library = context.native_for(context.params)
        if library is not None:
            self._previous = native.tensor_list(self.previous, self._previous)
            params = context.param_list
            library.copy_tensors_f32(params.count, self._previous.pointers(), params.pointers(), params.numel_address)
            return
        with torch.no_grad():
            torch._foreach_copy_(self.previous, context.params)

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("update_norm", _PARAM, {"units": "param", "long_name": "update L2 norm"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        return {"update_norm": torch.stack(torch._foreach_norm(torch._foreach_sub(context.params, self.previous)))}

    def measure_into(self, context: Context, data: StepData, address: int) -> bool:
        self._previous = native.tensor_list(self.previous, self._previous)
        done = _native_norms(context, self._previous, address, copy=context.next_recorded)
        self._copied = done and context.next_recorded
        return done
