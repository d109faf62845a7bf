"""Trace of the Fisher information on the probe set, with labels sampled from the model (Achille et al. 2019).

tr F = E_x E_{y ~ p(y|x)} |grad_theta log p(y|x)|^2 over the trainable parameters theta: the *true* Fisher,
whose labels come from the model's own predictive distribution, not the empirical Fisher of the data
labels. The probe draws one label per probe sample (all training and test samples of the probe set) at
each measurement from a private, seeded ``torch.Generator`` (the global RNG is untouched) and averages the
squared norms of the per-sample gradients. Per-sample gradients come from ``torch.func`` (``vmap`` over
``grad`` of a ``functional_call``), in chunks of ``batch_size`` samples, in eval mode (see
:mod:`dynamics.probes.probe_set`): nothing writes ``.grad``, so gradient hooks do not fire, and parameters,
optimizer state and BatchNorm statistics are only read. An early spike of tr F marks the break-even point /
Fisher explosion of Jastrzebski et al. (2021).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from dynamics.errors import ConfigError
from dynamics.probes.base import Context, Variable
from dynamics.probes.cadence import GeometricCadence, SparseProbe
from dynamics.probes.probe_set import ProbeSet, side_pass


def fisher_trace(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
    """Mean over samples of |grad_theta log p(label|input)|^2, theta the trainable parameters (float64 sum).

    Runs the model as it is (set eval mode and pause recording around it); call with gradients enabled.
    """
    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss(theta: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (theta, buffers), (x.unsqueeze(0),))
        return F.cross_entropy(out.float(), y.unsqueeze(0))

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))
    total = torch.zeros((), dtype=torch.float64, device=inputs.device)
    for start in range(0, len(inputs), batch_size):
        grads = per_sample(params, inputs[start : start + batch_size], labels[start : start + batch_size])
        total = total + sum(g.double().square().sum() for g in grads.values())
    return total / len(inputs)


class FisherTrace(SparseProbe):
    """``fisher_trace(step)``: tr F on the probe set with model-sampled labels, at the cadence's steps.

    Args:
        probe_set: the samples to measure on (training and test parts together).
        cadence: when to measure; NaN is recorded at the other steps.
        every: the recorder's ``every`` (the probe counts recorded steps to know the step).
        seed: seed of the private generator that samples the labels.
        batch_size: samples per vmapped per-sample-gradient chunk (memory: ``batch_size`` x parameters).
    """

    name = "fisher"
    state_attrs = (*SparseProbe.state_attrs, "generator")

    def __init__(
        self,
        probe_set: ProbeSet,
        *,
        cadence: GeometricCadence | None = None,
        every: int = 1,
        seed: int = 0,
        batch_size: int = 128,
    ) -> None:
        super().__init__(cadence or GeometricCadence(), every)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.probe_set = probe_set
        self.seed = seed
        self.batch_size = batch_size
        self.generator: torch.Generator | None = None

    def attach(self, context: Context) -> None:
        self.generator = torch.Generator(device=self.probe_set.x_train.device).manual_seed(self.seed)

    def variables(self, context: Context) -> list[Variable]:
        return [
            Variable(
                "fisher_trace",
                (),
                {
                    "units": "(loss/param)^2",
                    "long_name": "Fisher information trace",
                    "description": "labels sampled from the model's predictive distribution, eval mode",
                    "num_classes": self.probe_set.num_classes,
                    "seed": self.seed,
                    "probe_samples": len(self.probe_set.x_train) + len(self.probe_set.x_test),
                    **self.cadence_attrs,
                },
            )
        ]

    def sample_labels(self, context: Context, inputs: torch.Tensor) -> torch.Tensor:
        """One label per input drawn from the model's softmax, with the probe's generator."""
        with torch.no_grad():
            logits = torch.cat(
                [
                    context.model(inputs[start : start + self.batch_size])
                    for start in range(0, len(inputs), self.batch_size)
                ]
            )
        return torch.multinomial(logits.float().softmax(1), 1, generator=self.generator).squeeze(1)

    def measure_now(self, context: Context) -> dict[str, torch.Tensor]:
        inputs = self.probe_set.x
        with side_pass(context):
            labels = self.sample_labels(context, inputs)
            with torch.enable_grad():
                trace = fisher_trace(context.model, inputs, labels, self.batch_size)
        return {"fisher_trace": trace.float()}
