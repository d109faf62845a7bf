"""Does gradient interference shrink with scale? A study over MNIST-1D training-set sizes x CNN widths.

The runs are trained by ``python -m dynamics.studies.interference_scale [--quick]``
(:mod:`dynamics.studies.interference_scale`): for every training-set size x CNN width x seed, two runs with
the same data and seed, *always-Mixup* (with the interference probe, :mod:`dynamics.probes.interference`) and
*Mixup Pause* (no Mixup until the online-detected Enlightenment Period ends, then the same Mixup); that
command then calls this analysis. ``python -m analyses.interference --runs DIR`` summarises the finished runs
under ``DIR`` again: it writes ``interference_study.json`` (into ``--out``, default ``DIR``) and prints one
sentence that says whether the data support the claim; ``python -m figures DIR`` draws it
(:mod:`figures.interference`). This module only reads stores, as every analysis does; it imports no training
code.

Choices this makes:

- *The period*: the always-Mixup run's recorded accuracy is scored on mixed batches against the first label,
  which stays near 50% even for a good model, so the Enlightenment Period of a (size, width, seed) is taken
  from its Mixup Pause run, which trains on clean batches until that period ends
  (:func:`analyses.enlightenment.enlightenment_period`, the same EMA and threshold as the online detection).
  When it never ends, the whole run counts and ``enp_reached`` is false.
- *Per run*: the whole-model ``interference_ratio_model`` and ``revival_frac`` (mean over layers) of the
  always-Mixup run, averaged over its measurements at steps ``<= end_step``; the final test accuracy is the
  one each run notes in its ``meta.json`` (the last evaluation, in float64).
- *Mixing strength*: with one lambda per batch the ratio of a measurement follows how strongly that batch
  was mixed (``mix_strength`` = mean min(lambda, 1 - lambda): a batch with lambda near 0 or 1 is nearly
  clean and gives r near 0), which would swamp any trend with scale. So ``interference`` averages only the
  measurements with ``mix_strength >= STRONG_MIX`` (0.25; with alpha 1 about half of them); the mean over
  all measurements is kept as ``interference_all``. Runs recorded without ``mix_strength`` use all.
- *Statistics*: per cell, the mean over seeds and a two-sided 95% Student-t interval of the paired accuracy
  difference (Mixup Pause minus always-Mixup); a cell is significant when the interval excludes 0 and has
  positive width (seeds with identical differences give a zero-width interval, which is not counted). The
  claim is judged by Spearman's rank correlation of the per-run interference ratio with size and with
  width: supported when both are negative with p < 0.05.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from analyses.enlightenment import enlightenment_period
from dynamics.cli import UsageParser, fail, one_line_errors
from dynamics.errors import ConfigError, DynamicsError
from dynamics.store import open_run, read_json

SUMMARY_NAME = "interference_study"
"""File stem of the JSON summary and of the figure."""
STRONG_MIX = 0.25
"""Smallest mixing strength min(lambda, 1 - lambda) of a measurement that ``interference`` averages."""
LEVEL = 0.95
"""Confidence level of the per-cell intervals."""
ALPHA_SIGNIFICANCE = 0.05
"""p-value below which a rank correlation counts as evidence."""
STRATEGIES = ("mixup", "pause")
"""always-Mixup and Mixup Pause, in that order."""
STUDY_COMMAND = "python -m dynamics.studies.interference_scale"
"""The command that trains the study's runs (and then calls this analysis)."""


def finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run whose meta.json says it finished (False when missing or unreadable)."""
    try:
        return read_json(run_dir / "meta.json").get("status") == "finished"
    except DynamicsError:
        return False


def mean_ci(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """Mean and half-width of the two-sided Student-t interval of the mean (NaN half-width below 2 values)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return (float(x.mean()) if x.size else math.nan), math.nan
    sem = x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean()), float(stats.t.ppf(0.5 + level / 2, x.size - 1) * sem)


def _mean_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if finite.size else math.nan


