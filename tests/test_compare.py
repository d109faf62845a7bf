"""analyses.compare: the numbers against an independent scipy computation on synthetic sweeps, grouping and
pairing, the refusals (one line, exit status 2), and the command line on a tiny real sweep in every format."""

from __future__ import annotations

import csv
import io
import itertools
import math
import os
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest
from scipy import stats
from sweep_fixtures import REPO, synthetic_sweep, tiny_real_sweep, write_manifest, write_run

from analyses import stats as ours
from analyses.compare import COLUMNS, compare, format_frame, main
from dynamics.runlock import RunLock

# final test accuracies by condition and seed; "b" lacks seed 5, so it pairs with the baseline over 5 seeds only
FINAL = {
    "base": {0: 0.801, 1: 0.795, 2: 0.812, 3: 0.790, 4: 0.805, 5: 0.799},
    "a": {0: 0.806, 1: 0.803, 2: 0.815, 3: 0.797, 4: 0.809, 5: 0.808},
    "b": {0: 0.799, 1: 0.796, 2: 0.806, 3: 0.794, 4: 0.801},
    "c": {0: 0.800, 1: 0.797, 2: 0.815, 3: 0.788, 4: 0.806, 5: 0.801},
}


def _curves() -> dict[str, dict[int, list[float]]]:
    """val_accuracy per run: three evaluations ending at FINAL, the best one in the middle for some seeds."""
    return {
        condition: {seed: [0.5, value + (0.004 if seed % 2 else -0.01), value] for seed, value in by_seed.items()}
        for condition, by_seed in FINAL.items()
    }


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    folder = synthetic_sweep(tmp_path_factory.mktemp("synthetic") / "sweep", "synthetic", _curves())
    failed = write_run(folder / "a-s6", 6, [0.1, 0.2], status="failed")
    manifest = (folder / "sweep.json").read_text()
    (folder / "sweep.json").write_text(
        manifest.replace('"points": [', f'"points": [{{"run_dir": "{failed.name}", "condition": "a", "seed": 6}}, ')
    )
    return folder


def _reference(metric_values: dict[str, dict[int, float]], baseline: str = "base") -> dict[str, dict[str, float]]:
    """Every statistic of the comparison, computed here from scipy directly."""
    out = {}
    base = metric_values[baseline]
    for condition, values in metric_values.items():
        x = np.array(list(values.values()))
        row = {"n": x.size, "mean": x.mean(), "sd": x.std(ddof=1)}
        row["ci"] = stats.t.interval(0.95, x.size - 1, loc=x.mean(), scale=stats.sem(x))
        if condition != baseline:
            seeds = sorted(set(values) & set(base))
            c, b = np.array([values[s] for s in seeds]), np.array([base[s] for s in seeds])
            d = c - b
            row.update(
                pairs=len(seeds),
                diff=d.mean(),
                diff_sd=d.std(ddof=1),
                diff_ci=stats.t.interval(0.95, d.size - 1, loc=d.mean(), scale=stats.sem(d)),
                p_t=stats.ttest_rel(c, b).pvalue,
                p_wilcoxon=stats.wilcoxon(c, b).pvalue,
            )
        out[condition] = row
    compared = [c for c in metric_values if c != baseline]
    p = np.array([out[c]["p_t"] for c in compared])
    m = p.size
    for i, condition in enumerate(compared):  # Holm by closed testing over every subset holding i
        out[condition]["p_holm"] = max(
            min(1.0, len(s) * p[list(s)].min())
            for k in range(1, m + 1)
            for s in itertools.combinations(range(m), k)
            if i in s
        )
    return out


