"""analyses.stats against independent computations: scipy's intervals and tests, exact enumeration of the Wilcoxon
null distribution, Holm by closed testing over every subset, and the paired t-test's power by numerical
integration over the sample variance and by Monte Carlo (neither uses the noncentral t distribution)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import integrate, stats

from analyses import stats as ours


def test_t_interval_matches_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 3, 5, 10):
        x = rng.normal(0.8, 0.01, n)
        mean, low, high = ours.t_interval(x)
        ref = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
        assert mean == pytest.approx(x.mean(), abs=1e-15)
        assert (low, high) == pytest.approx(ref, abs=1e-14)
    assert math.isnan(ours.t_interval([0.5])[1]) and ours.t_interval([0.5])[0] == 0.5
    assert all(math.isnan(v) for v in ours.t_interval([]))


def test_paired_t_p_matches_ttest_rel():
    rng = np.random.default_rng(1)
    for n in (2, 4, 7):
        x, y = rng.normal(0.8, 0.01, n), rng.normal(0.8, 0.01, n)
        assert ours.paired_t_p(x - y) == pytest.approx(stats.ttest_rel(x, y).pvalue, rel=1e-12)
    assert math.isnan(ours.paired_t_p([0.1]))
    assert ours.paired_t_p([0.1, 0.1]) == 0.0 and math.isnan(ours.paired_t_p([0.0, 0.0]))


def _exact_wilcoxon(d: np.ndarray) -> tuple[float, float]:
    """Two-sided exact p of the signed-rank statistic by enumerating all 2^n sign patterns (no ties, no zeros),
    and the smallest p any data of this size can give."""
    ranks = stats.rankdata(np.abs(d))
    observed = ranks[d > 0].sum()
    total = ranks.sum()
    sums = np.array([ranks[list(signs)].sum() for signs in itertools.product([False, True], repeat=d.size)])
    tail = min((sums <= min(observed, total - observed)).mean(), 0.5)
    smallest = 2 * (sums <= 0).mean()
    return min(1.0, 2 * tail), smallest


def test_wilcoxon_matches_exact_enumeration():
    rng = np.random.default_rng(2)
    for n in (3, 5, 6, 8):
        for _ in range(3):
            d = rng.normal(0.002, 0.003, n)
            p, smallest = _exact_wilcoxon(d)
            assert ours.wilcoxon_p(d) == pytest.approx(p, rel=1e-9)
            assert ours.wilcoxon_min_p(d) == pytest.approx(smallest)
    assert ours.wilcoxon_min_p(np.ones(5)) == pytest.approx(0.0625)  # 5 pairs can never reach 0.05
    assert ours.wilcoxon_min_p(np.ones(6)) == pytest.approx(0.03125)
    assert ours.wilcoxon_p(np.ones(5)) == pytest.approx(0.0625)
    assert math.isnan(ours.wilcoxon_p([0.0, 0.0])) and math.isnan(ours.wilcoxon_min_p([0.0]))


def _holm_closed_testing(p: np.ndarray) -> np.ndarray:
    """Holm as closed testing with Bonferroni local tests: the adjusted p of H_i is the largest Bonferroni p
    min(1, |S| min_{j in S} p_j) over every intersection hypothesis S that contains i."""
    m = p.size
    out = np.empty(m)
    for i in range(m):
        out[i] = max(
            min(1.0, len(subset) * p[list(subset)].min())
            for size in range(1, m + 1)
            for subset in itertools.combinations(range(m), size)
            if i in subset
        )
    return out


def _holm_statsmodels_formula(p: np.ndarray) -> np.ndarray:
    """statsmodels' multipletests(method='holm') formula: sort, multiply by m - k, running maximum, clip, unsort."""
    order = np.argsort(p)
    adjusted = np.minimum(1.0, np.maximum.accumulate((p.size - np.arange(p.size)) * p[order]))
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def test_holm_matches_closed_testing_and_the_statsmodels_formula():
    rng = np.random.default_rng(3)
    for m in range(1, 7):
        for _ in range(20):
            p = rng.uniform(0, 0.3, m) ** 2
            if m > 2:
                p[1] = p[0]  # a tie
            np.testing.assert_allclose(ours.holm(p), _holm_closed_testing(p), rtol=1e-12)
            np.testing.assert_allclose(ours.holm(p), _holm_statsmodels_formula(p), rtol=1e-12)
    mixed = ours.holm([0.01, np.nan, 0.04, 0.03])
    assert math.isnan(mixed[1])
    np.testing.assert_allclose(mixed[[0, 2, 3]], _holm_closed_testing(np.array([0.01, 0.04, 0.03])))
    assert ours.holm([]).size == 0


