"""The phase-transition model of the early phase of training: order parameters, fits, intervals, susceptibility.

``python -m analyses.phase RUN_DIR [RUN_DIR ...]`` analyses one run or several seeds of one configuration
and prints a one-paragraph summary; it draws nothing (``python -m figures.phase`` draws the figure).

**Order parameters** psi(t), each in [0, 1] and growing with order:

- ``accuracy``: training batch accuracy rescaled from chance, (acc - 1/C) / (1 - 1/C);
- ``linear`` / ``knn``: ridge linear-probe / k-NN accuracy on the held-out part of the probe set
  (``rep_linear_acc``/``rep_knn_acc``, split ``test``), rescaled from chance the same way;
- ``nc1``: 1 / (1 + NC1) of the training part of the probe set (NC1 = tr(S_W S_B^+)/C falls towards 0 as
  classes separate, so this rises towards 1; it need not start near 0, since the random features of an
  initialised network already separate the classes of the input in part).

**Models**, fitted by weighted least squares (a batched Levenberg-Marquardt from a grid of starts):

- the mean-field logistic relaxation psi(t) = psi_0 + psi_inf / (1 + exp(-(t - t_c) / w)), whose t_c is
  the transition step and w its width;
- the alternative, a stretched-exponential (Kohlrausch) relaxation psi(t) = psi_0 + A (1 - exp(-(t/tau)^beta)),
  the usual model of a gradual, glass-like relaxation without a critical point.

Both have four parameters; they are compared by AIC = n ln(RSS/n) + 2(k + 1), n the number of fitted
points, which assumes independent Gaussian errors (batch accuracies are close to that; ``delta_aic`` > 0
favours the logistic). R^2 is 1 - RSS/TSS of the weighted fit.

**Bootstrap intervals** of t_c and w (percentile intervals, ``n_boot`` resamples, refitted from the full
fit): with several runs, a two-stage bootstrap resamples the runs (seeds) with replacement, then the points
within each drawn run, so that both the seed-to-seed and the within-run variation enter; with one run the
points are resampled (pairs bootstrap over batches for ``accuracy``, over measurements for the probe-set
order parameters, whose per-sample features are not kept by default). Runs are aligned on the steps they
all recorded. With more than ``max_points`` aligned steps, consecutive steps are pooled into ``max_points``
equal bins (mean step, mean psi, weighted by their size), and the bootstrap then resamples bins: a block
bootstrap, which also respects short-range correlation. Calibration: on logistic curves of 300 points
with Gaussian noise (sd 0.05) the 95% intervals covered the true t_c in 95% and the true w in 93% of 400
seeded trials (the test suite requires >= 90 of 100).

**Susceptibility** chi(t): with several runs, the variance across runs (ddof 1) of psi, the batch accuracy
being first smoothed by the causal EMA of :func:`analyses.enlightenment.smooth_ema` (time constant ``tau``
steps) so that the per-batch sampling noise does not dominate; with one run, the variance across bootstrap
resamples of the fitted logistic curve. Its peak is reported; in a true transition it lies near t_c.

**Flags**: what the data cannot support is flagged per order parameter (``flags`` in the result, worded in
the summary), with thresholds as keyword arguments of :func:`fit_transition` and :func:`analyse_phase`:

- ``before_start`` / ``after_end``, *transition not observed*: t_c, or its bootstrap interval, lies before the
  first or after the last fitted step (psi rises from the start of the record, or has not finished rising
  at its end); the logistic then extrapolates its t_c and the interval measures nothing observed;
- ``falls``: the fitted amplitude psi_inf is <= 0, so psi falls across t_c: a loss of order (e.g. 1/(1 + NC1)
  falling in the first steps, or accuracy collapsing), not the disorder-to-order transition of the model;
- ``indistinguishable``: |delta AIC| < ``min_delta_aic`` (default 2). Both models have four parameters, so
  delta AIC = n ln(RSS_stretched / RSS_logistic) is twice the log-likelihood ratio, and within 2 the evidence
  ratio exp(delta AIC / 2) is below e: both models keep substantial support (Burnham & Anderson 2002) and
  the data do not tell a transition from a relaxation;
- ``relaxation``: delta AIC <= -``min_delta_aic``: the stretched exponential, a relaxation without a critical
  point, fits better;
- ``few_points``: fewer than ``min_transition_points`` (default 8, twice the model's four parameters)
  distinct fitted steps lie within t_c +- 2w, where the logistic rises from 12% to 88% of its amplitude, so
  t_c and w rest on the levels around the rise rather than on the rise itself;
- ``no_fit``: nothing was fitted (fewer than 8 finite points, psi constant, or no start converged).

**Runs still running** (``meta.json`` status ``running``, a live writer): analysed as far as recorded, with a
warning; ``attrs["partial"]`` is True and ``attrs["running"]`` names them.

**Enlightenment Period**: t_50 of each run from :func:`analyses.enlightenment.enlightenment_period` (first
recorded step at which the EMA-smoothed raw training accuracy reaches 50%), its fraction of training, and,
when a strategy recorded ``enp_active``, the step at which it ended the period online (first recorded step
with ``enp_active == 0`` after it was 1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import reduce
from numbers import Real
from pathlib import Path

import numpy as np
import xarray as xr
from scipy.special import expit
from tqdm.auto import tqdm

from analyses.enlightenment import EnlightenmentPeriod, check_arguments, enlightenment_period, smooth_ema
from dynamics.cli import UsageParser, fail, flag_message, one_line, one_line_errors
from dynamics.errors import ConfigError, DynamicsError
from dynamics.store import CHUNK_ROWS, distinct_runs, open_run, still_running

USAGE_ERROR = 2
MODELS = ("logistic", "stretched_exp")
LOGISTIC_PARAMS = ("psi_0", "psi_inf", "t_c", "w")
STRETCHED_PARAMS = ("psi_0", "amplitude", "tau", "beta")
ORDER_PARAMETERS: dict[str, str] = {
    "accuracy": "training accuracy, rescaled from chance",
    "linear": "linear-probe accuracy (held out), rescaled from chance",
    "knn": "k-NN accuracy (held out), rescaled from chance",
    "nc1": "1 / (1 + NC1) (probe-set training part)",
}
_REPRESENTATION = {"linear": ("rep_linear_acc", "test"), "knn": ("rep_knn_acc", "test"), "nc1": ("rep_nc1", "train")}
_NEEDED = ("accuracy", "rep_linear_acc", "rep_knn_acc", "rep_nc1", "rep_cka", "fisher_trace", "enp_active")
_SPARSE = ("rep_linear_acc", "fisher_trace", "rep_knn_acc", "rep_nc1", "rep_cka")
"""Measured at a probe's cadence, NaN elsewhere; the first two are finite whenever measured."""
_MIN_POINTS = 8
FLAGS: dict[str, str] = {
    "no_fit": "no fit",
    "before_start": "transition not observed: t_c before the first step",
    "after_end": "transition not observed: t_c after the last step",
    "falls": "psi falls across t_c",
    "indistinguishable": "logistic not distinguishable from relaxation",
    "relaxation": "relaxation (stretched exp.) fits better",
    "few_points": "too few points in the transition",
}
"""What a fit cannot support (see the module docstring), with a short label; :func:`summary` words them in full."""
MIN_DELTA_AIC = 2.0
MIN_TRANSITION_POINTS = 8
TRANSITION_WIDTHS = 2.0
"""The transition window is t_c +- 2w, over which the logistic rises from 12% to 88% of its amplitude."""
_CONFIG_KEYS_IGNORED = ("seed", "device", "flush_seconds")


