"""Exact per-sample gradient Gram matrices, one layer at a time, from one forward and one backward pass.

For per-sample losses l_1..l_B and a parameter tensor theta, G[i, j] = <grad_theta l_i, grad_theta l_j>.
Stiffness, gradient diversity, GSNR and clean-vs-mixed alignment are functions of G
(:mod:`dynamics.probes.gradient_stats`). :func:`per_sample_gram` runs the model once on the batch, with
forward hooks that keep each handled layer's input and tensor hooks that keep the gradient of the summed
loss with respect to its output, then builds each layer's Gram from those two, never holding the per-sample
gradients of more than one layer at a time:

- ``nn.Linear`` (inputs ``(B, d)`` or sequences ``(B, ..., d)``) and ``nn.Conv1d/2d/3d`` (inputs cut into
  patches, any stride, padding, padding mode, dilation and groups): the per-sample weight gradient is
  sum_t d_t a_t^T over positions t. Either the ghost identity G = sum_{t,t'} (a_t.a_t')(d_t.d_t'), costing
  B^2 T^2 (d_in + d_out), or materialised per-sample gradients (B T d_in d_out, then B^2 d_in d_out for the
  Gram), whichever costs fewer multiply-adds. Bias: the per-sample sum of d over positions.
- ``nn.Embedding``: the per-sample gradient scatters output gradients onto the rows of the tokens used;
  either the ghost identity over equal token ids or the scatter onto the batch's distinct tokens.
- ``nn.LayerNorm`` and ``nn.BatchNorm*d`` in eval mode: weight gradient sum over positions of
  normalised input * d, bias gradient sum of d.
- Any other parameter (a module of another type, a parameter used outside its own module's forward, such
  as ``nn.MultiheadAttention``'s ``out_proj``, or a parameter shared by several modules): per-sample
  gradients of that module's parameters from ``torch.func`` (``vmap`` over ``grad`` of the whole model's
  ``functional_call``, differentiating those parameters only), one module at a time. Which uses of a
  parameter happen inside its module's forward is observed while the forward runs, so a handled layer
  whose weight is also used elsewhere is routed to this fallback instead of being miscounted.

**Batch coupling.** Per-sample gradients exist only when each sample's loss depends on that sample alone.
BatchNorm that normalises with batch statistics (train mode, or no running statistics) couples the
samples, so by default such a model raises :class:`~dynamics.errors.ConfigError`; ``batchnorm="eval"``
instead evaluates those BatchNorm layers with their running statistics for this call (the Gram of the
eval-mode network at the current parameters). Stochastic layers (dropout in train mode) see the RNG state
the caller left; the ``torch.func`` fallback refuses randomness, so call such models in eval mode.

**No side effects.** Gradients come from ``torch.autograd.grad`` (``.grad`` is untouched); parameters are
only read; buffers are copied before and restored after; every module's train/eval mode is restored; the
pass runs inside ``torch.random.fork_rng`` (CPU and the inputs' CUDA device). Hooks that others registered
on the model do fire, on the forward pass and on the fallback's vmapped passes; pause them around the call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.overrides import TorchFunctionMode

from dynamics.errors import ConfigError
from dynamics.probes.isolation import preserved_state

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps model outputs and targets of a batch of B samples to the B per-sample losses."""
BATCHNORM_POLICIES = ("raise", "eval")


@dataclass(frozen=True)
class Moments:
    """Per-element sums over the batch of the per-sample gradients and of their squares (float64, param shape)."""

    sum: torch.Tensor
    sum_sq: torch.Tensor


Result = tuple[torch.Tensor, Moments | None]
"""One parameter tensor's Gram (B x B, float64) and, when asked for, its moments."""
Call = tuple[torch.Tensor, torch.Tensor]
"""One call of a handled layer: its input and the gradient of the summed loss with respect to its output."""


