"""The Recorder API under careless use: refused at construction or at the first step with one clear error,
NaN for a gradient that does not exist, the model's dtype kept, frozen parameters and the class count noted,
a reused activation module named."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from analyses.phase import num_classes_of
from dynamics import Recorder, open_run
from dynamics.errors import ConfigError


def _train(model: nn.Module, recorder: Recorder, steps: int = 3, dtype: torch.dtype = torch.float32) -> list[float]:
    optimizer = recorder.context.optimizer
    losses = []
    for _ in range(steps):
        x, y = torch.randn(16, 6, dtype=dtype), torch.randint(0, 10, (16,))
        optimizer.zero_grad()
        out = model(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        optimizer.step()
        recorder.step(loss=loss, output=out, target=y)
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("freeze", [False, True])
def test_a_model_without_trainable_parameters_is_refused_at_construction(tmp_path, freeze) -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU()) if freeze else nn.Sequential(nn.ReLU())
    for param in model.parameters():
        param.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        Recorder(model, None, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing left behind marked running
    assert not model._forward_hooks and not any(m._forward_hooks for m in model.modules())


def test_a_loss_of_several_values_is_named_at_the_first_step(tmp_path) -> None:
    model = nn.Linear(6, 10)
    with (
        pytest.raises(ConfigError, match=r"loss must be one value, got a tensor of shape \(16,\)"),
        Recorder(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "run") as rec,
    ):
        out = model(torch.randn(16, 6))
        loss = F.cross_entropy(out, torch.randint(0, 10, (16,)), reduction="none")
        loss.mean().backward()
        rec.step(loss=loss, output=out)
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["status"] == "failed"


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (torch.randint(0, 10, (8,)), r"output of shape \(16, 10\) and target of shape \(8,\) do not fit"),
        (torch.rand(16), "give integer class indices"),
    ],
)
def test_output_and_target_that_do_not_fit_are_named(tmp_path, target, message) -> None:
    model = nn.Linear(6, 10)
    rec = Recorder(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "run")
    out = model(torch.randn(16, 6))
    out.sum().backward()
    with pytest.raises(ConfigError, match=message):
        rec.step(loss=out.sum(), output=out, target=target)
    rec.close(status="failed")


def test_a_step_before_any_backward_records_nan_gradient_norms_and_no_divergence(tmp_path) -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 10))
    with Recorder(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "run") as rec:
        with torch.no_grad():
            rec.step(loss=F.cross_entropy(model(torch.randn(4, 6)), torch.randint(0, 10, (4,))))
        _train(model, rec, steps=2)
    ds = open_run(tmp_path / "run")
    grad = ds["grad_norm"].values
    assert np.isnan(grad[0]).all() and np.isfinite(grad[1:]).all()
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["status"] == "finished" and "nonfinite" not in meta


def test_a_diverged_gradient_is_still_found_next_to_absent_ones(tmp_path) -> None:
    """Absent gradients are NaN by design; a NaN gradient of a parameter that got one still stops the run."""
    model = nn.Sequential(nn.Linear(6, 10), nn.Linear(3, 3))  # the second layer never gets a gradient
    rec = Recorder(model, torch.optim.SGD(model.parameters(), lr=0.1), tmp_path / "run", check_finite_every=1)
    out = model[0](torch.randn(4, 6))
    loss = torch.sqrt(out.abs() * 0.0).sum()  # finite (0), with infinite slope at 0: a non-finite gradient
    loss.backward()
    with pytest.raises(Exception, match="non-finite gradient"):
        rec.step(loss=loss, output=out, target=torch.randint(0, 10, (4,)))
    assert json.loads((tmp_path / "run" / "meta.json").read_text())["nonfinite"]["param"] == "0.weight"


def test_frozen_parameters_class_count_and_float64_are_kept(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 10)).double()
    model[0].bias.requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    with Recorder(model, optimizer, tmp_path / "run") as rec:
        losses = _train(model, rec, dtype=torch.float64)
    ds = open_run(tmp_path / "run")
    assert ds["loss"].dtype == np.float64 and ds["act_std"].dtype == np.float64
    np.testing.assert_array_equal(ds["loss"].values, losses)  # bit for bit: no float32 round trip
    assert list(ds["param"].values) == ["0.weight", "2.weight", "2.bias"]
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    assert meta["frozen_params"] == ["0.bias"]
    assert meta["num_classes"] == 10 and num_classes_of(ds) == 10


def test_an_activation_module_reused_in_one_forward_is_named_and_pooled(tmp_path) -> None:
    class Reuse(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second, self.act = nn.Linear(6, 6), nn.Linear(6, 10), nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.second(self.act(self.first(self.act(x))))

    torch.manual_seed(0)
    model = Reuse()
    x = torch.randn(16, 6)
    with (
        warnings.catch_warnings(record=True) as caught,
        Recorder(model, torch.optim.SGD(model.parameters(), lr=0.0), tmp_path / "run") as rec,
    ):
        warnings.simplefilter("always")
        hidden = model.first(torch.relu(x))
        out = model(x)
        out.sum().backward()
        rec.step(loss=out.sum(), output=out)
    assert any("'act' ran 2 times in 1 forward pass" in str(w.message) for w in caught)
    pooled = torch.cat([torch.relu(x).reshape(-1), torch.relu(hidden).detach().reshape(-1)]).double()
    ds = open_run(tmp_path / "run")
    np.testing.assert_allclose(
        float(ds["act_zero_frac"].sel(layer="act")[0]), float((pooled == 0).double().mean()), rtol=1e-6
    )
    np.testing.assert_allclose(float(ds["act_mean"].sel(layer="act")[0]), float(pooled.mean()), rtol=1e-6)
    np.testing.assert_allclose(float(ds["act_std"].sel(layer="act")[0]), float(pooled.std(unbiased=False)), rtol=1e-6)


def test_an_activation_module_registered_twice_is_named_at_construction(tmp_path) -> None:
    act = nn.ReLU()
    model = nn.Sequential(nn.Linear(6, 6), act, nn.Linear(6, 10))
    model.add_module("alias", act)
    with pytest.warns(UserWarning, match=r"registered under several names \['1', 'alias'\]"):
        Recorder(model, None, tmp_path / "run").close()
