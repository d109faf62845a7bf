"""Linear-mode-connectivity instability (``--lmc-spawn``, ``python -m dynamics.lmc``): the stored curve and barrier
against a brute evaluation of the interpolated models, the children against a hand-written SGD loop from the
spawn state, the parent unchanged by its spawns, the command line's reuse and errors, and the figure.

Tiny MNIST-1D runs on the CPU in deterministic mode: 480 training samples, batches of 32 (15 steps per epoch),
4 epochs; spawns at step 0 and mid-epoch at step 20, children of K = 12 steps (the second crosses an epoch end).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from analyses.lmc import LMC_FILE, barrier, barrier_by_step, read_lmc
from dynamics import open_run
from dynamics.checkpoint import load_checkpoint, spawn_path
from dynamics.collect import main as collect_main
from dynamics.config import make_config
from dynamics.engine import Branch, load_data, model_options, train
from dynamics.errors import ConfigError
from dynamics.lmc import main as lmc_main
from dynamics.models import build_model
from dynamics.studies.lmc import child_path, recompute_batchnorm
from figures.lmc import BARRIER_GID, lmc_figure
from figures.registry import load_figures

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = {
    "dataset": "mnist1d",
    "num_samples": 600,
    "width": 8,
    "depth": 2,
    "epochs": 4,
    "batch_size": 32,
    "lr": 0.1,
    "eval_batch_size": 512,
    "device": "cpu",
    "deterministic": True,
    "checkpoint_seconds": 0,
    "snapshot_budget_mb": 1,
}
"""The parent: plain SGD with momentum, default probes and snapshots (what a spawn must not disturb)."""
SPAWNS, K, POINTS = (0, 20), 12, 5
LMC = {"lmc_spawn": "0,20", "lmc_steps": K, "lmc_points": POINTS}


def flags(settings: dict[str, object]) -> list[str]:
    """``settings`` as collect's command line."""
    args: list[str] = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        args.extend([flag] if value is True else [flag, str(value)])
    return args


