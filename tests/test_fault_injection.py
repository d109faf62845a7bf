"""Faults injected into real training processes: SIGKILL at random moments, a full disk, a read-only run directory.

SIGKILL trials: each trial trains a tiny run in a child of ``tests/train_server.py`` and kills it with SIGKILL
at a moment drawn from a seeded RNG: just after a store append began to commit, inside a checkpoint write,
at an evaluation, or at a random time. Every killed run must open with steps contiguous from 0 and every
row the child reported committed; its resume must finish and hold exactly the values of an uninterrupted
run. ``DYNAMICS_STRESS_TRIALS`` sets the number of trials (default 30) for a longer stress run.

Disk faults: injected (an OSError from the store or the checkpoint writer) everywhere, and real where this
process may mount: a capture filling a 1.5 MB tmpfs, and one whose file system is remounted read-only mid-run.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dynamics import open_run
from dynamics.checkpoint import checkpoint_paths

SERVER = Path(__file__).with_name("train_server.py")
TRIALS = int(os.environ.get("DYNAMICS_STRESS_TRIALS", "30"))
CONCURRENT = 2
CONFIG = {
    "dataset": "gaussian",
    "num_samples": 300,
    "model": "mlp",
    "width": 8,
    "depth": 1,
    "epochs": 2,
    "batch_size": 32,
    "device": "cpu",
    "deterministic": True,
    "snapshots": True,
    "checkpoint_steps": 5,
    "checkpoint_seconds": 0,
    "flush_seconds": 0.03,
    "sketch_dim": 2,
}
KINDS = ("committed", "checkpoint", "eval", "time")


class Server:
    """The fork server, its output lines sorted into one queue per job by a reader thread."""

    def __init__(self, cwd: Path) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(SERVER)], cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.queues: dict[str, queue.Queue[tuple[float, list[str]]]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _queue(self, job: str) -> queue.Queue[tuple[float, list[str]]]:
        with self._lock:
            return self.queues.setdefault(job, queue.Queue())

    def _read(self) -> None:
        for line in self.process.stdout:
            job, *words = line.split()
            self._queue(job).put((time.monotonic(), words))

    def start(self, job: str, out: Path, resume: bool = False) -> int:
        self.process.stdin.write(f"{job} {json.dumps({'out': str(out), 'config': CONFIG, 'resume': resume})}\n")
        self.process.stdin.flush()
        return int(self.next(job)[1])

    def next(self, job: str, timeout: float = 120.0) -> list[str]:
        return self._queue(job).get(timeout=timeout)[1]

    def finish(self, job: str) -> int:
        while (words := self.next(job))[0] != "exit":
            pass
        return int(words[1])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def kill_trial(server: Server, trial: int, run: Path) -> dict[str, int]:
    """Run trial ``trial`` and SIGKILL it at its drawn moment; returns the lengths reported committed."""
    rng = random.Random(trial)
    kind = KINDS[trial % len(KINDS)]
    occurrence, delay = rng.randint(1, 3), rng.uniform(0.0, 0.015)
    deadline = time.monotonic() + rng.uniform(0.1, 1.2)
    job = f"kill{trial}"
    pid = server.start(job, run)
    committed = {"step": 0, "eval_step": 0}
    seen = 0
    while True:
        wait = max(0.0, deadline - time.monotonic()) if kind == "time" else 120.0
        try:
            words = server.next(job, timeout=wait)
        except queue.Empty:  # the drawn time passed
            break
        if words[0] == "exit":
            return committed  # finished before the drawn moment: still a valid store
        if words[0] == "committed":
            committed[words[1]] = int(words[2])
        seen += words[0] == kind
        if seen == occurrence:
            time.sleep(delay)
            break
    with contextlib.suppress(ProcessLookupError):  # it may have exited just before the drawn moment
        os.kill(pid, signal.SIGKILL)
    status = server.finish(job)
    assert status in (-signal.SIGKILL, 0), (trial, status, run.with_suffix(".stderr").read_text())
    return committed


def assert_same_values(expected_run: Path, actual_run: Path) -> None:
    expected, actual = open_run(expected_run), open_run(actual_run)
    assert set(expected.variables) == set(actual.variables)
    for name in expected.variables:
        want, got = expected[name].values, actual[name].values
        assert want.shape == got.shape and np.array_equal(want, got, equal_nan=want.dtype.kind == "f"), name


def test_sigkill_at_random_moments_keeps_the_store_and_resumes_exactly(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        assert server.start("reference", tmp_path / "reference") > 0
        assert server.finish("reference") == 0, (tmp_path / "reference.stderr").read_text()
        reference = open_run(tmp_path / "reference")
        total = reference.sizes["step"]
        failures: list[str] = []
        resumed: list[int] = []
        lock = threading.Lock()

        def trial(index: int) -> None:
            run = tmp_path / f"trial-{index}"
            try:
                committed = kill_trial(server, index, run)
                if not (run / "data.zarr" / "zarr.json").exists():
                    assert committed["step"] == 0  # killed before the store existed: nothing was flushed
                    return
                ds = open_run(run)
                steps = ds.sizes.get("step", 0)
                np.testing.assert_array_equal(ds["step"].values if steps else [], np.arange(steps))
                assert steps >= committed["step"] and ds.sizes.get("eval_step", 0) >= committed["eval_step"]
                if not checkpoint_paths(run):
                    return  # killed before the first checkpoint: there is nothing to resume from
                assert server.start(f"resume{index}", run, resume=True) > 0
                if json.loads((run / "meta.json").read_text())["status"] == "finished":
                    assert server.finish(f"resume{index}") == 1  # a finished run is not resumed
                    return
                assert server.finish(f"resume{index}") == 0, run.with_suffix(".stderr").read_text()
                assert open_run(run).sizes["step"] == total
                assert_same_values(tmp_path / "reference", run)
                with lock:
                    resumed.append(index)
            except AssertionError as error:
                with lock:
                    failures.append(f"trial {index}: {error}")

        pending = list(range(TRIALS))
        while pending:
            threads = [
                threading.Thread(target=trial, args=(pending.pop(0),)) for _ in range(min(CONCURRENT, len(pending)))
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        assert not failures, failures
        assert len(resumed) >= TRIALS // 2, f"only trials {resumed} were killed mid-run and resumed"
    finally:
        server.close()


INJECT = """
import errno, os, sys
import torch
from zarr.storage import LocalStore
import dynamics.checkpoint
from dynamics.collect import main
from dynamics.store import RunWriter

