"""What a model will cost before it is built: its parameter count, and whether training it fits in memory.

:func:`parameter_count` computes the count from the model's options without allocating anything: in closed
form for the mlp and cnn, by building the model on PyTorch's ``meta`` device (shapes only, no memory) for
the others, the lm at depths 1 and 2 and extrapolated (its blocks are identical). A size so large that its
tensors could not even be described (more elements than an int64 counts) is estimated from the model at
``width_mult=1`` scaled by ``width_mult**2``. :func:`check_model_fits` refuses, with a
:class:`~dynamics.errors.ConfigError` naming the option to lower, a model whose weights, gradients, optimizer
state and probe copies exceed the device's memory, and a depth of more than :data:`MAX_DEPTH` blocks (each
block is several modules that the Recorder hooks; a million of them take minutes to build before any memory
runs out).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode

from dynamics.errors import ConfigError

MAX_DEPTH = 10_000
"""The most blocks (``depth``) an mlp, cnn or lm may have."""
DEPTH_MODELS = ("mlp", "cnn", "lm")
"""The models ``depth`` sizes."""
CNN_KERNEL = 5
"""The kernel size of the built-in cnn (:class:`dynamics.models.CNN1d`'s default)."""
_DESCRIBABLE = 10**15
"""Counts above this are estimated, not built on the meta device (whose sizes must fit an int64)."""


@dataclass(frozen=True)
class Cost:
    """Bytes each parameter element costs for one purpose during training, and the setting that sets them
    (``key``; None where the model's own size is what to lower)."""

    what: str
    bytes_per_parameter: float
    key: str | None = None


def _closed_form(name: str, input_shape: Sequence[int], num_classes: int, width: int, depth: int) -> int:
    """The exact parameter count of the mlp (Linear blocks) or the cnn (Conv1d blocks, Linear head)."""
    if name == "mlp":
        features = math.prod(input_shape)
        return (features + 1) * width + (depth - 1) * (width + 1) * width + (width + 1) * num_classes
    channels, length = input_shape
    conv = (channels * CNN_KERNEL + 1) * width + (depth - 1) * (width * CNN_KERNEL + 1) * width
    return conv + (width * length + 1) * num_classes


_VALUE_OPS = frozenset(
    {"normal_", "uniform_", "erfinv_", "clamp_", "clamp_min_", "clamp_max_", "mul_", "add_", "sub_", "div_"}
    | {"fill_", "zero_", "exp_", "log_", "sqrt_", "bernoulli_", "exponential_", "log_normal_", "random_"}
    | {"trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "zeros_"}
    | {"ones_", "constant_", "orthogonal_", "dirac_", "eye_", "sparse_"}
)
"""In-place operations and ``torch.nn.init`` functions that change only values: meaningless on meta tensors, and
some (``normal_``, ``erfinv_``, ``clamp_``) import seconds of reference implementations on their first meta call."""


class _SkipValueOps(TorchFunctionMode):
    """Skip the value-only in-place operations of parameter initialisation on meta tensors."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204 - torch's protocol
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if getattr(func, "__name__", "") in _VALUE_OPS and isinstance(target, torch.Tensor) and target.is_meta:
            return target
        return func(*args, **kwargs)


def _built_count(name: str, options: dict, width_mult: float, depth: int) -> int:
    """The parameter count of the model built on the meta device (shapes only: no memory, no initialisation)."""
    from dynamics.models import build_model

    with torch.device("meta"), _SkipValueOps():
        model = build_model(name, **{**options, "width_mult": width_mult, "depth": depth})
    return sum(p.numel() for p in model.parameters())


def parameter_count(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    width: int,
    depth: int,
    activation: str = "relu",
    width_mult: float = 1.0,
    patch_size: int | None = None,
    kind: str | None = None,
) -> int:
    """The number of parameter elements of ``build_model(name, ...)`` with these options, without building it.

    Exact, except for sizes beyond :data:`_DESCRIBABLE` elements, which are estimated (``width_mult**2`` times
    the count at ``width_mult=1``). Invalid options raise the ConfigError ``build_model`` would raise.
    """
    sizes_valid = all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (width, depth, num_classes))
    if name in ("mlp", "cnn") and sizes_valid and (name == "mlp" or len(input_shape) == 2):
        return _closed_form(name, input_shape, num_classes, width, depth)
    options = {
        "input_shape": input_shape,
        "num_classes": num_classes,
        "width": width,
        "activation": activation,
        "patch_size": patch_size,
        "kind": kind,
    }
    if name in ("mlp", "cnn"):  # options build_model refuses: let it raise its own error
        return _built_count(name, options, width_mult, depth)
    blocks = depth if name == "lm" else 1
    depths = (1, 2) if name == "lm" and blocks > 1 else (blocks,)
    if isinstance(width_mult, int | float) and width_mult > 1:
        unit = [_built_count(name, options, 1.0, d) for d in depths]
        rough = (unit[0] + (blocks - 1) * (unit[-1] - unit[0])) * width_mult * width_mult  # inf, not OverflowError
        if rough > _DESCRIBABLE:
            return int(min(rough, 1e300))
    counts = [_built_count(name, options, width_mult, d) for d in depths]
    return counts[0] + (blocks - 1) * (counts[-1] - counts[0])


def training_costs(
    optimizer: str = "sgd",
    momentum: float = 0.0,
    probes: Sequence[str] = (),
    sketch_dim: int = 8,
    sketch_mode: str = "sign",
    lanczos_steps: int = 0,
) -> list[Cost]:
    """What each parameter element costs in training: float32 weights, gradients, the optimizer's state (SGD's
    momentum buffer, AdamW's two moments), the copies the ``dist_from_init`` and ``update_norm`` probes keep,
    the trajectory sketch's directions (``sketch_dim`` bits, floats or one int32 by ``sketch_mode``), and the
    Lanczos basis of the sharpness and spectral-density probes (``lanczos_steps`` > 0: ``lanczos_steps + 1``
    float32 vectors, held twice while they are stacked for reorthogonalisation)."""
    state = 2 if optimizer == "adamw" else 1 if momentum > 0 else 0
    copies = 2 + state + sum(name in probes for name in ("dist_from_init", "update_norm"))
    costs = [Cost("weights, gradients, optimizer state", 4.0 * copies)]
    if "sketch" in probes:
        per = {"dense": 4.0 * sketch_dim, "hashed": 4.0}.get(sketch_mode, sketch_dim / 8)
        costs.append(Cost("the trajectory sketch", per, "sketch_dim"))
    if lanczos_steps > 0:
        costs.append(Cost("the Lanczos basis of the curvature probes", 8.0 * (lanczos_steps + 1), "lanczos_steps"))
    return costs


def device_memory(device: torch.device | str | None = None) -> tuple[int, str]:
    """Bytes of memory of ``device`` and whose they are: a CUDA device's total memory, else the machine's
    physical memory (or the lower memory limit of its control group, where one is set)."""
    device = torch.device("cpu" if device is None else device)
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        return int(properties.total_memory), f"the {properties.name}'s"
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(limit_file) as file:
                limit = int(file.read().strip())
        except (OSError, ValueError):
            continue
        total = min(total, limit)
    return total, "this machine's"


def _gb(size: float) -> str:
    return f"{size / 1e9:.3g} GB" if size < 1e13 else f"{size / 1e9:.1e} GB"


def check_model_fits(
    name: str,
    *,
    input_shape: Sequence[int],
    num_classes: int,
    width: int,
    depth: int,
    activation: str = "relu",
    width_mult: float = 1.0,
    patch_size: int | None = None,
    kind: str | None = None,
    costs: Sequence[Cost] | None = None,
    device: torch.device | str | None = None,
    memory: int | None = None,
) -> int:
    """The model's parameter count; ConfigError if it cannot be trained in ``memory`` bytes (default: the
    memory of ``device``) at ``costs`` (default: :func:`training_costs`) or has more than :data:`MAX_DEPTH`
    blocks. The error names the estimate and the option to lower (``width``, ``depth``, ``width_mult``, or
    the setting of a cost, such as ``sketch_dim``)."""
    if name in DEPTH_MODELS and isinstance(depth, int) and depth > MAX_DEPTH:
        raise ConfigError(
            f"depth={depth} is more blocks than the {MAX_DEPTH} a model may have here (each is several "
            f"modules to build and hook); lower depth",
            key="depth",
        )
    options = {
        "input_shape": input_shape,
        "num_classes": num_classes,
        "width": width,
        "depth": depth,
        "activation": activation,
        "width_mult": width_mult,
        "patch_size": patch_size,
        "kind": kind,
    }
    count = parameter_count(name, **options)
    costs = list(training_costs() if costs is None else costs)
    per_parameter = sum(cost.bytes_per_parameter for cost in costs)
    needed = count * per_parameter
    if memory is None:
        memory, where = device_memory(device)
    else:
        where = "the given"
    if needed <= memory:
        return count
    biggest = max(costs, key=lambda cost: cost.bytes_per_parameter)
    if biggest.key is not None and count * (per_parameter - biggest.bytes_per_parameter) <= memory:
        lower = [biggest.key]
    else:
        lower = _culprits(name, options, count, per_parameter, memory)
    sizes = {
        "mlp": f"width={width} and depth={depth}",
        "cnn": f"width={width} and depth={depth}",
        "lm": f"width_mult={width_mult:g} and depth={depth}",
    }.get(name, f"width_mult={width_mult:g}")
    whats = [cost.what for cost in costs]
    spent = " and ".join([", ".join(whats[:-1]), whats[-1]] if len(whats) > 1 else whats)
    raise ConfigError(
        f"model {name} with {sizes} has about {count:.2g} parameters ({_gb(needed)} for {spent}); that cannot "
        f"fit in {where} {_gb(memory)} of memory: lower {' or '.join(lower)}",
        key=tuple(dict.fromkeys([*lower, *(k for k in ("width", "depth", "width_mult") if f"{k}=" in sizes)])),
    )


def _culprits(name: str, options: dict, count: int, per_parameter: float, memory: int) -> list[str]:
    """The options to lower: the width alone when it is too large even at depth 1, depth alone when it is too
    large even at a small width, else both."""
    if name not in DEPTH_MODELS:
        return ["width_mult"]
    size_key = "width_mult" if name == "lm" else "width"
    if options["depth"] == 1 or parameter_count(name, **{**options, "depth": 1}) * per_parameter > memory:
        return [size_key]
    small = {"width_mult": min(options["width_mult"], 1.0)} if name == "lm" else {"width": min(options["width"], 32)}
    if parameter_count(name, **{**options, **small}) * per_parameter > memory:
        return ["depth"]
    return [size_key, "depth"]