def test_compare_matches_scipy_on_synthetic_runs(synthetic):
    with pytest.warns(UserWarning, match=r"left out 1 run.*a-s6 \(failed\)"):
        frame = compare(synthetic, "base", metrics=["final_test_accuracy", "best_test_accuracy"], effect=0.003)
    assert list(frame.columns) == list(COLUMNS)
    assert frame.attrs["excluded"] == [f"{synthetic / 'a-s6'} (failed)"] and frame.attrs["dataset"] == "mnist1d"
    best = {c: {s: max(curve) for s, curve in by_seed.items()} for c, by_seed in _curves().items()}
    for metric, values in (("final_test_accuracy", FINAL), ("best_test_accuracy", best)):
        reference = _reference(values)
        part = frame[frame.metric == metric].set_index("condition")
        assert list(part.index) == ["base", "a", "b", "c"]
        assert part.loc["base", "is_baseline"] and part.loc["base", "pairs"] == 0
        assert all(part.loc[c, "baseline"] == "base" for c in ("a", "b", "c"))
        for condition, ref in reference.items():
            row = part.loc[condition]
            assert row["n"] == ref["n"]
            assert row["mean"] == pytest.approx(ref["mean"], abs=1e-12)
            assert row["sd"] == pytest.approx(ref["sd"], rel=1e-9)
            assert (row["ci_low"], row["ci_high"]) == pytest.approx(ref["ci"], abs=1e-12)
            if condition == "base":
                continue
            assert row["pairs"] == ref["pairs"]
            assert row["diff_mean"] == pytest.approx(ref["diff"], abs=1e-12)
            assert row["diff_sd"] == pytest.approx(ref["diff_sd"], rel=1e-9)
            assert (row["diff_low"], row["diff_high"]) == pytest.approx(ref["diff_ci"], abs=1e-12)
            assert row["p_t"] == pytest.approx(ref["p_t"], rel=1e-9)
            assert row["p_wilcoxon"] == pytest.approx(ref["p_wilcoxon"], rel=1e-9)
            assert row["wilcoxon_min_p"] == pytest.approx(2 / 2 ** ref["pairs"])
            assert row["p_holm"] == pytest.approx(ref["p_holm"], rel=1e-9)
            # the power numbers are those of analyses.stats (checked against integration in test_stats) for the
            # observed sd of the differences and the pairs present
            assert row["mde"] == pytest.approx(ours.minimum_detectable_effect(ref["diff_sd"], ref["pairs"]))
            assert row["seeds_needed"] == ours.pairs_needed(0.003, ref["diff_sd"])
            assert row["power_at_effect"] == pytest.approx(ours.paired_power(0.003, ref["diff_sd"], ref["pairs"]))
    assert frame.set_index(["metric", "condition"]).loc[("final_test_accuracy", "b"), "pairs"] == 5


def test_a_run_still_running_is_left_out_and_the_comparison_is_partial(tmp_path):
    folder = synthetic_sweep(tmp_path / "sweep", "s", {"base": {0: [0.5], 1: [0.6]}, "a": {0: [0.55], 1: [0.6]}})
    live = write_run(folder / "a-s2", 2, [0.7], status="running")
    write_manifest(
        folder,
        "s",
        [
            {"run_dir": f"{c}-s{seed}", "condition": c, "seed": seed}
            for c, seeds in (("base", (0, 1)), ("a", (0, 1, 2)))
            for seed in seeds
        ],
    )
    with pytest.warns(UserWarning, match=r"a-s2 \(killed\)"):  # marked running, but no process writes it
        assert not compare(folder, "base").attrs["partial"]
    lock = RunLock(live)
    try:
        with pytest.warns(UserWarning, match=r"a-s2 \(running\)"):
            frame = compare(folder, "base")
    finally:
        lock.release()
    assert frame.attrs["partial"] and frame.set_index("condition").loc["a", "n"] == 2


