"""Compare the conditions of sweeps over seeds: paired differences against a baseline, tests, power, seeds needed.

Per condition: means with t-intervals; against the baseline: paired differences with t-intervals, the paired
t-test, the Wilcoxon signed-rank test, Holm's correction, the minimum detectable effect and the seeds needed.

``python -m analyses.compare SWEEP_DIR [SWEEP_DIR ...] --baseline NAME [--metric M] [--effect 0.003]
[--format table|markdown|latex|csv] [--out FILE]`` prints (or writes) one table per metric;
:func:`compare` returns the same numbers as a :class:`pandas.DataFrame`. It only reads the sweep folders that
``python -m dynamics.sweep SWEEP.toml`` writes: ``sweep.json`` (the manifest: ``name`` and ``points``, each with
``run_dir`` relative to the folder, ``condition``, ``seed`` and ``axes``) and one run directory per point.

What it does:

- *Groups*: the runs of one condition (a point's ``condition``; in a sweep without conditions, the values of
  its non-seed axes, or the sweep's name when seed is its only axis). A point with both a condition and
  non-seed axes is labelled ``condition [axis=value, ...]``. Runs of several sweep folders with the same
  label form one group (e.g. more seeds run later); a seed may appear once per group.
- *The baseline*: ``--baseline`` names a group label, or a condition name: then each group is compared with the
  baseline group of the same non-seed axis values (or the only baseline group, when there is one).
- *Metrics* (per run): ``final_test_accuracy`` = the last recorded ``val_accuracy``, ``best_test_accuracy`` = its
  maximum, any other name = the last value of that one-dimensional variable of the store (``loss``,
  ``val_loss``, ...) or that number of ``meta.json``'s ``results``. Accuracies are fractions in [0, 1] in the
  DataFrame and the CSV, percentage points in the other formats (any metric whose name holds ``accuracy``).
- *Per group*: n seeds, mean, sd and the two-sided 95% Student-t interval of the mean.
- *Against the baseline*, over the seeds both have: the mean paired difference (condition - baseline) with its
  95% t-interval, the paired t-test p, the Wilcoxon signed-rank p (with fewer than 6 pairs it cannot fall below
  ``2/2**n``, 0.0625 at 5 pairs: ``wilcoxon_min_p``), Holm's correction of the paired-t p-values across the
  compared groups of one metric, the **minimum detectable effect** (the difference the paired t-test detects
  with 80% power at alpha 0.05, two-sided, with these pairs and the observed sd of the differences, from the
  noncentral t distribution) and the **pairs (seeds) needed** to detect ``effect`` (default 0.003 = 0.3 points)
  with 80% power. Formulas: :mod:`analyses.stats`.
- *Refused* (ConfigError, one line; exit status 2 from the command line): a folder without ``sweep.json`` or
  without runs, the same run (or sweep) twice, runs of different data sets (``config.json`` ``dataset``), a
  baseline that is not among the finished runs, a metric no run recorded. Runs whose ``meta.json`` does not say
  ``finished`` (running, killed, failed, pending) are left out with one warning naming them; a group whose runs
  differ in a setting other than the seed and run-only keys gets a warning naming the setting.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from analyses import stats
from dynamics.cli import UsageParser, flag_message, one_line_errors
from dynamics.errors import ConfigError, DynamicsError, StoreError, parameters_as
from dynamics.store import distinct_runs, open_run, read_json, run_state

USAGE_ERROR = 2
SWEEP_FILE = "sweep.json"
SWEEP_COMMAND = "python -m dynamics.sweep SWEEP.toml"
FINAL = "final_test_accuracy"
BEST = "best_test_accuracy"
DEFAULT_EFFECT = 0.003
"""The difference whose seeds needed are reported: 0.3 points of accuracy (in the metric's own units)."""
FORMATS = ("table", "markdown", "latex", "csv")
RUN_ONLY_KEYS = frozenset(
    {
        "seed",
        "device",
        "data_dir",
        "flush_seconds",
        "checkpoint_steps",
        "checkpoint_seconds",
        "checkpoint_keep",
        "eval_batch_size",
        "probes",
        "probe_modules",
        "every",
        "snapshots",
        "snapshot_budget_mb",
        "on_nonfinite",
        "compile",
        "channels_last",
        "deterministic",
        "threads",
    }
)
"""config.json keys that may differ between the seeds of one group without a warning (how a run executes and
what it records, not what it trains)."""
COLUMNS = (
    "metric",
    "condition",
    "baseline",
    "is_baseline",
    "n",
    "seeds",
    "mean",
    "sd",
    "ci_low",
    "ci_high",
    "pairs",
    "diff_mean",
    "diff_sd",
    "diff_low",
    "diff_high",
    "p_t",
    "p_wilcoxon",
    "wilcoxon_min_p",
    "p_holm",
    "mde",
    "effect",
    "power_at_effect",
    "seeds_needed",
)
"""The DataFrame's columns, in order; see :func:`compare`."""
_FLAGS = {"baseline": "--baseline", "metric": "--metric", "effect": "--effect", "sweep_dirs": "SWEEP_DIR"}


@dataclass(frozen=True)
class Point:
    """One run of a sweep as its manifest lists it."""

    sweep: str
    run_dir: Path
    condition: str | None
    seed: int | None
    axes: tuple[tuple[str, Any], ...]
    """The non-seed axes of the point, sorted by name."""
    label: str


@dataclass
class Run:
    """A finished run of a group, with its metric values."""

    point: Point
    seed: int
    dataset: str
    config: dict[str, Any]
    values: dict[str, float] = field(default_factory=dict)


def _value_text(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def group_label(sweep: str, condition: str | None, axes: Sequence[tuple[str, Any]]) -> str:
    """The name of a group: ``condition``, ``condition [axis=value, ...]``, ``axis=value, ...`` or the sweep's name."""
    extra = ", ".join(f"{key}={_value_text(value)}" for key, value in axes)
    if condition is None:
        return extra or sweep
    return f"{condition} [{extra}]" if extra else condition


def is_accuracy(metric: str) -> bool:
    """Whether ``metric`` is an accuracy (a fraction, shown in percentage points)."""
    return "accuracy" in metric


def read_sweep(sweep_dir: str | os.PathLike[str]) -> tuple[str, list[Point]]:
    """The name and the points of the sweep folder ``sweep_dir`` (its ``sweep.json``)."""
    folder = Path(sweep_dir)
    if not folder.is_dir():
        raise ConfigError(
            f"sweep_dirs: {folder} is not a folder; pass a sweep folder written by {SWEEP_COMMAND}", key="sweep_dirs"
        )
    manifest_path = folder / SWEEP_FILE
    if not manifest_path.is_file():
        raise ConfigError(
            f"sweep_dirs: {folder} has no {SWEEP_FILE}; pass a sweep folder written by {SWEEP_COMMAND}",
            key="sweep_dirs",
        )
    manifest = read_json(manifest_path)
    name = str(manifest.get("name") or folder.name)
    points = manifest.get("points")
    if not isinstance(points, list) or not points:
        raise ConfigError(
            f"sweep_dirs: {manifest_path} lists no runs (points is empty or missing); run the sweep first",
            key="sweep_dirs",
        )
    out = []
    for index, point in enumerate(points):
        if not isinstance(point, Mapping) or not isinstance(point.get("run_dir"), str):
            raise StoreError(f"{manifest_path}: point {index} has no run_dir; the manifest is damaged")
        axes = point.get("axes") or {}
        if not isinstance(axes, Mapping):
            raise StoreError(f"{manifest_path}: point {index} has axes that are not a table; the manifest is damaged")
        seed = point.get("seed", axes.get("seed"))
        other = tuple(sorted((str(k), v) for k, v in axes.items() if k != "seed"))
        condition = point.get("condition")
        condition = None if condition is None else str(condition)
        out.append(
            Point(
                sweep=name,
                run_dir=folder / point["run_dir"],
                condition=condition,
                seed=None if seed is None else int(seed),
                axes=other,
                label=group_label(name, condition, other),
            )
        )
    return name, out


def _last(values: np.ndarray) -> float:
    return float(values[-1]) if values.size else math.nan


def metric_values(run_dir: Path, metrics: Sequence[str]) -> dict[str, float | None]:
    """Each metric of one finished run: a float (NaN when recorded but with no finite value where one is needed), or
    None when the run does not record it. See the module docstring for what each name means."""
    results = read_json(run_dir / "meta.json").get("results") or {}
    ds: xr.Dataset | None = None
    out: dict[str, float | None] = {}
    for metric in metrics:
        ds = open_run(run_dir) if ds is None else ds
        name = "val_accuracy" if metric in (FINAL, BEST) else metric
        if name in ds.data_vars and ds[name].ndim == 1:
            values = np.asarray(ds[name].values, dtype=np.float64)
            if metric == BEST:
                out[metric] = float(np.nanmax(values)) if np.isfinite(values).any() else math.nan
            else:
                out[metric] = _last(values)
        elif metric not in (FINAL, BEST) and _is_number(results.get(metric)):
            out[metric] = float(results[metric])
        else:
            out[metric] = None
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _recorded_names(run_dir: Path) -> str:
    ds = open_run(run_dir)
    names = [str(v) for v in ds.data_vars if ds[v].ndim == 1]
    results = read_json(run_dir / "meta.json").get("results") or {}
    names += [k for k, v in results.items() if _is_number(v)]
    return ", ".join(dict.fromkeys([FINAL, BEST, *names]))


def _check_arguments(
    sweep_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], metrics: str | Sequence[str], effect: float
) -> tuple[list[Path], list[str]]:
    dirs = [Path(sweep_dirs)] if isinstance(sweep_dirs, str | os.PathLike) else [Path(d) for d in sweep_dirs]
    if not dirs:
        raise ConfigError("sweep_dirs is empty; pass at least one sweep folder", key="sweep_dirs")
    try:
        distinct_runs(dirs)
    except ConfigError as err:
        raise ConfigError(
            f"sweep_dirs: {str(err).split(';')[0].replace('same run', 'same sweep')}; pass each sweep folder once",
            key="sweep_dirs",
        ) from None
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    names = [m.strip() for name in names for m in str(name).split(",") if m.strip()]
    if not names:
        raise ConfigError(f"metric is empty; pass e.g. metric={FINAL}", key="metric")
    if (
        isinstance(effect, bool)
        or not isinstance(effect, int | float | np.floating)
        or not (math.isfinite(effect) and effect > 0)
    ):
        raise ConfigError(f"effect must be a finite number > 0, got {effect!r}; pass e.g. effect=0.003", key="effect")
    return dirs, list(dict.fromkeys(names))


def load_runs(
    sweep_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]], metrics: str | Sequence[str] = (FINAL,)
) -> tuple[dict[str, list[Run]], list[str]]:
    """The finished runs of the sweeps by group label (in manifest order), with their metric values, and the list
    of excluded runs (``"path (status)"``). Raises ConfigError for the refusals of the module docstring."""
    dirs, names = _check_arguments(sweep_dirs, metrics, DEFAULT_EFFECT)
    points = [point for folder in dirs for point in read_sweep(folder)[1]]
    distinct_runs(point.run_dir for point in points)
    excluded: list[str] = []
    groups: dict[str, list[Run]] = {}
    datasets: dict[str, Path] = {}
    for point in points:
        status = run_state(point.run_dir)
        if status != "finished":
            excluded.append(f"{point.run_dir} ({status})")
            continue
        config = read_json(point.run_dir / "config.json")
        dataset = str(config.get("dataset"))
        datasets.setdefault(dataset, point.run_dir)
        if len(datasets) > 1:
            (first, first_dir), (second, second_dir) = list(datasets.items())[:2]
            raise ConfigError(
                f"sweep_dirs: runs of different data sets: {first_dir} trains on {first}, {second_dir} on {second}; "
                "compare runs of one data set",
                key="sweep_dirs",
            )
        seed = point.seed if point.seed is not None else config.get("seed")
        if seed is None:
            raise StoreError(f"{point.run_dir} has no seed in the manifest or config.json; the sweep is damaged")
        run = Run(point, int(seed), dataset, config)
        group = groups.setdefault(point.label, [])
        twice = next((other for other in group if other.seed == run.seed), None)
        if twice is not None:
            raise ConfigError(
                f"sweep_dirs: group {point.label!r} has seed {run.seed} twice ({twice.point.run_dir} and "
                f"{point.run_dir}); give the sweeps distinct condition names or pass one of them",
                key="sweep_dirs",
            )
        group.append(run)
    if not groups:
        raise ConfigError(
            f"sweep_dirs: no finished run in {', '.join(map(str, dirs))}; wait for the sweep to finish",
            key="sweep_dirs",
        )
    runs = [run for group in groups.values() for run in group]
    recorded = {run.point.run_dir: metric_values(run.point.run_dir, names) for run in runs}
    for metric in names:
        missing = [run.point.run_dir for run in runs if recorded[run.point.run_dir][metric] is None]
        if len(missing) == len(runs):
            raise ConfigError(
                f"metric {metric!r} is not recorded by the runs; choose one of: {_recorded_names(missing[0])}",
                key="metric",
            )
        if missing:
            warnings.warn(
                f"metric {metric!r} is not recorded by {len(missing)} run(s), left out of it: "
                f"{', '.join(map(str, missing))}",
                UserWarning,
                stacklevel=3,
            )
    for run in runs:
        run.values = {k: (math.nan if v is None else v) for k, v in recorded[run.point.run_dir].items()}
    return groups, excluded


