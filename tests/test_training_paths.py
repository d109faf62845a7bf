"""The engine on every data kind: CIFAR capture via the CLI, text and time series end to end, bf16,
channels_last and torch.compile together with the Recorder's hooks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynamics import ConfigError, Recorder, open_run
from dynamics.config import make_config
from dynamics.data import write_cifar
from dynamics.engine import train
from dynamics.models import build_model
from dynamics.probes import flat_rule
from dynamics.steps import autocast, evaluate_split, prepare_model

FULL_VARIABLES = {
    "loss",
    "accuracy",
    "lr",
    "epoch",
    "grad_norm",
    "param_norm",
    "dist_from_init",
    "update_norm",
    "act_zero_frac",
    "act_dead_frac",
    "act_mean",
    "act_std",
    "val_loss",
    "val_accuracy",
}


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CIFAR-10 archive in the exact python-version format: 30 training and 2 test images per class."""
    folder = tmp_path_factory.mktemp("cifar")
    write_cifar(folder, train_per_class=30, test_per_class=2)
    return folder


def test_cli_captures_resnet18_on_cifar_archive(fake_cifar, tmp_path):
    args = [
        "--dataset",
        "cifar10",
        "--data-dir",
        str(fake_cifar),
        "--model",
        "resnet18",
        "--epochs",
        "1",
        "--train-size",
        "256",
        "--no-progress",
        "--out",
        "run",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "dynamics.collect", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "DYNAMICS_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 0, result.stderr
    meta = json.loads((tmp_path / "run" / "meta.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["status"] == "finished" and config["data_dir"] == str(fake_cifar) and config["train_size"] == 256
    ds = open_run(tmp_path / "run")
    assert set(ds.variables) >= FULL_VARIABLES
    np.testing.assert_array_equal(ds["step"].values, [0, 1])  # 256 // 128
    model = build_model("resnet18", input_shape=(3, 32, 32), num_classes=10, width=32, depth=3, activation="relu")
    assert list(ds["param"].values) == [name for name, _ in model.named_parameters()]
    layers = [name for name, module in model.named_modules() if flat_rule(module) is not None]
    assert list(ds["layer"].values) == layers and len(layers) == 17
    for name in FULL_VARIABLES - {"val_loss", "val_accuracy"}:
        assert np.isfinite(ds[name].values).all(), name
    assert ds["act_zero_frac"].values.min() > 0.05  # ReLU layers of a fresh ResNet are about half zero
    assert ds.sizes["eval_step"] == 1 and 0 <= float(ds["val_accuracy"][0]) <= 1
    assert (tmp_path / "run" / "figures" / "overview.png").exists()


def steps_loss(run: Path) -> np.ndarray:
    return open_run(run)["loss"].values


def test_language_model_trains_on_the_default_corpus(one_thread, tmp_path):
    config = make_config(
        {
            "dataset": "text",
            "seq_len": 32,
            "train_size": 1600,
            "model": "lm",
            "depth": 2,
            "width_mult": 0.25,
            "activation": "gelu",
            "optimizer": "adamw",
            "lr": 3e-3,
            "batch_size": 16,
            "epochs": 2,
            "eval_batch_size": 512,
        }
    )
    result = train(config, tmp_path / "lm", progress=False)
    loss = steps_loss(tmp_path / "lm")
    assert len(loss) == 200 and result.steps == 200
    assert loss[0] > 4.3  # about ln(103) = 4.63: uniform over the vocabulary
    assert loss[-50:].mean() < loss[0] - 1.5
    ds = open_run(tmp_path / "lm")
    assert ds["accuracy"].values[-50:].mean() > 0.25  # next-character accuracy
    assert list(ds["layer"].values) == ["blocks.0.mlp.act", "blocks.1.mlp.act"]
    assert result.test_loss < 3.2 and 0.2 < result.test_accuracy <= 1


def test_recorded_accuracy_of_a_language_model_is_per_token(tmp_path):
    torch.manual_seed(0)
    model = build_model("lm", input_shape=(12,), num_classes=20, width=1, depth=1, activation="gelu", width_mult=0.25)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ids = torch.randint(0, 20, (5, 12))
    target = torch.randint(0, 20, (5, 12))
    with Recorder(model, optimizer, tmp_path / "r", probes="loss") as recorder:
        out = model(ids)
        loss = F.cross_entropy(out.flatten(0, 1), target.flatten())
        loss.backward()
        optimizer.step()
        recorder.step(loss=loss, output=out, target=target)
    expected = (out.argmax(-1) == target).double().mean().item()
    assert float(open_run(tmp_path / "r")["accuracy"][0]) == pytest.approx(expected, abs=1e-7)
    val_loss, val_accuracy = evaluate_split(model, ids, target, 2)
    with torch.no_grad():
        logits = model(ids).flatten(0, 1)
    assert float(val_loss) == pytest.approx(float(F.cross_entropy(logits, target.flatten())), rel=1e-5)
    assert float(val_accuracy) == pytest.approx(float((logits.argmax(-1) == target.flatten()).double().mean()))


def test_time_series_trains(one_thread, tmp_path):
    config = make_config(
        {
            "dataset": "timeseries",
            "num_samples": 2000,
            "seq_len": 32,
            "model": "cnn_gru",
            "width_mult": 0.5,
            "lr": 0.02,
            "batch_size": 32,
            "epochs": 4,
        }
    )
    result = train(config, tmp_path / "r", progress=False)
    loss = steps_loss(tmp_path / "r")
    assert len(loss) == 200
    assert loss[-40:].mean() < 0.6 * loss[:10].mean()
    assert result.test_accuracy > 0.5  # chance is 1/8


def test_bf16_and_channels_last_on_cpu(one_thread, fake_cifar, tmp_path):
    config = make_config(
        {
            "dataset": "cifar10",
            "data_dir": str(fake_cifar),
            "model": "resnet18",
            "width_mult": 0.125,
            "precision": "bf16",
            "channels_last": True,
            "batch_size": 50,
            "epochs": 2,
        }
    )
    result = train(config, tmp_path / "r", progress=False)
    ds = open_run(tmp_path / "r")
    assert np.isfinite(ds["loss"].values).all() and np.isfinite(ds["grad_norm"].values).all()
    assert np.isfinite(ds["act_mean"].values).all() and result.steps == 12
    model = prepare_model(
        build_model(
            "resnet18", input_shape=(3, 32, 32), num_classes=10, width=1, depth=1, activation="relu", width_mult=0.125
        ),
        channels_last=True,
    )
    assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with autocast(torch.device("cpu"), "bf16"):
        out = model(torch.randn(2, 3, 32, 32).contiguous(memory_format=torch.channels_last))
    assert out.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="precision"):
        autocast(torch.device("cpu"), "fp8")


def test_settings_that_do_not_fit_the_data_fail_before_the_run(tmp_path):
    for values in ({"channels_last": True}, {"model": "resnet18"}, {"data_dir": str(tmp_path)}):
        with pytest.raises(ConfigError):
            train(
                make_config({"dataset": "gaussian", "num_samples": 200, "epochs": 1, **values}),
                tmp_path / "r",
                progress=False,
            )
        assert not (tmp_path / "r").exists()
    for bad in (
        {"precision": "fp16"},
        {"width_mult": 0},
        {"seq_len": 0},
        {"image_size": -1},
        {"patch_size": 0},
        {"compile": "yes"},
    ):
        with pytest.raises(ConfigError):
            make_config(bad)


class Tiny(nn.Module):
    """Conv-BN-ReLU, Conv-GELU, pooling and a head: every kind of hook the default probes install."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(8, 8, 3, padding=1), nn.GELU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.conv2(self.act1(self.bn(self.conv1(x))))))


def record_tiny(run: Path, backend: str | None) -> None:
    torch.manual_seed(0)
    model = Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if backend is not None:
        prepare_model(model, compile=True, backend=backend)
    generator = torch.Generator().manual_seed(1)
    with Recorder(model, optimizer, run, every=2) as recorder:
        for _ in range(6):
            x, y = torch.randn(16, 3, 8, 8, generator=generator), torch.randint(0, 5, (16,), generator=generator)
            optimizer.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out, y)
            loss.backward()
            optimizer.step()
            recorder.step(loss=loss, output=out, target=y)
    assert [name for name, _ in model.named_parameters()][0] == "conv1.weight"  # no _orig_mod. prefix


def assert_same_runs(a: Path, b: Path, rtol: float) -> None:
    eager, compiled = open_run(a), open_run(b)
    assert set(eager.variables) == set(compiled.variables) and eager.sizes["step"] == 3
    for name in eager.data_vars:
        np.testing.assert_allclose(compiled[name].values, eager[name].values, rtol=rtol, atol=1e-6, err_msg=name)


def test_compiled_model_records_what_eager_records(one_thread, tmp_path):
    """Dynamo + AOTAutograd (the parts that meet the hooks) without inductor's slow C++ build on CPU."""
    record_tiny(tmp_path / "eager", None)
    record_tiny(tmp_path / "compiled", "aot_eager")
    assert_same_runs(tmp_path / "eager", tmp_path / "compiled", rtol=1e-5)


@pytest.mark.slow
def test_inductor_compiled_model_records_what_eager_records(tmp_path):
    record_tiny(tmp_path / "eager", None)
    record_tiny(tmp_path / "compiled", "inductor")
    assert_same_runs(tmp_path / "eager", tmp_path / "compiled", rtol=1e-4)


@pytest.mark.slow
def test_engine_with_compile_on_cpu(tmp_path):
    config = make_config(
        {
            "dataset": "gaussian",
            "num_samples": 400,
            "model": "mlp",
            "width": 16,
            "epochs": 2,
            "batch_size": 40,
            "compile": True,
        }
    )
    train(config, tmp_path / "r", progress=False)
    assert np.isfinite(open_run(tmp_path / "r")["grad_norm"].values).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_path_bf16_channels_last_compile(fake_cifar, tmp_path):
    config = make_config(
        {
            "dataset": "cifar10",
            "data_dir": str(fake_cifar),
            "model": "resnet18",
            "device": "cuda",
            "precision": "bf16",
            "channels_last": True,
            "compile": True,
            "batch_size": 100,
            "epochs": 2,
        }
    )
    result = train(config, tmp_path / "r", progress=False)
    ds = open_run(tmp_path / "r")
    assert set(ds.variables) >= FULL_VARIABLES and result.steps == 6
    for name in ("loss", "grad_norm", "act_zero_frac", "update_norm"):
        assert np.isfinite(ds[name].values).all(), name
    assert json.loads((tmp_path / "r" / "meta.json").read_text())["device"].startswith("cuda")
