"""Statistics of comparisons over seeds: t-intervals, paired tests, Holm's correction, power of the paired t-test.

Every function takes plain numbers and arrays and returns plain floats; :mod:`analyses.compare` applies them to
the runs of sweeps and :mod:`analyses.claims` to the claims of the papers. The formulas:

- *Student-t interval* of a mean of ``n`` values: ``mean +- t_{(1 + level)/2, n-1} * sd / sqrt(n)`` (sd with
  ddof 1); NaN below two values.
- *Paired t-test* of differences ``d_i`` (condition minus baseline, same seed): ``t = mean(d) / (sd(d) / sqrt(n))``
  with ``n - 1`` degrees of freedom, two-sided (:func:`scipy.stats.ttest_1samp` on ``d``, the same as
  :func:`scipy.stats.ttest_rel`).
- *Wilcoxon signed-rank test* of the differences (:func:`scipy.stats.wilcoxon`, two-sided, zero differences
  dropped, exact null distribution for small samples without ties). With ``m`` non-zero differences its exact
  two-sided p-value cannot fall below ``2 / 2**m`` (all signs alike), so with fewer than 6 pairs it can never
  reach 0.05 (0.0625 at 5 pairs): :func:`wilcoxon_min_p` gives that floor.
- *Holm's step-down correction* of ``m`` p-values sorted ``p_(1) <= ... <= p_(m)``:
  ``p~_(i) = max_{j <= i} min(1, (m - j + 1) p_(j))``, returned in the input order; NaN entries are left out
  of the family and stay NaN.
- *Power of the two-sided paired t-test* at a true mean difference ``delta``, standard deviation of the
  differences ``sd`` and ``n`` pairs, level ``alpha``: with ``df = n - 1``, ``c = t_{1 - alpha/2, df}`` and
  the noncentrality ``lambda = delta sqrt(n) / sd``, ``power = 1 - F(c) + F(-c)``, ``F`` the CDF of the
  noncentral t distribution :data:`scipy.stats.nct` ``(df, lambda)``.
- *Minimum detectable effect* (MDE): the ``delta > 0`` at which that power equals the target (0.8), found by
  Brent's method (:func:`scipy.optimize.brentq`); it scales with ``sd``.
- *Pairs needed* for an effect ``delta``: the smallest ``n >= 2`` whose power reaches the target (power grows
  with ``n``; found by doubling, then bisection).

The power calculations plug in the *observed* sd of the differences, which is itself uncertain with few seeds:
treat the MDE and the pairs needed as estimates, not guarantees.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import integrate, optimize, stats

LEVEL = 0.95
"""Confidence level of the intervals."""
ALPHA = 0.05
"""Two-sided significance level of the tests and of the power calculations."""
POWER = 0.8
"""Target power of the minimum detectable effect and of the pairs needed."""
MAX_PAIRS = 1_000_000
"""Largest number of pairs :func:`pairs_needed` searches; beyond it the answer is ``math.inf``."""


def _finite(values: Sequence[float] | np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of the finite ``values`` and its two-sided Student-t interval.

    The bounds are NaN below two values; mean is NaN without any value.
    """
    x = _finite(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return mean, mean - half, mean + half


def paired_t_p(differences: Sequence[float] | np.ndarray) -> float:
    """Two-sided p-value of the paired t-test of ``differences`` against a zero mean (NaN below two pairs).

    Differences that are all equal and non-zero give p = 0 (a zero-width interval); all zero give NaN.
    """
    d = _finite(differences)
    if d.size < 2:
        return math.nan
    if np.ptp(d) == 0:
        return math.nan if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def wilcoxon_p(differences: Sequence[float] | np.ndarray) -> float:
    """Two-sided p-value of the Wilcoxon signed-rank test of ``differences`` (zeros dropped); NaN when none is left."""
    d = _finite(differences)
    if np.count_nonzero(d) == 0:
        return math.nan
    return float(stats.wilcoxon(d, zero_method="wilcox", alternative="two-sided").pvalue)


def wilcoxon_min_p(differences: Sequence[float] | np.ndarray) -> float:
    """Smallest two-sided p-value the exact Wilcoxon test can give with these differences: ``2 / 2**m``, ``m``
    the number of non-zero differences (capped at 1; NaN when none)."""
    m = int(np.count_nonzero(_finite(differences)))
    return math.nan if m == 0 else min(1.0, 2.0 / 2.0**m)


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the order given; NaN entries are not part of the family."""
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, math.nan)
    index = np.flatnonzero(np.isfinite(p))
    m = index.size
    if m == 0:
        return out
    order = index[np.argsort(p[index], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_power(delta: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test with ``n`` pairs at true mean difference ``delta`` and sd ``sd`` of
    the differences (noncentral t); NaN below two pairs or for a sd that is not positive and finite."""
    if n < 2 or not (math.isfinite(sd) and sd > 0) or not math.isfinite(delta):
        return math.nan
    df = n - 1
    critical = float(stats.t.ppf(1 - alpha / 2, df))
    noncentrality = abs(delta) * math.sqrt(n) / sd
    upper = float(stats.nct.sf(critical, df, noncentrality))
    lower = float(stats.nct.cdf(-critical, df, noncentrality))
    if not math.isfinite(lower) and noncentrality > 8:
        lower = 0.0  # P(T < -c) <= P(Z < -lambda) < 1e-15: scipy's nct returns NaN for some such tiny tails
    if not (math.isfinite(upper) and math.isfinite(lower)):
        return _power_by_integration(critical, df, noncentrality)
    return min(1.0, upper + lower)


def _power_by_integration(critical: float, df: int, noncentrality: float) -> float:
    """P(|Z + lambda| > c sqrt(V / df)), V ~ chi2(df): the power without the noncentral t, where scipy's fails
    (integrated over the quantile u of V, so that the integrand's mass is found for any df)."""

    def rejected(u: float) -> float:
        s = critical * math.sqrt(stats.chi2.ppf(u, df) / df)
        return stats.norm.sf(s - noncentrality) + stats.norm.cdf(-s - noncentrality)

    return float(min(1.0, integrate.quad(rejected, 0.0, 1.0, limit=200)[0]))


def minimum_detectable_effect(sd: float, n: int, power: float = POWER, alpha: float = ALPHA) -> float:
    """The mean difference (> 0, in the units of ``sd``) that the two-sided paired t-test with ``n`` pairs
    detects with probability ``power`` at level ``alpha``; NaN below two pairs or without a positive sd."""
    if n < 2 or not (math.isfinite(sd) and sd > 0):
        return math.nan
    if not 0 < power < 1:
        raise ValueError(f"power must lie in (0, 1), got {power}")
    high = sd
    while paired_power(high, sd, n, alpha) < power:
        high *= 2.0
    return float(optimize.brentq(lambda d: paired_power(d, sd, n, alpha) - power, 0.0, high, xtol=1e-12 * sd))


def pairs_needed(delta: float, sd: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """The smallest number of pairs (>= 2) with which the two-sided paired t-test detects a mean difference
    ``delta`` with probability ``power``; ``math.inf`` beyond :data:`MAX_PAIRS` or for ``delta == 0``, NaN
    without a positive sd. Returned as a float so that the infinite and missing answers fit one column."""
    if not (math.isfinite(sd) and sd > 0) or not math.isfinite(delta):
        return math.nan
    if delta == 0:
        return math.inf
    if paired_power(delta, sd, 2, alpha) >= power:
        return 2.0
    low, high = 2, 4
    while paired_power(delta, sd, high, alpha) < power:
        low, high = high, high * 2
        if high > MAX_PAIRS:
            return math.inf
    while high - low > 1:  # power(low) < target <= power(high)
        middle = (low + high) // 2
        if paired_power(delta, sd, middle, alpha) >= power:
            high = middle
        else:
            low = middle
    return float(high)


def correlation_interval(rho: float, n: int, level: float = LEVEL, spearman: bool = True) -> tuple[float, float]:
    """Interval of a correlation coefficient from Fisher's z = atanh(rho): ``tanh(z +- z_{(1+level)/2} * se)``
    with ``se = sqrt(1.06 / (n - 3))`` for Spearman's rho (Fieller, Hartley and Pearson 1957) or
    ``sqrt(1 / (n - 3))`` for Pearson's r; NaN below four pairs."""
    if n < 4 or not math.isfinite(rho):
        return math.nan, math.nan
    z = math.atanh(max(-1 + 1e-15, min(1 - 1e-15, rho)))
    half = stats.norm.ppf(0.5 + level / 2) * math.sqrt((1.06 if spearman else 1.0) / (n - 3))
    return math.tanh(z - half), math.tanh(z + half)


def correlation_mde(n: int, power: float = POWER, alpha: float = ALPHA, spearman: bool = True) -> float:
    """Smallest |correlation| detected with probability ``power`` by a two-sided test at level ``alpha`` with ``n``
    pairs, on Fisher's z scale: ``tanh((z_{1-alpha/2} + z_power) * se)`` (se as :func:`correlation_interval`)."""
    if n < 4:
        return math.nan
    se = math.sqrt((1.06 if spearman else 1.0) / (n - 3))
    return math.tanh((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se)


def correlation_pairs_needed(rho: float, power: float = POWER, alpha: float = ALPHA, spearman: bool = True) -> float:
    """Pairs needed to detect a correlation ``rho`` (Fisher z): ``ceil(3 + c ((z_a + z_b) / atanh|rho|)^2)``,
    ``c`` 1.06 for Spearman; ``math.inf`` at rho 0, NaN when rho is not finite."""
    if not math.isfinite(rho):
        return math.nan
    if rho == 0:
        return math.inf
    z = math.atanh(min(abs(rho), 1 - 1e-15))
    c = 1.06 if spearman else 1.0
    return float(math.ceil(3 + c * ((stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) / z) ** 2))
