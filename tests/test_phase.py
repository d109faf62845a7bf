"""Phase-transition analysis: the fit recovers known curves with calibrated intervals, the model choice finds
the generating family, the flags name what the data cannot support, and real MNIST-1D captures are analysed
and drawn end to end (summary, figure, CLI, a run still running)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.image import imread
from matplotlib.patches import Rectangle
from PIL import Image

from analyses import analyse_phase, enlightenment_period, fit_transition
from analyses.enlightenment import smooth_ema
from analyses.phase import FLAGS, bootstrap_weights, load_needed, logistic, main, stretched_exponential
from dynamics import ConfigError, open_run
from dynamics.config import make_config
from dynamics.engine import train
from dynamics.probes import GeometricCadence
from dynamics.runlock import RunLock
from figures import phase as phase_figures
from figures.phase import phase_figure, plot_phase
from figures.registry import FIGURES

REPO = Path(__file__).resolve().parents[1]
CAPTURE = {
    "dataset": "mnist1d",
    "num_samples": 4000,
    "epochs": 4,
    "batch_size": 64,
    "probes": "minimal",
    "representation": True,
    "fisher": True,
    "probe_samples": 64,
    "probe_growth": 0.2,
}
"""The default CNN (width 32, depth 3) on 3200 MNIST-1D training samples, 200 steps: accuracy passes 50%."""


pytestmark = pytest.mark.usefixtures("one_thread")  # small tensors: one thread is faster on a shared machine


# ------------------------------------------------------------------------------- synthetic curves


def test_intervals_cover_the_truth_in_at_least_90_of_100_trials() -> None:
    """100 seeded noisy logistic curves; the 95% bootstrap interval must cover the true t_c and w >= 90 times.

    Under the null of correct coverage the count is Binomial(100, 0.95): 90 or more with probability 0.99.
    (Over 400 trials the intervals covered t_c 95% and w 93% of the time.)
    """
    t = np.arange(300.0)
    t_c, w = 120.0, 15.0
    covered_t_c = covered_w = 0
    for trial in range(100):
        psi = logistic(t, 0.05, 0.85, t_c, w) + np.random.default_rng(trial).normal(0, 0.05, t.size)
        fit = fit_transition(t, psi, n_boot=200, seed=trial)
        covered_t_c += fit.t_c_interval[0] <= t_c <= fit.t_c_interval[1]
        covered_w += fit.w_interval[0] <= w <= fit.w_interval[1]
    assert covered_t_c >= 90 and covered_w >= 90, (covered_t_c, covered_w)


@pytest.mark.parametrize("family", ["logistic", "stretched_exp"])
def test_aic_picks_the_generating_family(family: str) -> None:
    t = np.arange(1000.0)
    truth = (
        logistic(t, 0.05, 0.85, 400.0, 50.0)
        if family == "logistic"
        else stretched_exponential(t, 0.05, 0.85, 270.0, 0.6)
    )
    picks = [
        fit_transition(t, truth + np.random.default_rng(trial).normal(0, 0.05, t.size), n_boot=2).best
        for trial in range(30)
    ]
    assert picks.count(family) >= 28, picks


def test_noise_free_curves_are_fitted_exactly() -> None:
    t = np.arange(0.0, 500.0, 2.0)
    fit = fit_transition(t, logistic(t, 0.1, 0.8, 210.0, 17.0), n_boot=4)
    params = fit.fits["logistic"].params
    np.testing.assert_allclose(
        [params[k] for k in ("psi_0", "psi_inf", "t_c", "w")], [0.1, 0.8, 210.0, 17.0], rtol=1e-6
    )
    assert fit.fits["logistic"].r2 == pytest.approx(1.0, abs=1e-10) and fit.best == "logistic"
    fit = fit_transition(t, stretched_exponential(t, 0.2, 0.7, 90.0, 0.7), n_boot=4)
    params = fit.fits["stretched_exp"].params
    np.testing.assert_allclose(
        [params[k] for k in ("psi_0", "amplitude", "tau", "beta")], [0.2, 0.7, 90.0, 0.7], rtol=1e-6
    )
    assert fit.best == "stretched_exp"


def test_bootstrap_weights_resample_points_or_runs_then_points() -> None:
    rng = np.random.default_rng(0)
    single = bootstrap_weights(np.zeros(50), 400, rng)
    assert (single.sum(1) == 50).all() and single.min() >= 0
    assert abs(single.mean() - 1) < 0.01 and 0.9 < single.var() < 1.1  # multinomial(50, 1/50): mean 1, var 0.98
    groups = np.repeat([0, 1, 2], [10, 20, 30])
    two_stage = bootstrap_weights(groups, 400, rng)
    sizes = np.array([10, 20, 30])
    per_group = np.stack([two_stage[:, groups == g].sum(1) for g in range(3)], 1)
    draws = per_group / sizes
    assert np.array_equal(draws, np.round(draws)) and (draws.sum(1) == 3).all()  # 3 runs drawn, each whole
    assert (draws == 0).any() and (draws >= 2).any()


def test_a_clear_logistic_is_not_flagged_and_its_interval_holds_t_c() -> None:
    t = np.arange(300.0)
    psi = logistic(t, 0.05, 0.85, 150.0, 15.0) + np.random.default_rng(0).normal(0, 0.03, t.size)
    fit = fit_transition(t, psi, n_boot=100)
    assert fit.flags == () and fit.delta_aic > 2
    assert fit.transition_points == np.sum(np.abs(t - fit.t_c) <= 2 * fit.w) > 50  # about steps 120..180
    assert fit.t_c_interval[0] <= 150.0 <= fit.t_c_interval[1] and fit.observed == (0.0, 299.0)


def test_a_stretched_exponential_is_flagged_as_relaxation() -> None:
    t = np.arange(300.0)
    psi = stretched_exponential(t, 0.05, 0.85, 80.0, 0.6) + np.random.default_rng(0).normal(0, 0.05, t.size)
    fit = fit_transition(t, psi, n_boot=50)
    assert "relaxation" in fit.flags or "indistinguishable" in fit.flags
    assert "before_start" in fit.flags  # the concave rise starts at once: a logistic puts t_c before step 0


def test_few_points_in_the_transition_are_flagged() -> None:
    t = np.arange(0.0, 300.0, 15.0)  # 20 points; the rise t_c +- 2w = 150 +- 8 holds one of them
    psi = logistic(t, 0.05, 0.85, 150.0, 4.0) + np.random.default_rng(0).normal(0, 0.02, t.size)
    fit = fit_transition(t, psi, n_boot=50)
    assert "few_points" in fit.flags and fit.transition_points < 8
    assert "few_points" not in fit_transition(t, psi, n_boot=50, min_transition_points=1).flags


def test_a_falling_order_parameter_is_flagged() -> None:
    t = np.arange(300.0)
    psi = logistic(t, 0.9, -0.8, 150.0, 15.0) + np.random.default_rng(0).normal(0, 0.03, t.size)
    assert fit_transition(t, psi, n_boot=50).flags == ("falls",)


def test_a_transition_after_the_last_step_is_not_observed() -> None:
    """The issue's case: t_c = 173 on a 124-step run."""
    t = np.arange(124.0)
    psi = logistic(t, 0.05, 0.85, 173.0, 20.0) + np.random.default_rng(0).normal(0, 0.02, t.size)
    fit = fit_transition(t, psi, n_boot=50)
    assert "after_end" in fit.flags and "before_start" not in fit.flags


