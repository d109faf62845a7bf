"""analyses.claims: a verdict row for every claim (``not run`` where its sweep is missing) on a tiny real sweep, the
verdict rules and Holm's family on synthetic sweeps and a synthetic interference-study summary, and the refusals."""

from __future__ import annotations

import csv
import io
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats
from sweep_fixtures import synthetic_sweep, tiny_real_sweep

from analyses import stats as ours
from analyses.claims import CLAIMS, COLUMNS, STUDY, claims_report, format_claims, main, verdict
from analyses.compare import compare


def test_registry_is_complete():
    ids = [claim.id for claim in CLAIMS]
    assert len(set(ids)) == len(ids)
    assert {"mixup-pause", "alpha-boost", "high-loss-removal", "plp", "cyclical-wd"} <= set(ids)
    assert any(claim.kind == "correlation" and claim.sweeps == (STUDY,) for claim in CLAIMS)
    for claim in CLAIMS:
        assert claim.paper and claim.statement and claim.paper_number and claim.direction in (1, -1)
        if claim.kind == "paired":
            assert claim.condition and claim.baseline and len(claim.sweeps) == 2
    by_id = {claim.id: claim for claim in CLAIMS}
    assert by_id["mixup-pause"].paper_effect == 0.0045 and by_id["alpha-boost"].paper_effect == 0.004
    assert by_id["plp"].paper_effect == 0.01 and by_id["cyclical-wd"].paper_effect is None


def test_verdict_rules():
    assert verdict(1, 0.001, 0.01, 0.01) == "supported"
    assert verdict(1, 0.001, 0.01, 0.2) == "unresolved at this n"  # interval excludes 0, Holm does not
    assert verdict(1, -0.01, -0.001, 0.01) == "contradicted"
    assert verdict(1, -0.01, 0.01, 0.9) == "unresolved at this n"
    assert verdict(-1, -0.5, -0.1, 0.001) == "supported" and verdict(-1, 0.1, 0.5, 0.001) == "contradicted"
    assert verdict(1, math.nan, math.nan, math.nan) == "unresolved at this n"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return tiny_real_sweep(tmp_path_factory.getbasetemp() / "tiny-plp-sweep")


def test_cli_on_a_tiny_sweep_prints_a_row_per_claim(tiny, tmp_path, capsys):
    assert main([str(tiny), "--out", str(tmp_path / "report")]) == 0
    captured = capsys.readouterr()
    assert "plp-s2 (pending)" in captured.err
    lines = captured.out.splitlines()
    for claim in CLAIMS:
        row = next(line for line in lines if line.startswith(claim.id + " "))
        if claim.id == "plp":
            assert "plp-quick" in row and " pp [" in row and "not run" not in row
            assert any(v in row for v in ("supported", "contradicted", "unresolved at this n"))
        else:
            assert row.rstrip().endswith("not run")
    rows = list(csv.DictReader(io.StringIO((tmp_path / "report" / "claims.csv").read_text())))
    assert [r["claim"] for r in rows] == [claim.id for claim in CLAIMS] and set(rows[0]) == set(COLUMNS)
    plp = next(r for r in rows if r["claim"] == "plp")
    assert plp["n"] == "2" and plp["sweep"] == "plp-quick" and plp["dataset"] == "mnist1d"
    markdown = (tmp_path / "report" / "claims.md").read_text()
    table = [line for line in markdown.splitlines() if line.startswith("|")]
    assert len(table) == len(CLAIMS) + 2 and len({line.count(" | ") for line in table if "---" not in line}) == 1


def _seeds(values):
    return {seed: [value] for seed, value in enumerate(values)}


@pytest.fixture(scope="module")
def report_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("claims")
    rng = np.random.default_rng(0)
    base = 0.9 + rng.normal(0, 0.003, 6)
    folders = {
        # pause - mixup = +2 points with little noise: supported
        "mixup-pause": synthetic_sweep(
            root / "pause",
            "mixup-pause-quick",
            {"mixup": _seeds(base), "pause": _seeds(base + 0.02 + rng.normal(0, 0.001, 6))},
        ),
        # plp - plain = -2 points: contradicted
        "plp": synthetic_sweep(
            root / "plp", "plp-quick", {"plain": _seeds(base), "plp": _seeds(base - 0.02 + rng.normal(0, 0.001, 6))}
        ),
        # noise only: unresolved
        "cyclical-wd": synthetic_sweep(
            root / "cwd",
            "cyclical-wd-quick",
            {"constant": _seeds(base), "cyclical": _seeds(base + rng.normal(0, 0.004, 6))},
        ),
        # interval excludes 0 (p about 0.045) but not after Holm over the report: unresolved
        "alpha-boost": synthetic_sweep(
            root / "boost",
            "alpha-boost-quick",
            {"mixup": _seeds(base[:3]), "boost": _seeds(base[:3] + np.array([0.010, 0.012, 0.020]))},
        ),
        # the baseline is missing: not run
        "high-loss-removal": synthetic_sweep(root / "hlr", "high-loss-removal-quick", {"hlr": _seeds(base)}),
    }
    study = root / "study"
    study.mkdir()
    summary = {
        "runs": [{"size": 1} for _ in range(40)],
        "correlations": {
            "interference_vs_size": {"rho": -0.8, "p": 1e-9},
            "interference_vs_width": {"rho": 0.1, "p": 0.54},
        },
    }
    (study / "interference_study.json").write_text(json.dumps(summary))
    folders["study"] = study
    return folders


