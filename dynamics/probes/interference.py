"""Gradient interference and activation revival of Mixup on the current batch (arXiv 2504.01737).

Every ``interval`` steps (a :class:`~dynamics.probes.cadence.FixedCadence`; NaN at the other recorded steps)
the probe reruns the step's clean batch ``x`` with labels ``y`` (``StepData.inputs`` and ``target``) and its
mixed version ``(x~, y~) = mixer(x, y)``, at the parameters after the step's update (those the next step
starts from). The mixer is the probe's own :class:`~dynamics.strategies.mixup.Mixup` (the run's Mixup
settings, or a configured alpha when the run mixes nothing), with its own generator.

- ``interference_cos`` / ``interference_ratio`` (param) and ``interference_cos_model`` /
  ``interference_ratio_model``: with g_c and g_m the gradients of the mean cross-entropy on (x, y) and on
  (x~, y~) (soft targets, the mixer's label smoothing on both), per parameter tensor and for the whole
  model, cos = <g_c, g_m> / (|g_c| |g_m|) and the interference ratio
  r = |g_m - (<g_m, g_c> / |g_c|^2) g_c| / |g_m|, the sine of the angle (science.md, GIE). Float64 sums;
  NaN where a gradient is zero.
- ``mix_strength``: how strongly the probe's batch was mixed, the mean over samples of min(lambda, 1 - lambda)
  (0: unmixed, 0.5: even halves). With one lambda per batch (``mix_mode="batch"``) r and cos follow it
  closely, so condition on it when comparing measurements.
- ``revival_frac`` (layer): among the units flat for every clean sample (a unit is one entry of the
  per-sample activation; flat regions as in :mod:`dynamics.probes.flat_regions`, the layers
  :class:`~dynamics.probes.activations.ActivationStats` records), the fraction outside the flat region for
  at least one mixed sample; NaN where no unit is flat for every clean sample. ``zero_frac_clean`` /
  ``zero_frac_mixed``: fraction of flat entries on the clean and on the mixed batch. A module called several
  times per forward pass contributes the units of every call.
- ``atd_mean`` / ``atd_var`` (layer), with a probe set: the Activation Trajectory Distance, per training
  sample of the probe set the L2 distance between its activation vector (the layer's whole output for that
  sample, all calls) at this measurement and at the previous one (the first compares with the activations
  when the probe attached); mean and population variance over the samples. Eval mode, as every probe-set
  pass (:func:`~dynamics.probes.probe_set.side_pass`).
- ``sample_align_cos``, with ``sample_alignment``: the mean over the batch of cos(g_clean_i, g_mixed_i), the
  per-sample gradients of each clean sample and of its mixed counterpart, whole model, from the per-sample
  Gram of [clean; mixed] (:func:`~dynamics.probes.per_sample_gram.per_sample_gram`, BatchNorm on its
  running statistics there, since batch statistics couple the samples; zero-gradient samples left out).
  From the clean block of the same Gram (:mod:`~dynamics.probes.gradient_stats`): ``stiffness_same`` /
  ``stiffness_diff`` (mean cosine of two clean samples' gradients, same class / different classes),
  ``grad_diversity`` (sum_i |g_i|^2 / |sum_i g_i|^2) and ``gsnr`` (param: the layer-aggregate GSNR,
  |mean g|^2 over the summed per-element variance).

**No side effects on training.** The batch passes run in the model's current (training) mode, so
BatchNorm normalises with batch statistics as training does, in float32 without autocast. Gradients come
from ``torch.autograd.grad``, so ``.grad`` and gradient-accumulation hooks are untouched; buffers
(BatchNorm running statistics, batch counters) are copied before and restored after; each pass runs inside
``torch.random.fork_rng`` over the CPU and the model's CUDA device, so both passes see the global RNG
state training left (the same dropout masks) and leave it as it was; ``context.paused`` keeps other
probes' hooks from capturing. Parameters and optimizer state are only read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from dynamics.errors import ConfigError
from dynamics.probes.activations import nonflat_per_unit
from dynamics.probes.base import Context, StepData, Variable
from dynamics.probes.cadence import FixedCadence, SparseProbe
from dynamics.probes.flat_regions import FlatRule, activation_layers
from dynamics.probes.gradient_stats import alignment, gradient_diversity, gsnr_aggregate, stiffness
from dynamics.probes.isolation import preserved_state
from dynamics.probes.per_sample_gram import per_sample_gram
from dynamics.probes.probe_set import ProbeSet, side_pass

if TYPE_CHECKING:  # strategies import the config, which imports the probes: no runtime import here
    from dynamics.strategies.mixup import Mixup

Reduced = tuple[torch.Tensor, torch.Tensor, int]
"""One call of an activation module on a batch: per-unit active mask, flat-entry count, entries."""


def gradient_interference(
    clean: Sequence[torch.Tensor],
    mixed: Sequence[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tensor cos and ratio r, then whole-model cos and r, of gradients ``mixed`` against ``clean`` (float64).

    r = |g_m - (<g_m, g_c> / |g_c|^2) g_c| / |g_m|, the perpendicular part taken explicitly (no cancellation
    in 1 - cos^2 for nearly parallel gradients). NaN where a norm is zero.
    """
    c = [g.detach().double().flatten() for g in clean]
    m = [g.detach().double().flatten() for g in mixed]
    dots = torch.stack([a @ b for a, b in zip(c, m, strict=True)])
    cc = torch.stack([a @ a for a in c])
    mm = torch.stack([b @ b for b in m])
    perp = torch.stack([(b - (d / n) * a).square().sum() for a, b, d, n in zip(c, m, dots, cc, strict=True)])
    coefficient = dots.sum() / cc.sum()
    perp_model = sum((b - coefficient * a).square().sum() for a, b in zip(c, m, strict=True))
    cos = dots / (cc * mm).sqrt()
    ratio = perp.sqrt() / mm.sqrt()
    cos_model = dots.sum() / (cc.sum() * mm.sum()).sqrt()
    ratio_model = perp_model.sqrt() / mm.sum().sqrt()
    return cos, ratio, cos_model, ratio_model