def synthetic_run(seed: int, t_c: float, steps: int = 600, w: float = 25.0, enp_end: int | None = None) -> xr.Dataset:
    """A run as ``open_run`` returns it: batch accuracy of a logistic rise, sparse representation variables."""
    rng = np.random.default_rng(seed)
    step = np.arange(steps)
    p = 0.1 + 0.85 * logistic(step, 0.0, 1.0, t_c, w)
    measured = np.full(steps, np.nan)
    measured[GeometricCadence(0.1).steps(steps)] = 1.0
    linear = (measured * np.clip(p + rng.normal(0, 0.02, steps), 0, 1))[:, None].repeat(2, 1)
    variables = {
        "accuracy": ("step", rng.binomial(128, p) / 128),
        "rep_linear_acc": (("step", "split"), linear, {"num_classes": 10}),
        "rep_knn_acc": (("step", "split"), linear * 0.9, {"num_classes": 10}),
        "rep_nc1": (("step", "split"), measured[:, None].repeat(2, 1) / p[:, None], {"num_classes": 10}),
        "rep_cka": (("step", "split"), measured[:, None].repeat(2, 1) * 0.99, {"num_classes": 10}),
    }
    if enp_end is not None:
        variables["enp_active"] = ("step", (step < enp_end).astype(float))
    return xr.Dataset(
        variables,
        coords={"step": step, "split": ["train", "test"]},
        attrs={"config": {"dataset": "synthetic", "seed": seed}},
    )