where, code, args = sys.argv[1], getattr(errno, sys.argv[2]), sys.argv[3:]
state = {"commits": 0, "saves": 0}
append, store_set, torch_save = RunWriter.append, LocalStore.set, torch.save

def reporting_append(self, dim, columns):
    append(self, dim, columns)
    state["commits"] += dim == "step"
    print("committed", dim, self.lengths[dim], flush=True)

async def failing_set(self, key, value):
    if where == "store" and state["commits"] >= 3:
        raise OSError(code, os.strerror(code))
    await store_set(self, key, value)

def failing_save(obj, handle):
    state["saves"] += 1
    if where == "checkpoint" and state["saves"] >= 3:
        raise OSError(code, os.strerror(code))
    torch_save(obj, handle)

RunWriter.append, LocalStore.set, dynamics.checkpoint.torch.save = reporting_append, failing_set, failing_save
sys.exit(main(args))
"""
QUICK = [
    "--dataset",
    "gaussian",
    "--num-samples",
    "300",
    "--model",
    "mlp",
    "--width",
    "8",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--no-progress",
    "--flush-seconds",
    "0.01",
    "--checkpoint-steps",
    "3",
]


@pytest.mark.parametrize(
    ("where", "code", "reason"),
    [
        ("store", "ENOSPC", "No space left on device"),
        ("checkpoint", "ENOSPC", "No space left on device"),
        ("store", "EROFS", "Read-only file system"),
    ],
)
def test_failing_disk_stops_with_one_line_and_keeps_the_store(
    tmp_path: Path, where: str, code: str, reason: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", INJECT, where, code, *QUICK, "--out", "run"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("error: writing ") and reason in lines[0]
    assert "free disk space" in lines[0]
    committed = max(
        (int(line.split()[2]) for line in result.stdout.splitlines() if line.startswith("committed step")), default=0
    )
    ds = open_run(tmp_path / "run")
    assert committed > 0 and ds.sizes["step"] >= committed
    np.testing.assert_array_equal(ds["step"].values, np.arange(ds.sizes["step"]))
    assert np.isfinite(ds["loss"].values).all()
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["status"] == "failed"


def test_read_only_run_directory_is_refused_with_one_line(tmp_path: Path) -> None:
    from dynamics.config import make_config
    from dynamics.engine import train

    run = tmp_path / "run"
    train(
        make_config(
            {
                "dataset": "gaussian",
                "num_samples": 300,
                "model": "mlp",
                "width": 8,
                "epochs": 2,
                "batch_size": 32,
                "device": "cpu",
                "checkpoint_steps": 3,
            }
        ),
        run,
        progress=False,
    )
    meta = json.loads((run / "meta.json").read_text())
    (run / "meta.json").write_text(json.dumps({**meta, "status": "failed"}))  # as if the disk had filled up
    checkpoint_paths(run)[-1].unlink()  # resume from the one before the end
    before = open_run(run)["loss"].values
    paths = [run, *run.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        probe = run / "probe"
        try:
            probe.write_text("")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("this process may write into read-only directories (root): chmod cannot make one")
        result = subprocess.run(
            [sys.executable, "-m", "dynamics.collect", "--resume", "run", "--no-progress"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Permission denied" in lines[0] and "make the run directory writable" in lines[0]
    np.testing.assert_array_equal(open_run(run)["loss"].values, before)


# ------------------------------------------------------------- real file systems (needs mount permission)

LONG = [
    "--dataset",
    "gaussian",
    "--num-samples",
    "2000",
    "--model",
    "mlp",
    "--width",
    "64",
    "--epochs",
    "20",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--no-progress",
    "--flush-seconds",
    "0.01",
]


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1.5 MB tmpfs mounted at a fresh directory; skipped where this process may not mount (not root)."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mount_point)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here ({mounted.stderr.strip() or 'mount failed'})")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def assert_failed_cleanly(
    result: subprocess.CompletedProcess[str] | subprocess.Popen[str], stderr: str, reason: str, run: Path
) -> int:
    """Exit 1 with one line naming the reason and a fix; the store opens with contiguous steps. Returns them."""
    assert result.returncode == 1, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("error: writing ") and reason in lines[0] and "free disk space" in lines[0]
    ds = open_run(run)
    np.testing.assert_array_equal(ds["step"].values, np.arange(ds.sizes["step"]))
    assert np.isfinite(ds["loss"].values).all()
    return ds.sizes["step"]


def test_a_really_full_disk_stops_with_one_line_and_keeps_the_store(small_filesystem: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dynamics.collect", *LONG, "--out", "run"],
        cwd=small_filesystem,
        capture_output=True,
        text=True,
        timeout=300,
    )
    steps = assert_failed_cleanly(result, result.stderr, "No space left on device", small_filesystem / "run")
    assert steps > 0  # the disk filled after some flushes: those steps are all there


def test_a_run_directory_turned_read_only_stops_with_one_line_and_keeps_the_store(small_filesystem: Path) -> None:
    run = small_filesystem / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "dynamics.collect", *LONG, "--no-snapshots", "--out", "run"],
        cwd=small_filesystem,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            try:
                if open_run(run).sizes["step"] >= 20:
                    break
            except Exception:  # noqa: BLE001 - the store is not created yet
                pass
            time.sleep(0.02)
        for _ in range(200):  # "busy" while a file there is open for writing: retry until between two writes
            remount = subprocess.run(
                ["mount", "-o", "remount,ro", str(small_filesystem)], capture_output=True, text=True
            )
            if remount.returncode == 0 or "busy" not in remount.stderr:
                break
            time.sleep(0.005)
        assert remount.returncode == 0, remount.stderr
        committed = open_run(run).sizes["step"]
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert committed >= 20, "the run finished or stalled before the file system was made read-only"
    steps = assert_failed_cleanly(process, stderr, "Read-only file system", run)
    assert steps >= committed  # nothing committed before the remount is lost
