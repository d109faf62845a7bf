"""NaN/Inf losses and gradients under ``on_nonfinite`` stop, skip and record: where it appeared, and what happens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamics import NonFiniteLossError, Recorder, open_run
from dynamics.config import make_config
from dynamics.engine import train


def small_model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def run(
    tmp_path: Path,
    policy: str,
    *,
    poison_input: set[int] = frozenset(),
    poison_grad: dict[int, str] | None = None,
    steps: int = 8,
) -> tuple[nn.Module, Path]:
    """A loop of ``steps`` steps; NaN inputs at ``poison_input`` steps, an Inf gradient entry (as backward
    produces it, through a gradient hook) of parameter ``poison_grad[step]`` at those steps."""
    model = small_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    recorder = Recorder(model, optimizer, tmp_path / "run", probes="default", on_nonfinite=policy, check_finite_every=3)
    current = {"step": -1}
    for name, param in model.named_parameters():

        def poison(grad: torch.Tensor, name: str = name) -> torch.Tensor:
            if (poison_grad or {}).get(current["step"]) != name:
                return grad
            grad = grad.clone()
            grad.view(-1)[0] = float("inf")
            return grad

        param.register_hook(poison)
    generator = torch.Generator().manual_seed(1)
    with recorder:
        for step in range(steps):
            current["step"] = step
            x, y = torch.randn(16, 6, generator=generator), torch.randint(0, 3, (16,), generator=generator)
            if step in poison_input:
                x[0, 0] = float("nan")
            optimizer.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            if not (policy == "skip" and recorder.skip_nonfinite(loss)):
                optimizer.step()
            recorder.step(loss=loss, output=out, target=y)
    return model, tmp_path / "run"


def test_record_names_the_first_parameter_with_a_non_finite_gradient(tmp_path: Path) -> None:
    _, run_dir = run(tmp_path, "record", poison_grad={3: "2.weight"})
    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["status"] == "finished" and meta["first_nonfinite_step"] == 3
    event = meta["nonfinite"]
    assert event["step"] == 3 and event["kind"] == "gradient" and event["param"] == "2.weight"
    assert np.isfinite(float(event["loss"]))
    ds = open_run(run_dir)
    assert not np.isfinite(ds["grad_norm"].sel(step=3, param="2.weight").item())


def test_stop_fails_the_run_naming_the_first_layer_with_non_finite_activations(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError) as caught:
        run(tmp_path, "stop", poison_input={2})
    assert caught.value.step == 2 and caught.value.kind == "loss"
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    ds = open_run(tmp_path / "run")
    first_layer = str(ds["layer"].values[0])
    assert meta["status"] == "failed" and meta["failed_step"] == 2
    assert meta["nonfinite"]["layer"] == first_layer and meta["nonfinite"]["param"] == "0.weight"
    assert "non-finite loss nan at step 2" in meta["error"] and first_layer in meta["error"]
    assert np.isfinite(ds["loss"].values[:2]).all()


def test_skip_leaves_the_parameters_of_skipped_steps_unchanged(tmp_path: Path) -> None:
    model, run_dir = run(tmp_path, "skip", poison_input={2, 5}, poison_grad={6: "4.bias"})
    meta = json.loads((run_dir / "meta.json").read_text())
    ds = open_run(run_dir)
    skipped = ds["skipped"].values
    np.testing.assert_array_equal(skipped, [0, 0, 1, 0, 0, 1, 1, 0])
    assert meta["status"] == "finished" and meta["skipped_steps"] == 3 and meta["nonfinite"]["step"] == 2
    # the reference: a step is skipped exactly when its loss or a gradient norm is not finite
    bad = ~np.isfinite(ds["loss"].values) | ~np.isfinite(ds["grad_norm"].values).all(1)
    np.testing.assert_array_equal(bad, skipped == 1)
    update = ds["update_norm"].values
    assert (update[skipped == 1] == 0).all() and (update[skipped == 0] > 0).all()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_engine_skip_policy_finishes_a_diverging_run(tmp_path: Path) -> None:
    config = make_config(
        {
            "dataset": "gaussian",
            "num_samples": 400,
            "model": "mlp",
            "width": 8,
            "epochs": 2,
            "batch_size": 32,
            "lr": 1e12,
            "device": "cpu",
            "on_nonfinite": "skip",
        }
    )
    train(config, tmp_path / "run", progress=False)
    ds = open_run(tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    skipped = ds["skipped"].values == 1
    bad = ~np.isfinite(ds["loss"].values) | ~np.isfinite(ds["grad_norm"].values).all(1)
    np.testing.assert_array_equal(bad, skipped)
    assert meta["status"] == "finished" and meta["skipped_steps"] == skipped.sum() > 0
    norms = ds["param_norm"].values
    np.testing.assert_array_equal(norms[1:][skipped[1:]], norms[:-1][skipped[1:]])
