"""Training strategies: Mixup/CutMix, Enlightenment Period strategies, PLP and General Cyclical Training."""

from dynamics.strategies.cyclical import Range, cyclical_eta, cyclical_value
from dynamics.strategies.enlightenment import EnlightenmentTracker, high_loss_keep_mask
from dynamics.strategies.focal import CyclicalFocalLoss
from dynamics.strategies.mixup import MixInfo, Mixup, soft_targets
from dynamics.strategies.plan import (
    StrategyPlan,
    check_strategies_fit_data,
    per_sample_cross_entropy,
    validate_strategies,
)
from dynamics.strategies.plp import PLP

__all__ = [
    "PLP",
    "CyclicalFocalLoss",
    "EnlightenmentTracker",
    "MixInfo",
    "Mixup",
    "Range",
    "StrategyPlan",
    "check_strategies_fit_data",
    "cyclical_eta",
    "cyclical_value",
    "high_loss_keep_mask",
    "per_sample_cross_entropy",
    "soft_targets",
    "validate_strategies",
]
