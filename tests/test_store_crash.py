"""The store keeps its promises under SIGKILL and concurrent readers, and refuses what is not a run.

A real training process (``tests/writer_process.py``) records with a small ``flush_steps`` and reports
each append's start and commit on stdout; the test process kills it at chosen moments, or reads the run
while it writes, and checks what ``open_run`` shows.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
import zarr

from dynamics import ConfigError, Recorder, StoreError, open_run

WRITER = Path(__file__).with_name("writer_process.py")


class Writer:
    """The writer process, with its stdout lines collected by a thread as (time, words)."""

    def __init__(self, run_dir: Path, *args: str) -> None:
        self.stderr_path = run_dir.parent / f"{run_dir.name}.stderr"
        self._stderr = self.stderr_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, str(WRITER), str(run_dir), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: queue.Queue[tuple[float, list[str]]] = queue.Queue()
        self.committed = {"step": 0, "eval_step": 0}
        """Lengths the writer has reported as committed so far (updated by ``wait``)."""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put((time.monotonic(), line.split()))
        self.lines.put((time.monotonic(), ["eof"]))

    def wait(self, *words: str, timeout: float = 60.0) -> list[str]:
        """Consume lines until one starts with ``words``; returns it. Tracks committed lengths on the way."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                _, line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"writer did not print {' '.join(words)!r} in {timeout} s{self.tail()}") from None
            self._track(line)
            if line[:1] == ["eof"]:
                raise AssertionError(f"writer exited before printing {' '.join(words)!r}{self.tail()}")
            if tuple(line[: len(words)]) == words:
                return line

    def drain(self) -> None:
        """Take every line printed so far into account (no waiting)."""
        while True:
            try:
                _, line = self.lines.get_nowait()
            except queue.Empty:
                return
            self._track(line)

    def _track(self, line: list[str]) -> None:
        if line[:1] == ["committed"]:
            self.committed[line[1]] = int(line[2])

    def send(self, text: str) -> None:
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        """SIGKILL (no cleanup of any kind in the writer), then reap it and read what it printed before."""
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        if not self.process.stdin.closed:
            self.process.stdin.close()
        self._reader.join(timeout=10)
        self.drain()
        if not self._stderr.closed:
            self._stderr.close()

    def tail(self) -> str:
        self._stderr.flush()
        text = self.stderr_path.read_text()[-3000:] if self.stderr_path.exists() else ""
        return f"\n--- writer stderr ---\n{text}" if text else ""


def step_variables(ds: xr.Dataset, dim: str) -> dict[str, xr.DataArray]:
    return {name: ds[name] for name in ds.variables if ds[name].dims[:1] == (dim,)}


def check_run(ds: xr.Dataset, every: int, at_least: int) -> int:
    """A consistent store: contiguous steps, every step variable of one length, finite values. Returns it."""
    n = ds.sizes.get("step", 0)
    assert n >= at_least, f"store shows {n} steps, but {at_least} were committed before the kill"
    if n == 0:  # nothing flushed yet: the step arrays may not even exist
        return 0
    np.testing.assert_array_equal(ds["step"].values, np.arange(n) * every)
    variables = step_variables(ds, "step")
    assert {"loss", "accuracy", "lr", "grad_norm", "act_zero_frac", "epoch"} <= set(variables)
    for name, var in variables.items():
        assert var.sizes["step"] == n, f"{name} has {var.sizes['step']} steps, expected {n}"
    bad = {
        name: np.flatnonzero(~np.isfinite(var.values.reshape(n, -1)).all(axis=1)).tolist()
        for name, var in variables.items()
    }
    assert not any(bad.values()), f"non-finite values in committed rows (rows by variable): {bad}"
    assert (np.diff(ds["epoch"].values) >= 0).all()
    if "eval_step" in ds.dims:
        evals = ds["eval_step"].values
        assert (np.diff(evals) > 0).all() and (evals < n * every).all()
        for name, var in step_variables(ds, "eval_step").items():
            assert np.isfinite(var.values).all(), f"{name} holds non-finite values"
    return n


