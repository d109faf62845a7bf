"""Curvature of the loss on a fixed batch from Hessian-vector products: top eigenvalues, trace, spectral density.

H is the Hessian of the mean loss L(theta) over a fixed batch with respect to the trainable parameters theta,
flattened to one vector of n entries (in ``model.named_parameters()`` order). H is never formed:
:class:`HessianOperator` gives H v by double backward, H v = grad_theta <grad_theta L, v>, one chunk of the
batch at a time (each chunk's loss weighted by its share of the batch). On it:

- :func:`lanczos`: m steps of the Lanczos iteration with full reorthogonalisation, from a unit start vector q,
  giving the m x m tridiagonal T = Q^T H Q of the orthonormal Krylov basis Q = [q, H q, ..., H^{m-1} q];
- :func:`top_eigenvalues`: the k largest Ritz values of T (eigenvalues of T), which converge to the largest
  eigenvalues of H from below, fastest for well separated outliers (exact once m = n);
- :func:`hutchinson`: tr H ~ (1/S) sum_s z_s^T H z_s over S Rademacher vectors z_s (E[z z^T] = I), with the
  standard error std(z_s^T H z_s) / sqrt(S) (Hutchinson 1989);
- :func:`slq` / :func:`spectral_density`: stochastic Lanczos quadrature (Ghorbani et al. 2019, PyHessian):
  from each normalised Rademacher start vector q_v, the eigenvalues theta_vk of its T and the weights
  w_vk = (first component of T's k-th eigenvector)^2 give q_v^T f(H) q_v = sum_k w_vk f(theta_vk); the
  spectral density of H, rho(lambda) = (1/n) sum_i delta(lambda - lambda_i), is then estimated by
  (1/V) sum_{v,k} w_vk N(lambda; theta_vk, sigma^2), a Gaussian-broadened mixture that integrates to 1 and
  whose mean (1/V) sum_{v,k} w_vk theta_vk is a Hutchinson estimate of tr(H) / n.

Random vectors come from a caller's ``torch.Generator``: the global RNG is untouched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.errors import ConfigError
from dynamics.probes.base import Context
from dynamics.probes.cadence import FixedCadence, GeometricCadence, SparseProbe
from dynamics.probes.isolation import preserved_state
from dynamics.probes.probe_set import ProbeSet, side_pass

MeanLoss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""Maps model outputs and targets of a batch to their mean loss (a scalar)."""
Operator = Callable[[torch.Tensor], torch.Tensor]
"""A symmetric linear map on flat vectors: v -> H v."""


def _mean_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy in float32 at least (half-precision outputs are promoted)."""
    return F.cross_entropy(output.to(torch.promote_types(output.dtype, torch.float32)), target)


class HessianOperator:
    """v -> H v for the Hessian of the mean ``loss_fn`` over ``inputs``/``targets`` w.r.t. ``params``.

    The model runs as it is (set eval mode and pause recording around it, or use :func:`probe_hessian`).
    With the whole batch in one chunk the gradient's graph is built once and reused by every product; with
    several chunks (``batch_size`` < batch) each product reruns forward and backward per chunk, so memory
    stays that of one chunk. Nothing writes ``.grad``.
    """

    def __init__(
        self,
        model: nn.Module,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        params: list[torch.Tensor] | None = None,
        loss_fn: MeanLoss = _mean_cross_entropy,
        batch_size: int = 256,
    ) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}", key="batch_size")
        self.model = model
        self.params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
        self.loss_fn = loss_fn
        self.chunks = [
            (inputs[i : i + batch_size], targets[i : i + batch_size]) for i in range(0, len(inputs), batch_size)
        ]
        self.total = len(inputs)
        self.dim = sum(p.numel() for p in self.params)
        self.dtype = self.params[0].dtype
        self.device = self.params[0].device
        self._graph = self._gradient(*self.chunks[0]) if len(self.chunks) == 1 else None

    def _gradient(self, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Gradient of one chunk's share of the mean loss, with its graph kept for a second backward."""
        with torch.enable_grad():
            loss = self.loss_fn(self.model(x), y) * (len(x) / self.total)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True)
        return [g if g is not None else torch.zeros_like(p) for g, p in zip(grads, self.params, strict=True)]

    def __call__(self, vector: torch.Tensor) -> torch.Tensor:
        """H v for a flat ``vector`` of ``dim`` entries, in the parameters' dtype."""
        parts = [
            part.view_as(p)
            for part, p in zip(vector.to(self.dtype).split([p.numel() for p in self.params]), self.params, strict=True)
        ]
        total = torch.zeros(self.dim, dtype=self.dtype, device=self.device)
        for x, y in self.chunks:
            grads = self._graph if self._graph is not None else self._gradient(x, y)
            terms = [(g * v).sum() for g, v in zip(grads, parts, strict=True) if g.requires_grad]
            if not terms:  # this chunk's gradient does not depend on the parameters: its share of H is 0
                continue
            with torch.enable_grad():
                hv = torch.autograd.grad(
                    sum(terms), self.params, retain_graph=self._graph is not None, materialize_grads=True
                )
            total += torch.cat([h.reshape(-1) for h in hv])
        return total


