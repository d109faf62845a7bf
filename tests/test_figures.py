"""The run overview, interference and trajectory figures and ``python -m figures``, drawn from runs recorded by the
engine and by a Recorder in a hand-written loop: plotted values are checked against the stores, the captions'
metadata in the PNGs, the PARTIAL stamp of a running run, the CLI's behaviour on sweeps and bad folders, and the
plan of ``--quick`` (its sweep files and every point they hold)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image

from analyses import aggregate_by_module, enlightenment_period, run_period, strategy_phases
from analyses.trajectory import WHOLE, analyse_trajectory
from dynamics import Recorder, open_run
from dynamics.config import make_config
from dynamics.data import load_dataset
from dynamics.engine import train
from dynamics.errors import ConfigError
from dynamics.models import build_model
from dynamics.runlock import RunLock
from dynamics.sweep.manifest import write_manifest
from dynamics.sweep.spec import parse_sweep
from figures import quick
from figures.__main__ import main
from figures.interference import draw_interference, interference_figure
from figures.overview import draw_overview, overview_figure
from figures.registry import FIGURES, FigureSpec, load_figures
from figures.trajectory import draw_trajectory, trajectory_figure

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
STEPS = 60
CONFIG = {"dataset": "gaussian", "model": "cnn", "width": 8, "depth": 2, "activation": "relu", "seed": 0}
PAUSE = {
    "dataset": "gaussian",
    "num_samples": 600,
    "model": "cnn",
    "width": 8,
    "depth": 2,
    "epochs": 4,
    "batch_size": 32,
    "lr": 0.05,
    "schedule": "cosine",
    "mixup_alpha": 0.4,
    "mixup_pause": True,
    "enp_epochs": "auto",
    "enp_probe_samples": 128,
    "interference": True,
    "interference_every": 5,
    "probe_samples": 32,
    "snapshot_budget_mb": 4.0,
    "checkpoint_seconds": 0,
}
"""Mixup Pause on the Gaussian mixture: the period ends within the first epochs, then Mixup switches on."""


def record_run(run_dir: Path, probes: str = "default", with_output: bool = True, steps: int = STEPS) -> Path:
    """Train a tiny CNN for ``steps`` steps on the Gaussian mixture, recorded, with an evaluation every 20 steps."""
    data = load_dataset("gaussian", num_samples=400, seed=0)
    torch.manual_seed(0)
    model = build_model(
        "cnn", input_shape=data.input_shape, num_classes=data.num_classes, width=8, depth=2, activation="relu"
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    order = torch.Generator().manual_seed(0)
    with Recorder(model, optimizer, run_dir, probes=probes, config=CONFIG, seed=0) as recorder:
        for step in range(steps):
            recorder.epoch = step // 20
            index = torch.randint(0, len(data.x_train), (32,), generator=order)
            out = model(data.x_train[index])
            loss = F.cross_entropy(out, data.y_train[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if with_output:
                recorder.step(loss=loss, output=out, target=data.y_train[index])
            else:
                recorder.step(loss=loss)
            if step % 20 == 19:
                with torch.no_grad():
                    test_out = model(data.x_test)
                recorder.record_eval(
                    val_loss=F.cross_entropy(test_out, data.y_test),
                    val_accuracy=(test_out.argmax(1) == data.y_test).float().mean(),
                )
    return run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return record_run(tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="module")
def pause_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "pause"
    train(make_config(PAUSE), run, progress=False)
    return run


def axes_titled(fig: Figure, start: str) -> Axes:
    (ax,) = [ax for ax in fig.get_axes() if ax.get_title(loc="left").startswith(start)]
    return ax


def gid(ax: Axes, name: str):
    """The one artist of ``ax`` whose gid is ``name``."""
    (artist,) = [a for a in [*ax.get_lines(), *ax.collections, *ax.patches, *ax.images] if a.get_gid() == name]
    return artist


def span(patch) -> tuple[float, float]:
    return patch.get_x(), patch.get_x() + patch.get_width()


def caption_of(png: Path) -> dict[str, str]:
    with Image.open(png) as image:
        return dict(image.text)


def values(ds, name: str) -> np.ndarray:
    return np.asarray(ds[name].values, dtype=np.float64)


# -------------------------------------------------------------------------------------------------- overview


def test_overview_of_mixup_pause_separates_clean_and_mixed_batches(pause_dir: Path) -> None:
    ds = open_run(pause_dir)
    mixed = values(ds, "mix_applied") > 0
    assert mixed.any() and not mixed.all(), "Mixup should switch on when the period ends"
    fig = overview_figure(ds)
    accuracy = axes_titled(fig, "accuracy (mixed batches")
    stored = values(ds, "accuracy")
    np.testing.assert_array_equal(gid(accuracy, "accuracy/clean/raw").get_ydata(), np.where(mixed, np.nan, stored))
    np.testing.assert_array_equal(gid(accuracy, "accuracy/mixed/raw").get_ydata(), np.where(mixed, stored, np.nan))
    np.testing.assert_array_equal(gid(accuracy, "enp_accuracy").get_ydata(), values(ds, "enp_accuracy"))
    loss = axes_titled(fig, "loss")
    np.testing.assert_array_equal(gid(loss, "loss/mixed/raw").get_ydata(), np.where(mixed, values(ds, "loss"), np.nan))
    np.testing.assert_array_equal(gid(loss, "val_loss").get_ydata(), values(ds, "val_loss"))
    legend = [text.get_text() for text in accuracy.get_legend().get_texts()]
    assert legend[:3] == [
        "train, clean batches",
        "train, mixed batches",
        "clean probe set, smoothed (period detection)",
    ]


def test_overview_shades_the_online_period_and_labels_the_phases(pause_dir: Path) -> None:
    ds = open_run(pause_dir)
    active = values(ds, "enp_active")
    end = int(ds["step"].values[np.flatnonzero(active == 1)[-1]])  # the period as the strategy recorded it
    assert end < int(ds["step"].values[-1])
    fig = overview_figure(ds)
    panels = [ax for ax in fig.get_axes() if ax.get_label() != "<colorbar>"]
    phases, rest = panels[0], panels[1:]
    for ax in rest:
        assert span(gid(ax, "period")) == (0, end)
    labels = [text.get_text() for text in phases.texts]
    assert labels == ["period: no Mixup", "after: Mixup α = 0.4"]
    assert [span(p) for p in phases.patches if p.get_gid() == "phase"] == [(0, end), (end + 1, ds["step"].values[-1])]
    assert f"Enlightenment Period: steps 0–{end}" in fig.get_suptitle()
    assert "detected online from the smoothed clean-probe accuracy" in fig.get_suptitle()


def test_phases_are_labelled_only_where_the_strategy_changes_what_it_applies() -> None:
    steps = {"step": np.arange(6)}
    measured_only = xr.Dataset({"enp_active": ("step", [1.0, 1, 1, 0, 0, 0])}, coords=steps)
    assert strategy_phases(measured_only) == []  # a period tracked only to be measured: nothing to label
    removal = measured_only.assign(removed_frac=("step", [0.125, 0.125, 0.0625, 0, 0, 0]))
    assert [(p.start, p.stop, p.in_period, p.label) for p in strategy_phases(removal)] == [
        (0, 2, True, "period: 10% highest-loss removed"),
        (3, 5, False, "after: none removed"),
    ]
    boost = measured_only.assign(mix_applied=("step", [1.0] * 6), mixup_alpha=("step", [1.0, 1, 1, 0.2, 0.2, 0.2]))
    assert [p.label for p in strategy_phases(boost)] == ["period: Mixup α = 1", "after: Mixup α = 0.2"]
    assert run_period(boost).end_step == 2 and run_period(boost).method == "enp_active"


def test_overview_draws_the_applied_hyperparameters(pause_dir: Path) -> None:
    ds = open_run(pause_dir)
    fig = overview_figure(ds)
    strips = {ax.get_ylabel(): ax for ax in fig.get_axes()}
    np.testing.assert_array_equal(gid(strips["learning rate"], "hyper/lr").get_ydata(), values(ds, "lr"))
    alpha = gid(strips["Mixup α"], "hyper/mixup_alpha").get_ydata()
    np.testing.assert_array_equal(alpha, values(ds, "mixup_alpha"))
    assert set(alpha) == {0.0, 0.4}
    assert "weight decay" not in strips  # recorded, but zero throughout


def test_overview_time_axis_is_logarithmic_by_default(pause_dir: Path) -> None:
    ds = open_run(pause_dir)
    assert {ax.get_xscale() for ax in overview_figure(ds).get_axes()} == {"symlog"}
    assert {ax.get_xscale() for ax in overview_figure(ds, log_time=False).get_axes()} == {"linear"}


def test_overview_of_a_plain_run_shades_the_clean_batch_period(run_dir: Path) -> None:
    ds = open_run(run_dir)
    period = enlightenment_period(ds)
    assert period.reached, "the tiny run should pass 50% smoothed accuracy within 60 steps"
    fig = overview_figure(ds, log_time=False)
    assert len(fig.get_axes()) == 5  # loss, accuracy, learning rate, gradient norm, flat fraction: no phases
    for ax in fig.get_axes():
        assert span(gid(ax, "period")) == (0, period.end_step)
    np.testing.assert_array_equal(gid(axes_titled(fig, "loss"), "loss/raw").get_ydata(), values(ds, "loss"))
    grad = axes_titled(fig, "gradient norm per module")
    per_module = aggregate_by_module(ds["grad_norm"])
    for module in per_module["module"].values:
        np.testing.assert_array_equal(gid(grad, f"module/{module}/raw").get_ydata(), per_module.sel(module=module))
    assert grad.get_yscale() == "log" and axes_titled(fig, "loss").get_yscale() == "log"
    assert "first step with EMA-smoothed clean-batch accuracy ≥ 50%" in fig.get_suptitle()


def test_aggregate_by_module_matches_brute_force(run_dir: Path) -> None:
    grad_norm = open_run(run_dir)["grad_norm"]
    per_module = aggregate_by_module(grad_norm)
    assert per_module.dims == ("step", "module")
    assert list(per_module["module"].values) == ["blocks.0.conv", "blocks.1.conv", "head"]
    stored = grad_norm.values.astype(np.float64)
    names = [str(n) for n in grad_norm["param"].values]
    for module in per_module["module"].values:
        members = [i for i, n in enumerate(names) if n.split(".")[:-1] == module.split(".")]
        assert len(members) == 2  # weight and bias
        expected = np.sqrt((stored[:, members] ** 2).sum(1))
        np.testing.assert_allclose(per_module.sel(module=module).values, expected, rtol=1e-12)


def test_overview_draws_notes_for_missing_variables(tmp_path: Path) -> None:
    ds = open_run(record_run(tmp_path / "minimal", probes="minimal", with_output=False, steps=20))
    assert "act_zero_frac" not in ds and np.isnan(ds["accuracy"].values).all()
    fig = overview_figure(ds)
    fig.canvas.draw()  # renders without error
    notes = [t.get_text() for ax in fig.get_axes() for t in ax.texts]
    assert any("accuracy not measured" in n for n in notes)
    assert any("act_zero_frac not recorded" in n for n in notes)
    assert not [p for ax in fig.get_axes() for p in ax.patches if p.get_gid() == "period"]  # no period, no shade
    assert "Enlightenment Period unknown" in fig.get_suptitle()


def test_overview_file_carries_its_caption(pause_dir: Path, tmp_path: Path) -> None:
    png, pdf = draw_overview(pause_dir, tmp_path / "figs" / "overview.v1")
    assert (png, pdf) == (tmp_path / "figs" / "overview.v1.png", tmp_path / "figs" / "overview.v1.pdf")
    assert pdf.read_bytes().startswith(b"%PDF")
    text = caption_of(png)
    assert text["Keywords"] == "n=1 run, interval=none"
    assert "mixed batches drawn apart" in text["Description"] and "PARTIAL" not in text["Description"]
    assert (tmp_path / "figs" / "overview.v1.txt").read_text().strip() == text["Description"]
    with Image.open(png) as image:
        assert image.info["dpi"][0] == pytest.approx(300, abs=1)


def test_running_run_is_stamped_partial(pause_dir: Path, tmp_path: Path) -> None:
    running = tmp_path / "running"
    shutil.copytree(pause_dir, running)
    meta = json.loads((running / "meta.json").read_text())
    (running / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    lock = RunLock(running)  # a live writer holds the run
    try:
        with pytest.warns(UserWarning, match="still running"):
            png, _ = draw_overview(running, tmp_path / "partial")
        with pytest.warns(UserWarning, match="still running"):
            assert main([str(running), "--only", "interference", "--out", str(tmp_path / "out")]) == 0
    finally:
        lock.release()
    assert "PARTIAL" in caption_of(png)["Description"]
    assert "PARTIAL" in caption_of(tmp_path / "out" / "running" / "interference.png")["Description"]


# ---------------------------------------------------------------------------------------------- interference


def test_interference_over_training_plots_the_recorded_measurements(pause_dir: Path) -> None:
    ds = open_run(pause_dir)
    fig = interference_figure(ds)
    ratio = values(ds, "interference_ratio_model")
    measured = np.isfinite(ratio)
    assert measured.sum() >= 10
    points = gid(axes_titled(fig, "a "), "interference_ratio_model").get_offsets()
    np.testing.assert_array_equal(points[:, 0], ds["step"].values[measured])
    np.testing.assert_allclose(points[:, 1], ratio[measured], rtol=1e-7)
    revival = axes_titled(fig, "b ")
    for layer in ds["layer"].values:
        stored = ds["revival_frac"].sel(layer=layer).values.astype(np.float64)
        np.testing.assert_array_equal(gid(revival, f"revival_frac/{layer}").get_ydata(), stored[measured])
    cos = gid(axes_titled(fig, "d "), "interference_cos_model")
    np.testing.assert_allclose(cos.get_ydata(), values(ds, "interference_cos_model")[measured], rtol=1e-7)


def test_interference_is_drawn_only_for_runs_that_measured_it(pause_dir: Path, run_dir: Path, tmp_path) -> None:
    spec = load_figures()["interference"]
    assert spec.kind == "run" and spec.supports(pause_dir) and not spec.supports(run_dir)
    png, _ = draw_interference(pause_dir, tmp_path / "interference")
    assert caption_of(png)["Keywords"] == "n=1 run, interval=none"


# ------------------------------------------------------------------------------------------------ trajectory


def test_trajectory_plots_the_analysis_of_the_snapshots(pause_dir: Path, tmp_path: Path) -> None:
    ds = open_run(pause_dir)
    report = analyse_trajectory(ds)
    fig = trajectory_figure(report)
    bars = [p for p in axes_titled(fig, "a ").patches if p.get_gid() == "spectrum"]
    np.testing.assert_allclose([b.get_height() for b in bars], report.pca["explained_ratio"].sel(group=WHOLE))
    scores = report.pca["scores"].sel(group=WHOLE).values[:, :2]
    path = gid(axes_titled(fig, "b "), "path")
    np.testing.assert_allclose(path.get_xdata(), scores[:, 0] - scores[-1, 0])
    np.testing.assert_array_equal(report.trajectory.steps, ds["snap_step"].values)
    movement = gid(axes_titled(fig, "d "), "movement/model")
    np.testing.assert_allclose(movement.get_ydata(), report.movement.cumulative.sel(group=WHOLE))
    end = report.period.end_step
    assert end == int(ds["step"].values[np.flatnonzero(values(ds, "enp_active") == 1)[-1]])
    assert span(gid(axes_titled(fig, "d "), "period")) == (0, end + 1)  # steps taken: step + 1
    png, _ = draw_trajectory(pause_dir, tmp_path / "trajectory")
    assert f"from {len(report.trajectory.steps)} snapshots" in caption_of(png)["Description"]


# ------------------------------------------------------------------------------------------------------- CLI


def figures_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "figures", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_writes_every_supported_figure_into_the_run(run_dir: Path, pause_dir: Path, capsys) -> None:
    assert main([str(run_dir), "--only", "overview,interference,trajectory", "--no-progress"]) == 0
    written = capsys.readouterr().out.split()
    figures = run_dir / "figures"
    # the hand-written loop kept no snapshots and measured no interference: only the overview applies
    assert written == [str(figures / "overview.png"), str(figures / "overview.pdf")]
    assert (figures / "overview.txt").is_file()


def test_cli_draws_a_sweep_and_each_of_its_runs(tmp_path: Path, capsys) -> None:
    sweep = parse_sweep(
        'name = "tiny"\n[base]\nnum_samples = 400\nwidth = 8\nbatch_size = 32\nepochs = 1\nprobes = "loss"\n'
        "snapshots = false\ncheckpoint_seconds = 0\n[axes]\nseed = [0, 1]\n",
        tmp_path / "tiny.toml",
    )
    folder = tmp_path / "sweep"
    folder.mkdir()
    write_manifest(sweep, folder)
    for point in sweep.points:
        train(point.config, folder / point.name, progress=False)
    only = ["--only", "overview", "--no-progress", "--workers", "2"]  # two drawing processes, one run each
    assert main([str(folder), *only, "--out", str(tmp_path / "out")]) == 0
    written = sorted(capsys.readouterr().out.split())
    runs = ("seed0", "seed1")
    assert written == [str(tmp_path / "out" / name / f"overview.{s}") for name in runs for s in ("pdf", "png")]
    for name in runs:
        assert (
            "Run overview of mnist1d · cnn (width 8"
            in caption_of(tmp_path / "out" / name / "overview.png")["Description"]
        )


def test_cli_discovers_folders_under_the_runs_root(run_dir: Path, tmp_path: Path, capsys) -> None:
    assert main(["--runs-root", str(run_dir.parent), "--only", "overview", "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.split() == [str(tmp_path / "out" / "tiny" / f"overview.{s}") for s in ("png", "pdf")]
    assert main(["--runs-root", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: no runs found")


def test_cli_reports_a_bad_folder_in_one_line_and_draws_the_others(run_dir: Path, tmp_path: Path, capsys) -> None:
    result = figures_cli(str(tmp_path / "nope"), str(run_dir), "--only", "overview", "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "nope" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "o" / "tiny" / "overview.png").is_file()
    assert main([str(run_dir), "--only", "overveiw"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "choose from overview" in err


def test_a_failing_figure_is_one_line_and_the_others_are_drawn(run_dir: Path, tmp_path: Path, monkeypatch, capsys):
    def refuse(folder: Path, stem: Path) -> tuple[Path, Path]:
        raise ConfigError("the run lacks what this figure needs; record it")

    load_figures()
    monkeypatch.setitem(FIGURES, "broken", FigureSpec("broken", "run", lambda folder: True, refuse))
    assert main([str(run_dir), "--only", "broken,overview", "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: broken of {run_dir}: the run lacks what this figure needs; record it\n"
    assert captured.out.split() == [str(tmp_path / "o" / "tiny" / f"overview.{s}") for s in ("png", "pdf")]


# ----------------------------------------------------------------------------------------------------- quick


def test_quick_plan_holds_every_strategy_and_probe() -> None:
    sweeps = {sweep.name: sweep for sweep in quick.plan()}  # every point checked as a capture would check it
    assert set(sweeps) == {"strategies", "probes"}
    strategies = sweeps["strategies"]
    assert {p.condition for p in strategies.points} == {
        "plain",
        "mixup",
        "mixup-pause",
        "alpha-boost",
        "high-loss-removal",
        "plp",
        "cyclical-wd",
    }
    assert len({p.config.seed for p in strategies.points}) >= 2
    for point in [*strategies.points, *sweeps["probes"].points]:
        assert point.config.dataset == "mnist1d" and point.config.model == "cnn" and point.config.epochs <= 10
    assert all(p.config.enp_signal == "clean_probe" and p.config.enp_epochs == "auto" for p in strategies.points)
    probe = sweeps["probes"].points[0].config
    assert probe.interference and probe.interference_samples and probe.representation and probe.fisher
    assert probe.sharpness and probe.hessian_trace and probe.noise_scale and probe.lmc_spawn and probe.snapshots
    assert set(quick.STUDY[::2]) <= {f"--{f}" for f in ("sizes", "widths", "seeds", "steps")}


def test_quick_prints_which_figures_were_drawn(monkeypatch, tmp_path: Path, capsys) -> None:
    calls = []

    def prepare(out: Path, *, workers: int, progress: bool, error) -> tuple[list[Path], int]:
        calls.append((out, workers))
        return [], 0

    monkeypatch.setattr(quick, "prepare", prepare)
    assert main(["--quick", "--out", str(tmp_path / "q"), "--workers", "3", "--no-progress"]) == 0
    assert calls == [(tmp_path / "q", 3)]
    out = capsys.readouterr().out
    assert all(f"  {name:<18} not drawn: no {spec.kind} folder" in out for name, spec in FIGURES.items())
    assert main(["--quick", str(tmp_path)]) == 2
    assert "drop the DIR arguments" in capsys.readouterr().err
