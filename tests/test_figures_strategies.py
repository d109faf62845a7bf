"""The strategy figures (comparison, PLP, cyclical schedules and their effect, per-sample statistics) drawn from real
recorded runs and sweeps: each plotted value is checked against the stores (and against analyses.compare), each
written figure's caption metadata for n and the interval, and a running run for the PARTIAL stamp."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from PIL import Image

from analyses.compare import compare
from analyses.stats import t_interval
from analyses.trajectory import linearity_error, load_trajectory, sketch_linearity
from dynamics import open_run
from dynamics.config import make_config
from dynamics.engine import train
from dynamics.errors import ConfigError
from dynamics.runlock import RunLock
from dynamics.strategies import cyclical_value
from dynamics.sweep.manifest import write_manifest
from dynamics.sweep.spec import parse_sweep
from figures.comparison import comparison_figure, default_baseline, difference_verdict, load_comparison
from figures.cyclical import cyclical_effect_figure, cyclical_figure, load_effect
from figures.per_sample import per_sample_figure
from figures.plp import plp_figure
from figures.registry import FIGURES, FigureSpec

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = """
[base]
num_samples = 400
width = 8
batch_size = 32
checkpoint_seconds = 0
"""
"""MNIST-1D, 320 training samples in steps of 32: ten steps an epoch, the default CNN at width 8."""
PLP_SWEEP = f"""
name = "plp-tiny"
{TINY}
epochs = 2
[axes]
seed = [0, 1]
[conditions.plain]
[conditions.plp]
plp = true
"""
CYCLICAL_SWEEP = f"""
name = "cyclical-tiny"
{TINY}
epochs = 4
probes = "loss"
snapshots = false
[axes]
seed = [0, 1]
[conditions.constant]
weight_decay = 5e-4
[conditions.cyclical]
cyclical_wd = "1e-4:1e-3"
cyclical_temperature = "0.5:2"
cyclical_clip = "0.5:2"
cyclical_batch_size = "32:64"
"""
PER_SAMPLE = {
    "num_samples": 400,
    "width": 8,
    "batch_size": 32,
    "epochs": 2,
    "probes": "loss",
    "snapshots": False,
    "checkpoint_seconds": 0,
    "interference": True,
    "interference_samples": True,
    "interference_every": 2,
    "fisher": True,
    "probe_samples": 64,
}


def run_sweep(text: str, folder: Path) -> Path:
    """The sweep of ``text`` in ``folder`` as ``python -m dynamics.sweep`` writes it (manifest and one run per
    point), trained in this process (a collect process per run would take seconds of imports each)."""
    sweep = parse_sweep(text, folder / "sweep.toml")
    folder.mkdir(parents=True)
    write_manifest(sweep, folder)
    for point in sweep.points:
        train(point.config, folder / point.name, progress=False)
    return folder


@pytest.fixture(scope="module")
def plp_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_sweep(PLP_SWEEP, tmp_path_factory.mktemp("sweeps") / "plp")


@pytest.fixture(scope="module")
def cyclical_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return run_sweep(CYCLICAL_SWEEP, tmp_path_factory.mktemp("sweeps") / "cyclical")


@pytest.fixture(scope="module")
def per_sample_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "per-sample"
    train(make_config(PER_SAMPLE), run_dir, progress=False)
    return run_dir


def spec(name: str) -> FigureSpec:
    return FIGURES[name]


def caption_of(png: Path) -> dict[str, str]:
    """The text chunks :func:`figures.style.save` wrote into the PNG (Title, Description, Keywords)."""
    with Image.open(png) as image:
        return dict(image.text)


def axes_with_ylabel(fig: Figure, label: str) -> Axes:
    (ax,) = [ax for ax in fig.get_axes() if ax.get_ylabel() == label]
    return ax


def axes_with_title(fig: Figure, title: str) -> Axes:
    (ax,) = [ax for ax in fig.get_axes() if ax.get_title() == title]
    return ax


def line(ax: Axes, label_start: str):
    (found,) = [ln for ln in ax.get_lines() if ln.get_label().startswith(label_start)]
    return found


def final_accuracy(run_dir: Path) -> float:
    return float(open_run(run_dir)["val_accuracy"].values[-1])


# ----------------------------------------------------------------------------------------------- comparison


def test_comparison_plots_every_seed_and_compare_numbers(plp_sweep: Path) -> None:
    assert default_baseline(plp_sweep) == "plain"
    data = load_comparison(plp_sweep)
    frame = compare(plp_sweep, "plain").set_index("condition")
    fig = comparison_figure(data)
    values_ax, diff_ax = fig.get_axes()
    points = {c.get_label(): c.get_offsets() for c in values_ax.collections if isinstance(c, PathCollection)}
    assert set(points) == {"plain", "plp"}
    for condition, offsets in points.items():
        stored = [100 * final_accuracy(plp_sweep / f"{condition}-seed{seed}") for seed in (0, 1)]
        np.testing.assert_allclose(np.asarray(offsets)[:, 1], stored, rtol=1e-12)
    means = [ln.get_ydata()[0] for ln in values_ax.get_lines() if ln.get_gid() == "mean"]
    np.testing.assert_allclose(means, 100 * frame.loc[["plain", "plp"], "mean"].to_numpy(), rtol=1e-12)
    bars = [c.get_segments()[0][:, 1] for c in values_ax.collections if c.get_gid() == "interval"]
    np.testing.assert_allclose(bars, 100 * frame.loc[["plain", "plp"], ["ci_low", "ci_high"]].to_numpy(), rtol=1e-12)

    (paired,) = [c for c in diff_ax.collections if isinstance(c, PathCollection)]
    expected = [
        100 * (final_accuracy(plp_sweep / f"plp-seed{s}") - final_accuracy(plp_sweep / f"plain-seed{s}"))
        for s in (0, 1)
    ]
    np.testing.assert_allclose(np.asarray(paired.get_offsets())[:, 1], expected, rtol=1e-9, atol=1e-12)
    row = frame.loc["plp"]
    (diff_mean,) = [ln.get_ydata()[0] for ln in diff_ax.get_lines() if ln.get_gid() == "mean"]
    (diff_bar,) = [c.get_segments()[0][:, 1] for c in diff_ax.collections if c.get_gid() == "interval"]
    np.testing.assert_allclose(diff_bar, 100 * row[["diff_low", "diff_high"]].to_numpy(float), rtol=1e-12)
    assert diff_mean == pytest.approx(100 * row["diff_mean"]) == pytest.approx(np.mean(expected))
    (text,) = diff_ax.texts
    verdict = difference_verdict(row["diff_mean"], row["diff_low"], row["diff_high"], row["p_holm"], 0.05)
    assert text.get_text().startswith(verdict) and "Holm p" in text.get_text()


def test_difference_verdict_needs_interval_and_holm() -> None:
    assert difference_verdict(0.01, 0.002, 0.02, 0.01, 0.05) == "higher than baseline"
    assert difference_verdict(-0.01, -0.02, -0.002, 0.01, 0.05) == "lower than baseline"
    assert difference_verdict(0.01, 0.002, 0.02, 0.2, 0.05) == "unresolved at this n"
    assert difference_verdict(0.01, -0.002, 0.02, 0.01, 0.05) == "unresolved at this n"


def test_comparison_draw_writes_caption_with_n_and_interval(
    plp_sweep: Path, cyclical_sweep: Path, tmp_path: Path
) -> None:
    figure = spec("comparison")
    assert figure.kind == "sweep" and figure.supports(plp_sweep) and figure.supports(cyclical_sweep)
    assert not figure.supports(plp_sweep / "plain-seed0")
    png, pdf = figure.draw(plp_sweep, tmp_path / "comparison")
    assert pdf.read_bytes().startswith(b"%PDF")
    text = caption_of(png)
    assert "n = 2." in text["Description"] and "95% Student-t interval over seeds" in text["Description"]
    assert text["Keywords"] == "n=2, interval=95% Student-t interval over seeds"
    assert "PARTIAL" not in text["Description"]


# ------------------------------------------------------------------------------------------------------ PLP


def test_plp_figure_draws_the_trajectory_linearity_errors(plp_sweep: Path) -> None:
    ds = open_run(plp_sweep / "plp-seed0")
    fig = plp_figure(ds)
    snapshots_ax, sketch_ax = fig.get_axes()
    exact = linearity_error(load_trajectory(ds)).sel(group="model")
    whole = line(snapshots_ax, "whole model")
    np.testing.assert_array_equal(whole.get_xdata(), exact["step"].values)
    np.testing.assert_allclose(whole.get_ydata(), exact.values, rtol=1e-12)
    estimate = sketch_linearity(ds, window=25).sel(group="model")
    np.testing.assert_allclose(line(sketch_ax, "whole model").get_ydata(), estimate.values, rtol=1e-12)
    applied = np.flatnonzero(np.asarray(ds["plp_applied"].values) == 1)
    assert applied.size == ds.sizes["step"] // 3  # one prediction every three iterations
    np.testing.assert_array_equal(line(sketch_ax, "PLP predictions").get_xdata(), ds["step"].values[applied])
    plain = plp_figure(open_run(plp_sweep / "plain-seed0"))
    assert not [ln for ax in plain.get_axes() for ln in ax.get_lines() if ln.get_label().startswith("PLP")]


def test_plp_draw_and_support(plp_sweep: Path, cyclical_sweep: Path, tmp_path: Path) -> None:
    figure = spec("plp")
    assert figure.kind == "run" and figure.supports(plp_sweep / "plp-seed0")
    assert not figure.supports(plp_sweep / "plain-seed0")  # no PLP
    assert not figure.supports(cyclical_sweep / "cyclical-seed0")
    text = caption_of(figure.draw(plp_sweep / "plp-seed0", tmp_path / "plp")[0])
    assert "trained with PLP (k = 1.0, unit iteration)" in text["Description"]
    assert text["Keywords"] == "n=1 run, interval=none"


# ------------------------------------------------------------------------------------------------- cyclical


def test_cyclical_figure_draws_the_recorded_schedules(cyclical_sweep: Path) -> None:
    ds = open_run(cyclical_sweep / "cyclical-seed0")
    fig = cyclical_figure(ds)
    steps = ds["step"].values
    epochs = ds["epoch"].values
    for label, name, low, high in (
        ("weight decay", "weight_decay", 1e-4, 1e-3),
        ("temperature", "temperature", 0.5, 2.0),
        ("max grad norm", "clip_norm", 0.5, 2.0),
        ("batch size", "batch_size", 32, 64),
    ):
        (drawn,) = axes_with_ylabel(fig, label).get_lines()
        np.testing.assert_array_equal(drawn.get_xdata(), steps)
        np.testing.assert_array_equal(drawn.get_ydata(), ds[name].values)
        schedule = [cyclical_value(int(e), 4, low, high, 2.0) for e in epochs]
        np.testing.assert_allclose(drawn.get_ydata(), schedule, rtol=1e-6 if name != "batch_size" else 0.02)
    raw_loss = axes_with_ylabel(fig, "training loss").get_lines()[0]
    np.testing.assert_allclose(raw_loss.get_ydata(), ds["loss"].values)
    test_points = line(axes_with_ylabel(fig, "accuracy"), "test")
    np.testing.assert_array_equal(test_points.get_ydata(), ds["val_accuracy"].values)


def test_cyclical_draw_and_support(cyclical_sweep: Path, tmp_path: Path) -> None:
    figure = spec("cyclical")
    assert figure.kind == "run" and figure.supports(cyclical_sweep / "cyclical-seed0")
    assert not figure.supports(cyclical_sweep / "constant-seed0")
    with pytest.raises(ConfigError, match="no cyclical schedule") as err:
        cyclical_figure(open_run(cyclical_sweep / "constant-seed0"))
    assert err.value.key == "cyclical_wd"
    text = caption_of(figure.draw(cyclical_sweep / "cyclical-seed0", tmp_path / "cyclical")[0])
    assert "cyclical_wd 1e-4:1e-3" in text["Description"] and text["Keywords"] == "n=1 run, interval=none"


def test_cyclical_effect_draws_mean_and_interval_over_seeds(cyclical_sweep: Path, plp_sweep: Path) -> None:
    curves = load_effect(cyclical_sweep)
    fig = cyclical_effect_figure(curves)
    accuracy_ax = axes_with_ylabel(fig, "test accuracy")
    for condition in ("constant", "cyclical"):
        stored = np.array([open_run(cyclical_sweep / f"{condition}-seed{s}")["val_accuracy"].values for s in (0, 1)])
        assert stored.shape == (2, 4)  # one evaluation per epoch
        mean = line(accuracy_ax, f"{condition} (n = 2)")
        np.testing.assert_array_equal(mean.get_xdata(), [1, 2, 3, 4])
        np.testing.assert_allclose(mean.get_ydata(), stored.mean(axis=0), rtol=1e-12)
        band = curves["val_accuracy"][condition]
        expected = np.array([t_interval(column) for column in stored.T])
        np.testing.assert_allclose(band["ci_low"].values, expected[:, 1], rtol=1e-12)
        np.testing.assert_allclose(band["ci_high"].values, expected[:, 2], rtol=1e-12)
    polygons = [c for c in accuracy_ax.collections if not isinstance(c, PathCollection)]
    assert len(polygons) == 2
    drawn = np.concatenate([p.get_paths()[0].vertices[:, 1] for p in polygons])
    bounds = np.concatenate(
        [curves["val_accuracy"][c][b].values for c in curves["val_accuracy"] for b in ("ci_low", "ci_high")]
    )
    assert drawn.min() == pytest.approx(bounds.min()) and drawn.max() == pytest.approx(bounds.max())
    figure = spec("cyclical_effect")
    assert figure.kind == "sweep" and figure.supports(cyclical_sweep) and not figure.supports(plp_sweep)


def test_cyclical_effect_caption(cyclical_sweep: Path, tmp_path: Path) -> None:
    text = caption_of(spec("cyclical_effect").draw(cyclical_sweep, tmp_path / "effect")[0])
    assert text["Keywords"] == "n=2, interval=95% Student-t interval over seeds"


# ---------------------------------------------------------------------------------------------- per-sample


def test_per_sample_figure_draws_the_stored_statistics(per_sample_run: Path) -> None:
    ds = open_run(per_sample_run)
    fig = per_sample_figure(ds)
    steps = ds["step"].values
    stiffness = axes_with_title(fig, "stiffness")
    for label, name in (("same class", "stiffness_same"), ("different classes", "stiffness_diff")):
        stored = ds[name].values
        measured = np.isfinite(stored)
        assert measured.sum() == ds.sizes["step"] // 2  # every interference_every = 2 steps
        drawn = line(stiffness, label)
        np.testing.assert_array_equal(drawn.get_xdata(), steps[measured])
        np.testing.assert_array_equal(drawn.get_ydata(), stored[measured])
    for title, name in (
        ("gradient diversity", "grad_diversity"),
        ("clean vs mixed alignment", "sample_align_cos"),
        ("Fisher trace", "fisher_trace"),
    ):
        stored = ds[name].values
        (drawn,) = axes_with_title(fig, title).get_lines()
        np.testing.assert_array_equal(drawn.get_ydata(), stored[np.isfinite(stored)])
    gsnr = ds["gsnr"].transpose("step", "param").values
    measured = np.isfinite(gsnr).any(axis=1)
    median = line(axes_with_title(fig, "GSNR"), "median")
    np.testing.assert_allclose(median.get_ydata(), np.median(gsnr[measured], axis=1), rtol=1e-6)
    assert axes_with_title(fig, "GSNR").get_yscale() == "log"


def test_per_sample_support_and_refusal(per_sample_run: Path, plp_sweep: Path) -> None:
    figure = spec("per_sample")
    assert figure.kind == "run" and figure.supports(per_sample_run)
    assert not figure.supports(plp_sweep / "plp-seed0")
    with pytest.raises(ConfigError, match="no per-sample gradient statistic") as err:
        per_sample_figure(open_run(plp_sweep / "plp-seed0"))
    assert err.value.key == "interference_samples"


def test_running_run_is_stamped_partial(per_sample_run: Path, tmp_path: Path) -> None:
    running = tmp_path / "running"
    shutil.copytree(per_sample_run, running)
    meta = json.loads((running / "meta.json").read_text())
    (running / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    lock = RunLock(running)  # a live writer holds the run
    try:
        with pytest.warns(UserWarning, match="still running"):
            png, _ = spec("per_sample").draw(running, tmp_path / "partial")
    finally:
        lock.release()
    text = caption_of(png)
    assert "PARTIAL" in text["Description"] and "GSNR band: interquartile range" in text["Description"]
