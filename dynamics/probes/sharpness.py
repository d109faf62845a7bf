"""Sharpness: the largest Hessian eigenvalues of the loss on the probe set, and the distance to the edge of stability.

At each due step the probe runs :func:`~dynamics.probes.hessian.top_eigenvalues` (Lanczos with full
reorthogonalisation, ``steps`` Hessian-vector products from a start vector drawn with a private seeded
generator) on the Hessian H of the mean cross-entropy of the probe set's training samples, in eval mode, at the
parameters after the step's update. ``sharpness(step, eig)`` holds the ``k`` largest eigenvalues, descending.

The edge of stability (Cohen et al. 2021, 2022) is where a step of the optimizer stops being stable on the
quadratic model of the loss around the current parameters. From the linear recursion of each update on an
eigendirection of curvature ``a`` (the first parameter group's hyperparameters at the step, as the recorded
``lr``):

- SGD with heavy-ball momentum beta, dampening d and L2 weight decay wd (torch's ``SGD``: the gradient gains
  wd theta, so the curvature is a = lambda + wd): stable iff (1 - d) lr a < 2 + 2 beta. Nesterov momentum:
  (1 + 2 beta) lr a < 2 + 2 beta. Plain gradient descent gives the familiar lambda < 2 / lr.
  ``eos_threshold`` = (2 + 2 beta) / ((1 - d) lr) - wd (Nesterov: (2 + 2 beta) / ((1 + 2 beta) lr) - wd), the
  value lambda_max(H) has at the edge, and ``eos_ratio`` = (lambda_max + wd) / ((2 + 2 beta) / ((1 - d) lr)).
- Adam / AdamW (Cohen et al. 2022, "Adaptive gradient methods at the edge of stability"): with bias-corrected
  second moments v_hat, step t and P = (1 - beta1^t) diag(sqrt(v_hat) + eps), the update is EMA momentum
  preconditioned by P / lr; it is stable iff lambda_1(P^{-1} H) < (2 + 2 beta1) / ((1 - beta1) lr) (38 / lr
  at beta1 = 0.9). ``sharpness_precond(step, eig)`` holds the top eigenvalues of P^{-1} H (computed as the
  symmetric P^{-1/2} H P^{-1/2}, a second Lanczos run), ``eos_threshold`` that bound and ``eos_ratio``
  lambda_1(P^{-1} H) / threshold. Adam's L2 weight decay adds wd to H; AdamW's decoupled decay only shrinks
  the weights and is left out; with ``amsgrad`` the running maximum of v is used.

``eos_ratio`` is 1.0 at the edge. Other optimizers (or none) record ``sharpness`` only. The preconditioner is
that of the step just taken (the state after the update), frozen, as in Cohen et al.'s analysis.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dynamics.errors import ConfigError
from dynamics.probes.base import Context, Variable
from dynamics.probes.cadence import GeometricCadence
from dynamics.probes.hessian import CurvatureProbe, top_eigenvalues
from dynamics.probes.probe_set import ProbeSet


@dataclass(frozen=True)
class Stability:
    """An optimizer's stability bound: ``threshold`` on the bare curvature (the edge at ratio 1), ``shift`` (L2
    weight decay added to H) and, for an adaptive method, ``scale`` = P^{-1/2} (flat, over ``context.params``)."""

    threshold: float
    shift: float
    scale: torch.Tensor | None = None


def _adaptive(optimizer: torch.optim.Optimizer | None) -> bool:
    return isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW)


def _bounded(optimizer: torch.optim.Optimizer | None) -> bool:
    """Whether :func:`stability` knows the optimizer's bound."""
    return isinstance(optimizer, torch.optim.SGD) or _adaptive(optimizer)