def raw_step_lengths(run_dir: Path) -> dict[str, int]:
    """Lengths of the step arrays on disk, whether committed or not (a killed append may leave more)."""
    group = zarr.open_group(run_dir / "data.zarr", mode="r")
    return {
        name: array.shape[0] for name, array in group.arrays() if (array.metadata.dimension_names or ("",))[0] == "step"
    }


# (seed, every, slow_store seconds, kill right after an append begins)
KILL_POINTS = {
    "between-flushes": (0, 1, 0.0, False),
    "mid-append": (1, 1, 0.01, True),
    "mid-append-every-3": (2, 3, 0.01, True),
    "anywhere-every-2": (3, 2, 0.0, True),
}


@pytest.fixture(scope="module")
def kill_writers(request, tmp_path_factory):
    """Writers of the selected kill cases, started together (imports overlap) and waiting for 'go'."""
    prefix = "test_sigkill_leaves_every_committed_step["
    cases = [item.name[len(prefix) : -1] for item in request.session.items if item.name.startswith(prefix)]
    writers = {}
    try:
        for case in cases:
            seed, every, slow, _ = KILL_POINTS[case]
            flushes = random.Random(seed).randint(2, 5)
            run_dir = tmp_path_factory.mktemp(f"kill-{case}") / "run"
            writers[case] = (
                run_dir,
                flushes,
                Writer(
                    run_dir,
                    "--every",
                    str(every),
                    "--flush-steps",
                    "5",
                    "--seed",
                    str(seed),
                    "--wait-go",
                    "--slow-store",
                    str(slow),
                    "--slow-after",
                    str(flushes),
                ),
            )
        yield writers
    finally:
        for _, _, writer in writers.values():
            writer.kill()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("case", list(KILL_POINTS))
def test_sigkill_leaves_every_committed_step(kill_writers, case):
    seed, every, slow, at_begin = KILL_POINTS[case]
    rng = random.Random(seed)
    run_dir, flushes, writer = kill_writers[case]
    try:
        writer.wait("ready")
        writer.send("go")
        for _ in range(flushes):
            writer.wait("committed", "step")
        if at_begin:
            target = int(writer.wait("begin", "step")[2])
            # with a slow store an append takes > 0.3 s, so this lands between its file writes
            time.sleep(rng.uniform(0.02, 0.15) if slow else rng.uniform(0.0, 0.01))
        else:
            target = None
            time.sleep(rng.uniform(0.0, 0.03))
    finally:
        writer.kill()
    assert writer.process.returncode == -signal.SIGKILL, f"writer ended by itself{writer.tail()}"
    last = writer.committed["step"]

    ds = open_run(run_dir)
    n = check_run(ds, every, at_least=last)
    assert ds.attrs["status"] == "running"
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["steps"] <= n
    if slow:
        # the kill interrupted the append that began: its rows are on disk but not committed, and hidden
        assert n == last < target, (n, last, target)
        raw = raw_step_lengths(run_dir)
        assert max(raw.values()) > n, f"expected uncommitted rows on disk after a mid-append kill: {raw}"
    elif target is not None:
        assert n in (last, target)


def assert_prefix_unchanged(before: dict[str, np.ndarray], after: xr.Dataset) -> None:
    for name, old in before.items():
        new = after[name].values[: len(old)]
        np.testing.assert_array_equal(new, old, err_msg=f"committed rows of {name} changed between reads")


