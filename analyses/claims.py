"""The papers' claims against our runs: the paper's number, our effect with its interval, power and a verdict.

``python -m analyses.claims [SWEEP_DIR ...] [--out DIR] [--effect 0.003]`` prints one row per claim and writes it to
``DIR/claims.md`` and ``DIR/claims.csv`` (default: the current folder). Each SWEEP_DIR is a sweep folder written by
``python -m dynamics.sweep experiments/quick/<claim>.toml`` (or ``experiments/full/...``), recognised by the
``name`` in its ``sweep.json``, or the folder of the interference study (``python -m
dynamics.studies.interference_scale``: its ``interference_study.json``, or its runs, which are then summarised
with :func:`analyses.interference.summarise`). A claim whose sweep is not given is listed as ``not run``.

:data:`CLAIMS` is the registry: each claim has an id, its paper, the statement, the paper's number (from the
papers' public reviews and text, see ``science.md``), the sweeps that test it (a quick CPU form on MNIST-1D and a
full GPU form) and its comparison: condition vs baseline on a metric with a claimed direction, or, for the
interference study, the sign of a rank correlation.

How a row is measured and judged:

- *Paired claims*: :func:`analyses.compare.compare` on the claim's sweep (several folders of one sweep name are
  pooled); the measured effect is the mean paired difference condition - baseline over seeds with its 95%
  t-interval and paired-t p. *Power*: the paired t-test's power at the paper's effect with our pairs and the
  observed sd of the differences; without a paper number, the minimum detectable effect (80% power) instead.
  *Seeds needed*: pairs for 80% power at the paper's effect, or at ``--effect`` (default 0.3 pp) without one.
- *Correlation claims* (interference vs training-set size / CNN width): Spearman's rho of the per-run
  interference ratio with the scale variable and its p, from the study's summary; the interval is Fisher's z
  interval with the Spearman standard error sqrt(1.06 / (n - 3)); the power column gives the smallest |rho|
  detectable with 80% power, and the runs needed are those for the observed rho.
- *Holm*: the p-values of all measured rows of the report form one family, corrected by Holm's method.
- *Verdict*: ``supported`` when the interval excludes 0 in the claimed direction and the Holm-corrected p is
  below 0.05; ``contradicted`` when the interval excludes 0 in the opposite direction; otherwise ``unresolved at
  this n``, with the seeds (or runs) needed.

The quick forms run at small scale (MNIST-1D, a 1-D CNN, 15 epochs): they test whether an effect shows up in
this setting, not the paper's number on its own architecture and data; the paper's number is there as the
yardstick of the power column.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analyses import stats
from analyses.compare import DEFAULT_EFFECT, FINAL, SWEEP_FILE, compare, is_accuracy
from analyses.interference import SUMMARY_NAME, find_pairs, summarise
from dynamics.cli import UsageParser, flag_message, one_line_errors
from dynamics.errors import ConfigError, DynamicsError
from dynamics.store import distinct_runs, read_json

USAGE_ERROR = 2
STUDY = "interference-scale"
"""The name under which the interference study's folder serves its claims."""
ENP = "Enlightenment Period (arXiv 2504.01737)"
PLP = "Parameter Linear Prediction (arXiv 2310.10958)"
GCT = "General Cyclical Training (arXiv 2202.08835)"
VERDICTS = ("supported", "contradicted", "unresolved at this n", "not run")


@dataclass(frozen=True)
class Claim:
    """One claim of a paper and how our runs test it.

    ``kind`` is ``"paired"`` (``condition`` vs ``baseline`` on ``metric`` over seeds, claimed ``direction`` +1:
    condition higher) or ``"correlation"`` (the interference study's Spearman rho of the interference ratio with
    ``variable``, claimed ``direction`` -1: it falls). ``paper_effect`` is the paper's number in the metric's
    units (accuracy as a fraction: 0.0045 = 0.45 points), None where the paper gives none.
    """

    id: str
    paper: str
    statement: str
    paper_number: str
    paper_effect: float | None
    sweeps: tuple[str, ...]
    condition: str | None = None
    baseline: str | None = None
    metric: str = FINAL
    direction: int = 1
    kind: str = "paired"
    variable: str | None = None


