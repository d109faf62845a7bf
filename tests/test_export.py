"""Export to TensorBoard and CSV: every exported value equals the store's, read back with TensorBoard's own reader
and with pandas; ``--follow`` tails a run written by another process until it finishes; errors are one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from dynamics import Recorder, open_run
from dynamics.errors import ConfigError, DynamicsError, StoreError
from dynamics.export import Exporter, MissingExtraError, export_tensorboard, follow, main, tidy_frame
from dynamics.snapshots import SnapshotWriter
from dynamics.store import DATA_NAME, cut_group

pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed: pip install 'dynamics[tensorboard]'")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
STEPS = 20
EVAL_AT = (9, 19)
SNAP_AT = [-1, 0, 5, 19]
KEEP_ALL = {"scalars": 0, "histograms": 0, "compressedHistograms": 0, "tensors": 0, "images": 0, "audio": 0}


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished run recorded in a user loop: 20 steps, two evaluations, four snapshots."""
    run_dir = tmp_path_factory.mktemp("export") / "run"
    torch.manual_seed(0)
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 8), torch.randint(0, 4, (64,))
    with Recorder(model, optimizer, run_dir) as rec, SnapshotWriter(model, run_dir, SNAP_AT) as snapshots:
        for step in range(STEPS):
            optimizer.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            snapshots.observe(step, 0)
            rec.step(loss=loss, output=out, target=y, momentum=0.5 if step % 2 else float("nan"))
            if step in EVAL_AT:
                rec.record_eval(val_loss=loss.item() + 0.25, val_accuracy=0.5 + step / 100)
    return run_dir


def _expected_scalars(ds: xr.Dataset) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """tag -> (steps, values) for every non-NaN value of every scalar variable of ``ds``, by the README's scheme."""
    expected = {}
    names = [*ds.data_vars, *(name for name in ds.coords if name not in ds.dims)]
    for name in names:
        var = ds[name]
        if not var.dims or var.dims[0] not in ("step", "eval_step") or var.ndim > 2:
            continue
        index = ds[var.dims[0]].values
        columns = {name: var.values} if var.ndim == 1 else {}
        if var.ndim == 2:
            for j, label in enumerate(ds[var.dims[1]].values):
                columns[f"{name}/{label}"] = var.values[:, j]
        for tag, values in columns.items():
            values = np.asarray(values, dtype=np.float64)
            keep = ~np.isnan(values)
            expected[tag] = (index[keep], values[keep])
    return expected


def _accumulator(log_dir: Path) -> EventAccumulator:
    accumulator = EventAccumulator(str(log_dir), size_guidance=KEEP_ALL)
    accumulator.Reload()
    return accumulator


def check_tensorboard(log_dir: Path, ds: xr.Dataset) -> None:
    """Every value of every exported tag equals the store's at its step, each step once; histograms likewise."""
    accumulator = _accumulator(log_dir)
    expected = _expected_scalars(ds)
    assert set(accumulator.Tags()["scalars"]) == set(expected)
    for tag, (steps, values) in expected.items():
        events = accumulator.Scalars(tag)
        assert [event.step for event in events] == steps.tolist(), tag
        np.testing.assert_allclose([event.value for event in events], values, rtol=1e-6, atol=0, err_msg=tag)
    if "snapshot" not in ds:
        return
    histograms = accumulator.Histograms("params/all")
    assert [event.step for event in histograms] == ds["snap_step"].values.tolist()
    for event, row in zip(histograms, ds["snapshot"].values.astype(np.float64), strict=True):
        value = event.histogram_value
        assert value.num == row.size
        assert value.min == pytest.approx(row.min(), rel=1e-6) and value.max == pytest.approx(row.max(), rel=1e-6)
        assert value.sum == pytest.approx(row.sum(), rel=1e-5, abs=1e-5)
        assert sum(value.bucket) == row.size


def check_csv(path: Path, ds: xr.Dataset) -> None:
    """The CSV read back with pandas holds exactly the store's non-NaN scalars, each once."""
    frame = pd.read_csv(path, dtype={"coordinate": str}, keep_default_na=False)
    assert list(frame.columns) == ["variable", "dim", "index", "coordinate", "value"]
    assert not frame.duplicated(["variable", "index", "coordinate"]).any()
    got = {}
    for (variable, coordinate), rows in frame.groupby(["variable", "coordinate"], sort=False):
        tag = f"{variable}/{coordinate}" if coordinate else variable
        assert (rows["dim"] == ds[variable].dims[0]).all(), tag
        got[tag] = (rows["index"].to_numpy(), rows["value"].to_numpy())
    expected = _expected_scalars(ds)
    assert set(got) == set(expected)
    for tag, (steps, values) in expected.items():
        np.testing.assert_array_equal(got[tag][0], steps, err_msg=tag)
        np.testing.assert_array_equal(got[tag][1], values, err_msg=tag)  # float64 text round-trips exactly