@pytest.mark.timeout(120)
def test_concurrent_reader_sees_growing_consistent_prefix(tmp_path):
    run_dir = tmp_path / "run"
    writer = Writer(run_dir, "--flush-steps", "5", "--wait-go", "--step-sleep", "0.002")
    try:
        # Until the Recorder exists, a reader gets either a clear StoreError or a run with no steps yet.
        while writer.process.poll() is None and writer.lines.empty():
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    early = open_run(run_dir)
            except StoreError as err:
                assert "\n" not in str(err)
            else:
                assert early.sizes.get("step", 0) == 0
            time.sleep(0.01)
        writer.wait("ready")
        # Recorder created, no step flushed: the run opens and shows zero steps (no step rows at all).
        fresh = open_run(run_dir)
        assert fresh.sizes.get("step", 0) == 0
        assert fresh.attrs["status"] == "running"
        assert "param" in fresh.coords and "layer" in fresh.coords
        writer.send("go")

        seen: dict[str, np.ndarray] = {}
        lengths: list[int] = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline or len(set(lengths)) < 4:
            assert time.monotonic() < deadline + 30, f"the run did not grow while reading: {lengths}"
            writer.drain()
            committed_before = writer.committed["step"]
            ds = open_run(run_dir).load()
            n = check_run(ds, 1, at_least=committed_before)
            assert not lengths or n >= lengths[-1], f"length went back from {lengths[-1]} to {n}"
            assert_prefix_unchanged(seen, ds)
            seen = {name: var.values.copy() for name, var in step_variables(ds, "step").items()}
            lengths.append(n)
    finally:
        writer.kill()
    assert len(set(lengths)) >= 4, f"reads did not overlap the writing: lengths {lengths}"
    final = open_run(run_dir).load()
    check_run(final, 1, at_least=writer.committed["step"])
    assert_prefix_unchanged(seen, final)


def test_uncommitted_rows_stay_hidden_on_every_read_path(tmp_path):
    """Rows an interrupted append wrote past the committed length never show, however the data is read."""
    run = tmp_path / "run"
    make_run(run)
    committed = open_run(run).load()
    group = zarr.open_group(run / "data.zarr", mode="r+")
    for _, array in group.arrays():
        if (array.metadata.dimension_names or ("",))[0] == "step":
            array.resize((8, *array.shape[1:]))
            array[5:] = np.full((3, *array.shape[1:]), -7, dtype=array.dtype)
    ds = open_run(run)
    assert ds.sizes["step"] == 5
    for name in step_variables(committed, "step"):
        assert ds[name].values.shape[0] == 5, name
        np.testing.assert_array_equal(ds[name].values, committed[name].values)
        np.testing.assert_array_equal(ds[name][-1].values, committed[name].values[-1])
        np.testing.assert_array_equal(ds[name][-2:].values, committed[name].values[-2:])
        np.testing.assert_array_equal(ds[name].isel(step=slice(3, None)).values, committed[name].values[3:])
    assert int(ds.step.max()) == 4
    np.testing.assert_array_equal(ds.load().loss.values, committed.loss.values)


def test_what_a_killed_write_leaves_half_made_opens_without_warnings(tmp_path):
    """A writer killed inside a flush can leave an array directory without its zarr.json (created, never
    described) and an atomic write's partial file: neither is committed data, and neither is reported."""
    run = tmp_path / "run"
    make_run(run)
    committed = open_run(run).load()
    (run / "data.zarr" / "new_variable").mkdir()
    (run / "data.zarr" / "loss" / "zarr.json.a1b2.partial").write_bytes(b'{"zarr_fo')
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = open_run(run)
    assert "new_variable" not in ds
    np.testing.assert_array_equal(ds.loss.values, committed.loss.values)