@dataclass(frozen=True)
class RunPair:
    """One (size, width, seed): what its always-Mixup and Mixup Pause runs give."""

    size: int
    width: int
    seed: int
    enp_end_step: int
    enp_reached: bool
    interference: float
    interference_all: float
    cos: float
    revival: float
    measurements: int
    accuracy_mixup: float
    accuracy_pause: float

    @property
    def accuracy_diff(self) -> float:
        """Final test accuracy of Mixup Pause minus always-Mixup."""
        return self.accuracy_pause - self.accuracy_mixup


def find_pairs(root: Path) -> dict[tuple[int, int, int], dict[str, Path]]:
    """Finished study runs under ``root`` by (size, width, seed) and strategy, read from their config.json."""
    pairs: dict[tuple[int, int, int], dict[str, Path]] = {}
    for config_path in sorted(root.rglob("config.json")):
        run = config_path.parent
        if not (run / "data.zarr").is_dir() or not finished(run):
            continue
        config = read_json(config_path)
        if not config.get("mixup_alpha") or config.get("train_size") is None:
            continue
        strategy = "pause" if config.get("mixup_pause") else "mixup" if config.get("interference") else None
        if strategy is not None:
            key = (int(config["train_size"]), int(config["width"]), int(config["seed"]))
            pairs.setdefault(key, {})[strategy] = run
    return {key: runs for key, runs in pairs.items() if set(runs) == set(STRATEGIES)}


def final_accuracy(run_dir: Path) -> float:
    """Final test accuracy of a finished run, from its meta.json (the float64 value; the store keeps float32)."""
    return float(read_json(run_dir / "meta.json")["results"]["final_test_accuracy"])


def measure_pair(runs: dict[str, Path], key: tuple[int, int, int]) -> RunPair:
    """The per-run quantities of one (size, width, seed) from its two run directories (see module docstring)."""
    mixup, pause = open_run(runs["mixup"]), open_run(runs["pause"])
    period = enlightenment_period(pause)
    steps = np.asarray(mixup["step"].values)
    end = period.end_step if period.reached else int(steps[-1])
    inside = steps <= end
    ratio = np.asarray(mixup["interference_ratio_model"].values, dtype=np.float64)[inside]
    strong = (
        np.asarray(mixup["mix_strength"].values, dtype=np.float64)[inside] >= STRONG_MIX
        if "mix_strength" in mixup.variables
        else np.ones(len(ratio), dtype=bool)
    )
    cos = np.asarray(mixup["interference_cos_model"].values, dtype=np.float64)[inside]
    revival = np.asarray(mixup["revival_frac"].values, dtype=np.float64)[inside]
    with np.errstate(invalid="ignore"):
        per_step_revival = np.array([_mean_finite(row) for row in revival])
    return RunPair(
        *key,
        enp_end_step=end,
        enp_reached=period.reached,
        interference=_mean_finite(ratio[strong]),
        interference_all=_mean_finite(ratio),
        cos=_mean_finite(cos),
        revival=_mean_finite(per_step_revival),
        measurements=int(np.isfinite(ratio[strong]).sum()),
        accuracy_mixup=final_accuracy(runs["mixup"]),
        accuracy_pause=final_accuracy(runs["pause"]),
    )


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Spearman's rho and its two-sided p-value over the finite pairs (NaN with fewer than 3)."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    if keep.sum() < 3 or np.ptp(a[keep]) == 0 or np.ptp(b[keep]) == 0:
        return math.nan, math.nan
    result = stats.spearmanr(a[keep], b[keep])
    return float(result.statistic), float(result.pvalue)


def conclusion(by_size: tuple[float, float], by_width: tuple[float, float], runs: int) -> str:
    """The sentence that answers the claim, from the two rank correlations (rho, p)."""

    def trend(rho: float) -> str:
        return "does not vary measurably" if math.isnan(rho) else "falls" if rho < 0 else "rises"

    def supports(rho: float, p: float) -> bool:
        return rho < 0 and p < ALPHA_SIGNIFICANCE

    size_ok, width_ok = supports(*by_size), supports(*by_width)
    verdict = (
        "supported"
        if size_ok and width_ok
        else "supported for size only"
        if size_ok
        else "supported for width only"
        if width_ok
        else "not supported"
    )
    return (
        f"Over {runs} runs, the interference ratio of strongly mixed batches during the Enlightenment Period "
        f"{trend(by_size[0])} with training-set size (Spearman rho = {by_size[0]:+.2f}, p = {by_size[1]:.2g}) "
        f"and {trend(by_width[0])} with CNN width (rho = {by_width[0]:+.2f}, p = {by_width[1]:.2g}): "
        f"the claim that interference shrinks with scale is {verdict} by these runs."
    )