def test_analysis_of_synthetic_seeds() -> None:
    truth = [300.0, 310.0, 290.0, 320.0, 280.0, 305.0]
    runs = [synthetic_run(seed, t_c, enp_end=250 + seed) for seed, t_c in enumerate(truth)]
    result = analyse_phase(runs, n_boot=100)
    accuracy = result.sel(order_parameter="accuracy")
    low, high = accuracy["t_c_interval"].values
    assert low < np.mean(truth) < high and high - low < 60
    assert abs(float(accuracy["w"]) - 25) < 5 and float(accuracy["r2"].sel(model="logistic")) > 0.8
    assert abs(float(accuracy["chi_peak"]) - np.mean(truth)) < 3 * 25  # fluctuations peak at the transition
    assert result["order_parameter"].values.tolist() == ["accuracy", "linear", "knn", "nc1"]
    for index, run in enumerate(runs):
        assert float(result["t_50"][index]) == enlightenment_period(run).end_step
        assert float(result["online_end"][index]) == 250 + index
    assert result["t"].attrs["units"] == "step" and result["t_c"].attrs["units"] == "step"
    assert "t_50" in result.attrs["summary"] and "R^2" in result.attrs["summary"]
    assert result.attrs["bootstrap"].startswith("accuracy: runs+points")


def test_long_single_run_is_binned_and_bootstrapped_in_blocks() -> None:
    run = synthetic_run(0, 3000.0, steps=20_000, w=200.0)
    result = analyse_phase(run, n_boot=50, max_points=500)
    accuracy = result.sel(order_parameter="accuracy")
    assert np.isfinite(accuracy["psi"]).sum() == 500
    low, high = accuracy["t_c_interval"].values
    assert low < 3000 < high
    assert "points (blocks)" in result.attrs["bootstrap"]
    assert float(result["t_50_fraction"][0]) == pytest.approx(enlightenment_period(run).fraction)


def test_bad_input_is_a_config_error() -> None:
    run = synthetic_run(0, 300.0)
    bare = run.drop_vars(["rep_linear_acc", "rep_knn_acc", "rep_nc1", "rep_cka"])
    with pytest.raises(ConfigError, match="num_classes"):
        analyse_phase(bare)
    other = synthetic_run(1, 300.0)
    other.attrs["config"] = {"dataset": "other", "seed": 1}
    with pytest.raises(ConfigError, match="dataset"):
        analyse_phase([run, other])
    for bad in ({"n_boot": 1}, {"level": 1.5}, {"max_points": 2}, {"min_delta_aic": -1}, {"min_transition_points": 0}):
        with pytest.raises(ConfigError) as caught:
            analyse_phase(run, **bad)
        assert caught.value.key == next(iter(bad))
    result = analyse_phase(bare, num_classes=10, n_boot=20)
    assert result["order_parameter"].values.tolist() == ["accuracy"]