@contextmanager
def probe_hessian(
    context: Context, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int
) -> Iterator[HessianOperator]:
    """The Hessian of the mean cross-entropy on a probe batch, in a side pass: eval mode, recording paused,
    the global RNG forked and buffers restored afterwards (:func:`side_pass`, :func:`preserved_state`)."""
    with side_pass(context), preserved_state(context.model, inputs.device), torch.enable_grad():
        yield HessianOperator(context.model, inputs, targets, params=context.params, batch_size=batch_size)


class CurvatureProbe(SparseProbe):
    """What the curvature probes share: the probe set's training samples, whose mean loss they differentiate, a
    private seeded generator of their random vectors (saved with a checkpoint) and the chunk size of a
    Hessian-vector product's forward passes."""

    state_attrs = (*SparseProbe.state_attrs, "generator")

    def __init__(
        self, probe_set: ProbeSet, cadence: GeometricCadence | FixedCadence, every: int, seed: int, batch_size: int
    ) -> None:
        super().__init__(cadence, every)
        self.probe_set = probe_set
        self.seed = seed
        self.batch_size = batch_size
        self.generator: torch.Generator | None = None

    def attach(self, context: Context) -> None:
        self.generator = torch.Generator(device=self.probe_set.x_train.device).manual_seed(self.seed)

    def hessian(self, context: Context) -> contextlib.AbstractContextManager[HessianOperator]:
        """:func:`probe_hessian` on the probe set's training samples."""
        return probe_hessian(context, self.probe_set.x_train, self.probe_set.y_train, self.batch_size)


