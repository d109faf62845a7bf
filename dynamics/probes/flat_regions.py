"""Where each activation function is flat: the rule that decides a "zero" or "saturated" activation.

An entry is flat when the activation's slope there is at most ``SLOPE`` (0.05) in magnitude on a tail
of the function: exactly zero for ReLU, the clipped ends of ReLU6/Hardtanh/Hardsigmoid, the negative side
of LeakyReLU (slope ``negative_slope``), and the saturated tails of smooth activations. Thresholds are
stated on the pre-activation x; for monotone activations the rule is applied to the output y = f(x)
through f(threshold), which also works for in-place modules. GELU and SiLU are not monotone, so their
rule is applied to the input, read before the module runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

SLOPE = 0.05
"""Largest |f'(x)| that counts as flat in a smooth activation's tail."""

GELU_LOW = -2.348606
"""x below which GELU'(x) = Phi(x) + x phi(x) stays within -0.05..0 (solved numerically)."""
SILU_LOW = -4.082559
"""x below which SiLU'(x) = s(x)(1 + x(1 - s(x))) stays within -0.05..0 (solved numerically)."""
TANH_EDGE = math.atanh(math.sqrt(1 - SLOPE))
SIGMOID_EDGE = math.log((1 - math.sqrt(1 - 4 * SLOPE)) / (1 + math.sqrt(1 - 4 * SLOPE)))


@dataclass(frozen=True)
class FlatRule:
    """Entries with value <= ``low`` or >= ``high`` (either may be None) in ``space`` are flat."""

    low: float | None
    high: float | None
    space: Literal["output", "input"]
    description: str
    nonnegative: bool = False
    """True when values are never negative (ReLU output), which makes the low test a plain sign count."""

    def as_attrs(self) -> dict[str, object]:
        """JSON-friendly form stored in the variable attributes."""
        return {"low": self.low, "high": self.high, "space": self.space, "rule": self.description}


def flat_rule(module: nn.Module) -> FlatRule | None:
    """The flat-region rule of an activation module, or None if the module is not an activation."""
    if isinstance(module, nn.ReLU):
        return FlatRule(0.0, None, "output", "y == 0 (x <= 0)", nonnegative=True)
    if isinstance(module, nn.ReLU6):
        return FlatRule(0.0, 6.0, "output", "y <= 0 or y >= 6 (clipped)", nonnegative=True)
    if isinstance(module, nn.Hardtanh):
        lo, hi = float(module.min_val), float(module.max_val)
        return FlatRule(lo, hi, "output", f"y <= {lo} or y >= {hi} (clipped)")
    if isinstance(module, nn.Hardsigmoid):
        return FlatRule(0.0, 1.0, "output", "y <= 0 or y >= 1 (x <= -3 or x >= 3, clipped)", nonnegative=True)
    if isinstance(module, nn.LeakyReLU):
        slope = module.negative_slope
        if slope < 0:
            return None
        return FlatRule(0.0, None, "output", f"y <= 0 (x <= 0, slope {slope})")
    if isinstance(module, nn.ELU):
        alpha = float(module.alpha)
        x_low = math.log(SLOPE / alpha) if alpha > SLOPE else 0.0
        y_low = alpha * (math.exp(x_low) - 1.0)
        return FlatRule(y_low, None, "output", f"x <= {x_low:.4f} (|f'| <= {SLOPE}), i.e. y <= {y_low:.4f}")
    if isinstance(module, nn.Softplus):
        beta = float(module.beta)
        x_low = math.log(SLOPE / (1 - SLOPE)) / beta
        y_low = math.log1p(math.exp(beta * x_low)) / beta
        return FlatRule(
            y_low, None, "output", f"x <= {x_low:.4f} (|f'| <= {SLOPE}), i.e. y <= {y_low:.4f}", nonnegative=True
        )
    if isinstance(module, nn.Tanh):
        y_edge = math.tanh(TANH_EDGE)
        return FlatRule(
            -y_edge, y_edge, "output", f"|x| >= {TANH_EDGE:.4f} (|f'| <= {SLOPE}), i.e. |y| >= {y_edge:.4f}"
        )
    if isinstance(module, nn.Sigmoid):
        y_low = 1 / (1 + math.exp(-SIGMOID_EDGE))
        return FlatRule(
            y_low,
            1 - y_low,
            "output",
            f"|x| >= {-SIGMOID_EDGE:.4f} (|f'| <= {SLOPE}), i.e. y <= {y_low:.4f} or y >= {1 - y_low:.4f}",
            nonnegative=True,
        )
    if isinstance(module, nn.GELU):
        return FlatRule(GELU_LOW, None, "input", f"x <= {GELU_LOW:.4f} (|f'| <= {SLOPE} on the left tail)")
    if isinstance(module, nn.SiLU):
        return FlatRule(SILU_LOW, None, "input", f"x <= {SILU_LOW:.4f} (|f'| <= {SLOPE} on the left tail)")
    return None


def activation_layers(
    model: nn.Module, rule_of: Callable[[nn.Module], FlatRule | None] = flat_rule
) -> list[tuple[str, nn.Module, FlatRule]]:
    """``(name, module, rule)`` of every module of ``model`` with a flat region (``rule_of`` not None), in
    ``named_modules`` order."""
    return [(name, module, rule) for name, module in model.named_modules() if (rule := rule_of(module)) is not None]
