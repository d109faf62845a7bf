"""The Enlightenment Period (EnP) of a recorded run: from initialisation until smoothed training accuracy
first reaches a threshold (50% by default), after arXiv 2504.01737.

What the paper fixes, and what this module does with it:

- *How the period ends* (science.md, section 1): "ends when smoothed training accuracy first reaches 50%".
  ``enlightenment_period`` returns the first **recorded** step at which the smoothed training accuracy is
  ``>= threshold``, so the period is ``[0, end_step]``. "Reaches" is read as ``>=``.
- *The accuracy* is the recorded ``accuracy`` variable: top-1 accuracy of each training batch, in raw units
  (not rescaled from chance, unlike the order parameter psi of DESIGN.md). With few classes 50% is close to
  chance (2 classes: exactly chance); pass a higher ``threshold`` there.
- *The smoothing* (**open** in the paper): a causal exponential moving average with time constant ``tau``
  measured in optimizer steps, ``alpha_i = 1 - exp(-(s_i - s_{i-1}) / tau)``. Being causal, it gives the
  same answer an online detector sees during training; weighting by elapsed steps makes the result
  (nearly) independent of the recording cadence ``every``. The first finite value is the initial state, so
  the EMA is not biased towards 0 at the start. A NaN value is a missing observation: it is skipped, the
  previous EMA value is carried, and the next finite value decays the state by the steps elapsed since the
  last finite one (the result equals the EMA of the finite samples only).
- *Resolution*: ``end_step`` is a recorded step, so with ``every > 1`` the true crossing may lie up to
  ``every - 1`` steps earlier.
- *Fraction of training* (**open** for runs that are still writing): ``end_step / (last recorded step + 1)``,
  i.e. relative to the steps trained so far according to the store. For a finished run recorded with
  ``every > 1``, up to ``every - 1`` trained steps after the last recorded one are not counted. A run whose
  status is still ``running`` gets a warning (:func:`dynamics.store.still_running`) and ``partial=True``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr

from dynamics.errors import ConfigError
from dynamics.store import still_running

METHOD = "ema_accuracy_threshold"


@dataclass(frozen=True)
class EnlightenmentPeriod:
    """Where the Enlightenment Period of one run ends.

    Attributes:
        end_step: first recorded step with smoothed training accuracy ``>= threshold``; None if never reached.
        fraction: ``end_step / (last recorded step + 1)``; None if never reached or nothing was recorded.
        threshold: the accuracy threshold used (raw accuracy, not rescaled from chance).
        tau: EMA time constant in optimizer steps.
        method: how the end was found (``"ema_accuracy_threshold"``).
        partial: the run was still running: the period may end later, and the fraction will shrink.
    """

    end_step: int | None
    fraction: float | None
    threshold: float
    tau: float
    method: str
    partial: bool = False

    @property
    def reached(self) -> bool:
        """Whether the smoothed accuracy reached the threshold, i.e. whether the period has ended."""
        return self.end_step is not None


def _check_tau(tau: float) -> float:
    if isinstance(tau, bool) or not isinstance(tau, int | float | np.floating | np.integer):
        raise ConfigError(f"tau must be a number of optimizer steps, got {tau!r}; pass e.g. tau=10.0")
    if not (math.isfinite(tau) and tau > 0):
        raise ConfigError(f"tau must be a finite number of steps > 0, got {tau!r}; pass e.g. tau=10.0")
    return float(tau)


def check_arguments(threshold: float, tau: float) -> tuple[float, float]:
    """``(threshold, tau)`` as floats, or a ConfigError naming the fix: threshold in (0, 1], tau > 0."""
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, int | float | np.floating | np.integer)
        or not 0 < threshold <= 1
    ):
        raise ConfigError(f"threshold must be an accuracy in (0, 1], got {threshold!r}; pass e.g. threshold=0.5")
    return float(threshold), _check_tau(tau)


def smooth_ema(steps: np.ndarray, values: np.ndarray, tau: float) -> np.ndarray:
    """Exponential moving average of ``values`` taken at optimizer ``steps``, with time constant ``tau`` steps.

    Correct for irregular spacing: each sample's weight is ``alpha_i = 1 - exp(-(s_i - s_prev) / tau)`` with
    ``s_prev`` the step of the previous finite sample. The first finite value is the initial state; NaN
    values are skipped (the previous EMA value is carried; leading NaNs stay NaN). Returns float64.
    """
    tau = _check_tau(tau)
    s = np.asarray(steps, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if s.ndim != 1 or v.shape != s.shape:
        raise ConfigError(
            f"steps and values must be 1-D arrays of one length, got shapes {s.shape} and {v.shape}; "
            "pass one value per step"
        )
    if s.size > 1 and not np.all(np.diff(s) > 0):
        raise ConfigError("steps must be strictly increasing; sort the samples by step and drop duplicates")
    out = np.empty_like(v)
    state = math.nan
    last_step = math.nan
    # A plain loop over Python floats: the recurrence is sequential and this is ~0.2 us per sample.
    for i, (step, value) in enumerate(zip(s.tolist(), v.tolist(), strict=True)):
        if value == value:  # finite or inf; NaN is the only value unequal to itself
            if state != state:
                state = value
            else:
                keep = math.exp(-(step - last_step) / tau)
                state = keep * state + (1.0 - keep) * value
            last_step = step
        out[i] = state
    return out


def enlightenment_period(ds: xr.Dataset, threshold: float = 0.5, tau: float = 10.0) -> EnlightenmentPeriod:
    """The Enlightenment Period of run ``ds`` (from ``dynamics.open_run``): ``[0, end_step]``.

    ``end_step`` is the first recorded step at which the EMA-smoothed training ``accuracy`` (time constant
    ``tau`` steps) is ``>= threshold``; None when it never gets there (the run is still in the period). A run
    still running (``ds.attrs["run_dir"]``) warns and gives ``partial=True``. See the module docstring for
    the choices this makes where the paper leaves them open.
    """
    threshold, tau = check_arguments(threshold, tau)
    run_dir = ds.attrs.get("run_dir")
    partial = bool(run_dir and still_running([run_dir], "Enlightenment Periods"))
    if ds.sizes.get("step", 0) == 0:  # nothing committed yet (a run that just started): not reached
        return EnlightenmentPeriod(None, None, threshold, tau, METHOD, partial)
    if "accuracy" not in ds.variables:
        raise ConfigError(
            "the run has no 'accuracy' variable; record it with the 'loss' probe "
            "(probes='loss', 'minimal' or 'default')"
        )
    accuracy = ds["accuracy"]
    if accuracy.dims != ("step",):
        raise ConfigError(f"'accuracy' must have dims ('step',), got {accuracy.dims}; pass a run from open_run")
    values = np.asarray(accuracy.values, dtype=np.float64)
    steps = np.asarray(accuracy["step"].values if "step" in accuracy.coords else np.arange(values.size))
    if np.isnan(values).all():
        raise ConfigError(
            "training accuracy is NaN at every recorded step; pass output= and target= to "
            "Recorder.step() so that accuracy is measured"
        )
    smoothed = smooth_ema(steps, values, tau)
    reached = np.flatnonzero(smoothed >= threshold)
    if reached.size == 0:
        return EnlightenmentPeriod(None, None, threshold, tau, METHOD, partial)
    end_step = int(steps[reached[0]])
    return EnlightenmentPeriod(end_step, end_step / (int(steps[-1]) + 1), threshold, tau, METHOD, partial)