def _settings_warning(label: str, runs: Sequence[Run]) -> str | None:
    first = runs[0]
    for run in runs[1:]:
        for key in sorted(set(first.config) | set(run.config)):
            if key in RUN_ONLY_KEYS:
                continue
            if first.config.get(key) != run.config.get(key):
                return (
                    f"group {label!r} mixes settings: {key} = {first.config.get(key)!r} in {first.point.run_dir}, "
                    f"{run.config.get(key)!r} in {run.point.run_dir}"
                )
    return None


def _references(groups: Mapping[str, list[Run]], baseline: str) -> dict[str, str | None]:
    """For each group label, the label of the group it is compared with (None: none; the baseline itself: None)."""
    if baseline in groups:
        return {label: (None if label == baseline else baseline) for label in groups}
    by_axes: dict[tuple[tuple[str, Any], ...], str] = {
        runs[0].point.axes: label for label, runs in groups.items() if runs[0].point.condition == baseline
    }
    if not by_axes:
        raise ConfigError(
            f"baseline {baseline!r} is not a condition of the finished runs; choose one of: {', '.join(groups)}",
            key="baseline",
        )
    only = next(iter(by_axes.values())) if len(by_axes) == 1 else None
    out: dict[str, str | None] = {}
    for label, runs in groups.items():
        if runs[0].point.condition == baseline:
            out[label] = None
        else:
            out[label] = by_axes.get(runs[0].point.axes, only)
    return out