# ----------------------------------------------------------------------------- real MNIST-1D runs


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("phase")
    for seed in range(3):
        train(make_config({**CAPTURE, "seed": seed}), root / f"s{seed}", progress=False)
    return [root / f"s{seed}" for seed in range(3)]


def test_real_captures_end_to_end(captures: list[Path], tmp_path: Path) -> None:
    run = open_run(captures[0])
    loaded = load_needed(run)  # sparse variables read through one locator and spans: the same values
    assert set(loaded.data_vars) == {"accuracy", "rep_linear_acc", "rep_knn_acc", "rep_nc1", "rep_cka", "fisher_trace"}
    for name in loaded.data_vars:
        np.testing.assert_array_equal(loaded[name].values, run[name].values.astype(np.float64), err_msg=name)
    result = analyse_phase([open_run(path) for path in captures])
    assert result.sizes["run"] == 3 and result.attrs["num_classes"] == 10
    accuracy = result.sel(order_parameter="accuracy")
    t50 = result["t_50"].values
    fraction = result["t_50_fraction"].values
    assert np.isfinite(t50).all() and (t50 < 200).all() and ((fraction > 0) & (fraction < 1)).all()
    low, high = accuracy["t_c_interval"].values
    assert np.isfinite([float(accuracy["t_c"]), low, high]).all() and low <= float(accuracy["t_c"]) <= high
    assert 0.5 < float(accuracy["r2"].sel(model="logistic")) <= 1
    assert np.isfinite(result["fisher_trace"]).any() and np.isfinite(result["rep_cka"]).any()
    summary = result.attrs["summary"]
    assert "t_50 = " in summary and "logistic t_c = " in summary and "R^2 = " in summary
    assert result["flags"].dims == ("order_parameter", "flag") and list(result["flag"].values) == list(FLAGS)
    assert not result.attrs["partial"] and "PARTIAL" not in summary
    png, pdf = plot_phase(result, tmp_path / "phase", log_time=True)
    image = imread(png)
    assert image.shape[0] > 1000 and image[..., :3].std() > 0.05 and pdf.stat().st_size > 10_000
    assert len(phase_figure(result).axes) == 4 + 2
    description = Image.open(png).text["Description"]
    assert "n = 3." in description and "95% percentile bootstrap interval of t_c" in description


def test_a_run_rising_from_step_0_has_no_observed_transition(captures: list[Path]) -> None:
    """Seed 0 alone: its smoothed accuracy climbs from the first steps, so the logistic puts t_c (or its
    interval) before step 0, which the fit flags and the summary says in words."""
    run = open_run(captures[0])
    smoothed = smooth_ema(run["step"].values, run["accuracy"].values, 10.0)
    assert smoothed[30] > smoothed[0] + 0.05  # it really rises from the start
    result = analyse_phase(run, n_boot=50)
    accuracy = result.sel(order_parameter="accuracy")
    assert bool(accuracy["flags"].sel(flag="before_start"))
    assert float(accuracy["t_c_interval"].sel(bound="low")) < float(accuracy["observed"].sel(bound="low")) == 0
    assert "transition not observed: accuracy rises from the first recorded step" in result.attrs["summary"]


