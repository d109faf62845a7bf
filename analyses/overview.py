"""What the overview figure of one run shows, as data: per-module gradient norms, which batches were mixed, the
Enlightenment Period and where it came from, the phases a strategy went through and the hyperparameters it
applied. ``figures.overview`` draws them.

The training ``accuracy`` of a mixed batch is scored against the soft target's dominant label, so under Mixup
it is not a clean accuracy (after ``--mixup-pause`` it drops to ~0.35 when Mixup switches on). Hence:

- :func:`mixed_batches` says which steps trained on a mixed batch (``mix_applied``), so that their accuracy and
  loss are drawn apart from the clean ones;
- :func:`run_period` takes the period a strategy detected online when the run recorded one (``enp_active``:
  its end is the last step inside it; with ``enp_epochs="auto"`` it was found on the clean probe set, whose
  smoothed accuracy is ``enp_accuracy``), else the period of the clean batches' accuracy
  (:func:`~analyses.enlightenment.enlightenment_period` with the mixed steps left out): after ``--mixup-pause``
  the accuracy of all batches never reaches 50%, though the clean accuracy did when Mixup switched on;
- :func:`strategy_phases` splits the run where the strategy's regime changes (inside / after the period) and
  says in words what it applied in each part, read from the recorded values.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from analyses.enlightenment import EnlightenmentPeriod, check_arguments, enlightenment_period
from dynamics.errors import ConfigError

HYPERPARAMETERS: dict[str, str] = {
    "lr": "learning rate",
    "mixup_alpha": "Mixup α",
    "weight_decay": "weight decay",
    "temperature": "temperature",
    "clip_norm": "clip norm",
    "batch_size": "batch size",
    "removed_frac": "removed fraction",
    "focal_eta": "focal η",
    "plp_applied": "PLP predictions",
}
"""Per-step hyperparameters a run may record (engine and strategies), with their names in words."""
CUMULATIVE = frozenset({"plp_applied"})
"""Hyperparameters recorded as per-step events (0/1), shown as their running count."""


def module_of(param: str) -> str:
    """Module owning parameter ``param``: its name without the last component (``a.b.weight`` -> ``a.b``).

    A parameter registered on the root module (no dot in its name) keeps its own name as its group.
    """
    return param.rsplit(".", 1)[0] if "." in param else param


def aggregate_by_module(grad_norm: xr.DataArray) -> xr.DataArray:
    """Per-module gradient norm: sqrt of the sum of squared per-parameter norms of each module.

    ``grad_norm`` has a ``param`` dim (e.g. ``(step, param)``); the result has ``module`` in its place, with
    modules in order of their first parameter. This is the L2 norm of the module's whole gradient, since
    the parameter tensors of a module are disjoint. A NaN in any parameter of a module makes it NaN.
    """
    if "param" not in grad_norm.dims:
        raise ConfigError(f"grad_norm needs a 'param' dim, got dims {grad_norm.dims}; pass run['grad_norm']")
    params = (
        [str(p) for p in grad_norm["param"].values]
        if "param" in grad_norm.coords
        else [str(i) for i in range(grad_norm.sizes["param"])]
    )
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(params):
        groups.setdefault(module_of(name), []).append(index)
    squared = grad_norm.astype(np.float64).drop_vars("param", errors="ignore") ** 2
    parts = [squared.isel(param=indices).sum("param", skipna=False) for indices in groups.values()]
    if parts:
        combined = xr.concat(parts, dim=xr.DataArray(list(groups), dims="module", name="module"))
    else:
        sizes = {d: n for d, n in grad_norm.sizes.items() if d != "param"}
        combined = xr.DataArray(
            np.zeros((*sizes.values(), 0)), dims=(*sizes, "module"), coords={"module": np.array([], dtype=str)}
        )
    dims = [("module" if d == "param" else d) for d in grad_norm.dims]
    result = np.sqrt(combined).transpose(*dims)
    result.name = "grad_norm_module"
    result.attrs = {
        "long_name": "gradient L2 norm per module",
        "units": grad_norm.attrs.get("units", ""),
        "description": "sqrt of the sum of squared grad_norm over the parameters of each module",
    }
    return result


def _values(ds: xr.Dataset, name: str) -> np.ndarray:
    return np.asarray(ds[name].values, dtype=np.float64)


def mixed_batches(ds: xr.Dataset) -> np.ndarray:
    """Per recorded step, whether its batch was mixed (``mix_applied > 0``); all False when not recorded."""
    if "mix_applied" not in ds.variables:
        return np.zeros(ds.sizes.get("step", 0), dtype=bool)
    return np.nan_to_num(_values(ds, "mix_applied")) > 0


ONLINE = "enp_active"
"""``EnlightenmentPeriod.method`` of a period a strategy tracked while training (recorded ``enp_active``)."""
CLEAN_BATCHES = "ema_clean_batch_accuracy"
"""``EnlightenmentPeriod.method`` of a period found afterwards from the smoothed accuracy of the clean batches."""


def run_period(ds: xr.Dataset, *, threshold: float = 0.5, tau: float = 10.0) -> EnlightenmentPeriod | None:
    """The Enlightenment Period of run ``ds``: the one a strategy tracked online when recorded (``method``
    :data:`ONLINE`; its end is the last step inside it), else that of the clean batches' accuracy smoothed with
    ``tau`` reaching ``threshold`` (:data:`CLEAN_BATCHES`). None when unknown: no clean accuracy was measured
    (every batch mixed, or no outputs recorded)."""
    threshold, tau = check_arguments(threshold, tau)
    if not ds.sizes.get("step", 0):
        return EnlightenmentPeriod(None, None, threshold, tau, CLEAN_BATCHES)
    steps = np.asarray(ds["step"].values)
    if "enp_active" in ds.variables:
        active = _values(ds, "enp_active")
        ended = np.flatnonzero(active == 0)
        if not ended.size:
            return EnlightenmentPeriod(None, None, threshold, tau, ONLINE)
        inside = np.flatnonzero(active[: ended[0]] == 1)
        end = int(steps[inside[-1]]) if inside.size else int(steps[ended[0]])
        return EnlightenmentPeriod(end, end / (int(steps[-1]) + 1), threshold, tau, ONLINE)
    if "accuracy" not in ds.variables:
        return None
    clean = ds.assign(accuracy=ds["accuracy"].where(~xr.DataArray(mixed_batches(ds), dims="step")))
    try:
        period = enlightenment_period(clean, threshold=threshold, tau=tau)
    except ConfigError:  # no clean, measured accuracy
        return None
    return replace(period, method=CLEAN_BATCHES)


@dataclass(frozen=True)
class Phase:
    """A stretch of training ``[start, stop]`` (recorded steps) under one regime of the strategy, in words."""

    start: int
    stop: int
    in_period: bool
    label: str


def _number(value: float) -> str:
    return f"{value:.3g}"


def _describe(ds: xr.Dataset, index: np.ndarray) -> list[str]:
    """What the strategy applied at the recorded steps ``index``, from the recorded values."""
    parts = []
    if "mix_applied" in ds.variables:
        applied = np.nan_to_num(_values(ds, "mix_applied")[index])
        alphas = _values(ds, "mixup_alpha")[index] if "mixup_alpha" in ds.variables else np.array([])
        alphas = np.unique(alphas[np.isfinite(alphas) & (applied > 0)])
        if not (applied > 0).any():
            parts.append("no Mixup")
        elif alphas.size == 1:
            parts.append(f"Mixup α = {_number(alphas[0])}")
        elif alphas.size:
            parts.append(f"Mixup α {_number(alphas.min())}–{_number(alphas.max())}")
        else:
            parts.append("Mixup")
        if 0 < applied.mean() < 1:
            parts[-1] += f" on {applied.mean():.0%} of batches"
    if "removed_frac" in ds.variables:
        removed = _values(ds, "removed_frac")[index]
        mean = float(np.nanmean(removed)) if np.isfinite(removed).any() else 0.0
        parts.append(f"{mean:.0%} highest-loss removed" if mean > 0 else "none removed")
    return parts


def strategy_phases(ds: xr.Dataset) -> list[Phase]:
    """The stretches inside and after the period a strategy tracked (``enp_active``), each labelled with what it
    applied (Mixup on/off and its alpha, High-Loss Removal); empty when the run recorded no period, or when
    nothing it records changes at the period's end (a period tracked only to be measured)."""
    if "enp_active" not in ds.variables or not ds.sizes.get("step", 0):
        return []
    steps = np.asarray(ds["step"].values)
    active = np.nan_to_num(_values(ds, "enp_active")) > 0
    edges = np.flatnonzero(np.diff(active.astype(np.int8))) + 1
    parts = [(index, _describe(ds, index)) for index in np.split(np.arange(len(steps)), edges)]
    if len({tuple(words) for _, words in parts}) < 2:
        return []
    phases = []
    for index, words in parts:
        inside = bool(active[index[0]])
        label = "period" if inside else "after"
        phases.append(Phase(int(steps[index[0]]), int(steps[index[-1]]), inside, ": ".join([label, ", ".join(words)])))
    return phases