def seed_values(runs: Sequence[Run], metric: str) -> dict[int, float]:
    """The finite values of ``metric`` of a group's runs by seed: the numbers :func:`compare` summarises."""
    return {run.seed: run.values[metric] for run in runs if math.isfinite(run.values[metric])}


def seed_curves(
    sweep_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    variable: str = "val_accuracy",
    level: float = stats.LEVEL,
) -> dict[str, xr.Dataset]:
    """Per group of :func:`load_runs` (finished runs), the one-dimensional ``variable`` of each seed over training
    and, at each point all its seeds recorded, their mean with its two-sided Student-t interval.

    Evaluation variables (dim ``eval_step``) are indexed by ``epoch``, the epochs completed when they were taken
    (the epoch of the evaluation's step + 1: the engine evaluates at epoch ends; a repeated evaluation of one epoch
    keeps the last), so that conditions with different steps per epoch (a cyclical batch size) line up; a run
    without an ``epoch`` coordinate keeps ``eval_step``, and per-step variables keep ``step``. Each Dataset holds
    ``values(seed, x)``, ``mean``, ``ci_low``, ``ci_high`` and ``n`` (finite seeds) over ``x``, that dimension,
    with attrs ``variable`` and ``level``.
    """
    with parameters_as({"metric": "variable"}):
        groups, _ = load_runs(sweep_dirs, (variable,))
    out: dict[str, xr.Dataset] = {}
    for label, runs in groups.items():
        series: dict[int, pd.Series] = {}
        dim = ""
        for run in runs:
            ds = open_run(run.point.run_dir)
            if variable not in ds.data_vars or ds[variable].ndim != 1:
                continue
            data = ds[variable]
            dim = str(data.dims[0])
            x = np.asarray(data[dim].values)
            if dim == "eval_step" and "epoch" in ds.coords:
                dim, x = "epoch", np.asarray(ds["epoch"].sel(step=x, method="pad").values) + 1
            values = pd.Series(np.asarray(data.values, dtype=np.float64), index=x)
            series[run.seed] = values[~values.index.duplicated(keep="last")]
        if not series:
            continue
        table = pd.concat(series, axis=1, join="inner").sort_index()
        intervals = np.array([stats.t_interval(row, level) for row in table.to_numpy()]).reshape(-1, 3)
        out[label] = xr.Dataset(
            {
                "values": (("seed", dim), table.to_numpy().T),
                "mean": (dim, intervals[:, 0]),
                "ci_low": (dim, intervals[:, 1]),
                "ci_high": (dim, intervals[:, 2]),
                "n": (dim, np.isfinite(table.to_numpy()).sum(axis=1)),
            },
            coords={"seed": list(table.columns), dim: table.index.to_numpy()},
            attrs={"variable": variable, "level": level},
        )
    return out


