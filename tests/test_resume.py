"""Checkpoints and ``--resume``: a run killed by SIGKILL and resumed records exactly what an uninterrupted run does.

Both runs are real ``python -m dynamics.collect`` processes in ``--deterministic`` mode on the CPU with every
stateful part switched on (Mixup with Alpha Boost, online period detection, PLP, cyclical clipping, the
trajectory sketch, snapshots, the representation, Fisher and interference probes with their cadences and generators).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from dynamics import open_run
from dynamics.checkpoint import checkpoint_paths

RUN = [
    "--dataset",
    "gaussian",
    "--num-samples",
    "800",
    "--model",
    "mlp",
    "--width",
    "16",
    "--depth",
    "2",
    "--epochs",
    "3",
    "--batch-size",
    "32",
    "--device",
    "cpu",
    "--deterministic",
    "--no-progress",
    "--mixup-alpha",
    "0.4",
    "--enp-epochs",
    "auto",
    "--alpha-boost",
    "1.0",
    "--plp",
    "--cyclical-clip",
    "1:5",
    "--representation",
    "--store-features",
    "--fisher",
    "--probe-samples",
    "16",
    "--interference",
    "--interference-every",
    "5",
    "--interference-samples",
    "--checkpoint-steps",
    "25",
    "--checkpoint-seconds",
    "0",
    "--flush-seconds",
    "0.01",
]


def collect(*args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dynamics.collect", *args],
        cwd=cwd,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def assert_same_run(expected: xr.Dataset, actual: xr.Dataset) -> None:
    """Every variable and coordinate identical (NaN where the other has NaN), values and shapes."""
    assert set(expected.variables) == set(actual.variables)
    for name in expected.variables:
        want, got = expected[name].values, actual[name].values
        assert want.shape == got.shape, name
        assert np.array_equal(want, got, equal_nan=want.dtype.kind == "f"), name


def steps_recorded(run: Path) -> int:
    try:
        return open_run(run).sizes.get("step", 0)
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_killed_run_resumes_to_the_uninterrupted_values(tmp_path: Path) -> None:
    reference = collect(*RUN, "--out", "reference", cwd=tmp_path)
    killed = collect(*RUN, "--out", "killed", cwd=tmp_path)
    run = tmp_path / "killed"
    # kill a few steps after the checkpoint at step 25, so that recorded steps must be cut away on resume
    deadline = time.monotonic() + 60
    while steps_recorded(run) < 29 and time.monotonic() < deadline and killed.poll() is None:
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL, killed.stderr.read()
    before = open_run(run)
    recorded = before.sizes["step"]
    np.testing.assert_array_equal(before["step"].values, np.arange(recorded))
    newest = int(checkpoint_paths(run)[-1].stem.split("-")[1])
    assert newest < recorded, (newest, recorded)  # the resume has steps to replace

    resumed = subprocess.run(
        [sys.executable, "-m", "dynamics.collect", "--resume", "killed", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert reference.wait(timeout=120) == 0, reference.stderr.read()
    expected, actual = open_run(tmp_path / "reference"), open_run(run)
    assert_same_run(expected, actual)
    np.testing.assert_array_equal(actual["step"].values, np.arange(expected.sizes["step"]))
    meta = json.loads((run / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["resumed"][0]["step"] == newest
    features = sorted(path.name for path in (run / "features").iterdir())
    assert features == sorted(path.name for path in (tmp_path / "reference" / "features").iterdir())
    for name in features:
        with np.load(run / "features" / name) as got, np.load(tmp_path / "reference" / "features" / name) as want:
            np.testing.assert_array_equal(got["features"], want["features"])


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--resume", "nowhere"], ["--resume nowhere", "config.json", "missing"]),
        (["--resume", "run", "--lr", "0.1"], ["drop --lr", "own config.json"]),
        (["--resume", "run", "--out", "other"], ["drop --out"]),
    ],
)
def test_resume_refuses_what_cannot_continue(tmp_path: Path, args: list[str], words: list[str]) -> None:
    (tmp_path / "run").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "dynamics.collect", *args], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0]