def stability(optimizer: torch.optim.Optimizer | None, params: list[torch.Tensor]) -> Stability | None:
    """The edge of stability of ``optimizer``'s next step (module docstring) for ``params``; None for an
    optimizer other than SGD, Adam or AdamW. An adaptive optimizer without state yet gets a NaN scale."""
    if not _bounded(optimizer):
        return None
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if isinstance(optimizer, torch.optim.SGD):
        beta, wd = group["momentum"], group["weight_decay"]
        bound = (2 + 2 * beta) / (((1 + 2 * beta) if group["nesterov"] else (1 - group["dampening"])) * lr)
        return Stability(bound - wd, wd)
    beta1, beta2 = group["betas"]
    decoupled = group.get("decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW))
    wd = 0.0 if decoupled else group["weight_decay"]
    scales = []
    for p in params:
        state = optimizer.state.get(p, {})
        if "exp_avg_sq" not in state:
            scales.append(torch.full((p.numel(),), math.nan, dtype=p.dtype, device=p.device))
            continue
        t = float(state["step"])
        second = state["max_exp_avg_sq"] if group["amsgrad"] else state["exp_avg_sq"]
        precondition = (1 - beta1**t) * ((second / (1 - beta2**t)).sqrt() + group["eps"])
        scales.append(precondition.rsqrt().reshape(-1))
    return Stability((2 + 2 * beta1) / ((1 - beta1) * lr), wd, torch.cat(scales))


class Sharpness(CurvatureProbe):
    """``sharpness(step, eig)``, and where the optimizer allows ``eos_threshold``/``eos_ratio`` (and for Adam
    ``sharpness_precond``), on the probe set's training samples at the cadence's steps.

    Args:
        probe_set: the samples whose mean loss is differentiated (the training part).
        cadence: when to measure; NaN is recorded at the other steps.
        every: the recorder's ``every``.
        k: eigenvalues recorded, largest first.
        steps: Lanczos steps (Hessian-vector products) per eigenvalue run; at least ``k``.
        seed: seed of the private generator of the Lanczos start vectors.
        batch_size: probe samples per forward pass of a Hessian-vector product.
    """

    name = "sharpness"

    def __init__(
        self,
        probe_set: ProbeSet,
        *,
        cadence: GeometricCadence | None = None,
        every: int = 1,
        k: int = 1,
        steps: int = 20,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        super().__init__(probe_set, cadence or GeometricCadence(), every, seed, batch_size)
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}", key="k")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < k:
            raise ConfigError(f"steps must be an integer >= k ({k}), got {steps!r}", key="steps")
        self.k = k
        self.steps = steps

    def coords(self, context: Context) -> dict[str, list[str]]:
        return {"eig": [str(i) for i in range(self.k)]}

    def variables(self, context: Context) -> list[Variable]:
        common = {"probe_samples": len(self.probe_set.x_train), "lanczos_steps": self.steps, **self.cadence_attrs}
        out = [
            Variable(
                "sharpness",
                ("eig",),
                {
                    "units": "loss/param^2",
                    "long_name": "top Hessian eigenvalues",
                    "description": "largest eigenvalues of the Hessian of the mean cross-entropy on the probe "
                    "set's training samples (eval mode), Lanczos, descending",
                    "seed": self.seed,
                    **common,
                },
            )
        ]
        if _adaptive(context.optimizer):
            out.append(
                Variable(
                    "sharpness_precond",
                    ("eig",),
                    {
                        "units": "1/lr",
                        "long_name": "top eigenvalues of the preconditioned Hessian",
                        "description": "P^-1 H with P = (1 - beta1^t) diag(sqrt(v_hat) + eps) (Cohen et al. 2022)",
                        **common,
                    },
                )
            )
        if _bounded(context.optimizer):
            adaptive = _adaptive(context.optimizer)
            out += [
                Variable(
                    "eos_threshold",
                    (),
                    {
                        "units": "1/lr" if adaptive else "loss/param^2",
                        "long_name": "edge-of-stability threshold",
                        "description": "(2 + 2 beta1) / ((1 - beta1) lr), on sharpness_precond"
                        if adaptive
                        else "(2 + 2 beta) / ((1 - dampening) lr) - weight_decay (Nesterov: "
                        "(2 + 2 beta) / ((1 + 2 beta) lr) - weight_decay), on sharpness",
                        **common,
                    },
                ),
                Variable(
                    "eos_ratio",
                    (),
                    {
                        "units": "1",
                        "long_name": "edge-of-stability ratio",
                        "description": "top curvature over the optimizer's stability bound: 1 at the edge",
                        **common,
                    },
                ),
            ]
        return out

    def measure_now(self, context: Context) -> dict[str, torch.Tensor]:
        bound = stability(context.optimizer, context.params)
        with self.hessian(context) as hessian:
            top = top_eigenvalues(hessian, self.k, self.steps, self.generator)
            values = {"sharpness": top}
            if _adaptive(context.optimizer):
                scale = bound.scale
                if torch.isfinite(scale).all():
                    curvature = top_eigenvalues(hessian, self.k, self.steps, self.generator, scale, bound.shift)
                else:
                    curvature = torch.full_like(top, math.nan)
                values["sharpness_precond"] = curvature
        if bound is not None:
            values["eos_threshold"] = torch.tensor(bound.threshold, dtype=torch.float64)
            if bound.scale is None:  # SGD: the full curvature lambda_max + wd against the bound on it
                values["eos_ratio"] = (top[0] + bound.shift) / (bound.threshold + bound.shift)
            else:  # the shift is inside the preconditioned operator
                values["eos_ratio"] = values["sharpness_precond"][0] / bound.threshold
        return {name: value.to(self.probe_set.x_train.device) for name, value in values.items()}