CLAIMS: tuple[Claim, ...] = (
    Claim(
        id="mixup-pause",
        paper=ENP,
        statement="Mixup Pause (no Mixup during the Enlightenment Period, then Mixup) beats always-Mixup in final "
        "top-1 accuracy at small scale",
        paper_number="+0.45 pp (PreActResNet-50, Tiny-ImageNet); +1.57 pp (ViT-S, Tiny-ImageNet, N = 10)",
        paper_effect=0.0045,
        sweeps=("mixup-pause-quick", "mixup-pause-full"),
        condition="pause",
        baseline="mixup",
    ),
    Claim(
        id="alpha-boost",
        paper=ENP,
        statement="Alpha Boost (Beta(a_boost, a_boost) mixing, a_boost > a_base, during the Enlightenment Period) "
        "beats Mixup in final top-1 accuracy at large scale",
        paper_number="+0.40 pp (ViT-T, ImageNet-1K, 3 seeds)",
        paper_effect=0.0040,
        sweeps=("alpha-boost-quick", "alpha-boost-full"),
        condition="boost",
        baseline="mixup",
    ),
    Claim(
        id="high-loss-removal",
        paper=ENP,
        statement="High-Loss Removal (the highest-loss samples of each batch left out during the Enlightenment "
        "Period) beats plain training where Mixup is not used",
        paper_number="not reported (removed fraction open)",
        paper_effect=None,
        sweeps=("high-loss-removal-quick", "high-loss-removal-full"),
        condition="hlr",
        baseline="plain",
    ),
    Claim(
        id="plp",
        paper=PLP,
        statement="Parameter Linear Prediction beats plain SGD in final top-1 accuracy at equal epochs",
        paper_number="about +1 pp (VGG16, ResNet-18, GoogLeNet; CIFAR-100)",
        paper_effect=0.01,
        sweeps=("plp-quick", "plp-full"),
        condition="plp",
        baseline="plain",
    ),
    Claim(
        id="cyclical-wd",
        paper=GCT,
        statement="Cyclical weight decay (low at the ends, high in the middle epochs) beats constant weight decay",
        paper_number="beat tuned constant WD on CIFAR-10/100, ImageNet (numbers not public)",
        paper_effect=None,
        sweeps=("cyclical-wd-quick", "cyclical-wd-full"),
        condition="cyclical",
        baseline="constant",
    ),
    Claim(
        id="interference-vs-size",
        paper=ENP,
        statement="The Mixup gradient interference ratio during the Enlightenment Period shrinks as the training "
        "set grows (Spearman rho < 0)",
        paper_number="qualitative (no number)",
        paper_effect=None,
        sweeps=(STUDY,),
        direction=-1,
        kind="correlation",
        variable="size",
    ),
    Claim(
        id="interference-vs-width",
        paper=ENP,
        statement="The Mixup gradient interference ratio during the Enlightenment Period shrinks as the model "
        "widens (Spearman rho < 0)",
        paper_number="qualitative (no number)",
        paper_effect=None,
        sweeps=(STUDY,),
        direction=-1,
        kind="correlation",
        variable="width",
    ),
)
"""Every claim the report checks, in report order."""

COLUMNS = (
    "claim",
    "paper",
    "statement",
    "paper_number",
    "paper_effect",
    "sweep",
    "dataset",
    "comparison",
    "n",
    "effect",
    "ci_low",
    "ci_high",
    "p",
    "p_holm",
    "power_at_paper",
    "mde",
    "target",
    "seeds_needed",
    "seeds_for_observed",
    "paper_outside_ci",
    "verdict",
    "note",
)
"""The report's columns; ``effect``/``ci_*``/``mde``/``target`` in the metric's units (accuracy as a fraction; rho
for correlation claims), ``seeds_needed`` (for 80% power at ``target``: the paper's effect, else ``effect``) and
``seeds_for_observed`` (at the measured effect) in seeds, runs for correlation claims; ``paper_outside_ci``: whether
the paper's effect lies outside our interval (None without a paper number or an interval)."""


def verdict(direction: int, low: float, high: float, p_holm: float, alpha: float = stats.ALPHA) -> str:
    """``supported`` (interval excludes 0 in ``direction`` and ``p_holm < alpha``), ``contradicted`` (interval
    excludes 0 in the other direction) or ``unresolved at this n``."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return "unresolved at this n"
    claimed = low > 0 if direction > 0 else high < 0
    opposite = high < 0 if direction > 0 else low > 0
    if claimed and math.isfinite(p_holm) and p_holm < alpha:
        return "supported"
    if opposite:
        return "contradicted"
    return "unresolved at this n"


def sweep_name(folder: Path) -> str:
    """The name a folder serves claims under: its sweep's name, or :data:`STUDY` for the interference study."""
    if (folder / SWEEP_FILE).is_file():
        return str(read_json(folder / SWEEP_FILE).get("name") or folder.name)
    if (folder / f"{SUMMARY_NAME}.json").is_file() or find_pairs(folder):
        return STUDY
    raise ConfigError(
        f"sweep_dirs: {folder} is neither a sweep folder ({SWEEP_FILE}) nor an interference study folder "
        f"({SUMMARY_NAME}.json or its runs); pass the folders that python -m dynamics.sweep or "
        "python -m dynamics.studies.interference_scale wrote",
        key="sweep_dirs",
    )


