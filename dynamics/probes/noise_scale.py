"""Gradient noise scale B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018) on the probe set.

With the per-sample gradients g_1..g_B of the cross-entropy of the probe set's B training samples (eval mode,
at the parameters after the step's update), their mean g_bar and their Gram K[i, j] = <g_i, g_j> (exact, from
:func:`~dynamics.probes.per_sample_gram.per_sample_gram`, one forward and one backward pass):

- ``noise_trace`` = tr(Sigma) = (sum_i |g_i|^2 - B |g_bar|^2) / (B - 1), the unbiased trace of the per-sample
  gradient covariance, with sum_i |g_i|^2 = tr K and |g_bar|^2 = 1^T K 1 / B^2;
- ``noise_grad_sq`` = |g_bar|^2 - tr(Sigma) / B, the unbiased estimate of the squared norm |G|^2 of the
  expected gradient (E |g_bar|^2 = |G|^2 + tr(Sigma) / B);
- ``noise_scale`` = noise_trace / noise_grad_sq, the batch size at which the gradient's noise and signal are
  equal: steps with batches much smaller than it are noise-dominated. It is a ratio of unbiased estimates
  (not itself unbiased) and turns negative when noise_grad_sq does, i.e. when the mean gradient is not
  resolved by B samples; McCandlish et al. average numerator and denominator over measurements before
  dividing, which the two recorded parts allow.

The probe set (fixed samples) rather than the training batch keeps measurements comparable across steps and
leaves per-sample gradients well defined under BatchNorm (eval mode: running statistics).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.probes.base import Context, Variable
from dynamics.probes.cadence import GeometricCadence, SparseProbe
from dynamics.probes.per_sample_gram import per_sample_gram
from dynamics.probes.probe_set import ProbeSet, side_pass


def _per_sample_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(output.to(torch.promote_types(output.dtype, torch.float32)), target, reduction="none")


def gradient_noise(gram: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B_simple, tr Sigma, |G|^2) from the B x B per-sample gradient Gram ``gram`` (module docstring)."""
    batch = len(gram)
    mean_sq = gram.sum() / batch**2
    trace = (gram.diagonal().sum() - batch * mean_sq) / (batch - 1)
    grad_sq = mean_sq - trace / batch
    return trace / grad_sq, trace, grad_sq


def noise_scale(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B_simple, tr Sigma, |G|^2) of the cross-entropy of ``model`` on ``inputs``/``targets`` (float64).

    Runs the model as it is (eval mode for BatchNorm with running statistics: it raises otherwise).
    """
    return gradient_noise(per_sample_gram(model, _per_sample_cross_entropy, inputs, targets)["total"])


class NoiseScale(SparseProbe):
    """``noise_scale``, ``noise_trace`` and ``noise_grad_sq`` (step) on the probe set's training samples.

    Args:
        probe_set: the samples whose per-sample gradients are taken (the training part).
        cadence: when to measure; NaN is recorded at the other steps.
        every: the recorder's ``every``.
    """

    name = "noise_scale"

    def __init__(self, probe_set: ProbeSet, *, cadence: GeometricCadence | None = None, every: int = 1) -> None:
        super().__init__(cadence or GeometricCadence(), every)
        self.probe_set = probe_set

    def variables(self, context: Context) -> list[Variable]:
        common = {"probe_samples": len(self.probe_set.x_train), **self.cadence_attrs}
        return [
            Variable(
                "noise_scale",
                (),
                {
                    "units": "samples",
                    "long_name": "gradient noise scale B_simple",
                    "description": "noise_trace / noise_grad_sq (McCandlish et al. 2018); negative when "
                    "noise_grad_sq is",
                    **common,
                },
            ),
            Variable(
                "noise_trace",
                (),
                {
                    "units": "(loss/param)^2",
                    "long_name": "trace of the per-sample gradient covariance",
                    "description": "unbiased (B - 1 denominator), probe set's training samples, eval mode",
                    **common,
                },
            ),
            Variable(
                "noise_grad_sq",
                (),
                {
                    "units": "(loss/param)^2",
                    "long_name": "squared norm of the expected gradient",
                    "description": "unbiased: |mean gradient|^2 - noise_trace / B",
                    **common,
                },
            ),
        ]

    def measure_now(self, context: Context) -> dict[str, torch.Tensor]:
        with side_pass(context):  # per_sample_gram itself forks the RNG and restores buffers
            scale, trace, grad_sq = noise_scale(context.model, self.probe_set.x_train, self.probe_set.y_train)
        return {"noise_scale": scale, "noise_trace": trace, "noise_grad_sq": grad_sq}