def test_the_figure_draws_the_fit_and_marks_its_flags(captures: list[Path]) -> None:
    result = analyse_phase(open_run(captures[0]), n_boot=50)
    fig = phase_figure(result)
    for index, name in enumerate(result["order_parameter"].values.tolist()):
        ax, row = fig.axes[index], result.sel(order_parameter=name)
        line = next(line for line in ax.lines if line.get_gid() == "t_c")
        assert line.get_xdata()[0] == pytest.approx(float(row["t_c"]))
        band = next(patch for patch in ax.patches if patch.get_gid() == "t_c_interval")
        assert isinstance(band, Rectangle)
        low, high = row["t_c_interval"].values
        assert (band.get_x(), band.get_x() + band.get_width()) == pytest.approx((low, high))
        flags = [FLAGS[flag] for flag in FLAGS if bool(row["flags"].sel(flag=flag))]
        notes = [" ".join(text.get_text().split()) for text in ax.texts if text.get_text().startswith("flags: ")]
        assert notes == (["flags: " + "; ".join(flags)] if flags else [])
        assert (line.get_linestyle() == "--") == bool(flags) and (band.get_hatch() is not None) == bool(flags)
        period = next(patch for patch in ax.patches if patch.get_gid() == "period")
        assert period.get_width() == pytest.approx(float(result["t_50"][0]))
    accuracy_note = next(text.get_text() for text in fig.axes[0].texts if text.get_text().startswith("flags: "))
    assert FLAGS["before_start"] in accuracy_note


def test_a_run_still_running_warns_and_its_figure_is_partial(captures: list[Path], tmp_path: Path) -> None:
    """A copy of a run marked running, with its write lock held as a live Recorder holds it."""
    live = tmp_path / "live"
    shutil.copytree(captures[0], live)
    meta = json.loads((live / "meta.json").read_text())
    (live / "meta.json").write_text(json.dumps({**meta, "status": "running"}))
    spec = FIGURES["phase"]
    assert (
        spec.kind == "run" and spec.draw is phase_figures.draw and spec.supports(live) and not spec.supports(tmp_path)
    )
    lock = RunLock(live)
    try:
        with pytest.warns(UserWarning, match=r"still running .*live"):
            png, pdf = spec.draw(live, tmp_path / "phase")
        with pytest.warns(UserWarning, match="still running"):
            assert enlightenment_period(open_run(live)).partial
        with pytest.warns(UserWarning, match="still running"):
            result = analyse_phase(open_run(live), n_boot=10)
    finally:
        lock.release()
    assert result.attrs["partial"] and result.attrs["running"] == [str(live)]
    assert "PARTIAL: 1 run(s) still running" in result.attrs["summary"]
    assert "PARTIAL" in Image.open(png).text["Description"] and pdf.exists()
    assert "PARTIAL" in (tmp_path / "phase.txt").read_text()


def test_cli_prints_the_summary_and_figures_cli_writes_the_figure(
    captures: list[Path], capsys: pytest.CaptureFixture
) -> None:
    assert main([*map(str, captures), "--bootstrap", "50", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Enlightenment Period ends at t_50" in out and "phase figure" not in out
    assert not (captures[0] / "phase.png").exists()
    assert phase_figures.main([*map(str, captures), "--bootstrap", "50", "--no-progress", "--log-time"]) == 0
    out = capsys.readouterr().out
    assert "Enlightenment Period ends at t_50" in out and "phase figure" in out
    assert (captures[0] / "phase.png").stat().st_size > 10_000 and (captures[0] / "phase.pdf").exists()
    assert main([str(captures[0]), "--min-transition-points", "0", "--no-progress"]) == 2
    assert "--min-transition-points must be an integer >= 1" in capsys.readouterr().err


def test_cli_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "analyses.phase", str(tmp_path / "none")], capture_output=True, text=True, cwd=REPO
    )
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.startswith("error: no run directory") and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [[], ["RUN", "--bootstrap", "x"], ["RUN", "--bootstrap", "1"], ["RUN", "RUN2"]])
def test_cli_usage_errors_exit_2(
    captures: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture, args: list[str]
) -> None:
    (tmp_path / "data.zarr").mkdir()
    args = [{"RUN": str(captures[0]), "RUN2": str(tmp_path)}.get(a, a) for a in args]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and len(captured.err.strip().splitlines()) == 1 and not captured.out
