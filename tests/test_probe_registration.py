"""A probe added from outside the package: one module with one registration, recorded through the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from dynamics import open_run

TOY_PROBE = '''
import torch

from dynamics.probes import Probe, Variable, register_probe


@register_probe("weight_sum")
class WeightSum(Probe):
    """weight_sum(step): the sum of every trainable parameter entry after the step."""

    name = "weight_sum"

    def variables(self, context):
        return [Variable("weight_sum", (), {"units": "param"})]

    def measure(self, context, data):
        return {"weight_sum": torch.stack([p.detach().double().sum() for p in context.params]).sum()}
'''


def _collect(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "plugins"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "dynamics.collect", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_a_probe_registered_in_its_own_module_is_recorded_by_the_cli(tmp_path: Path) -> None:
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "toy_probe.py").write_text(textwrap.dedent(TOY_PROBE))
    run = tmp_path / "run"
    common = ["--probes", "loss,weight_sum", "--probe-modules", "toy_probe", "--epochs", "1", "--num-samples", "500"]
    result = _collect(tmp_path, *common, "--no-progress", "--out", str(run))
    assert result.returncode == 0, result.stderr
    ds = open_run(run)
    assert json.loads((run / "config.json").read_text())["probe_modules"] == "toy_probe"
    assert ds["weight_sum"].attrs["probe"] == "weight_sum"
    # brute force: the sum of each recorded parameter snapshot (the built-in loop keeps steps 0-10 whole)
    snapshots = ds["snapshot"].sel(snap_step=[s for s in ds["snap_step"].values if s >= 0][:5])
    expected = snapshots.values.astype(np.float64).sum(axis=1)
    got = ds["weight_sum"].sel(step=snapshots["snap_step"].values).values
    np.testing.assert_allclose(got, expected, rtol=1e-5)  # snapshots are float32, the probe sums float64

    missing = _collect(tmp_path, *common, "--probe-modules", "no_such_probe_module", "--check")
    assert missing.returncode == 2
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 1 and "no_such_probe_module" in lines[0] and "--probe-modules" in lines[0]