def make_run(run_dir: Path) -> None:
    """A small finished run written in this process."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with Recorder(model, optimizer, run_dir, flush_steps=2) as rec:
        for _ in range(5):
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            rec.step(loss=loss, output=out, target=y)


def damage_group_json(run: Path) -> None:
    (run / "data.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "gr')


def damage_array_json(run: Path) -> None:
    (run / "data.zarr" / "loss" / "zarr.json").write_text("not json at all")


def damage_chunk(run: Path) -> None:
    chunk = next(p for p in (run / "data.zarr" / "grad_norm" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"\x00garbage\x00" * 7)


def foreign_zarr(run: Path) -> None:
    for path in sorted(run.iterdir()):
        if path.is_file():
            path.unlink()
    group = zarr.open_group(run / "data.zarr", mode="w", zarr_format=3)
    group.create_array("x", shape=(3,), dtype="f4")


def no_data(run: Path) -> None:
    import shutil

    shutil.rmtree(run / "data.zarr")


DAMAGES = {
    "corrupt group zarr.json": (damage_group_json, "unreadable"),
    "corrupt array zarr.json": (damage_array_json, "unreadable"),
    "corrupt chunk": (damage_chunk, "unreadable"),
    "foreign zarr store": (foreign_zarr, "not a run of this toolkit"),
    "meta.json but no data.zarr": (no_data, "not a run directory"),
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_or_foreign_store_raises_one_line_store_error(tmp_path, damage):
    run = tmp_path / "run"
    make_run(run)
    assert open_run(run).sizes["step"] == 5
    spoil, words = DAMAGES[damage]
    spoil(run)
    with pytest.raises(StoreError) as caught:
        open_run(run).load()  # damage in a chunk shows only when the data is read
    message = str(caught.value)
    assert "\n" not in message and words in message, message


@pytest.mark.parametrize("layout", ["missing", "empty", "unrelated files", "a file"])
def test_not_a_run_directory_raises_one_line_store_error(tmp_path, layout):
    path = tmp_path / "thing"
    if layout == "empty":
        path.mkdir()
    elif layout == "unrelated files":
        path.mkdir()
        (path / "notes.txt").write_text("hello")
        (path / "config.json").write_text("{}")
    elif layout == "a file":
        path.write_text("hello")
    with pytest.raises(StoreError) as caught:
        open_run(path)
    assert "\n" not in str(caught.value)


def test_run_without_meta_json_still_opens(tmp_path):
    """meta.json carries only the status; data.zarr alone is a complete store (e.g. copied elsewhere)."""
    run = tmp_path / "run"
    make_run(run)
    (run / "meta.json").unlink()
    ds = open_run(run)
    assert ds.sizes["step"] == 5 and "status" not in ds.attrs
    assert open_run(run / "data.zarr").sizes["step"] == 5


def test_damaged_meta_json_is_reported_as_status(tmp_path):
    run = tmp_path / "run"
    make_run(run)
    (run / "meta.json").write_text("{ truncated")
    assert open_run(run).attrs["status"] == "damaged"


def test_a_live_run_has_one_writer_and_a_killed_one_none(tmp_path):
    """While a run is being written, a second Recorder (here an overwrite) and the CLI's --overwrite are refused
    with the writer's pid and nothing of the run is touched; once the writer is SIGKILLed, it can be replaced."""
    run_dir = tmp_path / "run"
    writer = Writer(run_dir, "--flush-steps", "5", "--step-sleep", "0.005")
    model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.ReLU())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    try:
        writer.wait("ready")
        writer.wait("committed", "step")
        with pytest.raises(ConfigError, match=f"being written by another process \\(pid {writer.process.pid}\\)"):
            Recorder(model, optimizer, run_dir, overwrite=True)
        assert not model[1]._forward_hooks, "a refused Recorder leaves no hooks behind"
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "dynamics.collect",
                "--dataset",
                "gaussian",
                "--epochs",
                "1",
                "--no-progress",
                "--out",
                str(run_dir),
                "--overwrite",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert cli.returncode == 2, cli.stderr
        assert "being written by another process" in cli.stderr and "Traceback" not in cli.stderr
        assert len(cli.stderr.strip().splitlines()) == 1, cli.stderr
        writer.wait("committed", "step")  # the live run kept writing
        assert open_run(run_dir).attrs["status"] == "running"
    finally:
        writer.kill()
    steps = open_run(run_dir).sizes["step"]
    assert steps >= writer.committed["step"] > 0
    with Recorder(model, optimizer, run_dir, overwrite=True) as recorder:  # the lock died with the writer
        model(torch.randn(3, 4)).sum().backward()
        recorder.step(loss=torch.tensor(1.0))
    assert open_run(run_dir).sizes["step"] == 1
