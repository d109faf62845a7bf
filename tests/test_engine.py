"""The built-in loop: reproducible from its config, evaluation exact, schedule and epochs recorded as applied."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynamics import ConfigError, open_run
from dynamics.config import RunConfig, make_config, read_config_file
from dynamics.engine import evaluate, train

SMALL = {"dataset": "gaussian", "num_samples": 300, "epochs": 2, "batch_size": 30, "model": "mlp", "width": 16}


def test_same_seed_reproduces_and_other_seed_differs(tmp_path) -> None:
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        train(make_config({**SMALL, "seed": seed}), tmp_path / name, progress=False)
        runs[name] = open_run(tmp_path / name)
    np.testing.assert_array_equal(runs["a"]["loss"].values, runs["b"]["loss"].values)
    np.testing.assert_array_equal(runs["a"]["grad_norm"].values, runs["b"]["grad_norm"].values)
    assert not np.array_equal(runs["a"]["loss"].values, runs["c"]["loss"].values)


def test_epochs_schedule_and_results_are_recorded(tmp_path) -> None:
    config = make_config({**SMALL, "schedule": "cosine", "warmup_steps": 4, "lr": 0.1})
    result = train(config, tmp_path / "r", progress=False)
    ds = open_run(tmp_path / "r")
    steps_per_epoch = 240 // 30
    np.testing.assert_array_equal(ds["epoch"].values, np.repeat([0, 1], steps_per_epoch))
    total = 2 * steps_per_epoch
    t = np.arange(total)
    warm = np.minimum(t / 4, 1.0)
    cosine = 0.5 * (1 + np.cos(np.pi * (t - 4) / (total - 4)))
    expected = 0.1 * np.where(t < 4, warm, cosine)
    np.testing.assert_allclose(ds["lr"].values, expected, rtol=1e-12, atol=1e-15)
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["results"]["final_test_accuracy"] == result.test_accuracy
    assert float(ds["val_accuracy"][-1]) == pytest.approx(result.test_accuracy, abs=1e-7)


def test_evaluate_matches_one_big_batch() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 5))
    x, y = torch.randn(103, 1, 40), torch.randint(0, 5, (103,))
    loss, accuracy = evaluate(model, x, y, batch_size=10)
    with torch.no_grad():
        out = model(x).double()
    assert loss == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)
    assert accuracy == pytest.approx(float((out.argmax(1) == y).double().mean()), abs=0)


def test_config_precedence_and_validation(tmp_path) -> None:
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 1, "batch-size": 64}))
    values = read_config_file(path)
    config = make_config({**values, "batch_size": 32})
    assert config.lr == 1.0 and isinstance(config.lr, float) and config.batch_size == 32
    assert make_config({}) == RunConfig()
    for bad in (
        {"epochs": True},
        {"lr": float("nan")},
        {"momentum": 1.0},
        {"train_size": 0},
        {"device": "tpu"},
        {"probes": "everything"},
        {"activation": "swish9"},
    ):
        with pytest.raises(ConfigError):
            make_config(bad)


def test_batch_larger_than_training_split_is_a_config_error(tmp_path) -> None:
    with pytest.raises(ConfigError, match="batch_size"):
        train(make_config({**SMALL, "batch_size": 1000}), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()
