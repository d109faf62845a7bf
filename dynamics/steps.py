"""Speed settings of the built-in loop (bf16 autocast, channels_last, compile) and its evaluation pass.

The in-place ``torch.compile`` keeps module and parameter names, so the Recorder's hooks and coordinates
stay valid. Evaluation reads nothing back to the host and scores every target position: a classifier's
``(N, classes)`` output against ``(N,)`` labels, a language model's ``(N, T, vocab)`` against ``(N, T)``
next tokens (per-token cross-entropy; accuracy = next-token accuracy).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.errors import ConfigError

PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """bf16 autocast on ``device`` for ``precision="bf16"``, a disabled (no-op) context for ``"fp32"``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}", key="precision")
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def prepare_model(
    model: nn.Module, *, channels_last: bool = False, compile: bool = False, backend: str = "inductor"
) -> nn.Module:
    """Put ``model`` in channels_last layout and/or compile it in place (``nn.Module.compile``).

    In-place compilation keeps ``named_modules``/``named_parameters`` unchanged, so hooks attached later by
    a Recorder are traced into the compiled forward (Dynamo inlines module hooks) and recorded names carry
    no ``_orig_mod.`` prefix. Compilation happens lazily at the first forward pass.
    """
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model.compile(backend=backend)
    return model


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    prepare: Callable[[torch.Tensor, bool], torch.Tensor] | None = None,
    precision: str = "fp32",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and accuracy over a split, per target position, in eval mode, as device tensors.

    Nothing is read back to the host, so the caller decides when to synchronise (the engine hands the
    tensors to the Recorder, which moves them at its next flush). ``prepare(batch, False)`` turns stored
    batches into model inputs (e.g. normalises uint8 images).
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=x.device)
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    with autocast(x.device, precision):
        for start in range(0, len(x), batch_size):
            inputs = x[start : start + batch_size]
            out = model(inputs if prepare is None else prepare(inputs, False)).flatten(0, -2).float()
            target = y[start : start + batch_size].flatten()
            loss_sum += F.cross_entropy(out, target, reduction="sum").double()
            correct += (out.argmax(-1) == target).sum()
    model.train(was_training)
    return loss_sum / y.numel(), correct.double() / y.numel()
