"""Trace and spectral density of the Hessian of the loss on the probe set.

:class:`HessianTrace` records ``hessian_trace`` = (1/S) sum_s z_s^T H z_s over S Rademacher vectors z_s
(Hutchinson: unbiased for tr H) and ``hessian_trace_se``, its standard error std_s(z_s^T H z_s) / sqrt(S).
:class:`HessianDensity` records, at a sparser cadence of its own, the spectral density of H from stochastic
Lanczos quadrature (:func:`~dynamics.probes.hessian.slq`, Ghorbani et al. 2019): ``hessian_density`` on the
``density_bin`` grid ``hessian_density_grid`` (eigenvalues; even, spanning this measurement's quadrature
nodes with 5 sigma to spare, so it changes from one measurement to the next), Gaussian-broadened with sigma
one hundredth of the nodes' range. It integrates to 1 over the grid and its mean estimates tr(H) / n.

H is the Hessian of the mean cross-entropy over the probe set's training samples, in eval mode, at the
parameters after the step's update; random vectors come from a private seeded generator (saved with
checkpoints) and every pass runs in :func:`~dynamics.probes.hessian.probe_hessian`'s isolation, so training
is unchanged.
"""

from __future__ import annotations

import torch

from dynamics.errors import ConfigError
from dynamics.probes.base import Context, Variable
from dynamics.probes.cadence import GeometricCadence
from dynamics.probes.hessian import CurvatureProbe, density_grid, hutchinson, slq, spectral_density
from dynamics.probes.probe_set import ProbeSet

DENSITY_BINS = 200
"""Grid points of a recorded spectral density."""
SIGMA_FRACTION = 0.01
"""Gaussian broadening of the density as a fraction of the range of the quadrature nodes."""


def _positive(value: int, key: str, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ConfigError(f"{key} must be an integer >= {least}, got {value!r}", key=key)


class HessianTrace(CurvatureProbe):
    """``hessian_trace(step)`` and ``hessian_trace_se(step)``: Hutchinson's estimate of tr H and its standard error.

    Args:
        probe_set: the samples whose mean loss is differentiated (the training part).
        cadence: when to measure; NaN is recorded at the other steps.
        every: the recorder's ``every``.
        samples: Rademacher vectors (one Hessian-vector product each); at least 2, for the standard error.
        seed: seed of the private generator of the vectors.
        batch_size: probe samples per forward pass of a Hessian-vector product.
    """

    name = "hessian_trace"

    def __init__(
        self,
        probe_set: ProbeSet,
        *,
        cadence: GeometricCadence | None = None,
        every: int = 1,
        samples: int = 20,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        super().__init__(probe_set, cadence or GeometricCadence(), every, seed, batch_size)
        _positive(samples, "samples", 2)
        self.samples = samples

    def variables(self, context: Context) -> list[Variable]:
        common = {
            "probe_samples": len(self.probe_set.x_train),
            "hutchinson_samples": self.samples,
            "seed": self.seed,
            **self.cadence_attrs,
        }
        return [
            Variable(
                "hessian_trace",
                (),
                {
                    "units": "loss/param^2",
                    "long_name": "Hessian trace",
                    "description": "Hutchinson estimate (Rademacher vectors) of tr H, H the Hessian of the mean "
                    "cross-entropy on the probe set's training samples (eval mode)",
                    **common,
                },
            ),
            Variable(
                "hessian_trace_se",
                (),
                {"units": "loss/param^2", "long_name": "standard error of hessian_trace", **common},
            ),
        ]

    def measure_now(self, context: Context) -> dict[str, torch.Tensor]:
        with self.hessian(context) as hessian:
            trace, error = hutchinson(hessian, self.samples, self.generator)
        return {"hessian_trace": trace, "hessian_trace_se": error}


class HessianDensity(CurvatureProbe):
    """``hessian_density(step, density_bin)`` on the grid ``hessian_density_grid(step, density_bin)``, by SLQ.

    Args:
        probe_set: the samples whose mean loss is differentiated (the training part).
        cadence: when to measure (sparser than the other probes: each costs ``vectors * steps`` products).
        every: the recorder's ``every``.
        vectors: Rademacher start vectors averaged over.
        steps: Lanczos steps per vector (quadrature nodes per vector).
        seed: seed of the private generator of the vectors.
        batch_size: probe samples per forward pass of a Hessian-vector product.
    """

    name = "hessian_density"

    def __init__(
        self,
        probe_set: ProbeSet,
        *,
        cadence: GeometricCadence | None = None,
        every: int = 1,
        vectors: int = 4,
        steps: int = 20,
        seed: int = 0,
        batch_size: int = 256,
    ) -> None:
        super().__init__(probe_set, cadence or GeometricCadence(growth=1.0), every, seed, batch_size)
        _positive(vectors, "vectors")
        _positive(steps, "steps")
        self.vectors = vectors
        self.steps = steps

    def coords(self, context: Context) -> dict[str, list[str]]:
        return {"density_bin": [str(i) for i in range(DENSITY_BINS)]}

    def variables(self, context: Context) -> list[Variable]:
        common = {
            "probe_samples": len(self.probe_set.x_train),
            "slq_vectors": self.vectors,
            "lanczos_steps": self.steps,
            "sigma_fraction": SIGMA_FRACTION,
            "seed": self.seed,
            **self.cadence_attrs,
        }
        return [
            Variable(
                "hessian_density",
                ("density_bin",),
                {
                    "units": "1/(loss/param^2)",
                    "long_name": "Hessian spectral density",
                    "description": "stochastic Lanczos quadrature, Gaussian-broadened (sigma = sigma_fraction x "
                    "the nodes' range), on hessian_density_grid; integrates to 1",
                    **common,
                },
            ),
            Variable(
                "hessian_density_grid",
                ("density_bin",),
                {"units": "loss/param^2", "long_name": "eigenvalue of each density bin", **common},
            ),
        ]

    def measure_now(self, context: Context) -> dict[str, torch.Tensor]:
        with self.hessian(context) as hessian:
            nodes, weights = slq(hessian, self.vectors, self.steps, self.generator)
        grid, sigma = density_grid(nodes, weights, DENSITY_BINS, SIGMA_FRACTION)
        device = self.probe_set.x_train.device
        return {
            "hessian_density": spectral_density(nodes, weights, grid, sigma).to(device),
            "hessian_density_grid": grid.to(device),
        }
