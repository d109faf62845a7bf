"""The overview figure and ``python -m figures`` end to end, on runs recorded by a real Recorder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from matplotlib.image import imread

from analyses import aggregate_by_module, enlightenment_period, overview_figure, plot_overview
from analyses.overview import ENP_COLOR
from dynamics import Recorder, open_run
from dynamics.data import load_dataset
from dynamics.models import build_model
from figures.__main__ import main

REPO = Path(__file__).resolve().parents[1]
STEPS = 60
CONFIG = {"dataset": "gaussian", "model": "cnn", "width": 8, "depth": 2, "activation": "relu", "seed": 0}


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


def test_plot_overview_writes_png_and_pdf(run_dir: Path, tmp_path: Path) -> None:
    ds = open_run(run_dir)
    assert ds.sizes["step"] == STEPS and ds.sizes["eval_step"] == 3
    png, pdf = plot_overview(ds, tmp_path / "figs" / "tiny.v1")
    assert (png, pdf) == (tmp_path / "figs" / "tiny.v1.png", tmp_path / "figs" / "tiny.v1.pdf")
    image = imread(png)
    assert image.shape == (int(11.5 * 150), 10 * 150, 4)  # figsize (10, 11.5) inches at 150 dpi
    assert image[..., :3].std() > 0.05  # something was drawn
    assert pdf.read_bytes().startswith(b"%PDF")


def test_enlightenment_period_is_shaded_in_every_panel(run_dir: Path) -> None:
    ds = open_run(run_dir)
    enp = enlightenment_period(ds)
    assert enp.reached, "the tiny run should pass 50% smoothed accuracy within 60 steps"
    fig = overview_figure(ds)
    axes = fig.get_axes()
    assert len(axes) == 4
    for ax in axes:
        shades = [p for p in ax.patches if np.allclose(p.get_facecolor()[:3], _rgb(ENP_COLOR))]
        assert len(shades) == 1
        x0, x1 = sorted(_xspan(shades[0]))
        assert (x0, x1) == (0, enp.end_step)
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "Enlightenment Period (smoothed acc ≥ 50%)" in labels
    assert "gaussian · cnn" in fig.get_suptitle()
    assert axes[0].get_yscale() == "log" and axes[2].get_yscale() == "log"
    assert len(axes[2].get_legend().get_texts()) == 3  # blocks.0.conv, blocks.1.conv, head
    assert len(axes[3].get_legend().get_texts()) == 2  # blocks.0.act, blocks.1.act


def _rgb(hex_color: str) -> tuple[float, float, float]:
    return tuple(int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def _xspan(patch: object) -> tuple[float, float]:
    """x extent of an axvspan in data units (a Rectangle since matplotlib 3.9, a Polygon before)."""
    if hasattr(patch, "get_width"):
        return patch.get_x(), patch.get_x() + patch.get_width()
    xs = patch.get_xy()[:, 0]
    return xs.min(), xs.max()


def test_aggregate_by_module_matches_brute_force(run_dir: Path) -> None:
    grad_norm = open_run(run_dir)["grad_norm"]
    per_module = aggregate_by_module(grad_norm)
    assert per_module.dims == ("step", "module")
    assert list(per_module["module"].values) == ["blocks.0.conv", "blocks.1.conv", "head"]
    values = grad_norm.values.astype(np.float64)
    names = [str(n) for n in grad_norm["param"].values]
    for module in per_module["module"].values:
        members = [i for i, n in enumerate(names) if n.split(".")[:-1] == module.split(".")]
        assert len(members) == 2  # weight and bias
        for row in range(values.shape[0]):
            expected = sum(values[row, i] ** 2 for i in members) ** 0.5
            assert abs(float(per_module.sel(module=module)[row]) - expected) <= 1e-6 * max(expected, 1.0)
    np.testing.assert_array_equal(per_module["step"].values, grad_norm["step"].values)


def test_overview_draws_notes_for_missing_variables(tmp_path: Path) -> None:
    ds = open_run(record_run(tmp_path / "minimal", probes="minimal", with_output=False, steps=20))
    assert "act_zero_frac" not in ds and np.isnan(ds["accuracy"].values).all()
    fig = overview_figure(ds)
    fig.canvas.draw()  # renders without error
    notes = [t.get_text() for ax in fig.get_axes() for t in ax.texts]
    assert any("accuracy not measured" in n for n in notes)
    assert any("act_zero_frac not recorded" in n for n in notes)
    assert not any(
        p.get_facecolor()[3] > 0 and np.allclose(p.get_facecolor()[:3], _rgb(ENP_COLOR))
        for ax in fig.get_axes()
        for p in ax.patches
    )  # no period without an accuracy


def test_main_discovers_runs_and_writes_to_out(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--runs-root", str(run_dir.parent), "--out", str(tmp_path / "out")]) == 0
    written = capsys.readouterr().out.split()
    assert written == [str(tmp_path / "out" / "tiny-overview.png"), str(tmp_path / "out" / "tiny-overview.pdf")]
    assert all(Path(p).stat().st_size > 0 for p in written)
    assert main(["--runs-root", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err.startswith("error: no runs found")


def figures_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "figures", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_writes_the_overview_into_the_run_directory(run_dir: Path) -> None:
    result = figures_cli(str(run_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(run_dir / "overview.png"), str(run_dir / "overview.pdf")]
    assert imread(run_dir / "overview.png").shape[:2] == (1725, 1500)
    assert (run_dir / "overview.pdf").read_bytes().startswith(b"%PDF")


def test_cli_reports_a_missing_run_in_one_line(tmp_path: Path) -> None:
    result = figures_cli(str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "nope" in result.stderr and "Traceback" not in result.stderr
