"""Probes: what the recorder measures. One module per probe family."""

from dynamics.probes.activations import ActivationStats
from dynamics.probes.base import Context, Probe, StepData, Variable
from dynamics.probes.cadence import FixedCadence, GeometricCadence, SparseProbe
from dynamics.probes.fisher import FisherTrace, fisher_trace
from dynamics.probes.flat_regions import FlatRule, flat_rule
from dynamics.probes.gradient_stats import (
    Alignment,
    Stiffness,
    alignment,
    cosine_matrix,
    gradient_diversity,
    gsnr_aggregate,
    gsnr_elementwise,
    stiffness,
)
from dynamics.probes.hessian import HessianOperator, hutchinson, lanczos, slq, spectral_density, top_eigenvalues
from dynamics.probes.hessian_trace import HessianDensity, HessianTrace
from dynamics.probes.interference import Interference, gradient_interference, revival, trajectory_distance
from dynamics.probes.loss import LossAccuracy
from dynamics.probes.noise_scale import NoiseScale, gradient_noise, noise_scale
from dynamics.probes.parameters import DistanceFromInit, GradNorm, ParamNorm, UpdateNorm
from dynamics.probes.per_sample_gram import Moments, per_sample_gram, per_sample_gram_with_moments
from dynamics.probes.presets import PRESETS, PROBES, import_probe_modules, register_probe, resolve_probes
from dynamics.probes.probe_set import ProbeSet, make_probe_set, side_pass
from dynamics.probes.representation import (
    Representation,
    knn_accuracy,
    last_linear,
    linear_cka,
    load_features,
    nc1,
    ridge_accuracy,
)
from dynamics.probes.sharpness import Sharpness, stability
from dynamics.probes.trajectory import SKETCH_MODES, Sketch, sketch_directions

__all__ = [
    "PRESETS",
    "PROBES",
    "ActivationStats",
    "Context",
    "DistanceFromInit",
    "FlatRule",
    "GradNorm",
    "LossAccuracy",
    "ParamNorm",
    "Probe",
    "StepData",
    "UpdateNorm",
    "Variable",
    "flat_rule",
    "register_probe",
    "import_probe_modules",
    "resolve_probes",
    "FisherTrace",
    "GeometricCadence",
    "ProbeSet",
    "Representation",
    "SparseProbe",
    "fisher_trace",
    "knn_accuracy",
    "last_linear",
    "linear_cka",
    "load_features",
    "make_probe_set",
    "nc1",
    "ridge_accuracy",
    "side_pass",
    "SKETCH_MODES",
    "Sketch",
    "sketch_directions",
    "FixedCadence",
    "Interference",
    "gradient_interference",
    "revival",
    "trajectory_distance",
    "Alignment",
    "Moments",
    "Stiffness",
    "alignment",
    "cosine_matrix",
    "gradient_diversity",
    "gsnr_aggregate",
    "gsnr_elementwise",
    "per_sample_gram",
    "per_sample_gram_with_moments",
    "stiffness",
    "HessianDensity",
    "HessianOperator",
    "HessianTrace",
    "NoiseScale",
    "Sharpness",
    "gradient_noise",
    "hutchinson",
    "lanczos",
    "noise_scale",
    "slq",
    "spectral_density",
    "stability",
    "top_eigenvalues",
]