def _study_summary(folder: Path) -> dict[str, Any]:
    path = folder / f"{SUMMARY_NAME}.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"sweep_dirs: {path} is unreadable ({err}); redraw it with python -m "
                f"analyses.interference --runs {folder}",
                key="sweep_dirs",
            ) from None
    return summarise(folder)


def _empty_row(claim: Claim, sweep: str, verdict_text: str, note: str) -> dict[str, Any]:
    comparison = (
        f"{claim.condition} vs {claim.baseline} ({claim.metric})"
        if claim.kind == "paired"
        else f"Spearman rho(interference, {claim.variable})"
    )
    return {
        "claim": claim.id,
        "paper": claim.paper,
        "statement": claim.statement,
        "paper_number": claim.paper_number,
        "paper_effect": math.nan if claim.paper_effect is None else claim.paper_effect,
        "sweep": sweep,
        "dataset": "",
        "comparison": comparison,
        "n": 0,
        "effect": math.nan,
        "ci_low": math.nan,
        "ci_high": math.nan,
        "p": math.nan,
        "p_holm": math.nan,
        "power_at_paper": math.nan,
        "mde": math.nan,
        "target": math.nan,
        "seeds_needed": math.nan,
        "seeds_for_observed": math.nan,
        "paper_outside_ci": None,
        "verdict": verdict_text,
        "note": note,
    }


def _paired_row(claim: Claim, sweep: str, folders: list[Path], effect: float) -> dict[str, Any]:
    target = claim.paper_effect if claim.paper_effect is not None else effect
    try:
        frame = compare(folders, claim.baseline or "", metrics=[claim.metric], effect=target)
    except ConfigError as err:
        if err.key != "baseline":
            raise
        return _empty_row(claim, sweep, "not run", f"baseline {claim.baseline!r} has no finished run in the sweep")
    match = frame[frame["condition"] == claim.condition]
    if match.empty or int(match.iloc[0]["pairs"]) == 0:
        return _empty_row(
            claim, sweep, "not run", f"condition {claim.condition!r} has no finished run paired with the baseline"
        )
    row = match.iloc[0]
    out = _empty_row(claim, sweep, "", "")
    sd = float(row["diff_sd"])
    pairs = int(row["pairs"])
    out.update(
        {
            "dataset": frame.attrs["dataset"],
            "n": pairs,
            "effect": float(row["diff_mean"]),
            "ci_low": float(row["diff_low"]),
            "ci_high": float(row["diff_high"]),
            "p": float(row["p_t"]),
            "power_at_paper": (
                stats.paired_power(claim.paper_effect, sd, pairs) if claim.paper_effect is not None else math.nan
            ),
            "mde": float(row["mde"]),
            "target": target,
            "seeds_needed": float(row["seeds_needed"]),
            "seeds_for_observed": stats.pairs_needed(float(row["diff_mean"]), sd),
        }
    )
    low, high = out["ci_low"], out["ci_high"]
    if claim.paper_effect is not None and math.isfinite(low) and math.isfinite(high):
        out["paper_outside_ci"] = not low <= claim.paper_effect <= high
    return out


def _correlation_row(claim: Claim, folders: list[Path]) -> dict[str, Any]:
    summary = _study_summary(folders[0])
    correlation = summary.get("correlations", {}).get(f"interference_vs_{claim.variable}", {})
    rho, p = float(correlation.get("rho", math.nan)), float(correlation.get("p", math.nan))
    n = len(summary.get("runs", []))
    low, high = stats.correlation_interval(rho, n)
    out = _empty_row(claim, STUDY, "", "")
    out.update(
        {
            "dataset": "mnist1d",
            "n": n,
            "effect": rho,
            "ci_low": low,
            "ci_high": high,
            "p": p,
            "mde": stats.correlation_mde(n),
            "seeds_for_observed": stats.correlation_pairs_needed(rho),
            "note": "n, MDE and seeds needed count runs (sizes x widths x seeds)",
        }
    )
    return out