def compare(
    sweep_dirs: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    baseline: str,
    metrics: str | Sequence[str] = (FINAL,),
    effect: float = DEFAULT_EFFECT,
    level: float = stats.LEVEL,
    power: float = stats.POWER,
    alpha: float = stats.ALPHA,
) -> pd.DataFrame:
    """One row per metric and group of the sweeps' finished runs: its statistics and those of its paired
    differences against the baseline (see the module docstring).

    Columns (:data:`COLUMNS`; accuracies as fractions): ``metric``, ``condition`` (the group label),
    ``baseline`` (the label it is compared with; None for a baseline group), ``is_baseline``, ``n``, ``seeds``
    (comma-separated), ``mean``, ``sd``, ``ci_low``/``ci_high`` (t-interval of the mean), ``pairs`` (seeds shared
    with the baseline), ``diff_mean`` (mean of condition - baseline over them), ``diff_sd``, ``diff_low``/
    ``diff_high``, ``p_t`` (paired t-test), ``p_wilcoxon``, ``wilcoxon_min_p``, ``p_holm`` (Holm over the compared
    groups of the metric), ``mde`` (minimum detectable effect, power ``power``, two-sided ``alpha``), ``effect``,
    ``power_at_effect`` (the paired t-test's power at ``effect`` with these pairs) and ``seeds_needed`` (pairs
    for that power at ``effect``; ``inf`` beyond a million). ``DataFrame.attrs`` holds ``level``, ``alpha``,
    ``power``, ``effect``, ``baseline``, ``dataset``, ``sweeps``, ``excluded`` (runs left out, with status)
    and ``partial`` (True when some of them were still running: the comparison lacks runs still to come).
    """
    _, names = _check_arguments(sweep_dirs, metrics, effect)
    if not isinstance(baseline, str) or not baseline:
        raise ConfigError(
            f"baseline must name a condition, got {baseline!r}; pass e.g. baseline='mixup'", key="baseline"
        )
    groups, excluded = load_runs(sweep_dirs, names)
    if excluded:
        warnings.warn(f"left out {len(excluded)} run(s) not finished: {', '.join(excluded)}", UserWarning, stacklevel=2)
    references = _references(groups, baseline)
    for label, runs in groups.items():
        message = _settings_warning(label, runs)
        if message:
            warnings.warn(message, UserWarning, stacklevel=2)
    rows = []
    for metric in names:
        block = []
        for label, runs in groups.items():
            values = seed_values(runs, metric)
            x = np.array(list(values.values()))
            mean, low, high = stats.t_interval(x, level)
            row: dict[str, Any] = {
                "metric": metric,
                "condition": label,
                "baseline": references[label],
                "is_baseline": references[label] is None and (label == baseline or runs[0].point.condition == baseline),
                "n": len(values),
                "seeds": ",".join(str(s) for s in sorted(values)),
                "mean": mean,
                "sd": float(x.std(ddof=1)) if x.size > 1 else math.nan,
                "ci_low": low,
                "ci_high": high,
            }
            reference = references[label]
            d = np.array([])
            if reference is not None:
                base = seed_values(groups[reference], metric)
                shared = sorted(set(values) & set(base))
                d = np.array([values[s] - base[s] for s in shared])
            diff, diff_low, diff_high = stats.t_interval(d, level)
            diff_sd = float(d.std(ddof=1)) if d.size > 1 else math.nan
            row.update(
                {
                    "pairs": int(d.size),
                    "diff_mean": diff,
                    "diff_sd": diff_sd,
                    "diff_low": diff_low,
                    "diff_high": diff_high,
                    "p_t": stats.paired_t_p(d),
                    "p_wilcoxon": stats.wilcoxon_p(d),
                    "wilcoxon_min_p": stats.wilcoxon_min_p(d),
                    "mde": stats.minimum_detectable_effect(diff_sd, d.size, power, alpha),
                    "effect": float(effect),
                    "power_at_effect": stats.paired_power(effect, diff_sd, d.size, alpha),
                    "seeds_needed": stats.pairs_needed(effect, diff_sd, power, alpha),
                }
            )
            block.append(row)
        adjusted = stats.holm([row["p_t"] for row in block])
        for row, p in zip(block, adjusted, strict=True):
            row["p_holm"] = float(p)
        rows.extend(block)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    first = next(iter(groups.values()))[0]
    frame.attrs.update(
        {
            "level": level,
            "alpha": alpha,
            "power": power,
            "effect": float(effect),
            "baseline": baseline,
            "dataset": first.dataset,
            "sweeps": sorted({run.point.sweep for runs in groups.values() for run in runs}),
            "excluded": excluded,
            "partial": any(entry.endswith(" (running)") for entry in excluded),
        }
    )
    return frame