def per_sample_gram(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, *, batchnorm: str = "raise"
) -> dict[str, torch.Tensor]:
    """Per trainable parameter name, and ``"total"`` (their sum), the B x B per-sample gradient Gram (float64).

    ``loss_fn(model(inputs), targets)`` must return the B per-sample losses. ``batchnorm`` ("raise" or
    "eval") decides what BatchNorm layers normalising with batch statistics do (module docstring).
    """
    grams, _ = _compute(model, loss_fn, inputs, targets, batchnorm, moments=False)
    return grams


def per_sample_gram_with_moments(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    batchnorm: str = "raise",
) -> tuple[dict[str, torch.Tensor], dict[str, Moments]]:
    """:func:`per_sample_gram` plus, per parameter name, the per-element moments of the per-sample gradients.

    The moments feed the exact per-element GSNR (:func:`~dynamics.probes.gradient_stats.gsnr_elementwise`);
    sequence layers then use materialised per-sample gradients, the ghost identity gives no moments.
    """
    grams, moments = _compute(model, loss_fn, inputs, targets, batchnorm, moments=True)
    return grams, {name: m for name, m in moments.items() if m is not None}


def _choose_ghost(ghost_cost: int, materialise_cost: int) -> bool:
    """Whether the ghost identity costs fewer multiply-adds than materialised per-sample gradients."""
    return ghost_cost < materialise_cost


def _rows(per: torch.Tensor, moments: bool) -> Result:
    """Gram and moments of per-sample gradients ``per`` shaped (B, *param shape)."""
    flat = per.reshape(len(per), -1)
    mom = Moments(per.sum(0, dtype=torch.float64), per.square().sum(0, dtype=torch.float64)) if moments else None
    return (flat @ flat.T).double(), mom


def _outer(a: torch.Tensor, d: torch.Tensor, moments: bool) -> Result:
    """Gram of per-sample gradients sum_t d_t a_t^T (shape (d_out, d_in)) of ``a`` (B, T, d_in), ``d`` (B, T, d_out)."""
    batch, tokens, d_in = a.shape
    d_out = d.shape[2]
    ghost = _choose_ghost(batch * tokens * tokens * (d_in + d_out), tokens * d_in * d_out + batch * d_in * d_out)
    if ghost and tokens == 1:
        a1, d1 = a[:, 0], d[:, 0]
        mom = Moments((d1.T @ a1).double(), (d1.square().T @ a1.square()).double()) if moments else None
        return ((a1 @ a1.T) * (d1 @ d1.T)).double(), mom
    if ghost and not moments:
        af, df = a.reshape(batch * tokens, d_in), d.reshape(batch * tokens, d_out)
        return ((af @ af.T) * (df @ df.T)).view(batch, tokens, batch, tokens).sum((1, 3)).double(), None
    return _rows(torch.bmm(d.transpose(1, 2), a), moments)


def _cat(parts: list[torch.Tensor], dim: int) -> torch.Tensor:
    """``torch.cat`` without the copy for the usual single call."""
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim)


def _linear(module: nn.Linear, calls: list[Call], moments: bool) -> dict[str, Result]:
    batch = len(calls[0][0])
    a = _cat([x.reshape(batch, -1, x.shape[-1]) for x, _ in calls], 1)
    d = _cat([g.reshape(batch, -1, g.shape[-1]) for _, g in calls], 1)
    out = {"weight": _outer(a, d, moments)}
    if module.bias is not None:
        out["bias"] = _rows(d.sum(1), moments)
    return out


