"""The model budget: parameter counts from the options match the built models, and what cannot fit is refused."""

from __future__ import annotations

import time

import pytest
import torch

from dynamics.config import RunConfig
from dynamics.engine import train
from dynamics.errors import ConfigError
from dynamics.models import MODEL_KINDS, MODELS, build_model
from dynamics.models.budget import (
    MAX_DEPTH,
    Cost,
    check_model_fits,
    device_memory,
    parameter_count,
    training_costs,
)

SHAPES = {"signal": ((1, 40), 10), "image": ((3, 32, 32), 10), "sequence": ((24,), 17)}


def _options(name: str, kind: str, **sizes: object) -> dict:
    shape, classes = SHAPES[kind]
    return {
        "input_shape": shape,
        "num_classes": classes,
        "width": 6,
        "depth": 2,
        "activation": "relu",
        "width_mult": 1.0 if name in ("mlp", "cnn") else 0.25,
        "kind": kind,
        **sizes,
    }


@pytest.mark.parametrize(("name", "kind"), [(name, kind) for name in MODELS for kind in MODEL_KINDS[name]])
def test_the_count_matches_the_built_model(name: str, kind: str) -> None:
    for sizes in ({}, {"width": 3, "depth": 3}, {"width_mult": 1.0 if name in ("mlp", "cnn") else 0.4}):
        options = _options(name, kind, **sizes)
        model = build_model(name, **options)
        assert parameter_count(name, **options) == sum(p.numel() for p in model.parameters()), (name, sizes)


def test_the_lm_count_extrapolates_its_depth_exactly() -> None:
    options = _options("lm", "sequence", depth=5, width_mult=0.1)
    assert parameter_count("lm", **options) == sum(p.numel() for p in build_model("lm", **options).parameters())


def test_absurd_sizes_are_estimated_at_once() -> None:
    started = time.perf_counter()
    huge = parameter_count("resnet18", **_options("resnet18", "image", width_mult=1e12))
    wide = parameter_count("cnn", **_options("cnn", "signal", width=10**12, depth=MAX_DEPTH))
    assert huge > 10**25 and wide > 10**27
    for width_mult in (1e300, 1.7976931348623157e308):  # width_mult**2 overflows a float
        assert parameter_count("cnn_gru", **_options("cnn_gru", "signal", width_mult=width_mult)) == int(1e300)
        with pytest.raises(ConfigError, match="lower width_mult"):
            check_model_fits("lm", **_options("lm", "sequence", width_mult=width_mult))
    assert time.perf_counter() - started < 5


def test_what_cannot_fit_is_refused_naming_the_estimate_and_the_option() -> None:
    with pytest.raises(ConfigError) as wide:
        check_model_fits("cnn", **_options("cnn", "signal", width=10**9, depth=3), memory=2**34)
    assert wide.value.key == "width" and "lower width" in str(wide.value)
    assert "1e+19 parameters" in str(wide.value) and "17.2 GB" in str(wide.value)
    with pytest.raises(ConfigError) as deep:
        check_model_fits("mlp", **_options("mlp", "signal", width=8, depth=MAX_DEPTH + 1))
    assert deep.value.key == "depth"
    with pytest.raises(ConfigError) as both:
        check_model_fits("mlp", **_options("mlp", "signal", width=10**5, depth=3), memory=2**34)
    assert both.value.keys[:2] == ("width", "depth") and "lower width or depth" in str(both.value)
    with pytest.raises(ConfigError) as scaled:
        check_model_fits("vgg16_bn", **_options("vgg16_bn", "image", width_mult=1e6), memory=2**34)
    assert scaled.value.key == "width_mult"
    costs = [Cost("weights", 4.0), Cost("the trajectory sketch", 4.0 * 10**7, "sketch_dim")]
    with pytest.raises(ConfigError) as sketch:
        check_model_fits("cnn", **_options("cnn", "signal"), costs=costs, memory=2**34)
    assert sketch.value.key == "sketch_dim"
    assert check_model_fits("cnn", **_options("cnn", "signal"), memory=2**34) > 0


def test_the_lanczos_basis_is_counted_only_when_asked() -> None:
    """sharpness/hessian_density keep lanczos_steps + 1 float32 vectors, stacked once more: 8 bytes each."""
    assert len(training_costs("sgd", 0.0)) == 1
    lanczos = training_costs("sgd", 0.0, lanczos_steps=20)[-1]
    assert lanczos.bytes_per_parameter == 8.0 * 21 and lanczos.key == "lanczos_steps"


def test_training_costs_count_the_copies() -> None:
    assert training_costs("sgd", 0.0)[0].bytes_per_parameter == 8
    assert training_costs("sgd", 0.9)[0].bytes_per_parameter == 12
    assert training_costs("adamw", 0.9, ("dist_from_init", "update_norm"))[0].bytes_per_parameter == 24
    dense = training_costs("sgd", 0.0, ("sketch",), sketch_dim=8, sketch_mode="dense")
    assert dense[1] == Cost("the trajectory sketch", 32.0, "sketch_dim")


def test_device_memory_is_the_machines() -> None:
    memory, whose = device_memory("cpu")
    assert 0 < memory <= 2**60 and whose == "this machine's"
    if torch.cuda.is_available():
        assert device_memory("cuda")[0] == torch.cuda.get_device_properties(0).total_memory


def test_train_refuses_before_building(tmp_path) -> None:
    config = RunConfig(num_samples=200, width=10**9, epochs=1, batch_size=32, device="cpu")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="cannot fit") as err:
        train(config, tmp_path / "run", progress=False)
    assert err.value.key == "width" and time.perf_counter() - started < 30
    assert not (tmp_path / "run").exists()
