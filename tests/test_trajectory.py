"""Parameter trajectories: the sketch against brute-force projections, snapshots, PCA, linearity, loss surface."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
import zarr

from analyses.enlightenment import EnlightenmentPeriod
from analyses.trajectory import (
    SURFACE_NAME,
    WHOLE,
    LossSurface,
    Trajectory,
    analyse_trajectory,
    linearity_error,
    load_trajectory,
    main,
    movement_share,
    read_loss_surface,
    sketch_linearity,
    trajectory_pca,
)
from dynamics import ConfigError, DynamicsError, Recorder, open_run
from dynamics.config import make_config
from dynamics.engine import train
from dynamics.models import build_model
from dynamics.probes import Sketch, sketch_directions
from dynamics.snapshots import INITIAL_STEP, SnapshotWriter, param_layout, snapshot_steps
from dynamics.steps import evaluate_split
from dynamics.strategies import PLP
from dynamics.strategies.plp import plp_prediction
from dynamics.surface import fixed_samples, load_parameters, loss_surface, rebuild, write_surface
from dynamics.surface import main as surface_main

RUN = {
    "dataset": "mnist1d",
    "num_samples": 1000,
    "model": "cnn",
    "width": 8,
    "depth": 2,
    "batch_size": 32,
    "epochs": 2,
    "sketch_dim": 6,
    "sketch_seed": 5,
    "device": "cpu",
}
"""800 training samples: 25 steps per epoch, 50 in all; every step up to 10 is a snapshot."""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run fastest on one intra-op thread (more threads only contend); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, one_thread: None) -> xr.Dataset:
    run_dir = tmp_path_factory.mktemp("trajectory") / "run"
    train(make_config(RUN), run_dir, progress=False)
    return open_run(run_dir)


@pytest.fixture(scope="module")
def traj(run: xr.Dataset) -> Trajectory:
    return load_trajectory(run)


def _rows(ds: xr.Dataset) -> np.ndarray:
    return np.asarray(ds["snapshot"].values, dtype=np.float64)


def _assert_rel(actual: np.ndarray, expected: np.ndarray, rel: float) -> None:
    """``|actual - expected| <= rel * |expected|`` in L2 over the last axis, for every leading index."""
    error = np.linalg.norm(actual - expected, axis=-1)
    scale = np.linalg.norm(expected, axis=-1)
    assert (error <= rel * scale + 1e-30).all(), float(np.max(error / np.maximum(scale, 1e-30)))


# ------------------------------------------------------------------------------------------- sketch


def test_sketch_equals_brute_force_projection_from_the_seed(run: xr.Dataset) -> None:
    attrs = run["traj_proj"].attrs
    assert (attrs["k"], attrs["seed"], attrs["mode"]) == (6, 5, "sign")
    layout = param_layout(run)
    assert [s.numel for s in layout] == attrs["param_numel"]
    per_param, total = sketch_directions(attrs["param_numel"], attrs["k"], attrs["seed"], attrs["mode"])
    rows, steps = _rows(run), run["snap_step"].values
    assert steps[0] == INITIAL_STEP
    checked = 0
    for row, step in zip(rows[1:], steps[1:], strict=True):
        moved = row - rows[0]
        expected = np.stack([d @ moved[s.columns] for d, s in zip(per_param, layout, strict=True)])
        _assert_rel(run["traj_proj"].sel(step=step).values.astype(np.float64), expected, 1e-6)
        _assert_rel(run["traj_proj_total"].sel(step=step).values.astype(np.float64), total @ moved, 1e-6)
        checked += 1
    assert checked >= 12


def test_sketch_never_exceeds_the_distance_from_init(run: xr.Dataset) -> None:
    proj = np.abs(run["traj_proj"].transpose("step", "param", "proj").values)
    dist = run["dist_from_init"].transpose("step", "param").values
    assert (proj <= dist[:, :, None] * (1 + 1e-6)).all()
    total = np.abs(run["traj_proj_total"].values)
    assert (total <= np.sqrt((dist.astype(np.float64) ** 2).sum(1))[:, None] * (1 + 1e-6)).all()
    assert (proj.max(axis=2) > 0).all()  # every tensor moved, and the sketch saw it


@pytest.mark.parametrize(("width", "threads"), [(16, 1), (1500, 2)])
@pytest.mark.parametrize(("mode", "k"), [("hashed", 4), ("dense", 4), ("sign", 11)])
def test_every_sketch_mode_in_a_user_loop_matches_its_directions(tmp_path, request, mode, k, width, threads) -> None:
    """The recorded sketch against the regenerated directions, with k across a byte boundary for the packed
    sign bits, on a small model and on one above 16384 parameters with two threads."""
    request.addfinalizer(functools.partial(torch.set_num_threads, torch.get_num_threads()))
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(12, width), torch.nn.Tanh(), torch.nn.Linear(width, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    initial = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()
    thetas = []
    with Recorder(
        model, optimizer, tmp_path / "r", probes=["loss", "dist_from_init", Sketch(k=k, seed=11, mode=mode)]
    ) as rec:
        for _ in range(5):
            x, y = torch.randn(8, 12), torch.randint(0, 3, (8,))
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step(loss=loss)
            thetas.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double())
    ds = open_run(tmp_path / "r")
    numel = ds["traj_proj"].attrs["param_numel"]
    per_param, total = sketch_directions(numel, k, 11, mode)
    assert np.allclose(np.linalg.norm(total, axis=1), 1.0)
    offsets = np.cumsum([0, *numel])
    for step, theta in enumerate(thetas):
        moved = (theta - initial).numpy()
        expected = np.stack([d @ moved[a:b] for d, a, b in zip(per_param, offsets[:-1], offsets[1:], strict=True)])
        _assert_rel(ds["traj_proj"].sel(step=step).values.astype(np.float64), expected, 1e-6)
        _assert_rel(ds["traj_proj_total"].sel(step=step).values.astype(np.float64), total @ moved, 1e-6)


# ---------------------------------------------------------------------------------------- snapshots


def test_snapshot_plan_is_dense_early_has_epoch_ends_and_thins_evenly() -> None:
    planned = snapshot_steps(1000, [249, 499, 749, 999])
    assert planned[:12] == [-1, *range(11)] and {249, 499, 749, 999} <= set(planned)
    thinned = snapshot_steps(1000, [249, 499], snapshot_bytes=100, budget_bytes=1000)
    assert len(thinned) == 10 and thinned[0] == -1 and thinned[-1] == 999 and set(thinned) <= set(planned)
    positions = [planned.index(s) for s in thinned]
    assert max(np.diff(positions)) - min(np.diff(positions)) <= 1  # evenly spread over the planned list
    assert snapshot_steps(1000, snapshot_bytes=100, budget_bytes=10**9) == snapshot_steps(1000)
    with pytest.raises(ConfigError, match="budget_bytes"):
        snapshot_steps(1000, snapshot_bytes=100, budget_bytes=150)


def test_engine_snapshots_are_exact_epoch_ends_included_and_lazy(run: xr.Dataset) -> None:
    steps = run["snap_step"].values.tolist()
    assert steps == snapshot_steps(50, [24, 49])
    assert run["snap_epoch"].sel(snap_step=49).item() == 1
    assert run["snapshot"].sizes["flat"] == sum(s.numel for s in param_layout(run))
    assert not isinstance(run["snapshot"].variable._data, np.ndarray)  # lazily indexed, read on access
    assert np.isfinite(_rows(run)).all()


def test_uncommitted_snapshot_rows_stay_hidden(tmp_path) -> None:
    model = torch.nn.Linear(3, 2)
    with (
        Recorder(model, None, tmp_path / "r", probes="loss") as rec,
        SnapshotWriter(model, tmp_path / "r", [INITIAL_STEP, 0, 1]) as snapshots,
    ):
        for step in range(3):
            with torch.no_grad():
                model.weight.add_(1.0)
            snapshots.observe(step, 0)
            rec.step(loss=torch.tensor(1.0))
    array = zarr.open_array(tmp_path / "r" / "data.zarr" / "snapshots" / "snapshot", mode="r+")
    array.resize((4, array.shape[1]))  # a write that a crash interrupted before its commit
    array[3] = 99.0
    ds = open_run(tmp_path / "r")
    assert ds["snap_step"].values.tolist() == [-1, 0, 1]
    assert ds["snapshot"].shape == (3, 8) and (ds["snapshot"].values < 99).all()
    np.testing.assert_allclose(ds["snapshot"].values[2, :6] - ds["snapshot"].values[0, :6], 2.0, rtol=1e-6)


# -------------------------------------------------------------------------------------- PCA, linearity


def test_pca_matches_numpy_on_the_stored_snapshots(run: xr.Dataset, traj: Trajectory) -> None:
    pca = trajectory_pca(traj, n_components=5)
    rows = _rows(run)
    module = traj.groups[1]
    columns = np.concatenate(
        [np.arange(s.offset, s.offset + s.numel) for s in traj.layout if s.name.rsplit(".", 1)[0] == module]
    )
    for group, points in ((WHOLE, rows), (module, rows[:, columns])):
        centred = points - points.mean(0)
        u, sv, _ = np.linalg.svd(centred, full_matrices=False)
        np.testing.assert_allclose(
            pca["explained_ratio"].sel(group=group).values, (sv**2 / (sv**2).sum())[:5], rtol=1e-7, atol=1e-12
        )
        scores = pca["scores"].sel(group=group).values
        np.testing.assert_allclose(np.abs(scores), np.abs(u[:, :5] * sv[:5]), rtol=1e-6, atol=1e-9)
    end = 20  # the path so far, snapshots 0..20
    prefix = rows[: end + 1] - rows[: end + 1].mean(0)
    sv = np.linalg.svd(prefix, compute_uv=False)
    np.testing.assert_allclose(
        pca["explained_over_time"].sel(group=WHOLE).isel(snap_step=end).values,
        np.cumsum(sv**2 / (sv**2).sum())[:5],
        rtol=1e-7,
    )


def test_linearity_error_matches_numpy_on_the_stored_snapshots(run: xr.Dataset, traj: Trajectory) -> None:
    rows, steps = _rows(run), run["snap_step"].values.astype(np.float64)
    expected = []
    for i in range(len(rows) - 3):
        s1, s2, s3, s4 = steps[i : i + 4]
        t1, t2, t3, t4 = rows[i : i + 4]
        k = (s4 - s2) / (s3 - s1)
        predicted = (t2 + t3) / 2 + k * (t3 - t1) / 2
        expected.append(np.linalg.norm(predicted - (t3 + t4) / 2) / np.linalg.norm((t4 - t2) / 2))
    lin = linearity_error(traj)
    np.testing.assert_allclose(lin.sel(group=WHOLE).values, expected, rtol=1e-6)
    assert (lin["k"].values[:9] == 1.0).all()  # evenly spaced early snapshots: PLP's own k = 1
    assert (lin.values > 0).all() and np.isfinite(lin.values).all()


def _synthetic(steps: list[int], points: np.ndarray) -> xr.Dataset:
    """A run holding only snapshots ``points`` (S, 6) of two tensors ``a.weight`` (2, 2) and ``b.bias`` (2,)."""
    return xr.Dataset(
        {
            "snapshot": (
                ("snap_step", "flat"),
                points,
                {"param_names": ["a.weight", "b.bias"], "param_shapes": [[2, 2], [2]], "param_offsets": [0, 4]},
            )
        },
        coords={"snap_step": steps},
    )


def test_straight_line_has_zero_linearity_error_and_one_component() -> None:
    steps = snapshot_steps(300, [99, 199, 299])
    direction = np.array([0.5, -1.0, 2.0, 0.25, 1.0, -0.5])
    points = 1.0 + np.outer(np.asarray(steps) + 1.0, direction) * 1e-2  # constant speed, uneven snapshots
    traj = load_trajectory(_synthetic(steps, points))
    assert linearity_error(traj).max() < 1e-5
    assert trajectory_pca(traj)["explained_ratio"].sel(component=1).min() > 1 - 1e-9
    angle = (np.asarray(steps) + 1.0) / 50
    curve = np.column_stack([np.cos(angle), np.sin(angle), np.zeros((len(steps), 4))])
    assert linearity_error(load_trajectory(_synthetic(steps, curve))).sel(group=WHOLE).max() > 0.01
    # the sketch estimate: a straight line in parameter space is a straight line in every projection
    recorded = np.arange(40)
    line = np.outer(recorded + 1.0, np.arange(1.0, 7.0))
    sketch = xr.Dataset(
        {
            "traj_proj": (("step", "param", "proj"), line.reshape(40, 2, 3), {"param_numel": [4, 2]}),
            "traj_proj_total": (("step", "proj"), line[:, :3]),
        },
        coords={"step": recorded, "param": ["a.weight", "b.bias"]},
    )
    assert float(sketch_linearity(sketch, window=5).max()) < 1e-9


def test_plp_prediction_is_the_formula_plp_applies() -> None:
    theta = torch.nn.Parameter(torch.zeros(()))
    plp = PLP([theta])
    points = []
    for gradient in (1.0, 2.0, 4.0):  # plain SGD, lr 1, from 0: -1, -3, -7, predicted -8 (science.md)
        with torch.no_grad():
            theta.sub_(gradient)
        points.append(theta.item())
        plp.observe()
    assert plp_prediction(*points) == theta.item() == -8.0
    from dynamics.plp_formula import plp_prediction as formula

    assert formula is plp_prediction  # one formula: the strategy re-exports the one analyses use


def test_movement_share_from_update_norm(run: xr.Dataset, traj: Trajectory) -> None:
    period = EnlightenmentPeriod(10, 10 / 50, 0.5, 10.0, "given")
    movement = movement_share(run, period, traj)
    updates = np.sqrt((run["update_norm"].values.astype(np.float64) ** 2).sum(1))
    assert movement.source == "update_norm"
    assert movement.path_share == pytest.approx(updates[:11].sum() / updates.sum(), rel=1e-9)
    dist = np.sqrt((run["dist_from_init"].values.astype(np.float64) ** 2).sum(1))
    assert movement.displacement_share == pytest.approx(dist[10] / dist[-1], rel=1e-6)
    assert set(movement.by_module) == set(traj.groups[1:]) and 0 < movement.path_share < 1


# --------------------------------------------------------------------------------------- loss surface


def test_loss_surface_at_the_final_point_is_the_trained_models_loss(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(96, 1, 40), torch.randint(0, 10, (96,))
    model = build_model("cnn", input_shape=(1, 40), num_classes=10, width=4, depth=1, activation="relu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    steps = snapshot_steps(30)
    with (
        Recorder(model, optimizer, tmp_path / "r", probes="loss") as rec,
        SnapshotWriter(model, tmp_path / "r", steps) as snapshots,
    ):
        for step in range(30):
            batch = slice(32 * (step % 3), 32 * (step % 3 + 1))
            loss = F.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            snapshots.observe(step, 0)
            rec.step(loss=loss)
    ds = open_run(tmp_path / "r")
    fresh = build_model("cnn", input_shape=(1, 40), num_classes=10, width=4, depth=1, activation="relu")
    surface = loss_surface(ds, load_trajectory(ds), model=fresh, data=(x, y), resolution=3, batch_size=32)
    i, j = int(np.flatnonzero(surface.b == 0)[0]), int(np.flatnonzero(surface.a == 0)[0])
    loss, accuracy = evaluate_split(model, x, y, 32)
    assert surface.loss[i, j] == pytest.approx(float(loss), rel=1e-6)
    assert surface.accuracy[i, j] == pytest.approx(float(accuracy))
    assert np.allclose(surface.path[-1], 0.0) and surface.loss.shape == (len(surface.b), len(surface.a))
    assert np.isfinite(surface.loss).all() and surface.loss.max() > surface.loss[i, j]


def test_loss_surface_rebuilds_the_runs_model(run: xr.Dataset, traj: Trajectory) -> None:
    surface = loss_surface(run, traj, resolution=2, num_samples=64, batch_size=64, device="cpu")
    model, data = rebuild(run.attrs["config"], torch.device("cpu"))
    load_parameters(model, traj.layout, torch.as_tensor(_rows(run)[-1], dtype=torch.float32))
    x, y, prepare = fixed_samples(data, 64, torch.device("cpu"))
    loss, _ = evaluate_split(model, x, y, 64, prepare=prepare)
    i, j = int(np.flatnonzero(surface.b == 0)[0]), int(np.flatnonzero(surface.a == 0)[0])
    assert surface.loss[i, j] == pytest.approx(float(loss), rel=1e-6) and surface.samples == 64


# ------------------------------------------------------------------------------------------------ CLI


def test_stored_surface_round_trips_exactly_and_goes_stale_with_the_snapshots(
    run: xr.Dataset, traj: Trajectory, tmp_path
) -> None:
    surface = loss_surface(run, traj, resolution=2, num_samples=32, batch_size=32, device="cpu")
    surface.loss[0, 0] = np.nan  # a diverged grid point survives the file
    payload = surface.to_json()
    back = LossSurface.from_json(json.loads(json.dumps(payload)))
    for name in ("a", "b", "loss", "accuracy", "path", "steps"):
        np.testing.assert_array_equal(getattr(back, name), getattr(surface, name))
    assert (back.samples, back.explained, back.settings["resolution"]) == (32, surface.explained, 2)
    copy = xr.Dataset(attrs={"run_dir": str(tmp_path)})
    assert read_loss_surface(copy) is None
    write_surface(surface, tmp_path)
    np.testing.assert_array_equal(read_loss_surface(copy, traj).loss, surface.loss)
    shorter = Trajectory(traj.steps[:-1], traj.epochs[:-1], traj.groups, traj.gram[:, :-1, :-1], traj.layout)
    with pytest.raises(ConfigError, match="python -m dynamics.surface"):
        read_loss_surface(copy, shorter)
    (tmp_path / SURFACE_NAME).write_text("{}")
    with pytest.raises(DynamicsError, match="rerun python -m dynamics.surface"):
        read_loss_surface(copy)


def test_surface_cli_writes_the_surface_then_the_analysis_reads_it(run: xr.Dataset, tmp_path, capsys) -> None:
    run_dir = Path(run.attrs["run_dir"])
    (run_dir / SURFACE_NAME).unlink(missing_ok=True)
    assert main([str(run_dir), "--no-progress"]) == 0  # no surface yet: says how to get one
    printed = capsys.readouterr().out
    assert f"loss surface         not computed; python -m dynamics.surface {run_dir}" in printed
    assert (
        surface_main(
            [str(run_dir), "--resolution", "3", "--samples", "64", "--device", "cpu", "--no-progress", "--no-analysis"]
        )
        == 0
    )
    assert capsys.readouterr().out == f"loss surface written {(run_dir / SURFACE_NAME).resolve()}\n"
    assert main([str(run_dir), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "PCA (whole model)" in printed and "linearity" in printed
    assert "grid on the PC1-PC2 plane through the final point" in printed
    assert "64 training samples" in printed and "not computed" not in printed
    assert f"python -m figures {run_dir} --only trajectory draws it" in printed
    report = analyse_trajectory(run)
    stored = read_loss_surface(run, report.trajectory)
    np.testing.assert_array_equal(report.surface.loss, stored.loss)
    assert analyse_trajectory(run, surface=False).surface is None
    (run_dir / SURFACE_NAME).unlink()


def test_surface_cli_runs_the_analysis_afterwards(run: xr.Dataset, capsys) -> None:
    run_dir = Path(run.attrs["run_dir"])
    assert surface_main([str(run_dir), "--resolution", "2", "--samples", "32", "--device", "cpu", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("loss surface written ") and "PCA (whole model)" in printed
    figure = run_dir / "figures" / "trajectory.png"
    assert "32 training samples" in printed and f"trajectory figure    {figure.resolve()}" in printed
    assert figure.stat().st_size > 0 and figure.with_suffix(".pdf").exists()
    (run_dir / SURFACE_NAME).unlink()


@pytest.mark.parametrize(
    "args",
    [
        ["/nonexistent/run"],
        ["RUN", "--window", "0"],
        ["RUN", "--bogus"],
        ["RUN", "--resolution", "3"],
        ["RUN", "--samples", "64", "--device", "cpu"],
        ["RUN", "--out", "fig"],
    ],
)
def test_cli_errors_are_one_line_and_exit_2(run: xr.Dataset, args: list[str], capsys) -> None:
    args = [run.attrs["run_dir"] if a == "RUN" else a for a in args]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    if "--samples" in args or "--resolution" in args:  # the evaluation's options moved to dynamics.surface
        assert "python -m dynamics.surface RUN_DIR" in err
    if "--out" in args:  # drawing moved to python -m figures
        assert "python -m figures RUN_DIR --only trajectory --out DIR draws the figure" in err


@pytest.mark.parametrize("args", [["/nonexistent/run"], ["RUN", "--resolution", "1"], ["RUN", "--device", "tpu"]])
def test_surface_cli_errors_are_one_line_and_exit_2(run: xr.Dataset, args: list[str], capsys) -> None:
    args = [run.attrs["run_dir"] if a == "RUN" else a for a in args]
    assert surface_main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_cli_on_a_run_without_snapshots(tmp_path, capsys) -> None:
    model = torch.nn.Linear(3, 2)
    with Recorder(model, None, tmp_path / "r", probes="loss") as rec:
        rec.step(loss=torch.tensor(1.0))
    assert main([str(tmp_path / "r"), "--no-progress"]) == 2
    assert "no parameter snapshots" in capsys.readouterr().err
