"""Per-parameter-tensor norms: gradient (before clipping), parameter, distance from init, update size.

For float32 CPU parameters the native kernels (``dynamics.native``) measure: the parameter, distance and update
norms of a step in one pass over the parameters (``_NormPass``: each parameter read once, accumulated in double,
tensors shared out over torch's threads), the gradient norms in one call at the end of backward. Elsewhere
``torch._foreach_norm``. The gradient norm is read at the end of the backward pass (post-accumulate-grad hooks
note which gradients changed, an engine callback reads them), i.e. the gradient exactly as backward produced
it, before any clipping or other in-place change by the training loop. Values are float32 when the
parameters are; the recorder stores every row as float32. A parameter that got no gradient
in a recorded step has gradient norm 0.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch.utils.hooks import RemovableHandle

from dynamics import native
from dynamics.probes.base import Context, Probe, StepData, Variable

_PARAM = ("param",)


class _NormPass:
    """``param_norm``, ``dist_from_init`` and ``update_norm`` of one recorder's step in one native call.

    Each of the three probes that is attached registers here (``register``; the distance and update probes with
    their own copies of the parameters, ``initial`` and ``previous``, in ``copies``: None where the kernels cannot
    read them); the first one to measure a step runs the pass for all of them, into ``values`` (one float32 row
    per kind), and each copies its row into the recorded row. With ``copy`` (the next step is recorded too) the
    pass also refreshes ``previous`` while the parameters are in cache.
    """

    NORM, DIST, UPDATE = 0, 1, 2

    def __init__(self, count: int) -> None:
        self.values = np.zeros((3, count), dtype=np.float32)
        self.rows = [self.values[kind].ctypes.data for kind in range(3)]
        self.nbytes = 4 * count
        self.norm = False
        self.copies: dict[int, native.TensorList | None] = {self.DIST: None, self.UPDATE: None}
        self.copied = False
        """Whether the last pass copied the parameters into ``previous``."""
        self._step = -1
        self._arguments: tuple[Any, ...] | None = None
        """The pass's fixed arguments (``_prepare``), made at its first step after a ``register``."""

    @classmethod
    def of(cls, context: Context) -> _NormPass:
        """The pass of this recorder (made by the first probe that asks)."""
        shared = context.shared.get("parameter_norms")
        if shared is None:
            shared = context.shared["parameter_norms"] = cls(len(context.params))
        return shared

    def register(self, kind: int, copies: native.TensorList | None = None) -> None:
        """Measure ``kind`` too: NORM, or DIST and UPDATE against a probe's ``copies`` of the parameters (None where
        the kernels cannot read them; a restored checkpoint registers its copies again)."""
        if kind == self.NORM:
            self.norm = True
        else:
            self.copies[kind] = copies
        self._arguments = None

    def measure_into(self, context: Context, kind: int, address: int) -> bool:
        """Write this step's values of ``kind`` as float32 at ``address``; False where the kernels cannot."""
        library = context.param_kernels
        if library is None or (kind != self.NORM and self.copies[kind] is None):
            return False
        if self._step != context.measured_steps:
            self._step = context.measured_steps
            self.copied = copy = context.next_recorded and self.copies[self.UPDATE] is not None
            arguments = self._arguments
            if arguments is None:
                arguments = self._arguments = self._prepare(context)
            library.norms_f32(arguments[0], context.param_pointers, *arguments[1:], copy, torch.get_num_threads())
        ctypes.memmove(address, self.rows[kind], self.nbytes)
        return True

    def _prepare(self, context: Context) -> tuple[Any, ...]:
        """The pass's arguments other than the parameters' addresses, the copy flag and the thread count."""
        initial, previous = self.copies[self.DIST], self.copies[self.UPDATE]
        return (context.param_list.count, context.param_list.numel_address, self.rows[self.NORM] if self.norm else None,
                None if initial is None else initial.address, self.rows[self.DIST],
                None if previous is None else previous.address, self.rows[self.UPDATE])