def applied_hyperparameters(ds: xr.Dataset) -> list[str]:
    """The recorded hyperparameters worth a line (:data:`HYPERPARAMETERS` order): the learning rate, and each
    other one recorded with a finite value that varies or is non-zero (a constant zero weight decay is not)."""
    shown = []
    for name in HYPERPARAMETERS:
        if name not in ds.variables or ds[name].dims != ("step",) or not ds.sizes.get("step", 0):
            continue
        values = _values(ds, name)
        finite = values[np.isfinite(values)]
        if finite.size and (name == "lr" or np.ptp(finite) > 0 or (finite != 0).any()):
            shown.append(name)
    return shown


def hyperparameter_values(ds: xr.Dataset, name: str) -> np.ndarray:
    """The values a hyperparameter line shows: the recorded ones, or their running count for per-step events
    (:data:`CUMULATIVE`, e.g. PLP predictions)."""
    values = _values(ds, name)
    return np.cumsum(np.nan_to_num(values)) if name in CUMULATIVE else values


def describe_run(ds: xr.Dataset) -> str:
    """``dataset · model (width, depth, activation) · seed · run name`` from the run's config and directory."""
    config = ds.attrs.get("config") if isinstance(ds.attrs.get("config"), dict) else {}
    words = [str(config["dataset"])] if config.get("dataset") else []
    if config.get("model"):
        details = [f"{k} {config[k]}" for k in ("width", "depth") if config.get(k) is not None]
        details += [str(config["activation"])] if config.get("activation") else []
        words.append(f"{config['model']} ({', '.join(details)})" if details else str(config["model"]))
    if config.get("seed") is not None:
        words.append(f"seed {config['seed']}")
    if ds.attrs.get("run_dir"):
        words.append(Path(str(ds.attrs["run_dir"])).name)
    return " · ".join(words) if words else "run"
