"""smooth_ema and enlightenment_period against independent brute-force references on hand-built data."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analyses import EnlightenmentPeriod, enlightenment_period, smooth_ema
from dynamics import ConfigError
from dynamics.runlock import RunLock

ATOL = 1e-12


def reference_ema(steps: np.ndarray, values: np.ndarray, tau: float) -> np.ndarray:
    """EMA as an explicit weighted sum over the whole history, not as a recurrence.

    Over the finite samples j = 0..i (NaNs dropped): w_i0 = exp(-(s_i - s_0)/tau) and, for j >= 1,
    w_ij = (1 - exp(-(s_j - s_{j-1})/tau)) * exp(-(s_i - s_j)/tau), the product of the (1 - alpha_k) of
    every later sample telescoped into one exponential. The result is then held over NaN positions.
    """
    steps = np.asarray(steps, dtype=np.float64)
    values = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(values)
    s, v = steps[keep], values[keep]
    n = len(s)
    alpha = np.ones(n)
    alpha[1:] = 1 - np.exp(-np.diff(s) / tau)
    elapsed = s[:, None] - s[None, :]  # s_i - s_j; only j <= i counts
    weights = alpha[None, :] * np.exp(-np.where(elapsed >= 0, elapsed, np.inf) / tau)
    if n:
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)  # a proper average
    smoothed = weights @ v
    out = np.full(len(values), np.nan)
    finite_positions = np.flatnonzero(keep)
    for position in range(len(values)):
        earlier = finite_positions[finite_positions <= position]
        if earlier.size:
            out[position] = smoothed[len(earlier) - 1]
    return out


def accuracy_dataset(steps: np.ndarray, accuracy: np.ndarray) -> xr.Dataset:
    """A run-shaped dataset holding only ``accuracy(step)``, as open_run would return it."""
    return xr.Dataset({"accuracy": ("step", accuracy)}, coords={"step": steps})


def logistic_accuracy(steps: np.ndarray, seed: int) -> np.ndarray:
    """Training accuracy rising from 0.1 to 0.9 around step 300, with batch noise."""
    rng = np.random.default_rng(seed)
    clean = 0.1 + 0.8 / (1 + np.exp(-(steps - 300) / 40))
    return np.clip(clean + rng.normal(0, 0.08, steps.shape), 0, 1)


def brute_force_end(steps: np.ndarray, accuracy: np.ndarray, threshold: float, tau: float) -> int | None:
    smoothed = reference_ema(steps, accuracy, tau)
    for step, value in zip(steps, smoothed, strict=True):
        if value >= threshold:
            return int(step)
    return None


@pytest.mark.parametrize("spacing", ["regular", "irregular", "fractional"])
@pytest.mark.parametrize("tau", [0.5, 10.0, 123.0])
def test_smooth_ema_matches_weighted_sum_reference(spacing: str, tau: float) -> None:
    rng = np.random.default_rng(0)
    if spacing == "regular":
        steps = np.arange(0, 600, 3)
    elif spacing == "irregular":
        steps = np.cumsum(rng.integers(1, 40, 150))
    else:
        steps = np.cumsum(rng.uniform(0.01, 7.0, 150))
    values = rng.normal(size=steps.shape) + np.sin(steps / 50)
    np.testing.assert_allclose(smooth_ema(steps, values, tau), reference_ema(steps, values, tau), rtol=0, atol=ATOL)


def test_smooth_ema_starts_at_first_value_and_keeps_constants() -> None:
    steps = np.arange(50)
    out = smooth_ema(steps, np.full(50, 0.37), 10.0)
    np.testing.assert_allclose(out, 0.37, rtol=0, atol=ATOL)
    ramp = smooth_ema(steps, np.linspace(1, 2, 50), 5.0)
    assert ramp[0] == 1.0 and out.dtype == np.float64
    assert np.all(np.diff(ramp) > 0) and np.all(ramp[1:] < np.linspace(1, 2, 50)[1:])  # lags behind


def test_smooth_ema_nan_is_a_missing_sample() -> None:
    rng = np.random.default_rng(1)
    steps = np.cumsum(rng.integers(1, 9, 80))
    values = rng.uniform(size=80)
    values[[0, 1, 10, 11, 12, 40, 79]] = np.nan
    out = smooth_ema(steps, values, 7.0)
    np.testing.assert_allclose(out, reference_ema(steps, values, 7.0), rtol=0, atol=ATOL)
    assert np.isnan(out[:2]).all()  # leading NaNs stay NaN
    assert out[2] == values[2]  # the first finite value is the initial state
    assert out[10] == out[11] == out[12] == out[9]  # carried over a gap
    assert out[79] == out[78]
    # skipping a NaN is the same as the sample never having been taken
    keep = ~np.isnan(values)
    np.testing.assert_allclose(out[keep], smooth_ema(steps[keep], values[keep], 7.0), rtol=0, atol=ATOL)
    assert np.isnan(smooth_ema(np.arange(3), np.full(3, np.nan), 1.0)).all()
    assert smooth_ema(np.array([], dtype=np.int64), np.array([]), 1.0).shape == (0,)


@pytest.mark.parametrize("tau", [0, -1.0, math.nan, math.inf, "10", True, None])
def test_smooth_ema_rejects_bad_tau(tau: object) -> None:
    with pytest.raises(ConfigError, match="tau"):
        smooth_ema(np.arange(3), np.ones(3), tau)  # type: ignore[arg-type]


def test_smooth_ema_rejects_bad_steps() -> None:
    with pytest.raises(ConfigError, match="increasing"):
        smooth_ema(np.array([0, 2, 2]), np.ones(3), 1.0)
    with pytest.raises(ConfigError, match="one length"):
        smooth_ema(np.arange(3), np.ones(4), 1.0)


@pytest.mark.parametrize("every", [1, 4])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.85])
@pytest.mark.parametrize("tau", [1.0, 10.0, 50.0])
def test_enlightenment_period_matches_brute_force_search(every: int, threshold: float, tau: float) -> None:
    steps = np.arange(0, 1000, every)
    accuracy = logistic_accuracy(steps, seed=every)
    accuracy[5::37] = np.nan  # steps whose accuracy was not measured
    enp = enlightenment_period(accuracy_dataset(steps, accuracy), threshold=threshold, tau=tau)
    expected = brute_force_end(steps, accuracy, threshold, tau)
    assert expected is not None and enp.end_step == expected
    assert isinstance(enp.end_step, int) and enp.reached
    assert enp.fraction == pytest.approx(expected / (steps[-1] + 1), rel=1e-15)
    assert (enp.threshold, enp.tau, enp.method) == (threshold, tau, "ema_accuracy_threshold")
    if threshold == 0.5:  # the logistic midpoint is 300, and the smoothing can only delay the crossing
        assert 250 <= enp.end_step <= 300 + 5 * tau + every


def test_never_reached_gives_none() -> None:
    steps = np.arange(400)
    enp = enlightenment_period(accuracy_dataset(steps, logistic_accuracy(steps, 0)), threshold=0.95)
    assert enp == EnlightenmentPeriod(None, None, 0.95, 10.0, "ema_accuracy_threshold")
    assert not enp.reached


def test_threshold_is_reached_at_equality_and_one_is_allowed() -> None:
    steps = np.arange(0, 20, 2)
    assert enlightenment_period(accuracy_dataset(steps, np.full(10, 0.5))).end_step == 0
    perfect = enlightenment_period(accuracy_dataset(steps, np.ones(10)), threshold=1)
    assert perfect.end_step == 0 and perfect.fraction == 0.0
    late = np.r_[np.zeros(9), 1.0]  # only the last recorded step is perfect; with tau tiny it counts at once
    result = enlightenment_period(accuracy_dataset(steps, late), threshold=0.5, tau=1e-3)
    assert result.end_step == 18 and result.fraction == pytest.approx(18 / 19)


def test_result_is_frozen() -> None:
    enp = enlightenment_period(accuracy_dataset(np.arange(3), np.ones(3)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        enp.end_step = 5  # type: ignore[misc]


def test_empty_run_has_not_ended() -> None:
    empty = xr.Dataset({"accuracy": ("step", np.array([]))}, coords={"step": np.array([], dtype=np.int64)})
    assert enlightenment_period(empty).end_step is None
    assert enlightenment_period(xr.Dataset()).fraction is None  # a run that committed nothing yet


@pytest.mark.parametrize("threshold", [0, -0.1, 1.5, math.nan, True, "0.5"])
def test_bad_threshold_is_a_config_error(threshold: object) -> None:
    ds = accuracy_dataset(np.arange(3), np.ones(3))
    with pytest.raises(ConfigError, match=r"threshold must be an accuracy in \(0, 1\].*pass"):
        enlightenment_period(ds, threshold=threshold)  # type: ignore[arg-type]


def test_bad_tau_and_missing_accuracy_are_config_errors() -> None:
    ds = accuracy_dataset(np.arange(3), np.ones(3))
    with pytest.raises(ConfigError, match="tau"):
        enlightenment_period(ds, tau=0)
    no_accuracy = xr.Dataset({"loss": ("step", np.ones(3))}, coords={"step": np.arange(3)})
    with pytest.raises(ConfigError, match="'loss' probe") as info:
        enlightenment_period(no_accuracy)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="output= and target="):
        enlightenment_period(accuracy_dataset(np.arange(3), np.full(3, np.nan)))


@pytest.mark.parametrize("status", ["running", "finished"])
def test_a_run_still_running_warns_and_is_partial(tmp_path: Path, status: str) -> None:
    """A run directory marked running whose write lock a live writer holds (here this process)."""
    (tmp_path / "meta.json").write_text(json.dumps({"status": status}))
    ds = accuracy_dataset(np.arange(400), logistic_accuracy(np.arange(400), 0)).assign_attrs(run_dir=str(tmp_path))
    lock = RunLock(tmp_path)
    try:
        if status == "running":
            with pytest.warns(UserWarning, match=r"1 run\(s\) still running"):
                enp = enlightenment_period(ds)
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                enp = enlightenment_period(ds)
    finally:
        lock.release()
    assert enp.partial == (status == "running") and enp.reached