# ---------------------------------------------------------------------------------------------- models


class _Model(ABC):
    """A four-parameter curve in normalised time u = t / T: value, Jacobian, starting grid, natural units.

    Internal parameters keep the positive ones on a log scale. The fit is confined to a box (levels within
    two data ranges of the data, times from 1e-4 T to 10 T or more): without it, a logistic fitted to a
    concave relaxation drifts without end towards t_c -> -inf with diverging levels.
    """

    name: str
    params: tuple[str, ...]
    time_bounds: tuple[tuple[float, float], tuple[float, float]]
    """Lower and upper bounds of the two internal time parameters."""

    def bounds(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds of the internal parameters for data ``y``."""
        spread = float(np.ptp(y)) or 1.0
        low = [float(y.min()) - 2 * spread, -3 * spread, *self.time_bounds[0]]
        high = [float(y.max()) + 2 * spread, 3 * spread, *self.time_bounds[1]]
        return np.asarray(low), np.asarray(high)

    @abstractmethod
    def evaluate(self, theta: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values (B, n) and Jacobian (B, n, 4) at internal parameters ``theta`` (B, 4)."""

    @abstractmethod
    def starts(self, u: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Starting points (S, 4) spread over plausible shapes."""

    @abstractmethod
    def natural(self, theta: np.ndarray, scale: float) -> np.ndarray:
        """Internal parameters (..., 4) to natural units (steps for times)."""


def _levels(u: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean psi over the first and the last tenth of the time range: start and end levels for starts."""
    order = np.argsort(u, kind="stable")
    k = max(1, len(u) // 10)
    return float(y[order[:k]].mean()), float(y[order[-k:]].mean())


class _Logistic(_Model):
    name = "logistic"
    params = LOGISTIC_PARAMS
    time_bounds = ((-1.0, math.log(1e-4)), (2.0, math.log(10.0)))

    def evaluate(self, theta: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p0, amp, centre, log_w = (theta[:, i : i + 1] for i in range(4))
        width = np.exp(log_w)
        z = (u[None, :] - centre) / width
        s = expit(z)
        slope = amp * s * (1.0 - s)
        jac = np.stack(np.broadcast_arrays(np.ones_like(s), s, -slope / width, -slope * z), axis=-1)
        return p0 + amp * s, jac

    def starts(self, u: np.ndarray, y: np.ndarray) -> np.ndarray:
        first, last = _levels(u, y)
        lo, hi = float(u.min()), float(u.max())
        grid = [
            (first, last - first, lo + f * (hi - lo), math.log(s * (hi - lo) or 1.0))
            for f in (0.05, 0.15, 0.3, 0.5, 0.75)
            for s in (0.01, 0.05, 0.2)
        ]
        return np.asarray(grid)

    def natural(self, theta: np.ndarray, scale: float) -> np.ndarray:
        return np.stack([theta[..., 0], theta[..., 1], theta[..., 2] * scale, np.exp(theta[..., 3]) * scale], -1)


class _StretchedExponential(_Model):
    name = "stretched_exp"
    params = STRETCHED_PARAMS
    time_bounds = ((math.log(1e-4), math.log(0.05)), (math.log(100.0), math.log(20.0)))

    def evaluate(self, theta: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p0, amp, log_tau, log_beta = (theta[:, i : i + 1] for i in range(4))
        beta = np.exp(log_beta)
        positive = u > 0
        log_v = np.where(positive, np.log(np.where(positive, u, 1.0)), 0.0)[None, :] - log_tau
        q = np.where(positive[None, :], np.exp(np.minimum(beta * log_v, 700.0)), 0.0)
        e = np.exp(-q)
        jac = np.stack(
            np.broadcast_arrays(np.ones_like(e), 1.0 - e, -amp * e * q * beta, amp * e * q * beta * log_v), axis=-1
        )
        return p0 + amp * (1.0 - e), jac

    def starts(self, u: np.ndarray, y: np.ndarray) -> np.ndarray:
        first, last = _levels(u, y)
        hi = float(u.max()) or 1.0
        grid = [
            (first, last - first, math.log(f * hi), math.log(b))
            for f in (0.05, 0.15, 0.3, 0.5, 0.8)
            for b in (0.5, 1.0, 2.0, 4.0)
        ]
        return np.asarray(grid)

    def natural(self, theta: np.ndarray, scale: float) -> np.ndarray:
        return np.stack([theta[..., 0], theta[..., 1], np.exp(theta[..., 2]) * scale, np.exp(theta[..., 3])], -1)


_MODELS: dict[str, _Model] = {"logistic": _Logistic(), "stretched_exp": _StretchedExponential()}


def logistic(t: np.ndarray, psi_0: float, psi_inf: float, t_c: float, w: float) -> np.ndarray:
    """psi_0 + psi_inf / (1 + exp(-(t - t_c)/w))."""
    return psi_0 + psi_inf * expit((np.asarray(t, dtype=np.float64) - t_c) / w)


def stretched_exponential(t: np.ndarray, psi_0: float, amplitude: float, tau: float, beta: float) -> np.ndarray:
    """psi_0 + amplitude (1 - exp(-(t/tau)^beta)) for t >= 0."""
    return psi_0 + amplitude * -np.expm1(-((np.asarray(t, dtype=np.float64) / tau) ** beta))


_CURVES: dict[str, Callable[..., np.ndarray]] = {"logistic": logistic, "stretched_exp": stretched_exponential}


def _levenberg_marquardt(
    model: _Model,
    theta: np.ndarray,
    u: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    iterations: int = 100,
    rtol: float = 1e-7,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise sum_i weights[b, i] (y_i - f(u_i; theta_b))^2 for every row b at once.

    Marquardt's damping (lambda * diag(J^T W J)) makes the steps invariant to parameter scales; each trial
    point is projected onto the model's box. Returns the parameters (B, 4) and the weighted residual sums of
    squares (B,); rows that never became finite are NaN.
    """
    low, high = model.bounds(y)
    theta = np.clip(theta.astype(np.float64), low, high)
    weights = np.broadcast_to(weights, (len(theta), len(u)))
    value, jac = model.evaluate(theta, u)
    residual = y[None, :] - value
    cost = np.einsum("bn,bn->b", weights, residual**2)
    cost = np.where(np.isfinite(cost), cost, np.inf)
    damping = np.full(len(theta), 1e-3)
    active = np.ones(len(theta), dtype=bool)
    eye = np.eye(theta.shape[1])
    for _ in range(iterations):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        weighted = jac[idx] * weights[idx, :, None]
        normal = np.einsum("bnp,bnq->bpq", weighted, jac[idx])
        gradient = np.einsum("bnp,bn->bp", weighted, residual[idx])
        normal = np.nan_to_num(normal, nan=0.0, posinf=0.0, neginf=0.0)
        diag = np.einsum("bpp->bp", normal)
        floor = 1e-12 * diag.max(1, keepdims=True) + 1e-300  # keeps the damped matrix positive definite
        damped = normal + (damping[idx, None] * np.maximum(diag, floor))[:, :, None] * eye
        step = np.linalg.solve(damped, np.nan_to_num(gradient)[:, :, None])[:, :, 0]
        trial = np.clip(theta[idx] + step, low, high)
        trial_value, trial_jac = model.evaluate(trial, u)
        trial_residual = y[None, :] - trial_value
        trial_cost = np.einsum("bn,bn->b", weights[idx], trial_residual**2)
        better = np.isfinite(trial_cost) & (trial_cost <= cost[idx])
        improvement = np.where(better, cost[idx] - trial_cost, 0.0)
        accepted = idx[better]
        theta[accepted], value[accepted], jac[accepted] = trial[better], trial_value[better], trial_jac[better]
        residual[accepted] = trial_residual[better]
        cost[accepted] = trial_cost[better]
        damping[idx] = np.clip(np.where(better, damping[idx] * 0.3, damping[idx] * 10.0), 1e-12, 1e12)
        small_step = np.abs(step).max(1) <= 1e-9 * (np.abs(theta[idx]).max(1) + 1e-9)
        converged = (better & (improvement <= rtol * cost[idx])) | small_step | (damping[idx] >= 1e12)
        active[idx[converged]] = False
    cost = np.where(np.isfinite(cost), cost, np.nan)
    theta[~np.isfinite(cost)] = np.nan
    return theta, cost


# ------------------------------------------------------------------------------------------- fitting


@dataclass(frozen=True)
class ModelFit:
    """One model fitted to psi(t): parameters in natural units (times in steps), goodness of fit."""

    model: str
    params: dict[str, float]
    rss: float
    aic: float
    r2: float
    n: int

    def curve(self, t: np.ndarray) -> np.ndarray:
        """The fitted psi at steps ``t``."""
        return _CURVES[self.model](t, **self.params)


@dataclass(frozen=True)
class Transition:
    """Both models fitted to one order parameter, the AIC choice, bootstrap intervals of t_c and w, and flags.

    ``boot`` holds the logistic parameters (psi_0, psi_inf, t_c, w) of each bootstrap resample (NaN where a
    refit failed); ``scheme`` names the resampling (``points``, ``blocks`` or ``runs+points``); ``observed``
    is the first and last fitted step; ``transition_points`` counts the distinct fitted steps within
    t_c +- 2w; ``flags`` names, in the order of :data:`FLAGS`, what the fit cannot support.
    """

    fits: dict[str, ModelFit]
    t_c_interval: tuple[float, float]
    w_interval: tuple[float, float]
    level: float
    scheme: str
    boot: np.ndarray
    observed: tuple[float, float]
    transition_points: int
    flags: tuple[str, ...]

    @property
    def t_c(self) -> float:
        """Transition step of the logistic fit."""
        return self.fits["logistic"].params["t_c"]

    @property
    def w(self) -> float:
        """Width of the logistic fit, in steps."""
        return self.fits["logistic"].params["w"]

    @property
    def delta_aic(self) -> float:
        """AIC(stretched exponential) - AIC(logistic): > 0 favours the logistic model."""
        return self.fits["stretched_exp"].aic - self.fits["logistic"].aic

    @property
    def best(self) -> str:
        """The model with the lower AIC (the logistic on a tie)."""
        return "stretched_exp" if self.delta_aic < 0 else "logistic"


def _nan_fit(model: str, n: int) -> ModelFit:
    return ModelFit(model, dict.fromkeys(_MODELS[model].params, math.nan), math.nan, math.nan, math.nan, n)


def _fit(model: _Model, u: np.ndarray, y: np.ndarray, weights: np.ndarray, scale: float) -> tuple[ModelFit, np.ndarray]:
    """Best of the multi-start fits, and its internal parameters."""
    theta, cost = _levenberg_marquardt(model, model.starts(u, y), u, y, weights)
    if not np.isfinite(cost).any():
        return _nan_fit(model.name, len(y)), np.full(4, np.nan)
    best = int(np.nanargmin(cost))
    rss = float(cost[best])
    mean = float(np.average(y, weights=weights))
    tss = float((weights * (y - mean) ** 2).sum())
    n = len(y)
    aic = n * math.log(max(rss, np.finfo(float).tiny) / n) + 2 * (len(model.params) + 1)
    params = dict(zip(model.params, model.natural(theta[best], scale).tolist(), strict=True))
    return ModelFit(model.name, params, rss, aic, 1.0 - rss / tss if tss > 0 else math.nan, n), theta[best]


def bootstrap_weights(groups: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Resampling counts (n_boot, n) of the points: of the points, or of the groups then of their points.

    With one group, a multinomial draw of n points; with G >= 2 groups, G groups drawn with replacement and,
    for each draw of a group, as many of its points drawn with replacement as it has.
    """
    n = len(groups)
    labels, inverse = np.unique(groups, return_inverse=True)
    if len(labels) < 2:
        return rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64)
    group_draws = rng.multinomial(len(labels), np.full(len(labels), 1.0 / len(labels)), size=n_boot)
    weights = np.zeros((n_boot, n))
    for index in range(len(labels)):
        members = np.flatnonzero(inverse == index)
        size = len(members)
        weights[:, members] = rng.multinomial(group_draws[:, index] * size, np.full(size, 1.0 / size))
    return weights


def _check_fit_arguments(n_boot: int, level: float, min_delta_aic: float, min_transition_points: int) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 2:
        raise ConfigError(f"n_boot must be an integer >= 2, got {n_boot!r}; pass e.g. n_boot=200", key="n_boot")
    if isinstance(level, bool) or not isinstance(level, Real) or not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1), got {level!r}; pass e.g. level=0.95", key="level")
    if isinstance(min_delta_aic, bool) or not isinstance(min_delta_aic, Real) or not 0 <= min_delta_aic < math.inf:
        raise ConfigError(
            f"min_delta_aic must be a finite number >= 0, got {min_delta_aic!r}; pass e.g. min_delta_aic=2",
            key="min_delta_aic",
        )
    if (
        isinstance(min_transition_points, bool)
        or not isinstance(min_transition_points, int)
        or min_transition_points < 1
    ):
        raise ConfigError(
            f"min_transition_points must be an integer >= 1, got {min_transition_points!r}; "
            "pass e.g. min_transition_points=8",
            key="min_transition_points",
        )


def _flags(
    fits: dict[str, ModelFit],
    t_c_interval: tuple[float, float],
    t: np.ndarray,
    min_delta_aic: float,
    min_transition_points: int,
) -> tuple[int, tuple[str, ...]]:
    """The count of distinct fitted steps within t_c +- 2w, and the flags of the fit (module docstring)."""
    logistic_fit = fits["logistic"].params
    t_c, w = logistic_fit["t_c"], logistic_fit["w"]
    if not np.isfinite([t_c, w]).all():
        return 0, ("no_fit",)
    first, last = float(t.min()), float(t.max())
    low, high = t_c_interval
    delta_aic = fits["stretched_exp"].aic - fits["logistic"].aic
    points = int(np.count_nonzero(np.abs(np.unique(t) - t_c) <= TRANSITION_WIDTHS * w))
    found = {
        "before_start": t_c < first or low < first,
        "after_end": t_c > last or high > last,
        "falls": logistic_fit["psi_inf"] <= 0,
        "indistinguishable": abs(delta_aic) < min_delta_aic,
        "relaxation": delta_aic <= -min_delta_aic,
        "few_points": points < min_transition_points,
    }
    return points, tuple(flag for flag in FLAGS if found.get(flag))


def fit_transition(
    t: np.ndarray,
    psi: np.ndarray,
    *,
    groups: np.ndarray | None = None,
    weights: np.ndarray | None = None,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
    scheme: str | None = None,
    min_delta_aic: float = MIN_DELTA_AIC,
    min_transition_points: int = MIN_TRANSITION_POINTS,
) -> Transition:
    """Fit the logistic and the stretched-exponential models to points (t, psi); bootstrap t_c and w; flag.

    ``groups`` labels the run (seed) of each point (two-stage bootstrap when there are several);
    ``weights`` are per-point weights (e.g. bin sizes); ``scheme`` only names the resampling in the result.
    Non-finite points are dropped. Intervals are percentile intervals at ``level`` over ``n_boot`` resamples.
    ``min_delta_aic`` and ``min_transition_points`` are the thresholds of the ``indistinguishable``,
    ``relaxation`` and ``few_points`` flags (module docstring).
    """
    _check_fit_arguments(n_boot, level, min_delta_aic, min_transition_points)
    t = np.asarray(t, dtype=np.float64).ravel()
    psi = np.asarray(psi, dtype=np.float64).ravel()
    groups = np.zeros(len(t), dtype=np.int64) if groups is None else np.asarray(groups).ravel()
    weights = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=np.float64).ravel()
    if not len(t) == len(psi) == len(groups) == len(weights):
        raise ConfigError(
            f"t, psi, groups and weights differ in length ({len(t)}, {len(psi)}, {len(groups)}, "
            f"{len(weights)}); pass one value per point",
            key=("t", "psi", "groups", "weights"),
        )
    keep = np.isfinite(t) & np.isfinite(psi) & np.isfinite(weights) & (weights > 0)
    t, psi, groups, weights = t[keep], psi[keep], groups[keep], weights[keep]
    scheme = scheme or ("runs+points" if len(np.unique(groups)) > 1 else "points")
    nan_interval = (math.nan, math.nan)
    observed = (float(t.min()), float(t.max())) if len(t) else nan_interval
    if len(t) < _MIN_POINTS or np.ptp(psi) == 0 or np.ptp(t) == 0:
        fits = {name: _nan_fit(name, len(t)) for name in MODELS}
        return Transition(
            fits, nan_interval, nan_interval, level, scheme, np.full((n_boot, 4), np.nan), observed, 0, ("no_fit",)
        )
    scale = float(np.abs(t).max())
    u = t / scale
    fits, thetas = {}, {}
    for name in MODELS:
        fits[name], thetas[name] = _fit(_MODELS[name], u, psi, weights, scale)
    if not np.isfinite(thetas["logistic"]).all():
        return Transition(
            fits, nan_interval, nan_interval, level, scheme, np.full((n_boot, 4), np.nan), observed, 0, ("no_fit",)
        )
    resample = bootstrap_weights(groups, n_boot, np.random.default_rng(seed)) * weights
    model = _MODELS["logistic"]
    theta, _ = _levenberg_marquardt(model, np.repeat(thetas["logistic"][None, :], n_boot, 0), u, psi, resample)
    boot = model.natural(theta, scale)
    tail = (1 - level) / 2
    intervals = []
    for column in (2, 3):
        values = boot[:, column][np.isfinite(boot[:, column])]
        intervals.append(tuple(np.quantile(values, [tail, 1 - tail]).tolist()) if len(values) > 1 else nan_interval)
    points, flags = _flags(fits, intervals[0], t, min_delta_aic, min_transition_points)
    return Transition(fits, intervals[0], intervals[1], level, scheme, boot, observed, points, flags)


# ---------------------------------------------------------------------------------- reading the runs


def _check_runs(runs: Sequence[xr.Dataset]) -> None:
    """Several runs must be seeds of one configuration: configs equal up to seed, device, flush settings."""
    configs = [run.attrs.get("config") for run in runs]
    if len(runs) < 2 or not all(isinstance(c, dict) and c for c in configs):
        return
    first = {k: v for k, v in configs[0].items() if k not in _CONFIG_KEYS_IGNORED}
    for run, config in zip(runs[1:], configs[1:], strict=True):
        other = {k: v for k, v in config.items() if k not in _CONFIG_KEYS_IGNORED}
        differing = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
        if differing:
            raise ConfigError(
                f"run {run.attrs.get('run_dir', '?')} differs from the first in {', '.join(differing)}; "
                "pass seeds of one configuration"
            )


def num_classes_of(ds: xr.Dataset) -> int | None:
    """The class count of a run: from the probes' variable attributes, else from ``meta.json``
    (:func:`meta_num_classes`)."""
    for name in _NEEDED:
        if name in ds.variables and "num_classes" in ds[name].attrs:
            return int(ds[name].attrs["num_classes"])
    run_dir = ds.attrs.get("run_dir")
    return meta_num_classes(Path(run_dir)) if run_dir else None


def meta_num_classes(run_dir: Path) -> int | None:
    """The class count in ``run_dir/meta.json``: the count the Recorder saw in the first output (so none when
    it never saw one), or the built-in loop's results; None when absent or unreadable."""
    if not (run_dir / "meta.json").is_file():
        return None
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None
    for found in (meta.get("num_classes"), (meta.get("results") or {}).get("num_classes")):
        if isinstance(found, int) and not isinstance(found, bool):
            return found
    return None


def order_parameters(ds: xr.Dataset, num_classes: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The order parameters a run recorded, each as (steps, psi) over its finite values (see module docstring).

    Reads only ``accuracy`` and the representation variables, never the per-layer ones.
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(
            f"num_classes must be an integer >= 2, got {num_classes!r}; pass e.g. num_classes=10", key="num_classes"
        )
    chance = 1.0 / num_classes
    steps = np.asarray(ds["step"].values) if "step" in ds.coords else np.array([], dtype=np.int64)
    series: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if "accuracy" in ds.variables and steps.size:
        series["accuracy"] = (steps, (np.asarray(ds["accuracy"].values, dtype=np.float64) - chance) / (1 - chance))
    for name, (variable, split) in _REPRESENTATION.items():
        if variable in ds.variables and steps.size:
            values = np.asarray(ds[variable].sel(split=split).values, dtype=np.float64)
            series[name] = (steps, 1.0 / (1.0 + values) if name == "nc1" else (values - chance) / (1 - chance))
    return {name: (s[np.isfinite(v)], v[np.isfinite(v)]) for name, (s, v) in series.items() if np.isfinite(v).any()}


def load_needed(ds: xr.Dataset) -> xr.Dataset:
    """The variables the analysis uses, in memory; nothing else of the run (per-layer variables) is read.

    The probe variables are sparse (NaN between measurements). Those measured at the same steps (one probe's
    variables, or probes with the same ``cadence`` attribute) are read through one of them: it is read
    whole, the others only in spans around its measured steps, since skipping the empty chunks of a long
    run costs more than the data.
    """
    groups: dict[str, list[str]] = {}
    for name in (n for n in _SPARSE if n in ds.variables):
        key = ds[name].attrs.get("cadence") or ("representation" if name.startswith("rep_") else name)
        groups.setdefault(str(key), []).append(name)
    whole = [name for name in _NEEDED if name in ds.variables and name not in _SPARSE]
    whole += [names[0] for names in groups.values()]
    loaded = ds[whole].drop_vars("epoch", errors="ignore").load()
    for locator, *others in groups.values():
        finite = np.isfinite(loaded[locator].values)
        rows = np.flatnonzero(finite.reshape(len(finite), -1).any(axis=1))
        spans = np.split(rows, np.flatnonzero(np.diff(rows) > CHUNK_ROWS) + 1) if rows.size else []
        for name in others:
            values = np.full(ds[name].shape, np.nan)
            for span in spans:
                block = ds[name].isel(step=slice(int(span[0]), int(span[-1]) + 1)).values
                values[span] = block[span - span[0]]
            loaded[name] = xr.DataArray(values, dims=ds[name].dims, attrs=ds[name].attrs)
    return loaded


def _period(ds: xr.Dataset, threshold: float, tau: float) -> EnlightenmentPeriod:
    """The Enlightenment Period of a run, smoothing only as far as needed.

    The EMA is causal, so its first crossing within a prefix of the run is its first crossing in the whole
    run: prefixes of 4096, 16384, ... steps are tried in turn, and the fraction refers to the whole run.
    Only ``accuracy`` is passed on, without the run's directory: :func:`analyse_phase` has already warned
    about a run still running.
    """
    ds = xr.Dataset({"accuracy": ds["accuracy"]})
    size = 4096
    finite = np.isfinite(np.asarray(ds["accuracy"].values))
    while size < ds.sizes.get("step", 0):
        if finite[:size].any():
            period = enlightenment_period(ds.isel(step=slice(0, size)), threshold, tau)
            if period.reached:
                return replace(period, fraction=period.end_step / (int(ds["step"].values[-1]) + 1))
        size *= 4
    return enlightenment_period(ds, threshold, tau)


def _aligned(series: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Steps common to all runs and the (runs x steps) matrix of values there."""
    common = reduce(np.intersect1d, [steps for steps, _ in series])
    return common, np.stack([values[np.searchsorted(steps, common)] for steps, values in series])


def _bins(n: int, max_points: int) -> np.ndarray:
    """Edges of at most ``max_points`` equal bins of ``n`` consecutive points."""
    return np.linspace(0, n, min(n, max_points) + 1).round().astype(np.int64)


def _binned(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Means of consecutive bins along the last axis."""
    sums = np.add.reduceat(values, edges[:-1], axis=-1)
    return sums / np.diff(edges)


def _online_end(ds: xr.Dataset) -> float:
    """First recorded step with ``enp_active == 0`` after it was 1 (NaN if never recorded or not ended)."""
    if "enp_active" not in ds.variables:
        return math.nan
    active = np.asarray(ds["enp_active"].values, dtype=np.float64)
    steps = np.asarray(ds["step"].values)
    on = np.flatnonzero(active == 1)
    if not on.size:
        return math.nan
    off = np.flatnonzero(active[on[0] :] == 0)
    return float(steps[on[0] + off[0]]) if off.size else math.nan


def _run_label(ds: xr.Dataset, index: int) -> str:
    run_dir = ds.attrs.get("run_dir")
    return Path(str(run_dir)).name if run_dir else f"run{index}"


def _on_grid(grid: np.ndarray, steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.full(len(grid), np.nan)
    index = np.searchsorted(grid, steps)
    inside = (index < len(grid)) & (grid[np.minimum(index, len(grid) - 1)] == steps)
    out[index[inside]] = values[inside]
    return out


# ------------------------------------------------------------------------------------------ analysis


def analyse_phase(
    runs: xr.Dataset | Sequence[xr.Dataset],
    *,
    num_classes: int | None = None,
    threshold: float = 0.5,
    tau: float = 10.0,
    n_boot: int = 200,
    level: float = 0.95,
    max_points: int = 1000,
    seed: int = 0,
    progress: bool = False,
    min_delta_aic: float = MIN_DELTA_AIC,
    min_transition_points: int = MIN_TRANSITION_POINTS,
) -> xr.Dataset:
    """Phase-transition analysis of one run or several seeds of one configuration (from ``open_run``).

    Returns an ``xarray.Dataset`` (units in attributes) with the order parameters ``psi(run, order_parameter,
    t)`` on the fit grid ``t`` (steps), the fitted curves ``psi_fit(order_parameter, model, t)``, parameters
    and intervals (``t_c``, ``t_c_interval``, ``w``, ``w_interval``, ``logistic_params``,
    ``stretched_params``, ``r2``, ``aic``, ``delta_aic``, ``best_model``), what the fit cannot support
    (``flags(order_parameter, flag)``, with ``observed`` steps and ``transition_points``; thresholds
    ``min_delta_aic`` and ``min_transition_points``), the susceptibility ``chi`` and its peak ``chi_peak``,
    per run ``t_50``, ``t_50_fraction``, ``online_end``, ``steps``, and ``fisher_trace`` / ``rep_cka`` when
    recorded; ``attrs["summary"]`` is a one-paragraph text summary, ``attrs["partial"]`` says whether some
    runs were still running (named in ``attrs["running"]``; a warning names them too). See the module
    docstring for the model, the bootstrap, the flags and the smoothing.
    """
    datasets = [runs] if isinstance(runs, xr.Dataset) else list(runs)
    if not datasets:
        raise ConfigError("no runs given; pass at least one run directory", key="runs")
    threshold, tau = check_arguments(threshold, tau)
    _check_fit_arguments(n_boot, level, min_delta_aic, min_transition_points)
    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < _MIN_POINTS:
        raise ConfigError(f"max_points must be an integer >= {_MIN_POINTS}, got {max_points!r}", key="max_points")
    _check_runs(datasets)
    run_dirs = [ds.attrs["run_dir"] for ds in datasets if "run_dir" in ds.attrs]
    distinct_runs(run_dirs)  # one seed counted once
    running = still_running(run_dirs, "phase fits")
    if num_classes is None:
        found = {num_classes_of(ds) for ds in datasets}
        if None in found or len(found) != 1:
            raise ConfigError("the number of classes is not recorded in every run; pass num_classes", key="num_classes")
        num_classes = found.pop()
    labels = [_run_label(ds, i) for i, ds in enumerate(datasets)]
    if len(set(labels)) != len(labels):
        labels = [f"run{i}" for i in range(len(datasets))]
    needed = [load_needed(ds) for ds in datasets]
    per_run = [order_parameters(ds, num_classes) for ds in needed]
    names = [name for name in ORDER_PARAMETERS if all(name in series for series in per_run)]
    if "accuracy" not in names:
        raise ConfigError("no run recorded training accuracy at any step; record it with the 'loss' probe")

    bar = tqdm(names, desc="phase fits", unit="order parameter", disable=not progress, dynamic_ncols=True)
    prepared, transitions = {}, {}
    for index, name in enumerate(bar):
        steps, values = _aligned([series[name] for series in per_run])
        edges = _bins(len(steps), max_points)
        grid = _binned(steps.astype(np.float64), edges)
        psi = _binned(values, edges)
        counts = np.diff(edges).astype(np.float64)
        scheme = ("runs+points" if len(datasets) > 1 else "points") + (" (blocks)" if len(grid) < len(steps) else "")
        transitions[name] = fit_transition(
            np.tile(grid, len(datasets)),
            psi.ravel(),
            groups=np.repeat(np.arange(len(datasets)), len(grid)),
            weights=np.tile(counts, len(datasets)),
            n_boot=n_boot,
            level=level,
            seed=seed + index,
            scheme=scheme,
            min_delta_aic=min_delta_aic,
            min_transition_points=min_transition_points,
        )
        if len(datasets) > 1:
            smooth = np.stack([smooth_ema(steps, row, tau) for row in values]) if name == "accuracy" else values
            chi = _binned(np.var(smooth, axis=0, ddof=1), edges)
        else:
            boot = transitions[name].boot
            boot = boot[np.isfinite(boot).all(1)]
            chi = (
                np.var(logistic(grid[None, :], *boot.T[:, :, None]), axis=0, ddof=1)
                if len(boot) > 1
                else np.full(len(grid), np.nan)
            )
        prepared[name] = (grid, psi, chi)

    extra = {
        name: [_measured(ds, name) for ds in needed]
        for name in ("fisher_trace", "rep_cka")
        if all(name in ds.variables for ds in needed)
    }
    t = reduce(
        np.union1d,
        [grid for grid, _, _ in prepared.values()] + [steps for series in extra.values() for steps, _ in series],
    )
    result = _assemble(t, labels, datasets, needed, prepared, transitions, extra, threshold, tau)
    result.attrs.update(
        {
            "num_classes": num_classes,
            "n_boot": n_boot,
            "level": level,
            "tau": tau,
            "threshold": threshold,
            "max_points": max_points,
            "seed": seed,
            "bootstrap": "; ".join(f"{name}: {tr.scheme}" for name, tr in transitions.items()),
            "min_delta_aic": min_delta_aic,
            "min_transition_points": min_transition_points,
            "transition_widths": TRANSITION_WIDTHS,
            "partial": bool(running),
            "running": [str(path) for path in running],
        }
    )
    result.attrs["summary"] = summary(result)
    return result


def _measured(ds: xr.Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) where a sparse probe variable was measured (the training split for ``rep_cka``)."""
    data = ds[name].sel(split="train") if "split" in ds[name].dims else ds[name]
    values = np.asarray(data.values, dtype=np.float64)
    steps = np.asarray(ds["step"].values, dtype=np.float64)
    return steps[np.isfinite(values)], values[np.isfinite(values)]


def _assemble(
    t: np.ndarray,
    labels: list[str],
    datasets: list[xr.Dataset],
    needed: list[xr.Dataset],
    prepared: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    transitions: dict[str, Transition],
    extra: dict[str, list[tuple[np.ndarray, np.ndarray]]],
    threshold: float,
    tau: float,
) -> xr.Dataset:
    names = list(prepared)
    psi = np.stack([np.stack([_on_grid(t, grid, row) for row in values]) for grid, values, _ in prepared.values()], 1)
    fit_curves = np.stack([[tr.fits[m].curve(t) for m in MODELS] for tr in transitions.values()])
    chi = np.stack([_on_grid(t, grid, c) for grid, _, c in prepared.values()])
    chi_peak = [float(grid[np.nanargmax(c)]) if np.isfinite(c).any() else math.nan for grid, _, c in prepared.values()]
    step_attrs = {"units": "step"}
    variables: dict[str, tuple] = {
        "psi": (("run", "order_parameter", "t"), psi, {"units": "1", "long_name": "order parameter psi"}),
        "psi_fit": (("order_parameter", "model", "t"), fit_curves, {"units": "1", "long_name": "fitted psi"}),
        "chi": (("order_parameter", "t"), chi, {"units": "1", "long_name": "susceptibility (variance of psi)"}),
        "chi_peak": (("order_parameter",), chi_peak, {**step_attrs, "long_name": "step where chi peaks"}),
        "t_c": (
            ("order_parameter",),
            [tr.t_c for tr in transitions.values()],
            {**step_attrs, "long_name": "transition step (logistic t_c)"},
        ),
        "t_c_interval": (
            ("order_parameter", "bound"),
            [tr.t_c_interval for tr in transitions.values()],
            {**step_attrs, "long_name": "bootstrap interval of t_c"},
        ),
        "w": (
            ("order_parameter",),
            [tr.w for tr in transitions.values()],
            {**step_attrs, "long_name": "transition width (logistic w)"},
        ),
        "w_interval": (
            ("order_parameter", "bound"),
            [tr.w_interval for tr in transitions.values()],
            {**step_attrs, "long_name": "bootstrap interval of w"},
        ),
        "logistic_params": (
            ("order_parameter", "logistic_param"),
            [[tr.fits["logistic"].params[p] for p in LOGISTIC_PARAMS] for tr in transitions.values()],
            {"units": "1 (psi_0, psi_inf), step (t_c, w)"},
        ),
        "stretched_params": (
            ("order_parameter", "stretched_param"),
            [[tr.fits["stretched_exp"].params[p] for p in STRETCHED_PARAMS] for tr in transitions.values()],
            {"units": "1 (psi_0, amplitude, beta), step (tau)"},
        ),
        "r2": (
            ("order_parameter", "model"),
            [[tr.fits[m].r2 for m in MODELS] for tr in transitions.values()],
            {"units": "1", "long_name": "R^2 of the fit"},
        ),
        "aic": (
            ("order_parameter", "model"),
            [[tr.fits[m].aic for m in MODELS] for tr in transitions.values()],
            {"units": "1", "long_name": "Akaike information criterion"},
        ),
        "delta_aic": (
            ("order_parameter",),
            [tr.delta_aic for tr in transitions.values()],
            {"units": "1", "long_name": "AIC(stretched_exp) - AIC(logistic); > 0 favours logistic"},
        ),
        "best_model": (("order_parameter",), [tr.best for tr in transitions.values()], {}),
        "flags": (
            ("order_parameter", "flag"),
            [[flag in tr.flags for flag in FLAGS] for tr in transitions.values()],
            {
                "long_name": "what the fit cannot support",
                "description": "; ".join(f"{k}: {v}" for k, v in FLAGS.items()),
            },
        ),
        "observed": (
            ("order_parameter", "bound"),
            [tr.observed for tr in transitions.values()],
            {**step_attrs, "long_name": "first and last fitted step"},
        ),
        "transition_points": (
            ("order_parameter",),
            [tr.transition_points for tr in transitions.values()],
            {"units": "1", "long_name": "distinct fitted steps within t_c +- 2w"},
        ),
    }
    periods = [_period(ds, threshold, tau) for ds in needed]
    variables["t_50"] = (
        ("run",),
        [math.nan if p.end_step is None else float(p.end_step) for p in periods],
        {**step_attrs, "long_name": "end of the Enlightenment Period (smoothed acc >= threshold)"},
    )
    variables["t_50_fraction"] = (
        ("run",),
        [math.nan if p.fraction is None else p.fraction for p in periods],
        {"units": "1", "long_name": "t_50 as a fraction of the recorded steps"},
    )
    variables["online_end"] = (
        ("run",),
        [_online_end(ds) for ds in needed],
        {**step_attrs, "long_name": "end of the period as recorded online (enp_active)"},
    )
    variables["steps"] = (
        ("run",),
        [int(ds["step"].values[-1]) + 1 if ds.sizes.get("step") else 0 for ds in needed],
        {**step_attrs, "long_name": "steps trained (last recorded step + 1)"},
    )
    for name, series in extra.items():
        attrs = dict(datasets[0][name].attrs)
        if name == "rep_cka":
            attrs["split"] = "train"
        variables[name] = (("run", "t"), np.stack([_on_grid(t, steps, values) for steps, values in series]), attrs)
    seeds = [
        ds.attrs.get("config", {}).get("seed") if isinstance(ds.attrs.get("config"), dict) else None for ds in datasets
    ]
    coords = {
        "t": ("t", t, {"units": "step", "long_name": "optimizer step (bin mean when binned)"}),
        "run": labels,
        "order_parameter": names,
        "model": list(MODELS),
        "bound": ["low", "high"],
        "flag": list(FLAGS),
        "logistic_param": list(LOGISTIC_PARAMS),
        "stretched_param": list(STRETCHED_PARAMS),
        "seed": ("run", [math.nan if s is None else s for s in seeds]),
    }
    result = xr.Dataset({k: xr.Variable(*v) for k, v in variables.items()}, coords=coords)
    result["order_parameter"].attrs["description"] = "; ".join(f"{k}: {ORDER_PARAMETERS[k]}" for k in names)
    config = datasets[0].attrs.get("config")
    result.attrs["config"] = json.dumps(config) if isinstance(config, dict) else ""
    result.attrs["run_dirs"] = [str(ds.attrs.get("run_dir", "")) for ds in datasets]
    return result


def fmt(value: float, digits: int = 0) -> str:
    """``value`` with thousands separators and ``digits`` decimals; ``n/a`` when not finite."""
    return "n/a" if not np.isfinite(value) else f"{value:,.{digits}f}"


def flag_text(result: xr.Dataset, name: str) -> list[str]:
    """The flags of order parameter ``name`` in an :func:`analyse_phase` result, each in words with its numbers."""
    row = result.sel(order_parameter=name)
    t_c, low, high = float(row["t_c"]), *row["t_c_interval"].values.tolist()
    first, last = row["observed"].values.tolist()
    estimate = f"t_c = {fmt(t_c)} [{fmt(low)}, {fmt(high)}]"
    delta, bound = float(row["delta_aic"]), result.attrs["min_delta_aic"]
    amplitude = float(row["logistic_params"].sel(logistic_param="psi_inf"))
    falls = bool(row["flags"].sel(flag="falls"))
    words = {
        "no_fit": f"no fit (fewer than {_MIN_POINTS} finite points, psi constant, or no start converged)",
        "before_start": f"transition not observed: {name} {'falls' if falls else 'rises'} from the first recorded "
        f"step ({estimate} reaches before step {fmt(first)})",
        "after_end": f"transition not observed: {name} is still {'falling' if falls else 'rising'} at the last "
        f"recorded step ({estimate} reaches after step {fmt(last)})",
        "falls": f"{name} falls across t_c (psi_inf = {fmt(amplitude, 2)}): a loss of order, not a transition to it",
        "indistinguishable": f"the logistic is not distinguishable from the stretched exponential (|delta AIC| = "
        f"{abs(delta):.1f} < {bound:g})",
        "relaxation": f"the stretched exponential, a relaxation without a critical point, fits better (delta AIC = "
        f"{delta:.1f} <= -{bound:g})",
        "few_points": f"too few points in the transition ({int(row['transition_points'])} recorded steps within "
        f"t_c +- {result.attrs['transition_widths']:g}w, fewer than {result.attrs['min_transition_points']})",
    }
    return [words[flag] for flag in FLAGS if bool(row["flags"].sel(flag=flag))]


def summary(result: xr.Dataset) -> str:
    """A one-paragraph text summary of an :func:`analyse_phase` result."""
    runs = result.sizes["run"]
    seeds = [s for s in result["seed"].values.tolist() if np.isfinite(s)]
    plural = "s" if runs > 1 else ""
    who = f"{runs} run{plural}" + (
        f" (seed{plural} {', '.join(str(int(s)) for s in seeds)})" if len(seeds) == runs else ""
    )
    steps = int(result["steps"].max())
    t50 = result["t_50"].values
    fraction = result["t_50_fraction"].values
    threshold, tau, level = result.attrs["threshold"], result.attrs["tau"], result.attrs["level"]
    if np.isfinite(t50).any():
        spread = f" (runs: {', '.join(fmt(v) for v in t50)})" if runs > 1 else ""
        enp = (
            f"The Enlightenment Period ends at t_50 = {fmt(np.nanmean(t50))} steps{spread}, "
            f"{np.nanmean(fraction):.1%} of training (first step with EMA-smoothed training accuracy, "
            f"tau = {tau:g} steps, >= {threshold:.0%})"
        )
    else:
        enp = f"Smoothed training accuracy never reached {threshold:.0%}, so the Enlightenment Period has not ended"
    online = result["online_end"].values
    if np.isfinite(online).any():
        enp += f"; a strategy ended it online at step {', '.join(fmt(v) for v in online)}"
    parts = [f"{who}, {steps:,} steps. {enp}."]
    for name in result["order_parameter"].values.tolist():
        row = result.sel(order_parameter=name)
        low, high = row["t_c_interval"].values
        w_low, w_high = row["w_interval"].values
        best = str(row["best_model"].values)
        parts.append(
            f"{name} ({ORDER_PARAMETERS[name]}): logistic t_c = {fmt(float(row['t_c']))} steps "
            f"[{fmt(low)}, {fmt(high)}], w = {fmt(float(row['w']), 1)} [{fmt(w_low, 1)}, {fmt(w_high, 1)}], "
            f"R^2 = {fmt(float(row['r2'].sel(model='logistic')), 3)}; AIC prefers "
            f"{'the logistic' if best == 'logistic' else 'the stretched exponential'} "
            f"(delta AIC = {fmt(float(row['delta_aic']), 1)}); chi peaks at step {fmt(float(row['chi_peak']))}."
        )
        flags = flag_text(result, name)
        if flags:
            parts.append(f"Not supported for {name}: {'; '.join(flags)}.")
    parts.append(
        f"Intervals: {level:.0%} percentile bootstrap over {result.attrs['bootstrap']}, "
        f"{result.attrs['n_boot']} resamples; chi is the variance of psi across "
        f"{'runs' if runs > 1 else 'bootstrap resamples of the fit'}."
    )
    if result.attrs["partial"]:
        parts.append(
            f"PARTIAL: {len(result.attrs['running'])} run(s) still running ({', '.join(result.attrs['running'])}); "
            "this covers only the steps recorded so far."
        )
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------- CLI

FLAG_NAMES = {
    "num_classes": "--num-classes",
    "n_boot": "--bootstrap",
    "level": "--level",
    "seed": "--seed",
    "min_delta_aic": "--min-delta-aic",
    "min_transition_points": "--min-transition-points",
}
"""The command-line flag of each parameter of :func:`analyse_phase` that the command line sets."""


def argument_parser(prog: str, description: str) -> UsageParser:
    """The command line of the phase analysis: run directories and the analysis options (shared with
    ``python -m figures.phase``, which adds its drawing options)."""
    parser = UsageParser(prog=prog, description=description)
    parser.add_argument(
        "run_dirs", nargs="+", type=Path, metavar="RUN_DIR", help="one run, or several seeds of one configuration"
    )
    parser.add_argument("--num-classes", type=int, default=None, help="class count, if the runs do not record it")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples (default: 200)")
    parser.add_argument("--level", type=float, default=0.95, help="interval level (default: 0.95)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default: 0)")
    parser.add_argument(
        "--min-delta-aic",
        type=float,
        default=MIN_DELTA_AIC,
        help=f"|delta AIC| below which the two models are not distinguishable (default: {MIN_DELTA_AIC:g})",
    )
    parser.add_argument(
        "--min-transition-points",
        type=int,
        default=MIN_TRANSITION_POINTS,
        help=f"fewest fitted steps within t_c +- 2w (default: {MIN_TRANSITION_POINTS})",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return parser


def analyse_arguments(args: argparse.Namespace) -> xr.Dataset:
    """:func:`analyse_phase` of the runs and options parsed by :func:`argument_parser`; its warnings (runs still
    running) are printed as one ``warning:`` line each on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = analyse_phase(
            [open_run(path) for path in distinct_runs(args.run_dirs)],
            num_classes=args.num_classes,
            n_boot=args.bootstrap,
            level=args.level,
            seed=args.seed,
            progress=not args.no_progress,
            min_delta_aic=args.min_delta_aic,
            min_transition_points=args.min_transition_points,
        )
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"warning: {one_line(warning.message)}", file=sys.stderr)
    return result


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analyses.phase RUN_DIR [RUN_DIR ...]``: print the summary; exit status."""
    parser = argument_parser("python -m analyses.phase", __doc__.splitlines()[0])
    try:
        result = analyse_arguments(parser.parse_args(argv))
    except ConfigError as err:
        fail(flag_message(err, FLAG_NAMES))
        return USAGE_ERROR
    except (DynamicsError, OSError) as err:
        fail(err)
        return USAGE_ERROR
    print(result.attrs["summary"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