def test_other_metrics_read_the_store_and_meta(tmp_path):
    folder = tmp_path / "sweep"
    write_run(folder / "x0", 0, [0.5, 0.6], loss=(2.0, 1.0, 0.25))
    write_run(folder / "x1", 1, [0.5, 0.7], loss=(2.0, 1.0, 0.5))
    write_manifest(
        folder, "m", [{"run_dir": "x0", "condition": "x", "seed": 0}, {"run_dir": "x1", "condition": "x", "seed": 1}]
    )
    frame = compare(folder, "x", metrics="loss,num_classes")
    assert frame.set_index("metric").loc["loss", "mean"] == pytest.approx(0.375)
    assert frame.set_index("metric").loc["num_classes", "mean"] == 10


def test_groups_by_non_seed_axes_and_pools_sweeps(tmp_path):
    """Without conditions the non-seed axes name the groups; two folders of one condition pool their seeds."""
    folder = tmp_path / "grid"
    points = []
    for lr, seed in itertools.product((0.1, 0.2), range(3)):
        write_run(folder / f"lr{lr}-s{seed}", seed, [0.7 + lr / 10 + seed / 1000], config={"lr": lr})
        points.append({"run_dir": f"lr{lr}-s{seed}", "condition": None, "seed": seed, "axes": {"lr": lr, "seed": seed}})
    write_manifest(folder, "grid", points)
    frame = compare(folder, "lr=0.1")
    assert list(frame.condition) == ["lr=0.1", "lr=0.2"]
    assert frame["diff_mean"].iloc[1] == pytest.approx(0.01)

    first = synthetic_sweep(tmp_path / "first", "s", {"m": {0: [0.8], 1: [0.81]}, "p": {0: [0.82], 1: [0.8]}})
    second = synthetic_sweep(tmp_path / "second", "s", {"m": {2: [0.79]}, "p": {2: [0.8]}})
    pooled = compare([first, second], "m")
    assert list(pooled.n) == [3, 3] and pooled.pairs.iloc[1] == 3


def test_mixed_settings_within_a_group_warn(tmp_path):
    folder = tmp_path / "s"
    write_run(folder / "a", 0, [0.8], config={"lr": 0.1})
    write_run(folder / "b", 1, [0.8], config={"lr": 0.2})
    write_manifest(
        folder, "s", [{"run_dir": "a", "condition": "m", "seed": 0}, {"run_dir": "b", "condition": "m", "seed": 1}]
    )
    with pytest.warns(UserWarning, match="mixes settings: lr"):
        compare(folder, "m")


def _error_of(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert captured.out == ""
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(synthetic, tmp_path, capsys):
    assert "has no sweep.json" in _error_of([tmp_path, "--baseline", "base"], capsys)
    assert "is not a folder" in _error_of([tmp_path / "missing", "--baseline", "base"], capsys)
    empty = write_manifest(tmp_path / "empty", "e", [])
    assert "lists no runs" in _error_of([empty, "--baseline", "base"], capsys)
    message = _error_of([synthetic, "--baseline", "nope"], capsys)
    assert "--baseline" in message and "'nope'" in message and "base, a, b, c" in message
    link = tmp_path / "link"
    os.symlink(synthetic, link)
    assert "same sweep" in _error_of([synthetic, link, "--baseline", "base"], capsys)
    # another manifest listing one of the same runs
    other = write_manifest(tmp_path / "other", "o", [{"run_dir": str(synthetic / "a-s0"), "condition": "z", "seed": 0}])
    assert "same run" in _error_of([synthetic, other, "--baseline", "base"], capsys)
    cifar = synthetic_sweep(tmp_path / "cifar", "c", {"base": {0: [0.5], 1: [0.6]}}, dataset="cifar100")
    assert "runs of different data sets" in _error_of([synthetic, cifar, "--baseline", "base"], capsys)
    message = _error_of([synthetic, "--baseline", "base", "--metric", "nonsense"], capsys)
    assert "--metric" in message and "'nonsense'" in message and "best_test_accuracy" in message
    assert "--effect" in _error_of([synthetic, "--baseline", "base", "--effect", "-1"], capsys)
    assert "--format" in _error_of([synthetic, "--baseline", "base", "--format", "html"], capsys)
    assert "--baseline" in _error_of([synthetic], capsys)
    twice = synthetic_sweep(tmp_path / "twice", "synthetic", {"a": {0: [0.5]}})
    assert "seed 0 twice" in _error_of([synthetic, twice, "--baseline", "base"], capsys)
    unfinished = synthetic_sweep(tmp_path / "unfinished", "u", {"m": {0: [0.5]}}, status="running")
    assert "no finished run" in _error_of([unfinished, "--baseline", "m"], capsys)


def test_formats_hold_every_row(synthetic):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        frame = compare(synthetic, "base", metrics="final_test_accuracy,best_test_accuracy")
    rows = list(csv.DictReader(io.StringIO(format_frame(frame, "csv"))))
    assert len(rows) == 8 and set(rows[0]) == set(COLUMNS)
    assert float(rows[1]["diff_mean"]) == pytest.approx(frame["diff_mean"].iloc[1])
    table = format_frame(frame, "table")
    assert "\na " in table and "+0.60 [" in table  # a - base: mean +0.006, shown in signed points
    _check_markdown(format_frame(frame, "markdown"), rows=4, tables=2)
    _check_latex(format_frame(frame, "latex"), rows=4, tables=2)


def _check_markdown(text: str, rows: int, tables: int) -> None:
    table_lines = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table_lines) == tables * (rows + 2)
    widths = {line.count(" | ") for line in table_lines if not line.startswith("|:")}
    assert len(widths) == 1  # every row has the header's number of cells


