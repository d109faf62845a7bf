"""Loss and accuracy of the batch actually trained on."""

from __future__ import annotations

import torch

from dynamics import native
from dynamics.probes.base import Context, Probe, StepData, Variable


def batch_accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy; soft targets (same shape as the output) count their arg-max class."""
    output = output.detach()
    target = target.detach()
    if target.is_floating_point() and target.shape == output.shape:
        target = target.argmax(-1)
    return (output.argmax(-1) == target).float().mean()


class LossAccuracy(Probe):
    """``loss(step)`` and ``accuracy(step)``; accuracy is NaN when no output/target is given.

    With float32 CPU outputs and integer labels, one native call reads both straight into the row.
    """

    name = "loss"

    def variables(self, context: Context) -> list[Variable]:
        return [
            Variable("loss", (), {"units": "nat", "long_name": "training loss (batch)"}),
            Variable("accuracy", (), {"units": "1", "long_name": "training accuracy (batch)"}),
        ]

    def measure_into(self, context: Context, data: StepData, address: int) -> bool:
        output, target, library = data.output, data.target, context.kernels
        if library is None or output is None or target is None or target.dtype is not torch.int64 \
                or output.dim() < 1 or not target.is_cpu or not target.is_contiguous() \
                or output.shape[:-1] != target.shape or data.loss.numel() != 1:
            return False
        pointers = native.readable_pointers((data.loss, output))
        if pointers is None:
            return False
        library.loss_accuracy_f32(pointers[0], pointers[1], target.numel(), output.shape[-1], target.data_ptr(),
                                  address)
        return True

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        loss = data.loss.detach().float()
        if data.output is None or data.target is None:
            accuracy = torch.full((), float("nan"), device=loss.device)
        else:
            accuracy = batch_accuracy(data.output, data.target)
        return {"loss": loss, "accuracy": accuracy}