def _patches(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """Input patches (B, L, C_in * K) of a convolution, in the weight's (channel, kernel...) order.

    Built contiguous as (B, C_in * K, L), a copy whose inner loop runs along the input's positions, and
    returned transposed (a view that matrix products read without copying).
    """
    x = F.pad(
        x,
        module._reversed_padding_repeated_twice,
        mode="constant" if module.padding_mode == "zeros" else module.padding_mode,
    )
    spatial = x.dim() - 2
    for axis, (k, dilation, stride) in enumerate(zip(module.kernel_size, module.dilation, module.stride, strict=True)):
        x = x.unfold(2 + axis, dilation * (k - 1) + 1, stride)[..., ::dilation]  # views
    # (B, C, *out, *kernel) -> (B, C, *kernel, *out)
    x = x.permute(0, 1, *range(2 + spatial, 2 + 2 * spatial), *range(2, 2 + spatial))
    positions = math.prod(x.shape[2 + spatial :])
    return x.reshape(len(x), -1, positions).contiguous().transpose(1, 2)  # contiguous: windows may overlap


def _conv(module: nn.Conv1d | nn.Conv2d | nn.Conv3d, calls: list[Call], moments: bool) -> dict[str, Result]:
    """Convolutions as linear maps of input patches (positions are the T of :func:`_outer`)."""
    a = _cat([_patches(module, x) for x, _ in calls], 1)  # (B, L, C_in * K)
    d = _cat([g.flatten(2).transpose(1, 2) for _, g in calls], 1)  # (B, L, C_out)
    batch, positions, groups = a.shape[0], a.shape[1], module.groups
    if groups == 1:
        out = {"weight": _outer(a, d, moments)}
    else:
        a = a.reshape(batch, positions, groups, -1)
        d = d.reshape(batch, positions, groups, -1)
        parts = [_outer(a[:, :, k], d[:, :, k], moments) for k in range(groups)]
        mom = None
        if moments:
            mom = Moments(*(torch.cat([getattr(p[1], f) for p in parts]) for f in ("sum", "sum_sq")))
        out = {"weight": (sum(p[0] for p in parts), mom)}
    if moments:
        gram, mom = out["weight"]
        out["weight"] = (gram, Moments(mom.sum.view(module.weight.shape), mom.sum_sq.view(module.weight.shape)))
    if module.bias is not None:
        out["bias"] = _rows(d.sum(1).reshape(batch, -1), moments)
    return out


def _embedding(module: nn.Embedding, calls: list[Call], moments: bool) -> dict[str, Result]:
    """Ghost identity over equal token ids, or the scatter of output gradients onto the batch's distinct tokens."""
    batch = len(calls[0][0])
    ids = _cat([x.reshape(batch, -1) for x, _ in calls], 1)
    d = _cat([g.reshape(batch, -1, g.shape[-1]) for _, g in calls], 1)
    if module.padding_idx is not None:
        d = d * (ids != module.padding_idx).unsqueeze(-1)
    tokens, dim = ids.shape[1], d.shape[2]
    unique, inverse = torch.unique(ids, return_inverse=True)
    distinct = len(unique)
    if not moments and _choose_ghost(batch * tokens * tokens * dim, tokens * dim + batch * distinct * dim):
        flat_ids, df = ids.reshape(-1), d.reshape(-1, dim)
        same = flat_ids.unsqueeze(1) == flat_ids.unsqueeze(0)
        return {"weight": (((df @ df.T) * same).view(batch, tokens, batch, tokens).sum((1, 3)).double(), None)}
    rows = (torch.arange(batch, device=ids.device).unsqueeze(1) * distinct + inverse).reshape(-1)
    per = d.new_zeros(batch * distinct, dim).index_add_(0, rows, d.reshape(-1, dim)).view(batch, distinct, dim)
    gram, mom = _rows(per, moments)
    if mom is not None:
        full = [
            module.weight.new_zeros(module.weight.shape, dtype=torch.float64).index_copy_(0, unique, m)
            for m in (mom.sum, mom.sum_sq)
        ]
        mom = Moments(*full)
    return {"weight": (gram, mom)}


def _normalisation(module: nn.LayerNorm | _BatchNorm, calls: list[Call], moments: bool) -> dict[str, Result]:
    """LayerNorm / eval-mode BatchNorm: weight gradient sum of x_hat * d, bias gradient sum of d, per sample."""
    batch = len(calls[0][0])
    weight = bias = 0
    for x, g in calls:
        if isinstance(module, nn.LayerNorm):
            dims = tuple(range(-len(module.normalized_shape), 0))
            var, mean = torch.var_mean(x, dims, correction=0, keepdim=True)
            x_hat = (x - mean) * torch.rsqrt(var + module.eps)
            size = math.prod(module.normalized_shape)
            flat_x, flat_g = (x_hat * g).reshape(batch, -1, size), g.reshape(batch, -1, size)
        else:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x_hat = (x - module.running_mean.view(shape)) * torch.rsqrt(module.running_var.view(shape) + module.eps)
            flat_x = (x_hat * g).reshape(batch, x.shape[1], -1).transpose(1, 2)
            flat_g = g.reshape(batch, x.shape[1], -1).transpose(1, 2)
        weight = weight + flat_x.sum(1)
        bias = bias + flat_g.sum(1)
    out = {}
    if module.weight is not None:
        out["weight"] = _rows(weight.view(batch, *module.weight.shape), moments)
    if module.bias is not None:
        out["bias"] = _rows(bias.view(batch, *module.bias.shape), moments)
    return out


_RULES: tuple[tuple[type[nn.Module], Callable[[Any, list[Call], bool], dict[str, Result]]], ...] = (
    (nn.Linear, _linear),
    (nn.Conv1d, _conv),
    (nn.Conv2d, _conv),
    (nn.Conv3d, _conv),
    (nn.Embedding, _embedding),
    (nn.LayerNorm, _normalisation),
    (_BatchNorm, _normalisation),
)


def _rule(module: nn.Module) -> Callable[[Any, list[Call], bool], dict[str, Result]] | None:
    """The handler of a module whose forward is its library class's own (subclasses that override it fall back)."""
    for cls, handler in _RULES:
        if isinstance(module, cls) and type(module).forward is cls.forward:
            if isinstance(module, nn.Embedding) and (module.max_norm is not None or module.scale_grad_by_freq):
                return None
            return handler
    return None


class _Capture(TorchFunctionMode):
    """Keeps the inputs and output gradients of handled layers and notes their parameters' uses elsewhere."""

    def __init__(self, owners: dict[int, nn.Module]) -> None:
        super().__init__()
        self.owners = owners
        """id(parameter) -> the handled module owning it."""
        self.calls: dict[nn.Module, list[list[Any]]] = {}
        """Per module, per call: [input, output gradient (None until one flows), (output shape, dtype)]."""
        self.stack: list[nn.Module] = []
        self.outside: set[int] = set()
        """ids of handled parameters used while their own module's forward was not the innermost running."""
        self.constant_input: set[nn.Module] = set()
        """Modules called at least once on an input that needs no gradient."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        for arg in (*args, *kwargs.values()):
            for item in arg if isinstance(arg, list | tuple) else (arg,):
                owner = self.owners.get(id(item))
                if owner is not None and (not self.stack or self.stack[-1] is not owner):
                    self.outside.add(id(item))
        return func(*args, **kwargs)

    def pre_hook(self, module: nn.Module, args: tuple) -> None:
        self.stack.append(module)

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.stack.pop()
        x = args[0]
        if not x.requires_grad:
            self.constant_input.add(module)
        entry = [x.detach(), None, (output.shape, output.dtype)]
        self.calls.setdefault(module, []).append(entry)
        if output.requires_grad:
            output.register_hook(lambda g: entry.__setitem__(1, g))


def _compute(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, batchnorm: str, moments: bool
) -> tuple[dict[str, torch.Tensor], dict[str, Moments | None]]:
    if batchnorm not in BATCHNORM_POLICIES:
        raise ConfigError(f"batchnorm must be one of {', '.join(BATCHNORM_POLICIES)}, got {batchnorm!r}")
    coupled = [m for m in model.modules() if isinstance(m, _BatchNorm) and (m.training or m.running_mean is None)]
    if any(m.running_mean is None for m in coupled) or (coupled and batchnorm == "raise"):
        raise ConfigError(
            "per-sample gradients are undefined while BatchNorm normalises with batch statistics "
            "(it couples the samples); put the model in eval mode, or pass batchnorm='eval' to use "
            "the running statistics (BatchNorm without running statistics cannot be evaluated)"
        )
    modes = [(m, m.training) for m in model.modules()]
    try:
        for m in coupled:
            m.eval()
        with preserved_state(model, inputs.device), torch.enable_grad():
            return _passes(model, loss_fn, inputs, targets, moments)
    finally:
        for m, mode in modes:
            m.training = mode


def _passes(
    model: nn.Module,
    loss_fn: LossFn,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    moments: bool,
) -> tuple[dict[str, torch.Tensor], dict[str, Moments | None]]:
    """The hooked forward/backward for handled layers, then the fallback for the other parameters."""
    batch = len(inputs)
    names = {id(p): name for name, p in model.named_parameters() if p.requires_grad}
    holders: dict[int, list[tuple[nn.Module, str]]] = {}
    for module in model.modules():
        for local, p in module.named_parameters(recurse=False):
            if id(p) in names:
                holders.setdefault(id(p), []).append((module, local))
    owners = {pid: held[0][0] for pid, held in holders.items() if len(held) == 1 and _rule(held[0][0]) is not None}
    capture = _Capture(owners)
    handles = []
    for module in dict.fromkeys(owners.values()):
        handles.append(module.register_forward_pre_hook(capture.pre_hook, prepend=True))
        handles.append(module.register_forward_hook(capture.hook))
    x = inputs.detach().requires_grad_() if inputs.is_floating_point() else inputs
    try:
        with capture:
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    losses = loss_fn(output, targets)
    if losses.shape != (batch,):
        raise ConfigError(f"loss_fn must return one loss per sample, shape ({batch},), got {tuple(losses.shape)}")
    handled = {pid for pid in owners if pid not in capture.outside}
    # Weight gradients of layers whose every call had a gradient-carrying input are not needed: every such
    # layer lies on a path to the inputs or to a requested parameter, so its output hooks fire regardless.
    skipped = {pid for pid in handled if owners[pid] not in capture.constant_input}
    requested = ([x] if x.requires_grad else []) + [
        p for p in model.parameters() if id(p) in names and id(p) not in skipped
    ]
    if requested and losses.requires_grad:
        torch.autograd.grad(losses.sum(), requested, allow_unused=True)
    del output, losses

    results: dict[int, Result] = {}
    for module, calls in capture.calls.items():
        local = {name: p for name, p in module.named_parameters(recurse=False) if id(p) in handled}
        if not local:
            continue
        kept = [(x_in, g if g is not None else x_in.new_zeros(like[0], dtype=like[1])) for x_in, g, like in calls]
        calls.clear()
        per_param = _rule(module)(module, kept, moments)
        for name, p in local.items():
            results[id(p)] = per_param[name]
    params = {pid: p for p in model.parameters() if (pid := id(p)) in names}
    for pid in handled - results.keys():  # a handled module that was never called: zero gradients
        zero = torch.zeros(batch, batch, dtype=torch.float64, device=inputs.device)
        shape = params[pid].shape
        results[pid] = (zero, Moments(zero.new_zeros(shape), zero.new_zeros(shape)) if moments else None)
    groups: dict[nn.Module, list[str]] = {}
    for pid, name in names.items():
        if pid not in handled:
            groups.setdefault(holders[pid][0][0], []).append(name)
    for group in groups.values():
        per = _fallback(model, loss_fn, inputs, targets, group)
        for name in group:
            results[id(model.get_parameter(name))] = _rows(per[name], moments)
            del per[name]

    grams = {names[pid]: results[pid][0] for pid in params}
    total = torch.zeros(batch, batch, dtype=torch.float64, device=inputs.device)
    for gram in grams.values():
        total = total + gram
    grams["total"] = total
    return grams, {names[pid]: results[pid][1] for pid in params}


def _fallback(
    model: nn.Module, loss_fn: LossFn, inputs: torch.Tensor, targets: torch.Tensor, group: list[str]
) -> dict[str, torch.Tensor]:
    """Per-sample gradients (B, *shape) of the named parameters: torch.func over the whole model, the rest fixed."""
    from torch.func import functional_call, grad, vmap

    fixed = {name: p.detach() for name, p in model.named_parameters()}
    buffers = dict(model.named_buffers())
    theta = {name: fixed[name] for name in group}

    def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, ({**fixed, **params}, buffers), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0)).sum()

    return vmap(grad(loss), in_dims=(None, 0, 0))(theta, inputs, targets)