def _check_latex(text: str, rows: int, tables: int) -> None:
    assert text.count(r"\begin{tabular}") == tables == text.count(r"\end{tabular}")
    assert text.count(r"\toprule") == text.count(r"\midrule") == text.count(r"\bottomrule") == tables
    body = [line for line in text.splitlines() if line.endswith(r"\\")]
    assert len(body) == tables * (rows + 1)
    columns = text.split(r"\begin{tabular}{")[1].split("}")[0]
    assert {line.replace(r"\&", "").count("&") for line in body} == {len(columns) - 1}
    assert not any(re.search(r"(?<!\\)_", line) for line in text.splitlines() if not line.startswith("%"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_real_sweep(tmp_path_factory.getbasetemp() / "tiny-plp-sweep")


def test_cli_on_a_tiny_real_sweep(tiny, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "analyses.compare", str(tiny), "--baseline", "plain"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines() == [f"warning: left out 1 run(s) not finished: {tiny / 'plp-s2'} (pending)"]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("final_test_accuracy (%; differences in points), dataset mnist1d, baseline plain")
    assert lines[3].startswith("plain (baseline)  2") and lines[4].startswith("plp")
    assert len({len(line) for line in lines[1:3]}) == 1  # header and rule aligned


@pytest.mark.parametrize("fmt", ["csv", "markdown", "latex", "table"])
def test_cli_formats_on_a_tiny_real_sweep(tiny, tmp_path, capsys, fmt):
    out = tmp_path / f"compare.{fmt}"
    argv = [str(tiny), "--baseline", "plain", "--metric", "final_test_accuracy,best_test_accuracy,loss"]
    assert main([*argv, "--format", fmt, "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "plp-s2 (pending)" in printed.err and f"written              {out.resolve()}" in printed.out
    text = out.read_text()
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert [(r["metric"], r["condition"]) for r in rows] == [
            (m, c) for m in ("final_test_accuracy", "best_test_accuracy", "loss") for c in ("plain", "plp")
        ]
        assert all(0 <= float(r["mean"]) <= 1 for r in rows[:4]) and rows[1]["pairs"] == "2"
        assert all(math.isfinite(float(r["diff_mean"])) for r in rows if r["condition"] == "plp")
    elif fmt == "markdown":
        _check_markdown(text, rows=2, tables=3)
    elif fmt == "latex":
        _check_latex(text, rows=2, tables=3)
    else:
        assert text.count("plain (baseline)") == 3 and text.count("\nplp ") == 3