# ------------------------------------------------------------------------------------------------ formatting


def _number(value: float, scale: float, signed: bool = False, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return "-" if value is None or math.isnan(value) else ("inf" if value > 0 else "-inf")
    if scale == 100:
        return f"{100 * value:+.{digits}f}" if signed else f"{100 * value:.{digits}f}"
    return f"{value:+.4g}" if signed else f"{value:.4g}"


def _interval(mean: float, low: float, high: float, scale: float, signed: bool) -> str:
    text = _number(mean, scale, signed)
    if math.isfinite(low) and math.isfinite(high):
        text += f" [{_number(low, scale, signed)}, {_number(high, scale, signed)}]"
    return text


def _p(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value:.3g}"


def _count(value: float) -> str:
    if not math.isfinite(value):
        return "inf" if value == math.inf else "-"
    return str(int(value))


DAGGER = "†"


def table_blocks(frame: pd.DataFrame) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """Per metric: title, header, rows of cells and footnotes, as the text formats show them."""
    level = int(round(100 * frame.attrs.get("level", stats.LEVEL)))
    power = int(round(100 * frame.attrs.get("power", stats.POWER)))
    alpha = frame.attrs.get("alpha", stats.ALPHA)
    blocks = []
    for metric, part in frame.groupby("metric", sort=False):
        scale = 100 if is_accuracy(str(metric)) else 1
        unit = " (%; differences in points)" if scale == 100 else ""
        effect = float(part["effect"].iloc[0])
        effect_text = f"{100 * effect:.2f} pp" if scale == 100 else f"{effect:.4g}"
        baselines = sorted({b for b in part["baseline"] if isinstance(b, str)})
        title = (
            f"{metric}{unit}, dataset {frame.attrs.get('dataset', '?')}, baseline {', '.join(baselines) or '-'}: "
            f"mean [{level}% t-interval] over seeds; diff = condition - baseline over shared seeds"
        )
        header = [
            "condition",
            "n",
            f"mean [{level}% CI]",
            f"diff [{level}% CI]",
            "pairs",
            "p (t)",
            "p (Wilcoxon)",
            "p (Holm)",
            f"MDE ({power}%)",
            f"seeds for {effect_text}",
        ]
        rows = []
        dagger = False
        for row in part.itertuples(index=False):
            compared = row.pairs > 0
            wilcoxon = _p(row.p_wilcoxon)
            if compared and 0 < row.pairs < 6 and math.isfinite(row.p_wilcoxon):
                wilcoxon += DAGGER
                dagger = True
            rows.append(
                [
                    f"{row.condition} (baseline)" if row.is_baseline else str(row.condition),
                    str(row.n),
                    _interval(row.mean, row.ci_low, row.ci_high, scale, signed=False),
                    _interval(row.diff_mean, row.diff_low, row.diff_high, scale, signed=True) if compared else "-",
                    str(row.pairs) if not row.is_baseline else "-",
                    _p(row.p_t),
                    wilcoxon if compared else "-",
                    _p(row.p_holm),
                    _number(row.mde, scale) if compared else "-",
                    _count(row.seeds_needed) if compared else "-",
                ]
            )
        notes = [
            f"p (Holm): paired-t p corrected by Holm's method across the {int(part['p_holm'].notna().sum())} "
            f"compared group(s); MDE: the difference the paired t-test detects with {power}% power at "
            f"alpha {alpha:g} (two-sided) with these pairs and the observed sd of the differences; seeds for "
            f"{effect_text}: pairs needed for {power}% power at that difference.",
        ]
        if dagger:
            notes.append(
                f"{DAGGER} fewer than 6 pairs: the exact Wilcoxon p cannot fall below 2/2^n (0.0625 at n = 5), "
                "so it cannot reach 0.05."
            )
        blocks.append((title, header, rows, notes))
    return blocks


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(cells[i]) for cells in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(header), "  ".join("-" * width for width in widths), *(line(cells) for cells in rows)]


