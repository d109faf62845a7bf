"""Models: forward/backward on MNIST-1D shapes, hand-counted parameters, module names, activations, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynamics.errors import ConfigError
from dynamics.models import ACTIVATIONS, MLP, MODELS, CNN1d, build_model, make_activation

INPUT_SHAPE = (1, 40)  # MNIST-1D
NUM_CLASSES = 10
EXPECTED_ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
}


def mlp_param_count(in_features: int, width: int, depth: int, classes: int) -> int:
    return (in_features * width + width) + (depth - 1) * (width * width + width) + (width * classes + classes)


def cnn_param_count(channels: int, length: int, width: int, depth: int, kernel: int, classes: int) -> int:
    first = channels * width * kernel + width
    rest = (depth - 1) * (width * width * kernel + width)
    return first + rest + (width * length * classes + classes)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_kwargs(**overrides: object) -> dict[str, object]:
    kwargs = {
        "input_shape": INPUT_SHAPE,
        "num_classes": NUM_CLASSES,
        "width": 8,
        "depth": 2,
        "activation": "relu",
    }
    return {**kwargs, **overrides}


def test_registries():
    assert MODELS[:2] == ("mlp", "cnn")  # the reference architectures follow (tests/test_reference_models.py)
    assert dict(ACTIVATIONS) == EXPECTED_ACTIVATIONS


@pytest.mark.parametrize("activation", list(EXPECTED_ACTIVATIONS))
@pytest.mark.parametrize(
    ("name", "width", "depth", "expected"),
    [
        ("mlp", 16, 3, mlp_param_count(40, 16, 3, NUM_CLASSES)),
        ("cnn", 8, 2, cnn_param_count(1, 40, 8, 2, 5, NUM_CLASSES)),
    ],
)
def test_forward_backward(name, width, depth, expected, activation):
    torch.manual_seed(0)
    model = build_model(name, **build_kwargs(width=width, depth=depth, activation=activation))
    assert num_params(model) == expected
    x = torch.randn(6, *INPUT_SHAPE)
    logits = model(x)
    assert logits.shape == (6, NUM_CLASSES) and logits.dtype == torch.float32
    nn.functional.cross_entropy(logits, torch.arange(6)).backward()
    for param_name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), param_name
    acts = [m for m in model.modules() if isinstance(m, EXPECTED_ACTIVATIONS[activation])]
    assert len(acts) == depth and len({id(m) for m in acts}) == depth  # one module per use


def test_default_sizes_and_parameter_counts():
    assert num_params(MLP(INPUT_SHAPE, NUM_CLASSES)) == mlp_param_count(40, 128, 2, 10)
    assert num_params(CNN1d(INPUT_SHAPE, NUM_CLASSES)) == cnn_param_count(1, 40, 32, 3, 5, 10)


def test_other_input_shapes_and_kernel():
    mlp = MLP((2, 20), 3, width=7, depth=1)
    assert mlp(torch.randn(4, 2, 20)).shape == (4, 3)
    assert num_params(mlp) == mlp_param_count(40, 7, 1, 3)
    cnn = CNN1d((2, 20), 3, width=4, depth=2, kernel_size=3)
    assert cnn(torch.randn(4, 2, 20)).shape == (4, 3)
    assert num_params(cnn) == cnn_param_count(2, 20, 4, 2, 3, 3)


def test_module_and_parameter_names():
    mlp = build_model("mlp", input_shape=INPUT_SHAPE, num_classes=10, width=8, depth=2, activation="tanh")
    assert [n for n, _ in mlp.named_modules()] == [
        "", "flatten", "blocks", "blocks.0", "blocks.0.linear", "blocks.0.act",
        "blocks.1", "blocks.1.linear", "blocks.1.act", "head",
    ]  # fmt: skip
    assert [n for n, _ in mlp.named_parameters()] == [
        "blocks.0.linear.weight", "blocks.0.linear.bias", "blocks.1.linear.weight", "blocks.1.linear.bias",
        "head.weight", "head.bias",
    ]  # fmt: skip
    cnn = build_model("cnn", input_shape=INPUT_SHAPE, num_classes=10, width=8, depth=2, activation="relu")
    assert [n for n, _ in cnn.named_modules()] == [
        "", "blocks", "blocks.0", "blocks.0.conv", "blocks.0.act",
        "blocks.1", "blocks.1.conv", "blocks.1.act", "flatten", "head",
    ]  # fmt: skip
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in cnn.modules())


def test_make_activation_returns_fresh_instances():
    for name, cls in EXPECTED_ACTIVATIONS.items():
        a, b = make_activation(name), make_activation(name)
        assert type(a) is cls and a is not b


@pytest.mark.parametrize(
    ("name", "overrides", "needle", "key"),
    [
        ("transformer", {}, "choose one of: mlp, cnn, cnn_gru, resnet18", "name"),
        ("mlp", {"activation": "swish"}, "relu, leaky_relu, gelu, silu, elu, tanh, sigmoid, softplus", "activation"),
        ("cnn", {"activation": "ReLU"}, "unknown activation 'ReLU'", "activation"),
        ("mlp", {"width": 0}, "width must be", "width"),
        ("cnn", {"width": -3}, "width must be", "width"),
        ("mlp", {"width": 2.5}, "width must be", "width"),
        ("mlp", {"width": True}, "width must be", "width"),
        ("mlp", {"depth": 0}, "depth must be", "depth"),
        ("cnn", {"depth": 1.0}, "depth must be", "depth"),
        ("mlp", {"num_classes": 0}, "num_classes", "num_classes"),
        ("cnn", {"input_shape": (40,)}, "use a 1-D signal data set or the mlp", "input_shape"),
    ],
)
def test_build_model_errors(name, overrides, needle, key):
    """One line naming the parameter (``key``), never a command-line flag."""
    with pytest.raises(ConfigError) as excinfo:
        build_model(name, **build_kwargs(**overrides))
    message = str(excinfo.value)
    assert "\n" not in message and needle in message and "--" not in message
    assert excinfo.value.key == key


@pytest.mark.parametrize("kernel_size", [0, 4, 2.0])
def test_cnn_kernel_size_errors(kernel_size):
    with pytest.raises(ConfigError, match="kernel_size"):
        CNN1d(INPUT_SHAPE, NUM_CLASSES, kernel_size=kernel_size)
