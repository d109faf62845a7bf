"""Activation statistics per activation module: flat (zero/saturated) and dead-unit fractions, moments.

Forward hooks read each activation module's output (or, for GELU/SiLU, its input) during the gradient-
enabled forward passes of a recorded step. Several passes in one step (gradient accumulation, a module
used twice) are pooled: fractions and moments over all entries seen, and a unit is dead when it is flat
for every sample of every pass. A *unit* is one entry of the per-sample activation (every coordinate
except the batch dimension, e.g. a channel at a position for a 1-D convolution). ``act_std`` is the
population standard deviation (ddof = 0). For float32 CPU activations one native pass per layer
(``dynamics.native``) counts, marks active units and sums around a shift (the first sample's mean, so the variance
does not cancel), and one native call turns all layers into the recorded values in the row. Elsewhere the
torch operations: plain sums, sign-sums and batch maxima (for ReLU, batch sums), the cheapest kernels that
give exact counts, and a centred two-pass sum of squares; each pass leaves one small vector per layer, and
one vectorised step turns all layers into the recorded fractions and moments, on the device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dynamics import native
from dynamics.probes.base import Context, Probe, StepData, Variable
from dynamics.probes.flat_regions import FlatRule, activation_layers


def count_flat(values: torch.Tensor, rule: FlatRule) -> torch.Tensor:
    """Number of entries in the flat region, as an exact float count: N - sum(sign(relu(value - low)))."""
    count = values.new_zeros(())
    if rule.low is not None:
        above = values if rule.low == 0.0 and rule.nonnegative else torch.relu(values - rule.low)
        count = count + (values.numel() - torch.sign(above).sum())
    if rule.high is not None:
        count = count + (values.numel() - torch.sign(torch.relu(rule.high - values)).sum())
    return count


def active_units(values: torch.Tensor, rule: FlatRule) -> torch.Tensor:
    """Per unit (non-batch coordinates), 1.0 where some sample is outside the flat region, else 0.0."""
    if rule.low is not None and rule.high is not None:
        inside = torch.sign(torch.relu(values - rule.low)) * torch.sign(torch.relu(rule.high - values))
        return inside.amax(0)
    if rule.low is not None:
        top = values.amax(0)
        return torch.sign(top if rule.low == 0.0 and rule.nonnegative else torch.relu(top - rule.low))
    return torch.sign(torch.relu(rule.high - values.amin(0)))


def _as_float(values: torch.Tensor) -> torch.Tensor:
    values = values.detach()
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


class _Scratch(threading.local):
    """Reusable activation-sized buffers, per thread (hooks of DataParallel replicas run in threads).

    On the CPU a fresh activation-sized temporary per hook costs hundreds of page faults per step (the
    allocator returns large blocks to the system), so buffers are kept, grown to the largest activation
    seen, one per slot; on other devices (CUDA's caching allocator) a fresh tensor is free and keeps
    peak memory lower, so it is allocated per call.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[torch.dtype, int], torch.Tensor] = {}
        self.views: dict[tuple[torch.dtype, int, torch.Size], torch.Tensor] = {}

    def get(self, like: torch.Tensor, slot: int = 0) -> torch.Tensor:
        if like.device.type != "cpu":
            return torch.empty_like(like, memory_format=torch.contiguous_format)
        view = self.views.get((like.dtype, slot, like.shape))
        if view is not None:
            return view
        buffer = self.flat(like.numel(), slot, like.dtype)
        if len(self.views) > 64:
            self.views.clear()
        view = self.views[(like.dtype, slot, like.shape)] = buffer[:like.numel()].view(like.shape)
        return view

    def flat(self, numel: int, slot: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A CPU buffer of at least ``numel`` entries in ``slot``, kept between calls (grown when too small,
        which drops the views of the old one)."""
        key = (dtype, slot)
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = self.buffers[key] = torch.empty(numel, dtype=dtype)
            self.views = {k: v for k, v in self.views.items() if k[:2] != key}
        return buffer


def _is_relu_rule(rule: FlatRule) -> bool:
    """Flat exactly where a nonnegative output is 0 (ReLU): counts and masks come from sign-sums."""
    return rule.low == 0.0 and rule.nonnegative and rule.high is None


def _relu_pass(values: torch.Tensor, scratch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Active mask and [entries > 0, active units, sum, centred sum of squares] of a nonnegative output.

    With every entry >= 0, a unit's batch sum is positive exactly when some sample is positive, so one
    reduction over the batch gives both the active mask and (summed again) the total: five passes over the
    activation in all. ``scratch`` (shaped like ``values``) takes the signs, then the squared deviations.
    """
    per_unit = values.sum(0)
    active = torch.sign(per_unit)
    total = per_unit.sum()
    nonflat = torch.sign(values, out=scratch).sum()
    return active, torch.stack((nonflat, active.sum(), total, _m2(values, total, scratch)))


def _nonflat_and_active(values: torch.Tensor, rule: FlatRule, scratch: _Scratch) -> tuple[torch.Tensor, ...]:
    """Count of entries outside the flat region, per-unit active mask and active-unit count of one pass.

    The same operations as ``count_flat`` and ``active_units`` (so the same exact counts), done in place
    in reusable buffers: ``sign(relu(value - low))`` marks entries above ``low``, ``sign(relu(high - value))``
    entries below ``high``.
    """
    above = below = None
    if rule.low is not None:
        above = torch.sub(values, rule.low, out=scratch.get(values, 0)).relu_().sign_()
    if rule.high is not None:
        below = torch.sub(values, rule.high, out=scratch.get(values, 1)).neg_().relu_().sign_()
    if above is not None and below is not None:
        nonflat = above.sum() + below.sum() - values.numel()
        active = above.mul_(below).amax(0)
    elif above is not None:
        nonflat = above.sum()
        active = torch.sign(torch.relu(values.amax(0) - rule.low))
    else:
        nonflat = below.sum()
        active = torch.sign(torch.relu(rule.high - values.amin(0)))
    return nonflat, active, active.sum()


def _m2(values: torch.Tensor, total: torch.Tensor, scratch: torch.Tensor) -> torch.Tensor:
    """Sum of squared deviations from the mean ``total / numel``, centred (no E[y^2] - mean^2 cancellation).

    Plain float32 sums cost a fraction of ``torch.var_mean`` (on a 128x32x40 CPU tensor about 35 us against
    470 us, whose CPU kernel accumulates in float64). Against a float64 reference the sum of squares agrees
    to ~1e-7 relative, and the mean to ~1e-7 of the standard deviation (absolute), so a mean much closer to
    0 than the spread (tanh, centred layers) has a larger relative error. ``scratch`` receives the squared
    deviations.
    """
    torch.sub(values, total, alpha=1.0 / values.numel(), out=scratch)
    return scratch.square_().sum()


class _NativePass:
    """One layer's fused native pass (``dynamics.native``): its rule's arguments, and result buffers kept from
    step to step (one pair per pass of a step), since on a CPU every fresh tensor costs.

    The usual pass (the first of a step, counts and moments, the shape and thread count of the last such pass)
    has its call prepared in ``ready``: the hook checks the output and makes one call with the cached arguments
    (on a CPU, each Python operation inside the forward pass costs several times what it costs in isolation).
    """

    def __init__(self, rule: FlatRule, scratch: _Scratch, index: int = 0, table: np.ndarray | None = None) -> None:
        self.kind = (native.RULE_LOW if rule.low is not None else 0) | (native.RULE_HIGH if rule.high is not None
                                                                          else 0)
        self.low = 0.0 if rule.low is None else rule.low
        self.high = 0.0 if rule.high is None else rule.high
        self.scratch = scratch
        self.buffers: list[tuple[torch.Tensor, torch.Tensor, torch.Size]] = []
        self.index = index
        self.table = table
        """The probe's (3, layers) int64 [entries, units, stats address] of the prepared passes, or None."""
        self.ready: tuple[torch.Size, int, tuple] | None = None
        """(shape, threads, the call's arguments after the data pointer) of the prepared pass."""
        self.first: _Pass | None = None
        """The prepared pass's record, appended as is at each step (its buffers are refilled in place)."""
        self.masks: torch.Tensor | None = None
        """The other threads' unit masks of the prepared pass (its own: the shared scratch may be reallocated)."""

    def run(self, library: Any, values: torch.Tensor, number: int, counts: bool, moments: bool,
            stats: torch.Tensor | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        """The per-unit active mask (``counts``) and ``stats`` (as in ``_relu_pass``) of pass ``number`` of this step.

        ``counts`` fills ``stats[:2]`` and the mask, ``moments`` fills ``stats[2:]`` (of ``stats`` when given,
        to complete an input-space pass). The rows are split over torch's threads, one unit mask per extra
        thread. A first pass with counts and moments prepares the next steps' call (``ready``).
        """
        buffers = self.buffers
        if number >= len(buffers) or buffers[number][2] != values.shape:
            while len(buffers) <= number:
                buffers.append((torch.empty(4), torch.empty(0), torch.Size()))
            buffers[number] = (buffers[number][0], torch.empty(values.shape[1:]), values.shape)
        own_stats, active, _ = buffers[number]
        stats = own_stats if stats is None else stats
        rows = values.shape[0]
        cols = values.numel() // rows
        threads = torch.get_num_threads()
        prepare = number == 0 and counts and moments and stats is own_stats and self.table is not None
        if threads > 1 and counts:
            masks = (torch.empty((threads - 1) * cols) if prepare else self.scratch.flat((threads - 1) * cols, slot=2))
        else:
            masks = None
        arguments = (rows, cols, self.kind, self.low, self.high, counts, moments, active.data_ptr() if counts else None,
                     stats.data_ptr(), threads, None if masks is None else masks.data_ptr())
        library.activation_stats_f32(values.data_ptr(), *arguments)
        if prepare:
            self.ready = (values.shape, threads, arguments)
            self.masks = masks  # kept alive for the cached address
            self.first = _Pass(values.numel(), active.numel(), active, stats)
            self.table[:, self.index] = (values.numel(), active.numel(), stats.data_ptr())
        return (active if counts else None), stats


def _native_for(context: Context, values: torch.Tensor) -> Any:
    """The native kernels when they can read ``values`` in place (a non-empty float32 contiguous CPU batch,
    outside a ``torch.compile`` trace, which cannot call them), else None."""
    if context.kernels is None or values.dim() == 0 or values.numel() == 0 or torch.compiler.is_compiling():
        return None
    return context.native_for((values,))


def _pool_moments(passes: list[_Pass], entries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled mean and variance of several passes in float64 (parallel-variance combination)."""
    stats = torch.stack([p.stats for p in passes]).double()
    counts = torch.tensor([p.entries for p in passes], dtype=torch.float64, device=stats.device)
    means = stats[:, 2] / counts
    variances = stats[:, 3] / counts
    if len(passes) == 1:
        return means[0], variances[0]
    weights = counts / entries
    mean = (weights * means).sum()
    return mean, (weights * (variances + (means - mean) ** 2)).sum()


@dataclass
class _Pass:
    """Statistics of one forward pass through one activation module.

    ``stats`` holds, as one float32 device vector, [entries outside the flat region, active units, sum,
    sum of squared deviations from the mean]; ``active`` is the per-unit mask, kept to pool several passes.
    """

    entries: int
    units: int
    active: torch.Tensor
    stats: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    """[entries outside the flat region, active units] of an input-space rule, until the output's moments
    (a native pass leaves them in a 4-vector whose moments the output's pass fills in)."""


class ActivationStats(Probe):
    """``act_zero_frac``, ``act_dead_frac``, ``act_mean``, ``act_std`` per activation module (``layer``)."""

    name = "activations"

    def __init__(self) -> None:
        self.layer_names: list[str] = []
        self.rules: list[FlatRule] = []
        self._passes: list[list[_Pass]] = []
        self._handles: list[RemovableHandle] = []
        self._context: Context | None = None
        self._prepared_passes = 0
        """Prepared native passes this step (``_NativePass.ready``): at most one per layer."""
        self._other_passes = 0
        """Passes this step that went another way (another shape, a second pass, input-space rules, torch)."""
        self._denominators: dict[tuple[int, ...], torch.Tensor] = {}
        self._scratch = _Scratch()
        self._fused: dict[int, _NativePass] = {}
        """Native passes of the input-space layers, shared by their input and output hooks."""

    def attach(self, context: Context) -> None:
        self._context = context
        layers = activation_layers(context.model)
        self._prepared = np.zeros((3, len(layers)), dtype=np.int64)
        """[entries, units, stats address] of each layer's prepared native pass (``_NativePass.ready``)."""
        self._prepared_address = self._prepared.ctypes.data
        self._table = np.zeros((3, len(layers)), dtype=np.int64)
        """The same for a step whose single passes were not all prepared (filled at its measurement)."""
        self._table_address = self._table.ctypes.data
        for name, module, rule in layers:
            index = len(self.layer_names)
            self.layer_names.append(name)
            self.rules.append(rule)
            self._passes.append([])
            if rule.space == "input":
                self._handles.append(module.register_forward_pre_hook(self._input_hook(index)))
                self._handles.append(module.register_forward_hook(self._moments_hook(index)))
            else:
                self._handles.append(module.register_forward_hook(self._output_hook(index)))

    def _output_hook(self, index: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        rule = self.rules[index]
        relu = _is_relu_rule(rule)
        passes = self._passes[index]
        context = self._context
        scratch = self._scratch
        fused = _NativePass(rule, scratch, index, self._prepared)
        library = context.kernels
        # bound once: the hook runs inside the forward pass, where each lookup costs (see _NativePass)
        grad_enabled, is_compiling, threads = torch.is_grad_enabled, torch.compiler.is_compiling, torch.get_num_threads
        float32, strided = torch.float32, torch.strided

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not context.recording or context.paused or not grad_enabled():  # Context.capturing, inlined
                return
            ready = fused.ready
            if ready is not None and not passes and not is_compiling() and output.shape == ready[0] \
                    and output.is_cpu and output.dtype is float32 and output.layout is strided \
                    and output.is_contiguous() and threads() == ready[1]:
                library.activation_stats_f32(output.data_ptr(), *ready[2])  # the prepared call
                passes.append(fused.first)
                self._prepared_passes += 1
                return
            self._other_passes += 1
            if _native_for(context, output) is not None:  # read in place: the native pass is outside autograd
                active, stats = fused.run(library, output, len(passes), counts=True, moments=True)
                passes.append(_Pass(output.numel(), active.numel(), active, stats))
                return
            values = _as_float(output)
            if relu:
                active, stats = _relu_pass(values, scratch.get(values))
            else:
                nonflat, active, active_count = _nonflat_and_active(values, rule, scratch)
                total = values.sum()
                stats = torch.stack((nonflat, active_count, total, _m2(values, total, scratch.get(values))))
            passes.append(_Pass(entries=values.numel(), units=active.numel(), active=active, stats=stats))

        return hook

    def _input_hook(self, index: int) -> Callable[[nn.Module, tuple], None]:
        rule = self.rules[index]
        passes = self._passes[index]
        context = self._context
        scratch = self._scratch
        self._fused[index] = fused = _NativePass(rule, scratch)

        def hook(module: nn.Module, args: tuple) -> None:
            if not context.capturing:
                return
            values = _as_float(args[0])
            library = _native_for(context, values)
            if library is not None:
                active, counts = fused.run(library, values, len(passes), counts=True, moments=False)
            else:
                nonflat, active, active_count = _nonflat_and_active(values, rule, scratch)
                counts = torch.stack((nonflat, active_count))
            passes.append(_Pass(entries=values.numel(), units=active.numel(), active=active, counts=counts))
            self._other_passes += 1

        return hook

    def _moments_hook(self, index: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        passes = self._passes[index]
        context = self._context
        scratch = self._scratch

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not context.capturing or not passes or passes[-1].stats is not None:
                return
            values = _as_float(output)
            last = passes[-1]
            library = _native_for(context, values)
            if library is not None and last.counts.numel() == 4:
                last.stats = self._fused[index].run(library, values, len(passes) - 1, counts=False, moments=True,
                                                    stats=last.counts)[1]
                return
            total = values.sum()
            moments = torch.stack((total, _m2(values, total, scratch.get(values))))
            last.stats = torch.cat((last.counts[:2], moments))

        return hook

    def coords(self, context: Context) -> dict[str, list[str]]:
        return {"layer": list(self.layer_names)}

    def variables(self, context: Context) -> list[Variable]:
        if not self.layer_names:
            return []
        rules = {name: rule.as_attrs() for name, rule in zip(self.layer_names, self.rules, strict=True)}
        flat = {"flat_rules": rules, "units": "1"}
        return [
            Variable("act_zero_frac", ("layer",), {
                **flat, "long_name": "flat-region fraction",
                "description": "fraction of activation entries in the flat region (zero or saturated)"}),
            Variable("act_dead_frac", ("layer",), {
                **flat, "long_name": "dead-unit fraction",
                "description": "fraction of units flat for every sample of the batch (unit = non-batch coordinate)"}),
            Variable("act_mean", ("layer",), {"units": "activation", "long_name": "activation mean"}),
            Variable("act_std", ("layer",), {"units": "activation",
                                             "long_name": "activation standard deviation (ddof=0)"}),
        ]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        if not self.layer_names:
            return {}
        device = data.loss.device
        if all(len(passes) == 1 and passes[0].stats is not None for passes in self._passes):
            # the usual step, one pass per layer: every layer at once in a few vector operations
            stats = torch.stack([passes[0].stats for passes in self._passes])
            counts = self._denominator([(p[0].entries, p[0].units) for p in self._passes], device)
            ratios = stats / counts
            # flat entries and dead units as exact integer differences first: 1 - active/units would lose
            # the relative precision of small fractions to cancellation
            flat = (counts[:, :2] - stats[:, :2]) / counts[:, :2]
            zero, dead = flat[:, 0], flat[:, 1]
            mean, std = ratios[:, 2], ratios[:, 3].sqrt()
        else:
            per_layer = [self._summarise(passes, device) for passes in self._passes]
            zero, dead, mean, std = (torch.stack(column) for column in zip(*per_layer, strict=True))
        self._clear()
        return {"act_zero_frac": zero, "act_dead_frac": dead, "act_mean": mean, "act_std": std}

    def measure_into(self, context: Context, data: StepData, address: int) -> bool:
        layers = len(self.layer_names)
        if not layers:
            return True
        if self._prepared_passes == layers and not self._other_passes:  # one prepared pass per layer
            table = self._prepared_address
        else:
            if context.kernels is None or not all(len(p) == 1 and p[0].stats is not None for p in self._passes):
                return False
            pointers = native.readable_pointers([passes[0].stats for passes in self._passes])
            if pointers is None:
                return False
            self._table[:] = [[p[0].entries for p in self._passes], [p[0].units for p in self._passes], pointers]
            table = self._table_address
        # the table's rows: entries, units (int64) and the stats vectors' addresses
        context.kernels.activation_finish_f32(layers, table + 16 * layers, table, table + 8 * layers, address)
        self._clear()
        return True

    def _clear(self) -> None:
        """Forget this step's passes (after measuring it)."""
        for passes in self._passes:
            passes.clear()
        self._prepared_passes = self._other_passes = 0

    def _denominator(self, counts: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """(layers, 4) float tensor [entries, units, entries, entries], cached by batch shape (no copy per step)."""
        key = tuple(n for pair in counts for n in pair)
        tensor = self._denominators.get(key)
        if tensor is None:
            if len(self._denominators) > 16:
                self._denominators.clear()
            tensor = torch.tensor([(n, u, n, n) for n, u in counts], dtype=torch.float32, device=device)
            self._denominators[key] = tensor
        return tensor

    @staticmethod
    def _summarise(passes: list[_Pass], device: torch.device) -> tuple[torch.Tensor, ...]:
        passes = [p for p in passes if p.stats is not None]
        if not passes:
            nan = torch.full((), float("nan"), device=device)
            return nan, nan, nan, nan
        entries = sum(p.entries for p in passes)
        nonflat = torch.stack([p.stats[0] for p in passes]).sum() if len(passes) > 1 else passes[0].stats[0]
        by_shape: dict[torch.Size, torch.Tensor] = {}
        for p in passes:
            seen = by_shape.get(p.active.shape)
            by_shape[p.active.shape] = p.active if seen is None else torch.maximum(seen, p.active)
        units = sum(mask.numel() for mask in by_shape.values())
        active = sum(mask.sum() for mask in by_shape.values())
        mean, var = _pool_moments(passes, entries)
        return (entries - nonflat) / entries, (units - active) / units, mean.float(), var.sqrt().float()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._scratch = _Scratch()  # release the buffers
        self._fused.clear()