def revival(
    clean: Sequence[Reduced],
    mixed: Sequence[Reduced],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Revival fraction and flat fractions (clean, mixed) of one layer from its calls on both batches.

    Float64 on ``device``; NaN for a layer that did not run.
    """
    if len(clean) != len(mixed) or any(a[0].shape != b[0].shape for a, b in zip(clean, mixed, strict=True)):
        raise ConfigError(
            "an activation module ran differently on the clean and the mixed batch; "
            "the interference probe needs one forward path for both"
        )
    zero = torch.zeros((), dtype=torch.float64, device=device)
    dead = sum(((1.0 - active).double().sum() for active, _, _ in clean), zero)
    revived = sum(
        (((1.0 - a).double() * b.double()).sum() for (a, _, _), (b, _, _) in zip(clean, mixed, strict=True)), zero
    )
    entries = sum((n for _, _, n in clean), zero)
    zero_clean = sum((flat.double() for _, flat, _ in clean), zero) / entries
    zero_mixed = sum((flat.double() for _, flat, _ in mixed), zero) / entries
    return revived / dead, zero_clean, zero_mixed


def trajectory_distance(previous: torch.Tensor, current: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ATD: mean and population variance over samples (rows) of the L2 distance between two activation sets."""
    distance = (current.double() - previous.double()).norm(dim=1)
    return distance.mean(), distance.var(correction=0)


def _per_sample_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each sample against its soft target."""
    return F.cross_entropy(output.float(), target, reduction="none")


class Interference(SparseProbe):
    """Gradient interference, activation revival and ATD of Mixup, every ``interval`` steps (module docstring).

    Args:
        mixer: the probe's own mixer (its generator is advanced only by the probe); mixes every batch it gets
            when ``prob`` is 1.
        interval: steps between measurements (at the first recorded step at or after each due step).
        every: the recorder's ``every``.
        probe_set: samples for the Activation Trajectory Distance; None leaves ``atd_*`` out.
        batch_size: probe-set samples per forward pass.
        sample_alignment: also record ``sample_align_cos`` (one per-sample Gram of 2 x batch samples).
    """

    name = "interference"
    state_attrs = (*SparseProbe.state_attrs, "_previous", "_mixer_rng")

    def __init__(
        self,
        mixer: Mixup,
        *,
        interval: int = 10,
        every: int = 1,
        probe_set: ProbeSet | None = None,
        batch_size: int = 512,
        sample_alignment: bool = False,
    ) -> None:
        super().__init__(FixedCadence(interval), every)
        if not mixer.enabled:
            raise ConfigError(
                "the interference probe needs a mixer that mixes: give it mixup_alpha > 0 (or "
                "cutmix_alpha > 0) and prob > 0",
                key="mixup_alpha",
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.mixer = mixer
        self._mixer_rng = mixer.rng
        """The mixer's generator, restored in place by a resumed run (``state_attrs``)."""
        self.probe_set = probe_set
        self.batch_size = batch_size
        self.sample_alignment = sample_alignment
        self.layer_names: list[str] = []
        self.rules: list[FlatRule] = []
        self._handles: list[RemovableHandle] = []
        self._sink: Callable[[int, torch.Tensor, str], None] | None = None
        """Receives (layer index, values, "input" or "output") from the hooks while the probe reads."""
        self._previous: list[torch.Tensor] = []
        self._data: StepData | None = None

    def attach(self, context: Context) -> None:
        for name, module, rule in activation_layers(context.model):
            index = len(self.layer_names)
            self.layer_names.append(name)
            self.rules.append(rule)
            if rule.space == "input":
                self._handles.append(module.register_forward_pre_hook(self._input_hook(index)))
            self._handles.append(module.register_forward_hook(self._output_hook(index)))
        if self.probe_set is not None and self.layer_names:
            self._previous = self.probe_activations(context)

    def _input_hook(self, index: int) -> Callable[[nn.Module, tuple], None]:
        def hook(module: nn.Module, args: tuple) -> None:
            if self._sink is not None:
                self._sink(index, args[0].detach().float(), "input")

        return hook

    def _output_hook(self, index: int) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            if self._sink is not None:
                self._sink(index, output.detach().float(), "output")

        return hook

    @contextmanager
    def _reading(self, sink: Callable[[int, torch.Tensor, str], None]) -> Iterator[None]:
        self._sink = sink
        try:
            yield
        finally:
            self._sink = None

    def probe_activations(self, context: Context) -> list[torch.Tensor]:
        """Per layer, the output vectors (n x units of all calls) of the probe set's training samples, eval mode."""
        rows: list[list[torch.Tensor]] = [[] for _ in self.layer_names]
        calls: list[list[torch.Tensor]] = [[] for _ in self.layer_names]

        def keep(index: int, values: torch.Tensor, kind: str) -> None:
            if kind == "output":
                calls[index].append(values.flatten(1).clone())

        x = self.probe_set.x_train
        with torch.no_grad(), side_pass(context), self._reading(keep):
            for start in range(0, len(x), self.batch_size):
                batch = x[start : start + self.batch_size]
                context.model(batch)
                for layer, seen in zip(rows, calls, strict=True):  # a layer that did not run has no units
                    layer.append(torch.cat(seen, dim=1) if seen else batch.new_zeros(len(batch), 0))
                    seen.clear()
        return [torch.cat(layer) for layer in rows]

    def coords(self, context: Context) -> dict[str, list[str]]:
        coords = {"param": list(context.param_names)}
        if self.layer_names:
            coords["layer"] = list(self.layer_names)
        return coords

    def variables(self, context: Context) -> list[Variable]:
        common = {
            "units": "1",
            "mixup_alpha": self.mixer.mixup_alpha,
            "cutmix_alpha": self.mixer.cutmix_alpha,
            "mix_mode": self.mixer.mode,
            **self.cadence_attrs,
        }
        ratio = "|g_mix - proj_{g_clean} g_mix| / |g_mix| (sine of the angle)"
        variables = [
            Variable("interference_cos", ("param",), {**common, "long_name": "cos(g_clean, g_mix) per tensor"}),
            Variable(
                "interference_ratio",
                ("param",),
                {**common, "long_name": "interference ratio per tensor", "description": ratio},
            ),
            Variable("interference_cos_model", (), {**common, "long_name": "cos(g_clean, g_mix), whole model"}),
            Variable(
                "interference_ratio_model",
                (),
                {**common, "long_name": "interference ratio, whole model", "description": ratio},
            ),
            Variable(
                "mix_strength",
                (),
                {
                    **common,
                    "long_name": "mixing strength of the probe's mixed batch",
                    "description": "mean over samples of min(lambda, 1 - lambda)",
                },
            ),
        ]
        if self.sample_alignment:
            variables.append(
                Variable(
                    "sample_align_cos",
                    (),
                    {
                        **common,
                        "long_name": "mean per-sample cos(g_clean_i, g_mixed_i), whole model",
                        "description": "per-sample gradients of each clean sample and its mixed counterpart, "
                        "BatchNorm on running statistics",
                    },
                )
            )
            clean = {
                **common,
                "description": "per-sample gradients of the clean batch, BatchNorm on running "
                "statistics (dynamics.probes.gradient_stats)",
            }
            variables += [
                Variable("stiffness_same", (), {**clean, "long_name": "stiffness within classes (mean cosine)"}),
                Variable("stiffness_diff", (), {**clean, "long_name": "stiffness between classes (mean cosine)"}),
                Variable("grad_diversity", (), {**clean, "long_name": "gradient diversity, whole model"}),
                Variable(
                    "gsnr",
                    ("param",),
                    {
                        **clean,
                        "long_name": "gradient signal-to-noise ratio per tensor",
                        "description": "|mean g|^2 / summed per-element variance (population), clean batch",
                    },
                ),
            ]
        if not self.layer_names:
            return variables
        flat = {
            **common,
            "flat_rules": {name: rule.as_attrs() for name, rule in zip(self.layer_names, self.rules, strict=True)},
        }
        variables += [
            Variable(
                "revival_frac",
                ("layer",),
                {
                    **flat,
                    "long_name": "activation revival fraction",
                    "description": "units flat for every clean sample that are active for some mixed sample, "
                    "over the units flat for every clean sample",
                },
            ),
            Variable("zero_frac_clean", ("layer",), {**flat, "long_name": "flat-entry fraction, clean batch"}),
            Variable("zero_frac_mixed", ("layer",), {**flat, "long_name": "flat-entry fraction, mixed batch"}),
        ]
        if self.probe_set is not None:
            atd = {**common, "units": "activation", "probe_samples": len(self.probe_set.x_train)}
            variables += [
                Variable(
                    "atd_mean",
                    ("layer",),
                    {
                        **atd,
                        "long_name": "activation trajectory distance, mean",
                        "description": "mean over probe samples of |a(t) - a(t_prev)|",
                    },
                ),
                Variable(
                    "atd_var",
                    ("layer",),
                    {
                        **atd,
                        "units": "activation^2",
                        "long_name": "activation trajectory distance, variance",
                        "description": "population variance over probe samples",
                    },
                ),
            ]
        return variables

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        self._data = data
        try:
            return super().measure(context, data)
        finally:
            self._data = None

    def _batch_pass(
        self,
        context: Context,
        x: torch.Tensor,
        target: torch.Tensor,
    ) -> tuple[tuple[torch.Tensor, ...], list[list[Reduced]]]:
        """Gradient of the mean cross-entropy and the reduced activations of one pass; buffers and RNG restored."""
        calls: list[list[Reduced]] = [[] for _ in self.layer_names]

        def reduce(index: int, values: torch.Tensor, kind: str) -> None:
            rule = self.rules[index]
            if kind == rule.space:
                per_unit = nonflat_per_unit(values, rule)
                calls[index].append((torch.sign(per_unit), values.numel() - per_unit.sum(), values.numel()))

        with preserved_state(context.model, x.device), torch.enable_grad(), self._reading(reduce):
            loss = _per_sample_loss(context.model(x), target).mean()
            grads = torch.autograd.grad(loss, context.params, allow_unused=True)
        return tuple(torch.zeros_like(p) if g is None else g for p, g in zip(context.params, grads, strict=True)), calls

    def measure_now(self, context: Context) -> dict[str, torch.Tensor]:
        data = self._data
        if data is None or data.inputs is None or data.target is None:
            raise ConfigError(
                "the interference probe reruns the step's batch; pass Recorder.step(..., "
                "target=labels, inputs=clean_inputs)"
            )
        if data.target.ndim != 1:
            raise ConfigError(
                "the interference probe mixes classification batches; it needs one integer label "
                f"per sample, got targets shaped {tuple(data.target.shape)}"
            )
        x, y = data.inputs.detach(), data.target.detach()
        mixed_x, mixed_y, mix = self.mixer(x, y)
        _, clean_y, _ = self.mixer(x, y, 0.0)  # alpha 0: the same soft targets unmixed, no random draw
        paused = context.paused
        context.paused = True
        try:
            g_clean, a_clean = self._batch_pass(context, x, clean_y)
            g_mixed, a_mixed = self._batch_pass(context, mixed_x, mixed_y)
            if self.sample_alignment:
                grams = per_sample_gram(
                    context.model,
                    _per_sample_loss,
                    torch.cat([x, mixed_x]),
                    torch.cat([clean_y, mixed_y]),
                    batchnorm="eval",
                )
                per_sample = self._per_sample_statistics(grams, y, context.param_names)
        finally:
            context.paused = paused
        cos, ratio, cos_model, ratio_model = gradient_interference(g_clean, g_mixed)
        values = {
            "interference_cos": cos,
            "interference_ratio": ratio,
            "interference_cos_model": cos_model,
            "interference_ratio_model": ratio_model,
            "mix_strength": torch.tensor(mix.strength, device=x.device),
        }
        if self.sample_alignment:
            values.update(per_sample)
        if self.layer_names:
            revived, zero_clean, zero_mixed = zip(
                *(revival(c, m, x.device) for c, m in zip(a_clean, a_mixed, strict=True)), strict=True
            )
            values.update(
                revival_frac=torch.stack(revived),
                zero_frac_clean=torch.stack(zero_clean),
                zero_frac_mixed=torch.stack(zero_mixed),
            )
            if self.probe_set is not None:
                current = self.probe_activations(context)
                mean, var = zip(
                    *(trajectory_distance(old, new) for old, new in zip(self._previous, current, strict=True)),
                    strict=True,
                )
                self._previous = current
                values.update(atd_mean=torch.stack(mean), atd_var=torch.stack(var))
        return {name: value.float() for name, value in values.items()}

    @staticmethod
    def _per_sample_statistics(
        grams: dict[str, torch.Tensor], labels: torch.Tensor, param_names: Sequence[str]
    ) -> dict[str, torch.Tensor]:
        """Alignment from the Gram of [clean; mixed]; stiffness, diversity and GSNR from its clean block."""
        n = len(labels)
        clean = grams["total"][:n, :n]
        stiff = stiffness(clean, labels)
        return {
            "sample_align_cos": alignment(grams["total"]).pair_cos.nanmean(),
            "stiffness_same": stiff.same,
            "stiffness_diff": stiff.diff,
            "grad_diversity": gradient_diversity(clean),
            "gsnr": torch.stack([gsnr_aggregate(grams[name][:n, :n]) for name in param_names]),
        }

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._previous = []
