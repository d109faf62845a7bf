"""Probes: what the recorder measures. One module per probe family."""

from dynamics.probes.activations import ActivationStats
from dynamics.probes.base import Context, Probe, StepData, Variable
from dynamics.probes.flat_regions import FlatRule, flat_rule
from dynamics.probes.loss import LossAccuracy
from dynamics.probes.parameters import DistanceFromInit, GradNorm, ParamNorm, UpdateNorm
from dynamics.probes.presets import PRESETS, PROBES, resolve_probes

__all__ = [
    "PRESETS", "PROBES", "ActivationStats", "Context", "DistanceFromInit", "FlatRule", "GradNorm",
    "LossAccuracy", "ParamNorm", "Probe", "StepData", "UpdateNorm", "Variable", "flat_rule", "resolve_probes",
]
