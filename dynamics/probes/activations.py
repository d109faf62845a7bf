"""Activation statistics per activation module: flat (zero/saturated) and dead-unit fractions, moments.

Forward hooks read each activation module's output (or, for GELU/SiLU, its input) during the gradient-
enabled forward passes of a recorded step. Several passes in one step (gradient accumulation, a module
used twice) are pooled: fractions and moments over all entries seen, and a unit is dead when it is flat
for every sample of every pass. A *unit* is one entry of the per-sample activation (every coordinate
except the batch dimension, e.g. a channel at a position for a 1-D convolution). ``act_std`` is the
population standard deviation (ddof = 0).

Each pass leaves one small vector per layer, [entries outside the flat region, active units, sum, centred
sum of squares], from the cheapest reductions that give exact counts (per-unit sums of signs: on a CPU
``count_nonzero`` and ``var_mean`` cost 20-40x a plain sum); the squares are centred on the pass's mean,
since E[y^2] - mean^2 loses the variance of a saturating layer (mean 0.5, spread 0.03) to cancellation. At
measurement one vectorised float64 step turns all layers into the recorded fractions and moments, on the
device; several passes pool by the parallel-variance formula.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dynamics.probes.base import Context, Probe, StepData, Variable
from dynamics.probes.flat_regions import FlatRule, activation_layers, flat_rule


def nonflat_per_unit(values: torch.Tensor, rule: FlatRule) -> torch.Tensor:
    """Per unit (non-batch coordinates), the number of samples outside the flat region, as an exact float
    count: the batch sum of sign(relu(value - low)) for a low tail times sign(relu(high - value)) for a high
    one. A unit is active when its count is positive; the entries outside the flat region are its total."""
    inside = None
    if rule.low is not None:
        inside = torch.sign(values if rule.low == 0.0 and rule.nonnegative else torch.relu(values - rule.low))
    if rule.high is not None:
        below = torch.sign(torch.relu(rule.high - values))
        inside = below if inside is None else inside.mul_(below)
    return inside.sum(0)


def _as_float(values: torch.Tensor) -> torch.Tensor:
    values = values.detach()
    return values.float() if values.dtype in (torch.float16, torch.bfloat16) else values


def _counts(values: torch.Tensor, rule: FlatRule) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-unit active mask, entries outside the flat region and active units of one pass, from one batch
    reduction."""
    per_unit = nonflat_per_unit(values, rule)
    active = torch.sign(per_unit)
    return active, per_unit.sum(), active.sum()


