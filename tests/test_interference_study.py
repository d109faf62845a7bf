"""The interference scale study through its CLIs: a tiny grid captured (``python -m
dynamics.studies.interference_scale``), resumed and redrawn (``python -m analyses.interference --runs``), and
every number in its JSON recomputed directly from the stores (xarray reductions, scipy's t-test interval,
ranks)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from analyses.enlightenment import enlightenment_period
from analyses.interference import summarise
from dynamics import open_run
from dynamics.store import read_json
from figures.__main__ import main as figures_main
from figures.interference import study_figure

TINY = [
    "--sizes",
    "128,256",
    "--widths",
    "2,4",
    "--seeds",
    "0,1",
    "--steps",
    "20",
    "--num-samples",
    "500",
    "--batch-size",
    "32",
    "--no-progress",
]


def cli(*args: str, module: str = "analyses.interference") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def train_study(*args: str) -> subprocess.CompletedProcess[str]:
    return cli(*args, module="dynamics.studies.interference_scale")


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    root = tmp_path_factory.mktemp("study")
    return root, train_study("--root", str(root), *TINY)


def test_study_writes_json_figure_and_prints_its_conclusion(study) -> None:
    root, done = study
    assert done.returncode == 0, done.stderr
    summary = json.loads((root / "interference_study.json").read_text())
    lines = done.stdout.strip().splitlines()
    assert lines[0] == summary["conclusion"]
    figure = root / "figures" / "interference_scale"
    assert lines[1:] == [str(root / "interference_study.json"), f"{figure}.png", f"{figure}.pdf"]
    assert all(Path(f"{figure}.{suffix}").stat().st_size > 1000 for suffix in ("png", "pdf"))
    assert len(summary["runs"]) == 8 and len(summary["cells"]) == 4
    assert len([p for p in root.iterdir() if p.is_dir() and p.name != "figures"]) == 16


def test_every_statistic_matches_a_recomputation_from_the_stores(study) -> None:
    root, _ = study
    summary = json.loads((root / "interference_study.json").read_text())
    per_run = {}
    for run in summary["runs"]:
        name = f"n{run['size']}-w{run['width']}-{{}}-s{run['seed']}"
        mixup, pause = open_run(root / name.format("mixup")), open_run(root / name.format("pause"))
        period = enlightenment_period(pause)
        end = period.end_step if period.reached else int(mixup["step"][-1])
        early = mixup.where(mixup["step"] <= end, drop=True)
        interference_all = float(early["interference_ratio_model"].mean(skipna=True))
        strongly_mixed = early["interference_ratio_model"].where(early["mix_strength"] >= 0.25)
        interference = float(strongly_mixed.mean(skipna=True))
        revival = float(early["revival_frac"].mean("layer", skipna=True).mean(skipna=True))
        accuracy = {
            s: read_json(root / name.format(s) / "meta.json")["results"]["final_test_accuracy"]
            for s in ("mixup", "pause")
        }
        assert run["enp_end_step"] == end and run["enp_reached"] == period.reached
        assert run["interference"] == pytest.approx(interference, rel=1e-6, nan_ok=True)
        assert run["interference_all"] == pytest.approx(interference_all, rel=1e-6)
        assert run["revival"] == pytest.approx(revival, rel=1e-6, nan_ok=True)
        assert run["accuracy_diff"] == pytest.approx(accuracy["pause"] - accuracy["mixup"], abs=1e-12)
        stored = float(pause["val_accuracy"][-1]) - float(mixup["val_accuracy"][-1])  # float32 in the store
        assert run["accuracy_diff"] == pytest.approx(stored, abs=1e-6)
        per_run[(run["size"], run["width"], run["seed"])] = (interference, accuracy["pause"] - accuracy["mixup"])
    for cell in summary["cells"]:
        diffs = [
            diff for (size, width, _), (_, diff) in per_run.items() if (size, width) == (cell["size"], cell["width"])
        ]
        assert cell["accuracy_diff"] == pytest.approx(np.mean(diffs), abs=1e-12)
        if np.ptp(diffs) > 0:
            low, high = stats.ttest_1samp(diffs, 0.0).confidence_interval(0.95)
            assert cell["accuracy_diff_ci"] == pytest.approx((high - low) / 2, rel=1e-9)
            assert cell["significant"] == (low > 0 or high < 0)
        else:  # identical differences: a zero-width interval, not evidence
            assert cell["accuracy_diff_ci"] == 0 and not cell["significant"]
    keys = list(per_run)
    ratios = [per_run[k][0] for k in keys]
    for index, name in ((0, "size"), (1, "width")):
        ranks = np.corrcoef(stats.rankdata([k[index] for k in keys]), stats.rankdata(ratios))[0, 1]
        rho = summary["correlations"][f"interference_vs_{name}"]["rho"]
        assert rho == pytest.approx(ranks, abs=1e-12)
        trend = "falls" if rho < 0 else "rises"
        assert f"{trend} with {'training-set size' if name == 'size' else 'CNN width'}" in summary["conclusion"]
    supported = all(
        summary["correlations"][f"interference_vs_{n}"]["rho"] < 0
        and summary["correlations"][f"interference_vs_{n}"]["p"] < 0.05
        for n in ("size", "width")
    )
    assert ("is supported by" in summary["conclusion"]) == supported
    assert all(math.isfinite(r) for r in ratios)


def test_rerun_skips_finished_runs_and_redraw_reads_the_same_stores(study, tmp_path) -> None:
    root, _ = study
    stamps = {p: (p / "meta.json").stat().st_mtime_ns for p in root.iterdir() if (p / "meta.json").exists()}
    again = train_study("--root", str(root), *TINY)
    assert again.returncode == 0, again.stderr
    assert {p: (p / "meta.json").stat().st_mtime_ns for p in stamps} == stamps
    redraw = cli("--runs", str(root), "--out", str(tmp_path), "--no-progress")
    assert redraw.returncode == 0, redraw.stderr
    assert (tmp_path / "interference_study.json").read_text() == (root / "interference_study.json").read_text()
    missing = cli("--runs", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no finished" in missing.stderr
    assert "python -m dynamics.studies.interference_scale" in missing.stderr


def test_the_analysis_no_longer_trains_and_names_the_command_that_does(tmp_path) -> None:
    moved = cli("--study", "--quick", "--root", str(tmp_path))
    assert moved.returncode == 2 and moved.stderr.count("\n") == 1 and not moved.stdout
    assert f"python -m dynamics.studies.interference_scale --quick --root {tmp_path} " in moved.stderr
    assert list(tmp_path.iterdir()) == []  # nothing trained
    only = train_study(
        "--root", str(tmp_path / "r"), *TINY, "--sizes", "128", "--widths", "2", "--seeds", "0", "--train-only"
    )  # the later flags override TINY's
    assert only.returncode == 0, only.stderr
    assert only.stdout.strip() == str(tmp_path / "r") and not (tmp_path / "r" / "interference_study.json").exists()
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["n128-w2-mixup-s0", "n128-w2-pause-s0"]


def test_figures_redraws_a_study_found_under_the_runs_root(study, tmp_path) -> None:
    root, _ = study
    folder = tmp_path / "runs" / "scale"
    for strategy in ("mixup", "pause"):
        for seed in (0, 1):
            shutil.copytree(root / f"n128-w2-{strategy}-s{seed}", folder / f"n128-w2-{strategy}-s{seed}")
    shutil.copy(root / "interference_study.json", folder)
    only = ["--only", "interference_scale", "--no-progress"]
    assert figures_main(["--runs-root", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), *only]) == 0
    png = tmp_path / "out" / "scale" / "interference_scale.png"
    with Image.open(png) as image:
        text = dict(image.text)
    assert text["Keywords"] == "n=2, interval=95% Student-t interval over seeds of the paired accuracy difference (d)"
    summary = summarise(folder)  # the two seeds of one cell, read again from the copied runs
    fig = study_figure(summary)
    (heat,) = [image for ax in fig.get_axes() for image in ax.images if image.get_gid() == "accuracy_diff"]
    diffs = [
        read_json(folder / f"n128-w2-pause-s{s}" / "meta.json")["results"]["final_test_accuracy"]
        - read_json(folder / f"n128-w2-mixup-s{s}" / "meta.json")["results"]["final_test_accuracy"]
        for s in (0, 1)
    ]
    np.testing.assert_allclose(heat.get_array(), [[100 * np.mean(diffs)]], rtol=1e-9)
    ratios = [r["interference"] for r in summary["runs"]]
    (line,) = [ln for ax in fig.get_axes() for ln in ax.get_lines() if ln.get_gid() == "interference/width=2"]
    np.testing.assert_allclose(line.get_ydata(), [np.mean(ratios)], rtol=1e-9)
    assert summary["conclusion"].rstrip(".") in text["Description"]
