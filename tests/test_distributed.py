"""A user's DDP loop under a real ``torchrun`` (2 processes, gloo on the CPU) records what one process records
with the same global batch: reductions over ranks, the synchronised gradient, rank 0 alone writing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from dynamics import open_run

WORKER = Path(__file__).with_name("ddp_worker.py")
RTOL = 1e-5


def _run(tmp_path: Path, name: str, processes: int) -> xr.Dataset:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    command = [*(launcher if processes > 1 else [sys.executable]), str(WORKER), str(tmp_path / name), "12", "32"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return open_run(tmp_path / name)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[xr.Dataset, xr.Dataset]:
    tmp_path = tmp_path_factory.mktemp("ddp")
    return _run(tmp_path, "single", 1), _run(tmp_path, "ddp", 2)


@pytest.mark.parametrize(
    "name",
    [
        "loss",
        "accuracy",
        "grad_norm",
        "act_zero_frac",
        "act_dead_frac",
        "act_mean",
        "act_std",
        "param_norm",
        "dist_from_init",
    ],
)
def test_two_processes_record_what_one_process_records(runs, name) -> None:
    single, ddp = runs
    assert ddp.step.values.tolist() == single.step.values.tolist() == list(range(12))
    expected = single[name].values.astype(np.float64)
    np.testing.assert_allclose(ddp[name].values, expected, rtol=RTOL, atol=1e-7, err_msg=name)


def test_the_comparison_sees_dead_units_that_need_every_rank(runs) -> None:
    """Some units fire on a few samples only, so whether they are dead depends on the whole global batch (one max
    over the ranks' masks): the dead fraction varies above the never-firing units' share of 16 / 64."""
    dead = runs[0]["act_dead_frac"].sel(layer="1").values
    assert (dead >= 16 / 64).all() and (dead > 16 / 64).any() and (dead < 1).all() and len(set(dead)) > 2


def test_rank_zero_alone_writes_the_run(runs) -> None:
    _, ddp = runs
    run_dir = Path(ddp.attrs["run_dir"])
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "config.json",
        "data.zarr",
        "meta.json",
    ]
    assert ddp["param"].values.tolist()[0] == "0.weight"  # the model's own names, not DDP's "module." ones