def summarise(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON summary of the study runs under ``root``: per run, per cell, correlations and the conclusion."""
    pairs = find_pairs(Path(root))
    if not pairs:
        raise ConfigError(
            f"no finished always-Mixup/Mixup Pause run pairs under {root}; train them with "
            f"{STUDY_COMMAND}, or pass the folder holding them (--runs)"
        )
    measured = [
        measure_pair(runs, key)
        for key, runs in tqdm(sorted(pairs.items()), desc="reading runs", unit="pair", disable=None, dynamic_ncols=True)
    ]
    cells = []
    for size, width in sorted({(p.size, p.width) for p in measured}):
        group = [p for p in measured if (p.size, p.width) == (size, width)]
        diff, half = mean_ci([p.accuracy_diff for p in group])
        cells.append(
            {
                "size": size,
                "width": width,
                "seeds": len(group),
                "interference": mean_ci([p.interference for p in group])[0],
                "interference_ci": mean_ci([p.interference for p in group])[1],
                "revival": mean_ci([p.revival for p in group])[0],
                "accuracy_mixup": float(np.mean([p.accuracy_mixup for p in group])),
                "accuracy_pause": float(np.mean([p.accuracy_pause for p in group])),
                "accuracy_diff": diff,
                "accuracy_diff_ci": half,
                "significant": bool(half > 0 and abs(diff) > half),
            }
        )
    interference = [p.interference for p in measured]
    by_size = spearman([p.size for p in measured], interference)
    by_width = spearman([p.width for p in measured], interference)
    revival_size = spearman([p.size for p in measured], [p.revival for p in measured])
    revival_width = spearman([p.width for p in measured], [p.revival for p in measured])
    return {
        "runs": [{**asdict(p), "accuracy_diff": p.accuracy_diff} for p in measured],
        "cells": cells,
        "correlations": {
            "interference_vs_size": {"rho": by_size[0], "p": by_size[1]},
            "interference_vs_width": {"rho": by_width[0], "p": by_width[1]},
            "revival_vs_size": {"rho": revival_size[0], "p": revival_size[1]},
            "revival_vs_width": {"rho": revival_width[0], "p": revival_width[1]},
        },
        "level": LEVEL,
        "conclusion": conclusion(by_size, by_width, len(measured)),
    }


def write_summary(summary: dict[str, Any], out_dir: str | os.PathLike[str]) -> Path:
    """Write ``summary`` to ``<out_dir>/interference_study.json`` (the folder is created); returns the path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{SUMMARY_NAME}.json"
    path.write_text(json.dumps(summary, indent=2, allow_nan=True) + "\n")
    return path


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; a usage error raises ConfigError (one line, exit status 2, from :func:`main`)."""
    parser = UsageParser(prog="python -m analyses.interference", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=Path, metavar="DIR", required=True, help="summarise the finished study runs under DIR"
    )
    parser.add_argument("--out", type=Path, default=None, help="folder of the JSON (default: DIR)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return parser.parse_args(argv)


def _study_moved(argv: Sequence[str]) -> str:
    """The one line that sends ``--study`` (training, which analyses never do) to the dynamics command."""
    rest = [a for a in argv if a != "--study"]
    return (
        f"analyses only read runs: train the study with {' '.join([STUDY_COMMAND, *rest])} (it then "
        "summarises and draws it), or summarise existing runs with python -m analyses.interference --runs DIR"
    )


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Summarise the runs under ``--runs``; prints the conclusion and the JSON's path. Exit status."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    try:
        if "--study" in args_list:
            raise ConfigError(_study_moved(args_list))
        args = parse_args(args_list)
        summary = summarise(args.runs)
        path = write_summary(summary, args.out or args.runs)
    except (DynamicsError, OSError) as err:
        fail(err)
        return 2
    print(summary["conclusion"])
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