def _own_copies(tensors: list[torch.Tensor]) -> native.TensorList | None:
    """A probe's copies of the parameters as the pass reads them, or None where the kernels cannot."""
    return native.TensorList(tensors) if native.supports(tensors) else None


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
        self._norms_set = False
        """Whether ``_norms`` holds a measured norm (else every entry is the zero of an untouched gradient)."""
        self._grad_pointers: native.PointerArray | None = None
        self._zero: torch.Tensor | None = None
        self._handles: list[RemovableHandle] = []
        self._context: Context | None = None
        self._touched: list[int] = []
        self._queued = False
        self._queue_callback = torch.autograd.Variable._execution_engine.queue_callback

    def attach(self, context: Context) -> None:
        self._context = context
        self._zero = torch.zeros((), device=context.params[0].device) if context.params else None
        self._norms = [self._zero] * len(context.params)
        self._host = np.zeros(len(context.params), dtype=np.float32)
        self._host_address = self._host.ctypes.data
        self._grad_pointers = native.PointerArray(len(context.params))
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
        """Have the engine call ``_read_norms`` at the end of this backward pass (right away outside one)."""
        try:
            self._queue_callback(self._read_norms)
        except RuntimeError:  # not inside an engine-run backward: read right away
            self._read_norms()
        else:
            self._queued = True

    def _read_norms(self) -> None:
        """Norms of every gradient touched since the last call, in one fused call (one native call when every
        gradient was touched and the kernels can read them all)."""
        self._queued = False
        touched = self._touched
        if not touched:
            return
        params = self._context.params
        if len(touched) >= len(params) and len(set(touched)) == len(params):
            touched.clear()
            if self._read_native(params):
                return
            indices = range(len(params))
        else:
            indices = list(dict.fromkeys(touched))
            touched.clear()
        grads = [_dense(params[i].grad) for i in indices]
        if self._host_fresh:  # an earlier backward of this step wrote natively: continue in tensors
            self._norms = list(torch.from_numpy(self._host.copy()).unbind())
            self._host_fresh = False
        with torch.no_grad():
            norms = torch._foreach_norm(grads)
        for i, norm in zip(indices, norms, strict=True):
            self._norms[i] = norm
        self._norms_set = True

    def _read_native(self, params: list[torch.Tensor]) -> bool:
        """All gradient norms in one native call into ``_host``; False where the kernels cannot read them.

        Only the parameters are checked (a cached check, ``TensorList.supported_pointers``): autograd gives a
        gradient its parameter's dtype, device and strides, so the gradients of float32 contiguous CPU
        parameters are too, unless sparse (which have no data pointer).
        """
        context = self._context
        library = context.kernels
        if library is None or not context.param_list.supported_pointers():
            return False
        try:
            pointers = self._grad_pointers.set([p.grad.data_ptr() for p in params])
        except RuntimeError:  # sparse gradients
            return False
        library.norms_f32(len(params), pointers, context.param_list.numel_address, self._host_address, None, None,
                          None, None, False, torch.get_num_threads())
        self._host_fresh = True
        return True

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
        if self._touched:
            self._read_norms()
        if not self._host_fresh:
            return False
        ctypes.memmove(address, self._host_address, self._host.nbytes)
        self._reset()
        return True

    def _reset(self) -> None:
        """Norms back to 0 for the next recorded step (a parameter without a gradient there has norm 0)."""
        if self._norms_set:
            self._norms = [self._zero] * len(self._norms)
            self._norms_set = False
        self._host_fresh = False

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


class ParamNorm(Probe):
    """``param_norm(step, param)``: L2 norm of each parameter tensor after the optimizer step."""

    name = "param_norm"
    coords = staticmethod(_param_coords)

    def attach(self, context: Context) -> None:
        self._pass = _NormPass.of(context)
        self._pass.register(_NormPass.NORM)

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("param_norm", _PARAM, {"units": "param", "long_name": "parameter L2 norm"})]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        return {"param_norm": torch.stack(torch._foreach_norm(context.params))}

    def measure_into(self, context: Context, data: StepData, address: int) -> bool:
        return self._pass.measure_into(context, _NormPass.NORM, address)


class _NormFromCopy(Probe):
    """|theta - c| per parameter tensor, ``c`` the probe's own copy of the parameters (the attribute named by
    ``state_attrs[0]``, taken at ``attach``), measured natively in the shared pass as ``kind``."""

    kind: int
    coords = staticmethod(_param_coords)

    def __init__(self) -> None:
        setattr(self, self.state_attrs[0], [])
        self._pass: _NormPass | None = None

    def _copy(self) -> list[torch.Tensor]:
        return getattr(self, self.state_attrs[0])

    def attach(self, context: Context) -> None:
        setattr(self, self.state_attrs[0], [p.detach().clone() for p in context.params])
        self._pass = _NormPass.of(context)
        self._register()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self._pass is not None:
            self._register()

    def _register(self) -> None:
        """Give the shared pass the current copy (a restored checkpoint replaces it)."""
        self._pass.register(self.kind, _own_copies(self._copy()))

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        return {self.name: torch.stack(torch._foreach_norm(torch._foreach_sub(context.params, self._copy())))}

    def measure_into(self, context: Context, data: StepData, address: int) -> bool:
        return self._pass.measure_into(context, self.kind, address)


class DistanceFromInit(_NormFromCopy):
    """``dist_from_init(step, param)``: |theta_t - theta_init| with theta_init taken when recording starts."""

    name = "dist_from_init"
    state_attrs = ("initial",)
    kind = _NormPass.DIST
    initial: list[torch.Tensor]

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("dist_from_init", _PARAM, {"units": "param", "long_name": "distance from initialisation"})]


class UpdateNorm(_NormFromCopy):
    """``update_norm(step, param)``: |theta_t - theta_{t-1}|, theta_{t-1} being the parameters one step earlier.

    A copy of the parameters is taken after the step before each recorded step (and at start, so step 0
    measures the first update from the initial parameters). Natively, when the next step is recorded too,
    the copy is made in the same pass that measures the update.
    """

    name = "update_norm"
    state_attrs = ("previous",)
    kind = _NormPass.UPDATE
    previous: list[torch.Tensor]

    def __init__(self) -> None:
        super().__init__()
        self._copied = False
        """Whether the last measurement already copied the parameters for the next (recorded) step."""

    def before_recorded_step(self, context: Context) -> None:
        if self._copied:
            self._copied = False
            return
        previous = self._pass.copies[self.kind]
        params = context.param_list
        pointers = params.supported_pointers() if previous is not None and context.kernels is not None else 0
        if pointers:
            context.kernels.copy_tensors_f32(params.count, previous.address, pointers, params.numel_address)
            return
        with torch.no_grad():
            torch._foreach_copy_(self.previous, context.params)

    def variables(self, context: Context) -> list[Variable]:
        return [Variable("update_norm", _PARAM, {"units": "param", "long_name": "update L2 norm"})]

    def measure_into(self, context: Context, data: StepData, address: int) -> bool:
        done = super().measure_into(context, data, address)
        self._copied = done and self._pass.copied
        return done