def claims_report(
    sweep_dirs: Iterable[str | os.PathLike[str]] = (), effect: float = DEFAULT_EFFECT, alpha: float = stats.ALPHA
) -> pd.DataFrame:
    """One row per claim of :data:`CLAIMS` and sweep name given (``not run`` for a claim none of ``sweep_dirs``
    serves), with the columns :data:`COLUMNS`; see the module docstring. ``effect`` is the difference whose seeds
    needed are reported for claims without a paper number (0.003 = 0.3 accuracy points)."""
    if isinstance(effect, bool) or not isinstance(effect, int | float) or not (math.isfinite(effect) and effect > 0):
        raise ConfigError(f"effect must be a finite number > 0, got {effect!r}; pass e.g. effect=0.003", key="effect")
    folders = [Path(d) for d in sweep_dirs]
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"sweep_dirs: {folder} is not a folder; pass sweep folders", key="sweep_dirs")
    try:
        distinct_runs(folders)
    except ConfigError as err:
        raise ConfigError(
            f"sweep_dirs: {str(err).split(';')[0].replace('same run', 'same sweep')}; pass each sweep folder once",
            key="sweep_dirs",
        ) from None
    by_name: dict[str, list[Path]] = {}
    for folder in folders:
        by_name.setdefault(sweep_name(folder), []).append(folder)
    served = {name for claim in CLAIMS for name in claim.sweeps}
    for name, group in by_name.items():
        if name not in served:
            warnings.warn(
                f"sweep {name!r} ({', '.join(map(str, group))}) serves no claim; the claims read: "
                f"{', '.join(sorted(served))}",
                UserWarning,
                stacklevel=2,
            )
    if len(by_name.get(STUDY, [])) > 1:
        raise ConfigError(
            f"sweep_dirs: {len(by_name[STUDY])} interference study folders given; pass one", key="sweep_dirs"
        )
    rows = []
    for claim in CLAIMS:
        names = [name for name in claim.sweeps if name in by_name]
        if not names:
            rows.append(_empty_row(claim, " or ".join(claim.sweeps), "not run", "sweep not given"))
            continue
        for name in names:
            if claim.kind == "paired":
                rows.append(_paired_row(claim, name, by_name[name], effect))
            else:
                rows.append(_correlation_row(claim, by_name[name]))
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame["p_holm"] = stats.holm(frame["p"].to_numpy(dtype=np.float64))
    for index, claim_id in frame["claim"].items():
        if frame.at[index, "verdict"] == "not run":
            continue
        claim = next(c for c in CLAIMS if c.id == claim_id)
        frame.at[index, "verdict"] = verdict(
            claim.direction, frame.at[index, "ci_low"], frame.at[index, "ci_high"], frame.at[index, "p_holm"], alpha
        )
    frame.attrs.update({"effect": effect, "alpha": alpha, "level": stats.LEVEL, "power": stats.POWER})
    return frame


# ------------------------------------------------------------------------------------------------ formatting


def _claim_of(claim_id: str) -> Claim:
    return next(c for c in CLAIMS if c.id == claim_id)


def _pp(value: float, signed: bool = True) -> str:
    if not math.isfinite(value):
        return "-"
    return f"{100 * value:+.2f}" if signed else f"{100 * value:.2f}"


def _seed_count(value: float) -> str:
    return "inf" if value == math.inf else str(int(value))


def _cells(row: pd.Series) -> list[str]:
    claim = _claim_of(row["claim"])
    measured = power = seeds = "-"
    state = str(row["verdict"])
    if state != "not run":
        if claim.kind == "correlation":
            interval = f" [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]" if math.isfinite(row["ci_low"]) else ""
            measured = f"rho {row['effect']:+.2f}{interval}"
            power = f"MDE |rho| {row['mde']:.2f}" if math.isfinite(row["mde"]) else "-"
            if math.isfinite(row["seeds_for_observed"]) or row["seeds_for_observed"] == math.inf:
                seeds = f"{_seed_count(row['seeds_for_observed'])} runs at observed"
        else:
            unit = " pp" if is_accuracy(claim.metric) else ""

            def scale(value: float, signed: bool = True) -> str:
                if unit:
                    return _pp(value, signed)
                return f"{value:+.4g}" if signed else f"{value:.4g}"

            interval = f" [{scale(row['ci_low'])}, {scale(row['ci_high'])}]" if math.isfinite(row["ci_low"]) else ""
            measured = f"{scale(row['effect'])}{unit}{interval}"
            if math.isfinite(row["power_at_paper"]):
                power = f"{row['power_at_paper']:.2f} at {scale(row['paper_effect'])}{unit}"
            elif math.isfinite(row["mde"]):
                power = f"MDE {scale(row['mde'], False)}{unit}"
            parts = []
            for count, at in ((row["seeds_needed"], scale(row["target"])), (row["seeds_for_observed"], "observed")):
                if not (isinstance(count, float) and math.isnan(count)):
                    parts.append(f"{_seed_count(count)} at {at}{unit if at != 'observed' else ''}")
            seeds = ", ".join(parts) or "-"
        if row["paper_outside_ci"] is True:
            state += "; the paper's effect lies outside the interval"
    p_holm = "-" if not math.isfinite(row["p_holm"]) else f"{row['p_holm']:.3g}"
    return [
        str(row["claim"]),
        str(row["paper_number"]),
        str(row["sweep"]),
        measured,
        str(int(row["n"])) if row["verdict"] != "not run" else "-",
        p_holm,
        power,
        seeds,
        state,
    ]


