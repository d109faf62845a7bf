"""Reference architectures: forward/backward at their input sizes, parameter counts, activation modules, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynamics.errors import ConfigError
from dynamics.models import MODELS, CausalLM, build_model
from dynamics.probes import flat_rule

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE_MODELS = ("resnet18", "preact_resnet18", "preact_resnet50", "vgg16_bn", "googlenet", "vit_tiny", "vit_small")

PARAMETERS = {  # (CIFAR-10 32x32, CIFAR-100 32x32, Tiny-ImageNet 64x64 with 200 classes); README table
    "resnet18": (11_173_962, 11_220_132, 11_271_432),
    "preact_resnet18": (11_172_170, 11_218_340, 11_269_640),
    "preact_resnet50": (23_513_162, 23_697_572, 23_902_472),
    "vgg16_bn": (14_728_266, 14_774_436, 14_825_736),
    "googlenet": (6_166_250, 6_258_500, 6_361_000),
    "vit_tiny": (5_362_762, 5_380_132, 5_427_080),
    "vit_small": (21_342_346, 21_376_996, 21_470_792),
}
ACTIVATION_COUNTS = {
    "resnet18": 17,
    "preact_resnet18": 17,
    "preact_resnet50": 49,
    "vgg16_bn": 13,
    "googlenet": 1 + 9 * 7,
    "vit_tiny": 12,
    "vit_small": 12,
}


def build(name: str, shape: tuple[int, ...], classes: int = 10, **kwargs: object) -> nn.Module:
    torch.manual_seed(0)
    arguments = {"width": 32, "depth": 3, "activation": "relu", **kwargs}
    return build_model(name, input_shape=shape, num_classes=classes, **arguments)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def check_forward_backward(model: nn.Module, x: torch.Tensor, out_shape: tuple[int, ...]) -> None:
    """Output shape and finiteness; every parameter gets a finite gradient; each activation runs once."""
    calls: dict[str, int] = {}
    handles = [
        module.register_forward_hook(lambda m, a, o, n=name: calls.__setitem__(n, calls.get(n, 0) + 1))
        for name, module in model.named_modules()
        if flat_rule(module) is not None
    ]
    out = model(x)
    for handle in handles:
        handle.remove()
    assert out.shape == out_shape and torch.isfinite(out).all()
    target = torch.randint(0, out.shape[-1], out.shape[:-1])
    nn.functional.cross_entropy(out.flatten(0, -2), target.flatten()).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert calls and set(calls.values()) == {1}  # one module per use: the Recorder sees every layer once


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_image_models_forward_backward_at_32(name):
    model = build(name, (3, 32, 32))
    assert num_params(model) == PARAMETERS[name][0]
    check_forward_backward(model, torch.randn(2, 3, 32, 32), (2, 10))


@pytest.mark.parametrize("name", ["resnet18", "preact_resnet18", "vgg16_bn", "vit_tiny"])
def test_image_models_forward_backward_at_64(name):
    model = build(name, (3, 64, 64), classes=200)
    assert num_params(model) == PARAMETERS[name][2]
    check_forward_backward(model, torch.randn(2, 3, 64, 64), (2, 200))


@pytest.mark.parametrize("name", ["preact_resnet50", "googlenet", "vit_small"])
def test_big_models_at_64_quarter_width(name):
    check_forward_backward(build(name, (3, 64, 64), classes=200, width_mult=0.25), torch.randn(2, 3, 64, 64), (2, 200))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["preact_resnet50", "googlenet", "vit_small"])
def test_big_models_forward_backward_at_64(name):
    model = build(name, (3, 64, 64), classes=200)
    assert num_params(model) == PARAMETERS[name][2]
    check_forward_backward(model, torch.randn(2, 3, 64, 64), (2, 200))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_parameter_counts_and_activation_modules(name):
    assert num_params(build(name, (3, 32, 32), classes=100)) == PARAMETERS[name][1]
    model = build(name, (3, 32, 32), activation="gelu")
    acts = [m for m in model.modules() if flat_rule(m) is not None]
    assert len(acts) == ACTIVATION_COUNTS[name] and all(type(m) is nn.GELU for m in acts)
    assert len({id(m) for m in acts}) == len(acts)


def test_resnet18_matches_the_published_size_and_names():
    model = build("resnet18", (3, 32, 32))
    assert round(num_params(model) / 1e6, 1) == 11.2
    names = [n for n, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert names[:3] == ["act1", "layer1.0.act1", "layer1.0.act2"] and names[-1] == "layer4.1.act2"


def test_width_multiplier_scales_channels():
    half = build("resnet18", (3, 32, 32), width_mult=0.5)
    assert half.conv1.out_channels == 32 and half.fc.in_features == 256
    assert num_params(half) < num_params(build("resnet18", (3, 32, 32))) / 3
    assert build("vit_tiny", (3, 32, 32), width_mult=0.5).head.in_features == 96  # a multiple of the 3 heads
    assert build("googlenet", (3, 32, 32), width_mult=2.0).fc.in_features == 2048


def test_vit_patch_size():
    assert build("vit_tiny", (3, 32, 32)).pos_embed.shape[1] == 65  # 4x4 patches
    assert build("vit_tiny", (3, 64, 64)).pos_embed.shape[1] == 65  # 8x8 patches
    model = build("vit_tiny", (3, 32, 32), patch_size=2, width_mult=0.25)
    assert model.pos_embed.shape[1] == 257
    check_forward_backward(model, torch.randn(2, 3, 32, 32), (2, 10))
    with pytest.raises(ConfigError, match="patch_size"):
        build("vit_tiny", (3, 32, 32), patch_size=3)


def test_sequence_and_signal_models():
    lm = build("lm", (24,), classes=50, depth=2, width_mult=0.25)
    check_forward_backward(lm, torch.randint(0, 50, (3, 24)), (3, 24, 50))
    check_forward_backward(build("cnn_gru", (2, 40), classes=8), torch.randn(3, 2, 40), (3, 8))


def test_language_model_is_causal():
    torch.manual_seed(0)
    lm = CausalLM((16,), 30, depth=2, width_mult=0.25).eval()
    ids = torch.randint(0, 30, (1, 16))
    changed = ids.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 30
    with torch.no_grad():
        a, b = lm(ids), lm(changed)
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])
    assert lm(ids[:, :5]).shape == (1, 5, 30)  # shorter contexts are fine


@pytest.mark.parametrize(
    ("name", "shape", "kwargs", "needle"),
    [
        ("resnet18", (1, 40), {}, "use an image data set"),
        ("vgg16_bn", (3, 16, 16), {}, "at least 32x32"),
        ("lm", (3, 32, 32), {}, "use the text data set"),
        ("cnn_gru", (3, 32, 32), {}, "time-series"),
        ("resnet18", (3, 32, 32), {"width_mult": 0.0}, "width_mult must be"),
        ("resnet18", (3, 32, 32), {"width_mult": float("inf")}, "width_mult must be"),
        ("mlp", (1, 40), {"width_mult": 2.0}, "size it with width instead"),
        ("resnet18", (3, 32, 32), {"patch_size": 4}, "leave patch_size unset"),
        ("resnet18", (3, 32, 32), {"kind": "signal"}, "choose one of: mlp, cnn, cnn_gru"),
        ("cnn", (1, 40), {"kind": "sequence"}, "choose one of: lm"),
    ],
)
def test_build_errors_are_one_line(name, shape, kwargs, needle):
    """One line naming the parameters (``ConfigError.keys``), never a command-line flag."""
    with pytest.raises(ConfigError) as excinfo:
        build(name, shape, **kwargs)
    message = str(excinfo.value)
    assert "\n" not in message and needle in message and "--" not in message
    assert excinfo.value.keys


def test_registry_lists_every_model():
    assert ("mlp", "cnn", "cnn_gru", *IMAGE_MODELS, "lm") == MODELS