def test_tensorboard_and_csv_hold_every_value_of_the_store(run, tmp_path, capsys) -> None:
    log_dir, csv_path = tmp_path / "tb", tmp_path / "tables" / "run.csv"
    assert main([str(run), "--tensorboard", str(log_dir), "--csv", str(csv_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [f"exported steps 0-{STEPS - 1} (2 evaluations, 4 snapshots) of {run}"]
    ds = open_run(run)
    check_tensorboard(log_dir, ds)
    check_csv(csv_path, ds)
    tags = set(_accumulator(log_dir).Tags()["scalars"])
    # the scheme, spelled out: (step,), (step, param), (step, layer), (step, proj), (eval_step,); no traj_proj
    assert {"loss", "lr", "epoch", "grad_norm/0.weight", "act_zero_frac/1", "traj_proj_total/7"} <= tags
    assert {"val_loss", "val_accuracy", "momentum"} <= tags
    assert not any(tag.startswith("traj_proj/") for tag in tags)
    assert len(_accumulator(log_dir).Scalars("momentum")) == STEPS // 2  # NaN (not measured) is not written
    frame = tidy_frame(ds)
    pd.testing.assert_frame_equal(
        frame.reset_index(drop=True),
        pd.read_csv(csv_path, dtype={"coordinate": str}, keep_default_na=False).astype({"variable": object}),
        check_dtype=False,
    )


def test_a_second_export_into_the_same_directory_replaces_the_first(run, tmp_path) -> None:
    log_dir = tmp_path / "tb"
    export_tensorboard(run, log_dir)
    result = export_tensorboard(run, log_dir, csv_path=tmp_path / "run.csv")
    assert result.rows == {"step": STEPS, "eval_step": 2, "snap_step": 4}
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 2
    check_tensorboard(log_dir, open_run(run))  # each step once: the purge marker dropped the first export


def test_a_store_cut_by_a_resume_is_exported_again(run, tmp_path) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    log_dir = tmp_path / "tb"
    with Exporter(copy, log_dir, csv_path=tmp_path / "run.csv") as exporter:
        assert exporter.export_new().rows["step"] == STEPS
        assert exporter.export_new().rows == {}  # nothing new
        import zarr

        cut_group(zarr.open_group(copy / DATA_NAME, mode="r+", use_consolidated=False), {"step": 12, "eval_step": 1})
        again = exporter.export_new()
    assert again.restarted and again.rows["step"] == 12 and "exported again from the start" in again.line()
    ds = open_run(copy)
    assert ds.sizes["step"] == 12
    check_tensorboard(log_dir, ds)
    check_csv(tmp_path / "run.csv", ds)


WRITER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch, torch.nn.functional as F
    from torch import nn
    from dynamics import Recorder

    run_dir, follower_started = sys.argv[1], Path(sys.argv[2])
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 4, (32,))
    with Recorder(model, optimizer, run_dir, flush_seconds=0.5) as rec:
        for flush in range(3):
            for _ in range(10):
                optimizer.zero_grad()
                out = model(x)
                loss = F.cross_entropy(out, y)
                loss.backward()
                optimizer.step()
                rec.step(loss=loss, output=out, target=y)
            rec.record_eval(val_loss=loss.item())
            rec.flush()
            print("flushed", flush, flush=True)
            if flush == 0:  # wait for the follower's first round (its CSV file), so that it sees the run grow
                deadline = time.monotonic() + 120
                while not follower_started.exists() and time.monotonic() < deadline:
                    time.sleep(0.05)
            if flush < 2:
                time.sleep(1.0)
    """
)


def test_follow_tails_a_run_being_written_until_it_finishes(tmp_path, capsys) -> None:
    """A run written by another process in three flushes a second apart: following it from the first flush on
    ends by itself once the run is finished, with every step and evaluation exported once."""
    script, run_dir = tmp_path / "writer.py", tmp_path / "run"
    log_dir, csv_path = tmp_path / "tb", tmp_path / "run.csv"
    script.write_text(WRITER)
    writer = subprocess.Popen(
        [sys.executable, str(script), str(run_dir), str(csv_path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "flushed 0"  # 10 steps committed; the writer waits for us
        assert json.loads((run_dir / "meta.json").read_text())["status"] == "running"
        argv = [str(run_dir), "--tensorboard", str(log_dir), "--csv", str(csv_path), "--follow", "--interval", "0.2"]
        assert main(argv) == 0
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert lines[0] == f"exported steps 0-9 (1 evaluation) of {run_dir}", lines
    # under load a round may find only an evaluation committed after the steps it already exported
    assert len(lines) >= 3 and all(line.startswith("exported ") for line in lines[:-1]), lines
    assert lines[-1].startswith("exported ") or lines[-1] == f"nothing new in {run_dir} (finished)", lines
    assert captured.err == ""
    ds = open_run(run_dir)
    assert ds.attrs["status"] == "finished" and ds.sizes["step"] == 30 and ds.sizes["eval_step"] == 3
    check_tensorboard(log_dir, ds)
    check_csv(csv_path, ds)


def test_follow_stops_cleanly_on_ctrl_c(run, tmp_path, monkeypatch, capsys) -> None:
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    meta = json.loads((copy / "meta.json").read_text())
    (copy / "meta.json").write_text(json.dumps({**meta, "status": "running"}))

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("dynamics.export.time.sleep", interrupt)
    assert main([str(copy), "--tensorboard", str(tmp_path / "tb"), "--follow", "--interval", "0.01"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.splitlines() == [
        f"exported steps 0-{STEPS - 1} (2 evaluations, 4 snapshots) of {copy}",
        "interrupted; everything exported so far is written",
    ]
    check_tensorboard(tmp_path / "tb", open_run(copy))


def _damaged(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "damaged"
    shutil.copytree(run, copy)
    chunk = copy / DATA_NAME / "loss" / "c" / "0"
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    return copy


@pytest.mark.parametrize(
    ("case", "words"),
    [
        ("missing", ["no run directory at", "check the path"]),
        ("not_a_run", ["holds no data.zarr", "not a run directory"]),
        ("damaged", ["loss", "chunk 0", "damaged"]),
        ("tensorboard_is_a_file", ["--tensorboard", "is a file, not a directory"]),
        ("csv_is_a_directory", ["--csv", "is a directory, not a file"]),
        ("no_output", ["nothing to export to", "--tensorboard", "--csv"]),
        ("interval_without_follow", ["--interval applies only with --follow"]),
        ("bad_interval", ["--interval must be a positive number of seconds"]),
        ("no_tensorboard", ["needs the tensorboard package", "pip install 'dynamics[tensorboard]'"]),
    ],
)
def test_errors_are_one_line_with_exit_status_2(run, tmp_path, monkeypatch, capsys, case, words) -> None:
    out_dir = ["--tensorboard", str(tmp_path / "tb")]
    argv = {
        "missing": [str(tmp_path / "nope"), *out_dir],
        "not_a_run": [str(tmp_path), *out_dir],
        "damaged": [str(_damaged(run, tmp_path)) if case == "damaged" else "", *out_dir],
        "tensorboard_is_a_file": [str(run), "--tensorboard", str(Path(__file__))],
        "csv_is_a_directory": [str(run), "--csv", str(tmp_path)],
        "no_output": [str(run)],
        "interval_without_follow": [str(run), *out_dir, "--interval", "1"],
        "bad_interval": [str(run), *out_dir, "--follow", "--interval", "0"],
        "no_tensorboard": [str(run), *out_dir],
    }[case]
    if case == "no_tensorboard":
        monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert captured.out == ""


def test_the_module_runs_as_a_command(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dynamics.export", str(tmp_path / "nope"), "--csv", str(tmp_path / "x.csv")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [f"error: no run directory at {tmp_path / 'nope'}; check the path"]


def test_the_library_names_its_parameters(run, tmp_path, monkeypatch) -> None:
    with pytest.raises(ConfigError) as info:
        export_tensorboard(run, Path(__file__))
    assert info.value.key == "log_dir" and "log_dir=" in str(info.value)
    with pytest.raises(ConfigError) as info:
        export_tensorboard(run, None, csv_path=tmp_path)
    assert info.value.key == "csv_path"
    with pytest.raises(ConfigError) as info:
        follow(run, tmp_path / "tb", interval=float("nan"))
    assert info.value.key == "interval"
    with pytest.raises(ConfigError) as info:
        export_tensorboard(run, None)
    assert info.value.keys == ("log_dir", "csv_path")
    with pytest.raises(StoreError, match="no run directory"):
        export_tensorboard(tmp_path / "nope", tmp_path / "tb")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(MissingExtraError) as info:
        export_tensorboard(run, tmp_path / "tb")
    assert isinstance(info.value, ImportError) and isinstance(info.value, DynamicsError)
    assert info.value.key == "log_dir"
    # the CSV alone needs no tensorboard
    assert export_tensorboard(run, None, csv_path=tmp_path / "run.csv").rows["step"] == STEPS
    check_csv(tmp_path / "run.csv", open_run(run))
    # follow on a finished run: one round, then done
    rounds = follow(run, None, csv_path=tmp_path / "again.csv", interval=0.01)
    assert len(rounds) == 1 and rounds[0].status == "finished"