def run_cli(main, argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of an in-process command line."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The parent trained by ``dynamics.collect`` with spawns (measured at its end), the same without, and the
    collect run's stdout."""
    root = tmp_path_factory.mktemp("lmc")
    status, out, err = run_cli(
        collect_main, [*flags({**SETTINGS, **LMC}), "--out", str(root / "spawned"), "--no-progress", "--no-figure"]
    )
    assert status == 0, err
    train(make_config(SETTINGS), root / "plain", progress=False)
    return root / "spawned", root / "plain", out


def test_collect_measures_at_its_end(runs) -> None:
    spawned, _, out = runs
    payload = read_lmc(spawned)
    assert [entry["step"] for entry in payload["spawns"]] == list(SPAWNS)
    assert [line.split()[3] for line in out.splitlines() if line.startswith("lmc spawn step")] == ["0", "20"]
    for step in SPAWNS:
        assert spawn_path(spawned, step).is_file()
        assert all(child_path(spawned, step, child).is_file() for child in "ab")


def _evaluate_by_hand(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Test error and mean cross-entropy of ``model`` on (x, y): one plain forward pass, float64 loss."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    error = (out.argmax(1) != y).double().mean().item()
    return error, F.cross_entropy(out.double(), y).item()


def test_barrier_matches_a_brute_evaluation_of_the_interpolated_models(runs) -> None:
    spawned, _, _ = runs
    config = make_config(json.loads((spawned / "config.json").read_text()))
    data = load_data(config, torch.device("cpu"))
    model = build_model(config.model, **model_options(config, data))
    for entry in read_lmc(spawned)["spawns"]:
        a = torch.load(child_path(spawned, entry["step"], "a"), weights_only=False)["model"]
        b = torch.load(child_path(spawned, entry["step"], "b"), weights_only=False)["model"]
        alphas = np.linspace(0, 1, POINTS)
        np.testing.assert_array_equal(entry["alphas"], alphas)
        errors, losses = [], []
        for alpha in alphas:
            model.load_state_dict({name: (1 - alpha) * a[name] + alpha * b[name] for name in a})
            error, loss = _evaluate_by_hand(model, data.x_test, data.y_test)
            errors.append(error)
            losses.append(loss)
        # errors are counts over the 120 test samples: equal or at least 1/120 apart
        np.testing.assert_allclose(entry["error"], errors, rtol=0, atol=1e-12)
        np.testing.assert_allclose(entry["loss"], losses, rtol=1e-6)
        rise = [errors[i] - ((1 - alphas[i]) * errors[0] + alphas[i] * errors[-1]) for i in range(POINTS)]
        assert entry["barrier"] == pytest.approx(max(rise), abs=1e-12)
        assert entry["barrier"] >= 0 and entry["loss_barrier"] >= 0


def _sgd_by_hand(run: Path, config, data, step: int, order_seed: int) -> dict[str, torch.Tensor]:
    """K plain SGD steps (torch.optim.SGD, cross-entropy) from the spawn state at ``step``, in the batch order of a
    generator seeded with ``order_seed``: a fresh permutation for the rest of the spawn's epoch, then one per
    epoch."""
    state = torch.load(spawn_path(run, step), weights_only=False)
    model = build_model(config.model, **model_options(config, data))
    model.load_state_dict(state["model"])
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    optimizer.load_state_dict(state["optimizer"])
    order = torch.Generator().manual_seed(order_seed)
    per_epoch = len(data.x_train) // config.batch_size
    batch, done = state["batch"], 0
    model.train()
    while done < K:
        permutation = torch.randperm(len(data.x_train), generator=order)
        while batch < per_epoch and done < K:
            index = permutation[batch * config.batch_size : (batch + 1) * config.batch_size]
            optimizer.zero_grad()
            F.cross_entropy(model(data.x_train[index]), data.y_train[index]).backward()
            optimizer.step()
            batch, done = batch + 1, done + 1
        batch = 0
    return model.state_dict()


def test_children_train_k_steps_with_the_parents_hyperparameters_and_their_own_order(runs) -> None:
    spawned, _, _ = runs
    config = make_config(json.loads((spawned / "config.json").read_text()))
    data = load_data(config, torch.device("cpu"))
    seeds = []
    for entry in read_lmc(spawned)["spawns"]:
        step = entry["step"]
        finals = {}
        for child in "ab":
            kept = torch.load(child_path(spawned, step, child), weights_only=False)
            assert (kept["spawn"], kept["step"], kept["steps"]) == (step, step + K, K)
            assert kept["order_seed"] == entry["seeds"][child]["order"]
            expected = _sgd_by_hand(spawned, config, data, step, kept["order_seed"])
            for name, value in expected.items():
                torch.testing.assert_close(kept["model"][name], value, rtol=0, atol=1e-6, msg=name)
            finals[child] = kept["model"]
            seeds.append(kept["order_seed"])
        apart = max((finals["a"][n] - finals["b"][n]).abs().max().item() for n in finals["a"])
        assert apart > 1e-3, "the two children trained alike"
    assert len(set(seeds)) == len(seeds) and config.seed not in seeds


def assert_same_state(left: dict, right: dict) -> None:
    """Two final checkpoints hold the same state, bit for bit: model, optimizer, schedule, strategies, every
    generator (data order, augmentation, global ones) and the recorder's; only their configs differ."""
    assert left.keys() == right.keys()
    for key in left.keys() - {"config"}:
        ours, theirs = (torch.utils._pytree.tree_flatten(state[key]) for state in (left, right))
        assert ours[1] == theirs[1], key
        for x, y in zip(ours[0], theirs[0], strict=True):
            if isinstance(x, torch.Tensor):
                assert torch.equal(x, y), key
            elif isinstance(x, np.ndarray):
                assert np.array_equal(x, y), key
            else:
                assert x == y or (x != x and y != y), (key, x, y)  # NaN (a first bad loss not seen) equals NaN


def test_spawns_leave_the_parent_bit_identical(runs) -> None:
    spawned, plain, _ = runs
    with_spawns, without = open_run(spawned), open_run(plain)
    assert set(with_spawns.data_vars) == set(without.data_vars)
    for name in without.variables:
        np.testing.assert_array_equal(with_spawns[name].values, without[name].values, err_msg=name)
    assert_same_state(*(load_checkpoint(run, torch.device("cpu")) for run in (spawned, plain)))
    assert (
        json.loads((spawned / "meta.json").read_text())["results"]
        == json.loads((plain / "meta.json").read_text())["results"]
    )


def test_spawns_leave_a_parent_with_stateful_strategies_bit_identical(tmp_path: Path) -> None:
    """Mixup with the online Enlightenment Period and Mixup Pause, PLP and cyclical clipping: generators and
    strategy states a spawn reads."""
    settings = {
        **SETTINGS,
        "probes": "loss",
        "snapshots": False,
        "epochs": 3,
        "mixup_alpha": 0.4,
        "enp_epochs": "auto",
        "mixup_pause": True,
        "plp": True,
        "cyclical_clip": "1:5",
    }
    train(make_config({**settings, "lmc_spawn": "3,17", "lmc_steps": 5}), tmp_path / "a", progress=False)
    train(make_config(settings), tmp_path / "b", progress=False)
    assert spawn_path(tmp_path / "a", 17).is_file()
    left, right = open_run(tmp_path / "a"), open_run(tmp_path / "b")
    for name in right.variables:
        np.testing.assert_array_equal(left[name].values, right[name].values, err_msg=name)
    assert_same_state(*(load_checkpoint(run, torch.device("cpu")) for run in (tmp_path / "a", tmp_path / "b")))


def test_the_command_line_skips_measured_steps_reuses_children_and_overwrites(runs, tmp_path: Path) -> None:
    spawned, _, _ = runs
    run = tmp_path / "run"
    shutil.copytree(spawned, run)
    before = read_lmc(run)
    children = {path: path.stat().st_mtime_ns for path in (run / "lmc").glob("child-*.pt")}

    status, out, err = run_cli(lmc_main, [str(run), "--no-progress"])
    assert (status, err) == (0, "")
    assert read_lmc(run) == before and out.strip().endswith(str(run / LMC_FILE))

    partial = {**before, "spawns": before["spawns"][:1]}  # as if stopped after the first spawn step
    (run / LMC_FILE).write_text(json.dumps(partial))
    status, _, err = run_cli(lmc_main, [str(run), "--no-progress"])
    assert (status, err) == (0, "")
    assert read_lmc(run)["spawns"] == before["spawns"]
    assert {path: path.stat().st_mtime_ns for path in children} == children, "kept children were trained again"

    status, _, err = run_cli(lmc_main, [str(run), "--no-progress", "--overwrite"])
    assert (status, err) == (0, "")
    assert read_lmc(run)["spawns"] == before["spawns"]  # deterministic: the same children again
    assert all(path.stat().st_mtime_ns != mtime for path, mtime in children.items())


def _one_line(status: int, err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (status, err)
    for word in words:
        assert word in lines[0], (word, lines[0])


def test_the_command_line_refuses_bad_input_in_one_line(runs, tmp_path: Path) -> None:
    _, plain, _ = runs
    _one_line(*run_cli(lmc_main, [str(plain)])[::2], "no spawn states", "--lmc-spawn")
    _one_line(*run_cli(lmc_main, [str(tmp_path / "nowhere")])[::2], "no run directory", "RUN_DIR")
    _one_line(*run_cli(lmc_main, [])[::2], "RUN_DIR")
    _one_line(*run_cli(lmc_main, [str(plain), "--points", "3"])[::2], "--points")
    done = subprocess.run(
        [sys.executable, "-m", "dynamics.lmc", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120
    )
    _one_line(done.returncode, done.stderr, "no run directory")


def test_spawns_that_leave_the_children_no_room_are_refused_before_the_run_starts(runs, tmp_path: Path) -> None:
    config = make_config({**SETTINGS, "epochs": 1, "lmc_spawn": "0,10", "lmc_steps": 6})  # 15 steps
    with pytest.raises(ConfigError) as excinfo:
        train(config, tmp_path / "run", progress=False)
    assert set(excinfo.value.keys) == {"lmc_spawn", "lmc_steps"} and "15" in str(excinfo.value)
    assert not (tmp_path / "run").exists()
    spawned, _, _ = runs  # a child past the parent's 60 steps
    branch = Branch(spawn_path(spawned, 20), order_seed=1, augment_seed=2, steps=41)
    with pytest.raises(ConfigError) as excinfo:
        train(make_config(SETTINGS), tmp_path / "child", progress=False, branch=branch)
    assert excinfo.value.keys == ("lmc_steps",) and "60" in str(excinfo.value)
    assert not (tmp_path / "child").exists()
    for bad, key in (
        (("lmc_spawn", "5,x"), "lmc_spawn"),
        (("lmc_spawn", "3,3"), "lmc_spawn"),
        (("lmc_spawn", "\u00b2"), "lmc_spawn"),  # a digit to str.isdigit, none to int()
        (("lmc_points", 1), "lmc_points"),
        (("lmc_points", 1002), "lmc_points"),
        (("lmc_steps", 0), "lmc_steps"),
    ):
        with pytest.raises(ConfigError) as excinfo:
            make_config(dict([bad]))
        assert excinfo.value.keys == (key,)


def test_the_figure_draws_the_stored_barriers(runs, tmp_path: Path) -> None:
    spawned, plain, _ = runs
    spec = load_figures()["lmc"]
    assert spec.kind == "run" and spec.supports(spawned) and not spec.supports(plain)
    png, pdf = spec.draw(spawned, tmp_path / "lmc")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and pdf.read_bytes()[:4] == b"%PDF"
    entries = read_lmc(spawned)["spawns"]
    fig = lmc_figure([spawned])
    line = next(line for ax in fig.axes for line in ax.get_lines() if line.get_gid() == BARRIER_GID)
    np.testing.assert_array_equal(line.get_xdata(), [entry["step"] for entry in entries])
    np.testing.assert_array_equal(line.get_ydata(), [entry["barrier"] for entry in entries])


def test_barrier_and_its_summary_over_runs(runs, tmp_path: Path) -> None:
    assert barrier([0, 0.5, 1], [0.1, 0.5, 0.2]) == pytest.approx(0.5 - 0.15)
    assert barrier([0, 0.5, 1], [0.4, 0.1, 0.2]) == 0.0  # never above the line: the end points give 0
    spawned, _, _ = runs
    copies = []
    for index, shift in enumerate((0.0, 0.1, 0.3)):
        run = tmp_path / f"seed{index}"
        run.mkdir()
        payload = read_lmc(spawned)
        for entry in payload["spawns"]:
            entry["barrier"] += shift
        (run / LMC_FILE).write_text(json.dumps(payload))
        copies.append(run)
    summary = barrier_by_step(copies)
    np.testing.assert_array_equal(summary.steps, SPAWNS)
    np.testing.assert_array_equal(summary.n, [3, 3])
    for i, entry in enumerate(read_lmc(spawned)["spawns"]):
        values = np.array([entry["barrier"] + shift for shift in (0.0, 0.1, 0.3)])
        half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / np.sqrt(3)
        assert summary.mean[i] == pytest.approx(values.mean())
        assert (summary.low[i], summary.high[i]) == pytest.approx((values.mean() - half, values.mean() + half))


def test_batchnorm_statistics_are_recomputed_over_the_training_split() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    model[1].running_mean.fill_(5.0)  # stale statistics, e.g. interpolated ones
    x = torch.randn(64, 4)
    recompute_batchnorm(model, x, 16)
    with torch.no_grad():
        features = model[0](x)
    batches = features.split(16)
    torch.testing.assert_close(model[1].running_mean, features.mean(0), rtol=0, atol=1e-6)
    expected_var = torch.stack([batch.var(0, unbiased=True) for batch in batches]).mean(0)
    torch.testing.assert_close(model[1].running_var, expected_var, rtol=0, atol=1e-6)
    assert not model.training and model[1].momentum == 0.1