@dataclass(frozen=True)
class Tridiagonal:
    """The Lanczos tridiagonal T: diagonal ``alpha`` (m,) and off-diagonal ``beta`` (m - 1,), float64."""

    alpha: torch.Tensor
    beta: torch.Tensor

    def matrix(self) -> torch.Tensor:
        """T as a dense m x m matrix."""
        return torch.diag(self.alpha) + torch.diag(self.beta, 1) + torch.diag(self.beta, -1)

    def quadrature(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ritz values theta_k (ascending) and weights w_k = (e_1^T u_k)^2 of T = U diag(theta) U^T."""
        theta, vectors = torch.linalg.eigh(self.matrix())
        return theta, vectors[0].square()


def lanczos(operator: Operator, start: torch.Tensor, steps: int) -> Tridiagonal:
    """``steps`` Lanczos steps from ``start`` (normalised here) with full reorthogonalisation.

    w = H q_j - alpha_j q_j - beta_{j-1} q_{j-1}, alpha_j = q_j^T H q_j, then w is orthogonalised twice against
    every basis vector (Gram-Schmidt, so the basis stays orthogonal in finite precision), beta_j = |w| and
    q_{j+1} = w / beta_j. Stops early when beta_j vanishes (the Krylov space is invariant: T is then exact on it).
    The basis is kept in ``start``'s dtype; alpha and beta are float64.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be a positive integer, got {steps!r}", key="steps")
    basis = [start / start.norm()]
    alpha: list[float] = []
    beta: list[float] = []
    tolerance = 100 * torch.finfo(start.dtype).eps
    last = min(steps, start.numel()) - 1
    for j in range(last + 1):
        w = operator(basis[j]).to(start.dtype)
        alpha.append(float(w @ basis[j]))
        w = w - alpha[j] * basis[j] - (beta[j - 1] * basis[j - 1] if j else 0)
        stacked = torch.stack(basis)
        for _ in range(2):
            w = w - stacked.T @ (stacked @ w)
        norm = float(w.norm())
        scale = max(max(abs(a) for a in alpha), max(beta, default=0.0))
        if j == last or norm <= tolerance * scale:
            break
        beta.append(norm)
        basis.append(w / norm)
    return Tridiagonal(torch.tensor(alpha, dtype=torch.float64), torch.tensor(beta, dtype=torch.float64))


def top_eigenvalues(
    operator: HessianOperator,
    k: int,
    steps: int,
    generator: torch.Generator,
    scale: torch.Tensor | None = None,
    shift: float = 0.0,
) -> torch.Tensor:
    """The ``k`` largest Ritz values (descending, float64) of ``steps`` Lanczos steps from a Gaussian start
    vector drawn with ``generator``; NaN for those beyond an early-stopped Krylov space's size.

    With a positive ``scale`` vector s, of the symmetric S (H + shift I) S (S = diag(s)), whose eigenvalues are
    those of S^2 (H + shift I): with s = P^{-1/2} the preconditioned Hessian of a diagonal preconditioner P.
    """
    start = torch.randn(operator.dim, generator=generator, device=operator.device, dtype=operator.dtype)
    scaled = operator if scale is None else (lambda v: scale * (operator(scale * v) + shift * scale * v))
    theta, _ = lanczos(scaled, start, max(steps, k)).quadrature()
    top = theta.flip(0)[:k]
    return torch.cat([top, top.new_full((k - len(top),), math.nan)])


def rademacher(dim: int, generator: torch.Generator, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A vector of independent +-1 entries drawn with ``generator``."""
    bits = torch.randint(0, 2, (dim,), generator=generator, device=device)
    return (2 * bits - 1).to(dtype)


def hutchinson(
    operator: HessianOperator, samples: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """tr H estimated as the mean of z^T H z over ``samples`` Rademacher vectors, and its standard error
    (sample standard deviation over sqrt(samples)); float64 scalars."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 2:
        raise ConfigError(f"samples must be an integer >= 2, got {samples!r}", key="samples")
    values = []
    for _ in range(samples):
        z = rademacher(operator.dim, generator, operator.dtype, operator.device)
        values.append(z.double() @ operator(z).double())
    quadratic = torch.stack(values)
    return quadratic.mean(), quadratic.std() / math.sqrt(samples)


def slq(
    operator: HessianOperator, vectors: int, steps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stochastic Lanczos quadrature: nodes theta and weights w (each ``vectors`` x ``steps``, float64) from
    ``steps`` Lanczos steps per normalised Rademacher start vector; an early-stopped run pads with weight 0."""
    nodes = torch.zeros(vectors, steps, dtype=torch.float64)
    weights = torch.zeros(vectors, steps, dtype=torch.float64)
    for v in range(vectors):
        start = rademacher(operator.dim, generator, operator.dtype, operator.device)
        theta, w = lanczos(operator, start, steps).quadrature()
        nodes[v, : len(theta)], weights[v, : len(w)] = theta, w
    return nodes, weights


def density_grid(
    nodes: torch.Tensor, weights: torch.Tensor, bins: int, sigma_fraction: float = 0.01
) -> tuple[torch.Tensor, float]:
    """An even grid of ``bins`` eigenvalues covering the weighted nodes with 5 sigma to spare, and sigma,
    ``sigma_fraction`` of the nodes' range (of their largest magnitude when they coincide; 1 when all are 0)."""
    used = nodes[weights > 0]
    low, high = float(used.min()), float(used.max())
    span = (high - low) or max(abs(low), abs(high)) or 1.0
    sigma = sigma_fraction * span
    return torch.linspace(low - 5 * sigma, high + 5 * sigma, bins, dtype=torch.float64), sigma


def spectral_density(nodes: torch.Tensor, weights: torch.Tensor, grid: torch.Tensor, sigma: float) -> torch.Tensor:
    """(1/V) sum_{v,k} w_vk N(grid; theta_vk, sigma^2) over the V rows of ``nodes``/``weights`` (float64)."""
    gauss = torch.exp(-0.5 * ((grid[:, None] - nodes.reshape(1, -1)) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
    return gauss @ weights.reshape(-1) / len(nodes)
