"""The cyclical focal loss of General Cyclical Training (Smith, CFL code), as an ``nn.Module``.

With label-smoothed targets ``y~`` (``label_smoothing`` eps spread uniformly), ``p = softmax(logits)`` and
the schedule weight ``eta`` (1 = start/end of training, 0 = middle)::

    L = -sum_c y~_c w_c log p_c
    w_true  = (1 - eta) (1 - p_t)^gamma_pos + eta (1 + p_t)^gamma_hc     (focal <-> confidence-weighted)
    w_other = (1 - eta) p_c^gamma_neg + eta

As in the reference code the weights are not detached: gradients flow through them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.errors import ConfigError


class CyclicalFocalLoss(nn.Module):
    """Per-sample (``reduction="none"``) or mean cyclical focal loss; ``eta`` is given at each call.

    Args:
        gamma_hc: exponent of the confidence weight ``(1 + p_t)`` of the true class (easy phases).
        gamma_pos: focal exponent of ``(1 - p_t)`` on the true class (hard phase).
        gamma_neg: exponent of ``p_c`` on the other classes (hard phase).
        label_smoothing: eps of the smoothed targets.
        reduction: ``"mean"`` or ``"none"``.
    """

    def __init__(
        self,
        gamma_hc: float = 3.0,
        gamma_pos: float = 2.0,
        gamma_neg: float = 2.0,
        label_smoothing: float = 0.1,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if not all(math.isfinite(g) and g >= 0 for g in (gamma_hc, gamma_pos, gamma_neg)):
            raise ConfigError(
                f"gamma_hc, gamma_pos and gamma_neg must be finite numbers >= 0, got {gamma_hc}, "
                f"{gamma_pos}, {gamma_neg}; fix them",
                key=("gamma_hc", "gamma_pos", "gamma_neg"),
            )
        if not 0 <= label_smoothing < 1:
            raise ConfigError(
                f"label_smoothing must lie in [0, 1), got {label_smoothing}; fix it", key="label_smoothing"
            )
        if reduction not in ("mean", "none"):
            raise ConfigError(f"reduction must be 'mean' or 'none', got {reduction!r}", key="reduction")
        self.gamma_hc, self.gamma_pos, self.gamma_neg = gamma_hc, gamma_pos, gamma_neg
        self.label_smoothing = label_smoothing
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor, eta: float) -> torch.Tensor:
        """Loss of ``logits`` (N, C) against class indices (N,) or soft targets (N, C)."""
        classes = logits.shape[-1]
        log_p = F.log_softmax(logits.float(), dim=-1)
        p = log_p.exp()
        hard = F.one_hot(target, classes).float() if not target.is_floating_point() else target.float()
        is_true = hard > 0
        p_true = torch.where(is_true, p, torch.zeros_like(p))
        focal = torch.where(is_true, (1 - p_true).pow(self.gamma_pos), p.pow(self.gamma_neg))
        confident = torch.where(is_true, (1 + p_true).pow(self.gamma_hc), torch.ones_like(p))
        weights = (1 - eta) * focal + eta * confident
        smoothed = hard * (1 - self.label_smoothing) + self.label_smoothing / classes
        loss = -(smoothed * weights * log_p).sum(-1)
        return loss.mean() if self.reduction == "mean" else loss
