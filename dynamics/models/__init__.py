"""Models by name: the MLP and 1-D CNN (width/depth), and reference architectures scaled by ``width_mult``."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from dynamics.errors import ConfigError
from dynamics.models.cnn1d import CNN1d
from dynamics.models.convgru import ConvGRU
from dynamics.models.googlenet import GoogLeNet
from dynamics.models.mlp import ACTIVATIONS, MLP, make_activation
from dynamics.models.resnet import ResNet, preact_resnet18, preact_resnet50, resnet18
from dynamics.models.transformer import CausalLM, ViT, vit_small, vit_tiny
from dynamics.models.vgg import VGG

MODEL_KINDS: dict[str, tuple[str, ...]] = {
    "mlp": ("signal", "image"),
    "cnn": ("signal",),
    "cnn_gru": ("signal",),
    "resnet18": ("image",),
    "preact_resnet18": ("image",),
    "preact_resnet50": ("image",),
    "vgg16_bn": ("image",),
    "googlenet": ("image",),
    "vit_tiny": ("image",),
    "vit_small": ("image",),
    "lm": ("sequence",),
}
"""The kinds of data (``Dataset.kind``) each model trains on."""
MODELS: tuple[str, ...] = tuple(MODEL_KINDS)

__all__ = [
    "ACTIVATIONS",
    "CNN1d",
    "CausalLM",
    "ConvGRU",
    "GoogLeNet",
    "MLP",
    "MODELS",
    "MODEL_KINDS",
    "ResNet",
    "VGG",
    "ViT",
    "build_model",
    "make_activation",
]

_SCALED = {
    "cnn_gru": ConvGRU,
    "resnet18": resnet18,
    "preact_resnet18": preact_resnet18,
    "preact_resnet50": preact_resnet50,
    "vgg16_bn": VGG,
    "googlenet": GoogLeNet,
}


def build_model(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    width: int,
    depth: int,
    activation: str,
    width_mult: float = 1.0,
    patch_size: int | None = None,
    kind: str | None = None,
) -> nn.Module:
    """Model ``name`` for samples of ``input_shape`` (of data ``kind``, when given); bad arguments raise ConfigError.

    ``width``/``depth`` size the mlp and cnn (``depth`` also counts the lm's blocks); ``width_mult`` scales
    every reference architecture; ``patch_size`` applies to the ViTs. ``activation`` names every activation
    module of every model (ViTs and the lm were published with "gelu").
    """
    if name not in MODEL_KINDS:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}", key="name")
    if kind is not None and kind not in MODEL_KINDS[name]:
        fits = ", ".join(m for m, kinds in MODEL_KINDS.items() if kind in kinds)
        raise ConfigError(
            f"model {name} trains on {' or '.join(MODEL_KINDS[name])} data, not {kind} data; "
            f"for this data set choose one of: {fits}",
            key="name",
        )
    if name in ("mlp", "cnn") and width_mult != 1.0:
        raise ConfigError(
            f"width_mult does not apply to {name}; size it with width instead and leave width_mult at 1.0",
            key=("width_mult", "width"),
        )
    if patch_size is not None and name not in ("vit_tiny", "vit_small"):
        raise ConfigError(
            f"patch_size applies to vit_tiny and vit_small only, not {name}; leave patch_size unset", key="patch_size"
        )
    if name == "mlp":
        return MLP(input_shape, num_classes, width=width, depth=depth, activation=activation)
    if name == "cnn":
        return CNN1d(input_shape, num_classes, width=width, depth=depth, activation=activation)
    if name == "lm":
        return CausalLM(input_shape, num_classes, depth=depth, width_mult=width_mult, activation=activation)
    if name in ("vit_tiny", "vit_small"):
        factory = vit_tiny if name == "vit_tiny" else vit_small
        return factory(input_shape, num_classes, patch_size=patch_size, width_mult=width_mult, activation=activation)
    return _SCALED[name](input_shape, num_classes, width_mult=width_mult, activation=activation)