HEADER = [
    "claim",
    "paper's number",
    "sweep",
    "measured [95% CI]",
    "n",
    "p (Holm)",
    "power at paper's effect / MDE",
    "seeds for 80% power",
    "verdict",
]


def format_claims(frame: pd.DataFrame, fmt: str = "table") -> str:
    """The report as an aligned terminal ``table``, ``markdown`` or ``csv`` (every column, raw units)."""
    if fmt == "csv":
        return frame.to_csv(index=False, float_format="%.10g")
    rows = [_cells(row) for _, row in frame.iterrows()]
    notes = [
        "measured: condition - baseline, mean over seeds (accuracy in points) with the 95% t-interval, or Spearman "
        "rho with its Fisher-z interval; p (Holm): paired-t (or Spearman) p corrected across the measured rows; "
        "power: the paired t-test's at the paper's effect with our seeds and sd, else the 80%-power minimum "
        "detectable effect; seeds for 80% power: at the paper's effect (else --effect) and at the observed one; "
        "verdict: supported = interval excludes 0 in the claimed direction and Holm p < 0.05, contradicted = it "
        "excludes 0 in the other direction, otherwise unresolved at this n.",
    ]
    if fmt == "markdown":
        lines = ["| " + " | ".join(HEADER) + " |", "|" + "|".join(["---"] * len(HEADER)) + "|"]
        lines += ["| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |" for cells in rows]
        statements = [
            f"- **{row['claim']}** ({row['paper']}): {row['statement']}."
            for _, row in frame.drop_duplicates("claim").iterrows()
        ]
        return "\n".join(["# Claims", "", *lines, "", *notes, "", *statements]) + "\n"
    widths = [max(len(cells[i]) for cells in [HEADER, *rows]) for i in range(len(HEADER))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True)).rstrip()
        for cells in [HEADER, ["-" * w for w in widths], *rows]
    ]
    return "\n".join([*lines, *notes]) + "\n"


# ----------------------------------------------------------------------------------------------------- CLI


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analyses.claims [SWEEP_DIR ...] [--out DIR]``: print the report, write claims.md/.csv."""
    parser = UsageParser(prog="python -m analyses.claims", description=__doc__.splitlines()[0])
    parser.add_argument(
        "sweep_dirs", nargs="*", type=Path, metavar="SWEEP_DIR", help="sweep folders and the interference study folder"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("."), metavar="DIR", help="folder of claims.md and claims.csv (default: .)"
    )
    parser.add_argument(
        "--effect",
        type=float,
        default=DEFAULT_EFFECT,
        help=f"difference whose seeds needed are given for claims without a paper number (default {DEFAULT_EFFECT})",
    )
    try:
        args = parser.parse_args(argv)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame = claims_report(args.sweep_dirs, effect=args.effect)
        for warning in caught:
            if issubclass(warning.category, UserWarning):
                print(f"warning: {warning.message}", file=sys.stderr)
        args.out.mkdir(parents=True, exist_ok=True)
        markdown, csv = args.out / "claims.md", args.out / "claims.csv"
        markdown.write_text(format_claims(frame, "markdown"))
        csv.write_text(format_claims(frame, "csv"))
    except ConfigError as err:
        print(f"error: {flag_message(err, {'effect': '--effect', 'sweep_dirs': 'SWEEP_DIR'})}", file=sys.stderr)
        return USAGE_ERROR
    except (DynamicsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return USAGE_ERROR
    print(format_claims(frame, "table"), end="")
    print(f"written              {markdown.resolve()}\n                     {csv.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