def _power_by_integration(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """P(|t| > c) for t = (Z + lambda) / sqrt(V / df), V ~ chi2(df), by integrating over V with its density
    (the range split at the quantiles of V, so that its mass is found for any df): no noncentral t."""
    df = n - 1
    c = stats.t.ppf(1 - alpha / 2, df)
    lam = delta * math.sqrt(n) / sd

    def rejected(v: float) -> float:
        s = c * math.sqrt(v / df)
        return (stats.norm.sf(s - lam) + stats.norm.cdf(-s - lam)) * stats.chi2.pdf(v, df)

    edges = [0.0, *stats.chi2.ppf([1e-12, 0.01, 0.25, 0.5, 0.75, 0.99, 1 - 1e-12], df)]
    return sum(integrate.quad(rejected, a, b, limit=200, epsabs=1e-12)[0] for a, b in itertools.pairwise(edges))


def test_paired_power_matches_integration_and_monte_carlo():
    for delta, sd, n in ((0.003, 0.004, 5), (0.01, 0.02, 3), (0.001, 0.002, 20), (0.0, 0.01, 4)):
        assert ours.paired_power(delta, sd, n) == pytest.approx(_power_by_integration(delta, sd, n), abs=1e-7)
    # Monte Carlo: simulate the paired t-test on normal differences
    rng = np.random.default_rng(4)
    delta, sd, n, trials = 0.003, 0.004, 6, 200_000
    d = rng.normal(delta, sd, (trials, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    simulated = (np.abs(t) > stats.t.ppf(0.975, n - 1)).mean()
    assert ours.paired_power(delta, sd, n) == pytest.approx(simulated, abs=4 * math.sqrt(0.25 / trials))
    assert math.isnan(ours.paired_power(0.01, 0.01, 1)) and math.isnan(ours.paired_power(0.01, 0.0, 5))


@pytest.mark.parametrize("n", [2, 3, 5, 10, 30])
def test_minimum_detectable_effect_has_80_percent_power(n):
    sd = 0.004
    mde = ours.minimum_detectable_effect(sd, n)
    assert _power_by_integration(mde, sd, n) == pytest.approx(0.8, abs=1e-6)
    assert _power_by_integration(0.99 * mde, sd, n) < 0.8
    assert ours.minimum_detectable_effect(2 * sd, n) == pytest.approx(2 * mde, rel=1e-8)  # scales with sd


def test_minimum_detectable_effect_by_monte_carlo():
    sd, n, trials = 0.003, 5, 200_000
    mde = ours.minimum_detectable_effect(sd, n)
    d = np.random.default_rng(5).normal(mde, sd, (trials, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    assert (np.abs(t) > stats.t.ppf(0.975, n - 1)).mean() == pytest.approx(0.8, abs=0.005)


@pytest.mark.parametrize(("delta", "sd"), [(0.003, 0.004), (0.003, 0.001), (0.0045, 0.01), (0.001, 0.02)])
def test_pairs_needed_is_the_smallest_n_with_80_percent_power(delta, sd):
    n = ours.pairs_needed(delta, sd)
    assert n >= 2 and n == int(n)
    n = int(n)
    assert _power_by_integration(delta, sd, n) >= 0.8 - 1e-9
    if n > 2:
        assert _power_by_integration(delta, sd, n - 1) < 0.8
    normal_bound = ((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * sd / delta) ** 2
    assert n >= normal_bound  # the t-test always needs at least the known-variance number
    assert ours.minimum_detectable_effect(sd, n) <= delta


def test_pairs_needed_edges():
    assert ours.pairs_needed(0.0, 0.01) == math.inf
    assert math.isnan(ours.pairs_needed(0.01, 0.0))
    assert ours.pairs_needed(1.0, 1e-6) == 2.0
    assert ours.pairs_needed(1e-9, 1.0) == math.inf  # beyond MAX_PAIRS


def test_correlation_helpers_are_consistent():
    low, high = ours.correlation_interval(-0.5, 30)
    half = stats.norm.ppf(0.975) * math.sqrt(1.06 / 27)
    assert (low, high) == pytest.approx((math.tanh(math.atanh(-0.5) - half), math.tanh(math.atanh(-0.5) + half)))
    for rho in (-0.6, 0.3, 0.1):
        n = int(ours.correlation_pairs_needed(rho))
        assert ours.correlation_mde(n) <= abs(rho) < ours.correlation_mde(n - 1)
    assert math.isnan(ours.correlation_interval(0.5, 3)[0]) and ours.correlation_pairs_needed(0.0) == math.inf