def test_report_verdicts_and_holm(report_folders):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        frame = claims_report(report_folders.values())
    rows = frame.set_index("claim")
    assert list(frame.claim) == [claim.id for claim in CLAIMS]
    assert rows.loc["mixup-pause", "verdict"] == "supported"
    assert rows.loc["plp", "verdict"] == "contradicted"
    assert rows.loc["cyclical-wd", "verdict"] == "unresolved at this n"
    assert rows.loc["alpha-boost", "verdict"] == "unresolved at this n"
    assert rows.loc["alpha-boost", "ci_low"] > 0 and rows.loc["alpha-boost", "p"] < 0.05
    assert rows.loc["alpha-boost", "p_holm"] > 0.05
    assert (
        rows.loc["high-loss-removal", "verdict"] == "not run"
        and "baseline 'plain'" in rows.loc["high-loss-removal", "note"]
    )
    assert rows.loc["interference-vs-size", "verdict"] == "supported"
    assert rows.loc["interference-vs-width", "verdict"] == "unresolved at this n"

    # the measured numbers are compare()'s, Holm runs over every measured row of the report
    pause = compare(report_folders["mixup-pause"], "mixup").set_index("condition").loc["pause"]
    assert rows.loc["mixup-pause", "effect"] == pytest.approx(pause["diff_mean"])
    assert rows.loc["mixup-pause", "ci_low"] == pytest.approx(pause["diff_low"])
    assert rows.loc["mixup-pause", "p"] == pytest.approx(pause["p_t"])
    assert rows.loc["mixup-pause", "power_at_paper"] == pytest.approx(ours.paired_power(0.0045, pause["diff_sd"], 6))
    assert rows.loc["mixup-pause", "seeds_needed"] == ours.pairs_needed(0.0045, pause["diff_sd"])
    measured = frame[frame.verdict != "not run"]
    assert len(measured) == 6
    np.testing.assert_allclose(measured.p_holm, ours.holm(measured.p.to_numpy()))
    # without a paper number the seeds needed are for the stated effect (0.3 points), and the MDE is given
    cwd = compare(report_folders["cyclical-wd"], "constant").set_index("condition").loc["cyclical"]
    assert rows.loc["cyclical-wd", "seeds_needed"] == ours.pairs_needed(0.003, cwd["diff_sd"])
    assert math.isnan(rows.loc["cyclical-wd", "power_at_paper"]) and rows.loc["cyclical-wd", "mde"] > 0
    # the correlation rows: Fisher-z interval with the Spearman standard error
    half = stats.norm.ppf(0.975) * math.sqrt(1.06 / 37)
    assert rows.loc["interference-vs-size", "ci_high"] == pytest.approx(math.tanh(math.atanh(-0.8) + half))
    assert rows.loc["interference-vs-size", "n"] == 40

    assert rows.loc["mixup-pause", "paper_outside_ci"]  # +2 points measured, the paper's +0.45 outside
    assert rows.loc["cyclical-wd", "paper_outside_ci"] is None  # no paper number
    assert rows.loc["cyclical-wd", "seeds_for_observed"] == ours.pairs_needed(cwd["diff_mean"], cwd["diff_sd"])
    table = format_claims(frame)
    assert "rho -0.80 [" in table and " runs at observed" in table
    line = next(line for line in table.splitlines() if line.startswith("mixup-pause "))
    assert "supported; the paper's effect lies outside the interval" in line and " at +0.45 pp, " in line


def test_bad_inputs_exit_2_with_one_line(report_folders, tmp_path, capsys):
    def error(argv):
        assert main([str(a) for a in argv]) == 2
        captured = capsys.readouterr()
        lines = [line for line in captured.err.splitlines() if not line.startswith("warning: ")]
        assert len(lines) == 1 and lines[0].startswith("error: ") and captured.out == "", captured.err
        return lines[0]

    (tmp_path / "nothing").mkdir()
    assert "neither a sweep folder" in error([tmp_path / "nothing", "--out", tmp_path])
    assert "is not a folder" in error([tmp_path / "missing", "--out", tmp_path])
    assert "--effect" in error(["--effect", "0", "--out", tmp_path])
    assert "same sweep" in error([report_folders["plp"], report_folders["plp"], "--out", tmp_path])


def test_unused_sweep_warns_and_nothing_given_lists_every_claim(tmp_path, capsys):
    other = synthetic_sweep(tmp_path / "other", "something-else", {"a": {0: [0.5]}})
    assert main([str(other), "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "'something-else'" in captured.err and "serves no claim" in captured.err
    assert captured.out.count("not run") == len(CLAIMS)
