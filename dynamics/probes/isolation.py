"""Extra forward/backward passes that leave no trace: the random generators and the model's buffers restored."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


@contextmanager
def preserved_state(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run the block with the global RNG forked (CPU and ``device`` when it is a CUDA device) and every buffer of
    ``model`` (BatchNorm running statistics, batch counters) copied before and restored after.

    Passes inside see the RNG state the caller left (the same dropout masks as the caller's next pass would)
    and leave it as it was, so a probe's passes change neither training's random draws nor its statistics.
    """
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    buffers = [(buffer, buffer.detach().clone()) for buffer in model.buffers()]
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        with torch.no_grad():
            for buffer, saved in buffers:
                buffer.copy_(saved)
