"""Activation statistics per activation module: flat (zero/saturated) and dead-unit fractions, moments.

Forward hooks read each activation module's output (or, for GELU/SiLU, its input) during the gradient-
enabled forward passes of a recorded step. Several passes in one step (gradient accumulation, a module
used twice) are pooled: fractions and moments over all entries seen, and a unit is dead when it is flat
for every sample of every pass. A *unit* is one entry of the per-sample activation (every coordinate
except the batch dimension, e.g. a channel at a position for a 1-D convolution). ``act_std`` is the
population standard deviation (ddof = 0). Reductions are sign-sums and batch maxima, the cheapest
kernels that give exact counts, and everything stays on the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dynamics.probes.base import Context, Probe, StepData, Variable
from dynamics.probes.flat_regions import FlatRule, flat_rule


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


def _moments(values: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean and population variance of one pass, centred (no E[y^2] - mean^2 cancellation)."""
    var, mean = torch.var_mean(values, correction=0)
    return {"mean": mean, "var": var}


def _pool_moments(passes: list[_Pass], entries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled mean and variance of several passes in float64 (parallel-variance combination)."""
    if len(passes) == 1:
        return passes[0].mean.double(), passes[0].var.double()
    weights = torch.tensor([p.entries / entries for p in passes], dtype=torch.float64, device=passes[0].mean.device)
    means = torch.stack([p.mean for p in passes]).double()
    variances = torch.stack([p.var for p in passes]).double()
    mean = (weights * means).sum()
    return mean, (weights * (variances + (means - mean) ** 2)).sum()


@dataclass
class _Pass:
    """Statistics of one forward pass through one activation module."""

    entries: int
    flat: torch.Tensor | None = None
    active: torch.Tensor | None = None
    mean: torch.Tensor | None = None
    var: torch.Tensor | None = None


class ActivationStats(Probe):
    """``act_zero_frac``, ``act_dead_frac``, ``act_mean``, ``act_std`` per activation module (``layer``)."""

    name = "activations"

    def __init__(self) -> None:
        self.layer_names: list[str] = []
        self.rules: list[FlatRule] = []
        self._passes: list[list[_Pass]] = []
        self._handles: list[RemovableHandle] = []
        self._context: Context | None = None

    def attach(self, context: Context) -> None:
        self._context = context
        for name, module in context.model.named_modules():
            rule = flat_rule(module)
            if rule is None:
                continue
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

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not self._context.capturing:
                return
            values = _as_float(output)
            self._passes[index].append(_Pass(
                entries=values.numel(), flat=count_flat(values, rule), active=active_units(values, rule),
                **_moments(values),
            ))

        return hook

    def _input_hook(self, index: int) -> Callable[[nn.Module, tuple], None]:
        rule = self.rules[index]

        def hook(module: nn.Module, args: tuple) -> None:
            if not self._context.capturing:
                return
            values = _as_float(args[0])
            self._passes[index].append(_Pass(
                entries=values.numel(), flat=count_flat(values, rule), active=active_units(values, rule),
            ))

        return hook

    def _moments_hook(self, index: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if not self._context.capturing or not self._passes[index]:
                return
            moments = _moments(_as_float(output))
            last = self._passes[index][-1]
            last.mean, last.var = moments["mean"], moments["var"]

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
        per_layer = [self._summarise(passes, device) for passes in self._passes]
        for passes in self._passes:
            passes.clear()
        zero, dead, mean, std = (torch.stack(column) for column in zip(*per_layer, strict=True))
        return {"act_zero_frac": zero, "act_dead_frac": dead, "act_mean": mean, "act_std": std}

    @staticmethod
    def _summarise(passes: list[_Pass], device: torch.device) -> tuple[torch.Tensor, ...]:
        if not passes:
            nan = torch.full((), float("nan"), device=device)
            return nan, nan, nan, nan
        entries = sum(p.entries for p in passes)
        flat = torch.stack([p.flat for p in passes]).sum() if len(passes) > 1 else passes[0].flat
        by_shape: dict[torch.Size, torch.Tensor] = {}
        for p in passes:
            seen = by_shape.get(p.active.shape)
            by_shape[p.active.shape] = p.active if seen is None else torch.maximum(seen, p.active)
        units = sum(mask.numel() for mask in by_shape.values())
        active = sum(mask.sum() for mask in by_shape.values())
        mean, var = _pool_moments(passes, entries)
        return flat / entries, 1.0 - active / units, mean.float(), var.sqrt().float()

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