def _latex_escape(text: str) -> str:
    for old, new in (
        ("\\", r"\textbackslash{}"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("_", r"\_"),
        ("#", r"\#"),
        ("$", r"\$"),
        ("^", r"\^{}"),
        (DAGGER, r"$^\dagger$"),
    ):
        text = text.replace(old, new)
    return text


def format_frame(frame: pd.DataFrame, fmt: str = "table") -> str:
    """The comparison as text: an aligned terminal ``table``, ``markdown``, ``latex`` (booktabs) or ``csv`` (every
    column of the DataFrame, accuracies as fractions)."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}", key="format")
    if fmt == "csv":
        return frame.to_csv(index=False, float_format="%.10g")
    parts = []
    for title, header, rows, notes in table_blocks(frame):
        if fmt == "table":
            parts.append("\n".join([title, *_aligned(header, rows), *notes]))
        elif fmt == "markdown":
            lines = [f"**{title}**", "", "| " + " | ".join(header) + " |"]
            lines.append("|" + "|".join([":---", *["---:"] * (len(header) - 1)]) + "|")
            lines += ["| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |" for cells in rows]
            lines += ["", *notes]
            parts.append("\n".join(lines))
        else:
            lines = [f"% {title}", r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\toprule"]
            lines.append(" & ".join(_latex_escape(cell) for cell in header) + r" \\")
            lines.append(r"\midrule")
            lines += [" & ".join(_latex_escape(cell) for cell in cells) + r" \\" for cells in rows]
            lines += [r"\bottomrule", r"\end{tabular}", *(f"% {note}" for note in notes)]
            parts.append("\n".join(lines))
    excluded = frame.attrs.get("excluded") or []
    if excluded and fmt == "markdown":
        parts.append(f"left out (not finished): {', '.join(excluded)}")
    return "\n\n".join(parts) + "\n"


# ----------------------------------------------------------------------------------------------------- CLI


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analyses.compare SWEEP_DIR ... --baseline NAME``: print or write the table; exit status."""
    parser = UsageParser(prog="python -m analyses.compare", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dirs", nargs="+", type=Path, metavar="SWEEP_DIR", help="sweep folders (sweep.json)")
    parser.add_argument("--baseline", required=True, help="the condition the others are compared with")
    parser.add_argument(
        "--metric",
        default=FINAL,
        metavar="M[,M...]",
        help=f"{FINAL} (default), {BEST}, or a recorded scalar (its final value); comma-separate several",
    )
    parser.add_argument(
        "--effect",
        type=float,
        default=DEFAULT_EFFECT,
        help=f"difference whose seeds needed are reported, in the metric's units (default {DEFAULT_EFFECT} = 0.3 pp)",
    )
    parser.add_argument("--format", choices=FORMATS, default="table", help="output format (default: table)")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="write the output to FILE (and print the terminal table)"
    )
    try:
        args = parser.parse_args(argv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame = compare(args.sweep_dirs, args.baseline, metrics=args.metric, effect=args.effect)
        for warning in caught:
            if issubclass(warning.category, UserWarning):
                print(f"warning: {warning.message}", file=sys.stderr)
        text = format_frame(frame, args.format)
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text)
    except ConfigError as err:
        print(f"error: {flag_message(err, _FLAGS)}", file=sys.stderr)
        return USAGE_ERROR
    except (DynamicsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    if args.out is None:
        print(text, end="")
    else:
        print(format_frame(frame, "table"), end="")
        print(f"written              {args.out.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