def _moments(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and sum of squared deviations from the mean of one pass."""
    total = values.sum()
    return total, torch.sub(values, total, alpha=1.0 / values.numel()).square_().sum()


def _pool_moments(passes: list[_Pass], entries: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled mean and standard deviation of several passes in float64 (parallel-variance combination)."""
    stats = torch.stack([p.stats for p in passes]).double()
    counts = torch.tensor([p.entries for p in passes], dtype=torch.float64, device=stats.device)
    means = stats[:, 2] / counts
    mean = (counts * means).sum() / entries
    return mean, ((stats[:, 3] + counts * (means - mean).square()).sum() / entries).sqrt()


def _union_masks(passes: list[_Pass]) -> list[torch.Tensor]:
    """Per distinct unit shape among ``passes``, the units active in some pass (dead: flat in every pass)."""
    by_shape: dict[torch.Size, torch.Tensor] = {}
    for p in passes:
        seen = by_shape.get(p.active.shape)
        by_shape[p.active.shape] = p.active if seen is None else torch.maximum(seen, p.active)
    return list(by_shape.values())


@dataclass
class _Pass:
    """Statistics of one forward pass through one activation module.

    ``stats`` holds, as one device vector, [entries outside the flat region, active units, sum, sum of
    squared deviations from the mean]; ``active`` is the per-unit mask, kept to pool several passes.
    """

    entries: int
    units: int
    active: torch.Tensor
    stats: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    """[entries outside the flat region, active units] of an input-space rule, until the output's moments."""


class ActivationStats(Probe):
    """``act_zero_frac``, ``act_dead_frac``, ``act_mean``, ``act_std`` per activation module (``layer``)."""

    name = "activations"

    def __init__(self, rule_of: Callable[[nn.Module], FlatRule | None] = flat_rule) -> None:
        """``rule_of`` says which modules are activations and where each is flat (default: ``flat_rule``, the
        ``torch.nn`` activations; an integration passes one that knows its framework's classes too)."""
        self.rule_of = rule_of
        self.layer_names: list[str] = []
        self.rules: list[FlatRule] = []
        self._passes: list[list[_Pass]] = []
        self._handles: list[RemovableHandle] = []
        self._context: Context | None = None
        self._denominators: dict[tuple[int, ...], torch.Tensor] = {}
        self._forwards = 0
        """Forward passes of the whole model captured this step (to tell a reused module from accumulation)."""
        self._warned: set[int] = set()

    def attach(self, context: Context) -> None:
        self._context = context
        self._handles.append(context.model.register_forward_pre_hook(self._count_forward))
        layers = activation_layers(context.model, self.rule_of)
        names: dict[int, list[str]] = {}
        for name, module in context.model.named_modules(remove_duplicate=False):
            names.setdefault(id(module), []).append(name)
        for name, module, _ in layers:
            if len(names[id(module)]) > 1:
                warnings.warn(
                    f"activation module {name!r} is registered under several names "
                    f"{names[id(module)]}; it is recorded once, as {name!r}, pooling every call",
                    stacklevel=3,
                )
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

    def _count_forward(self, module: nn.Module, args: tuple) -> None:
        if self._context.capturing:
            self._forwards += 1

    def _output_hook(self, index: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        rule, passes, context = self.rules[index], self._passes[index], self._context

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if context.capturing:
                values = _as_float(output)
                active, nonflat, units = _counts(values, rule)
                stats = torch.stack((nonflat, units, *_moments(values)))
                passes.append(_Pass(values.numel(), active.numel(), active, stats))

        return hook

    def _input_hook(self, index: int) -> Callable[[nn.Module, tuple], None]:
        rule, passes, context = self.rules[index], self._passes[index], self._context

        def hook(module: nn.Module, args: tuple) -> None:
            if context.capturing:
                values = _as_float(args[0])
                active, nonflat, units = _counts(values, rule)
                passes.append(_Pass(values.numel(), active.numel(), active, counts=torch.stack((nonflat, units))))

        return hook

    def _moments_hook(self, index: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        passes, context = self._passes[index], self._context

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if context.capturing and passes and passes[-1].stats is None:
                passes[-1].stats = torch.cat((passes[-1].counts, torch.stack(_moments(_as_float(output)))))

        return hook

    def coords(self, context: Context) -> dict[str, list[str]]:
        return {"layer": list(self.layer_names)}

    def variables(self, context: Context) -> list[Variable]:
        if not self.layer_names:
            return []
        rules = {name: rule.as_attrs() for name, rule in zip(self.layer_names, self.rules, strict=True)}
        flat = {"flat_rules": rules, "units": "1"}
        return [
            Variable(
                "act_zero_frac",
                ("layer",),
                {
                    **flat,
                    "long_name": "flat-region fraction",
                    "description": "fraction of activation entries in the flat region (zero or saturated)",
                },
            ),
            Variable(
                "act_dead_frac",
                ("layer",),
                {
                    **flat,
                    "long_name": "dead-unit fraction",
                    "description": "fraction of units flat for every sample of the batch (unit = non-batch coordinate)",
                },
            ),
            Variable("act_mean", ("layer",), {"units": "activation", "long_name": "activation mean"}),
            Variable(
                "act_std", ("layer",), {"units": "activation", "long_name": "activation standard deviation (ddof=0)"}
            ),
        ]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        if not self.layer_names:
            return {}
        device = data.loss.device
        if context.world_size > 1:
            zero, dead, mean, std = self._over_processes(context, device)
        elif all(len(passes) == 1 and passes[0].stats is not None for passes in self._passes):
            # the usual step, one pass per layer: every layer at once in a few vector operations
            stats = torch.stack([passes[0].stats for passes in self._passes])
            counts = self._denominator([(p[0].entries, p[0].units) for p in self._passes], device)
            # flat entries and dead units as exact integer differences first: 1 - active/units would lose
            # the relative precision of small fractions to cancellation
            flat = (counts[:, :2] - stats[:, :2]) / counts[:, :2]
            zero, dead = flat[:, 0], flat[:, 1]
            mean, std = stats[:, 2] / counts[:, 2], (stats[:, 3] / counts[:, 2]).sqrt()
        else:
            per_layer = [self._summarise(passes, device) for passes in self._passes]
            zero, dead, mean, std = (torch.stack(column) for column in zip(*per_layer, strict=True))
        self._clear()
        return {"act_zero_frac": zero, "act_dead_frac": dead, "act_mean": mean, "act_std": std}

    def _over_processes(self, context: Context, device: torch.device) -> tuple[torch.Tensor, ...]:
        """The four variables over every process of a distributed run (its global batch): per layer the entries,
        flat entries, sums and sums of squares (uncentred in float64 from each pass's centred ones) are summed,
        and the active-unit masks are joined by one max, in two all-reduces for all layers."""
        sums, counts, masks = [], [], []
        zero = torch.zeros(3, dtype=torch.float64, device=device)
        for passes in self._passes:
            done = [p for p in passes if p.stats is not None]
            layer_masks = _union_masks(done)
            counts.append((sum(p.entries for p in done), sum(m.numel() for m in layer_masks)))
            masks.append(torch.cat([m.reshape(-1).double() for m in layer_masks]) if layer_masks else zero[:0])
            per_pass = [
                torch.stack((p.stats[0], p.stats[2], p.stats[3] + p.stats[2].square() / p.entries)).double()
                for p in done
            ]
            sums.append(torch.stack(per_pass).sum(0) if per_pass else zero)
        totals = torch.cat((torch.stack(sums), torch.tensor(counts, dtype=torch.float64, device=device)), dim=1)
        nonflat, total, squares, entries, units = context.all_reduce(totals).unbind(1)
        units = units / context.world_size  # every process has the same units: they are not added up
        joined = torch.cat(masks)
        active = context.all_reduce(joined, op="max").split([len(m) for m in masks]) if len(joined) else masks
        active = torch.stack([m.sum() for m in active])
        mean = total / entries
        std = (squares / entries - mean.square()).clamp(min=0.0).sqrt()
        return (entries - nonflat) / entries, (units - active) / units, mean, std

    def _clear(self) -> None:
        """Forget this step's passes (after measuring it), naming once a module called more often than the model."""
        for index, passes in enumerate(self._passes):
            if len(passes) > self._forwards > 0 and index not in self._warned:
                self._warned.add(index)
                warnings.warn(
                    f"activation module {self.layer_names[index]!r} ran {len(passes)} times in "
                    f"{self._forwards} forward pass(es) of the model at step {self._context.step}; its "
                    "statistics pool every call (README: what a run holds)",
                    stacklevel=4,
                )
            passes.clear()
        self._forwards = 0

    def _denominator(self, counts: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """(layers, 3) float64 tensor [entries, units, entries], cached by batch shape (no copy per step)."""
        key = tuple(n for pair in counts for n in pair)
        tensor = self._denominators.get(key)
        if tensor is None:
            if len(self._denominators) > 16:
                self._denominators.clear()
            tensor = torch.tensor([(n, u, n) for n, u in counts], dtype=torch.float64, device=device)
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
        masks = _union_masks(passes)
        units = sum(mask.numel() for mask in masks)
        active = sum(mask.sum() for mask in masks)
        mean, std = _pool_moments(passes, entries)
        return (entries - nonflat) / entries, (units - active) / units, mean, std

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
