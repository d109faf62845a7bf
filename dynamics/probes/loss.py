"""Loss and accuracy of the batch actually trained on."""

from __future__ import annotations

import torch

from dynamics.probes.base import Context, Probe, StepData, Variable


def batch_accuracy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Top-1 accuracy; soft targets (same shape as the output) count their arg-max class."""
    output = output.detach()
    target = target.detach()
    if target.is_floating_point() and target.shape == output.shape:
        target = target.argmax(-1)
    return (output.argmax(-1) == target).to(torch.float64 if output.dtype == torch.float64 else torch.float32).mean()


class LossAccuracy(Probe):
    """``loss(step)`` and ``accuracy(step)``; accuracy is NaN when no output/target is given.

    In a distributed run both are means over the processes' equal shards, i.e. over the global batch.
    """

    name = "loss"

    def variables(self, context: Context) -> list[Variable]:
        return [
            Variable("loss", (), {"units": "nat", "long_name": "training loss (batch)"}),
            Variable("accuracy", (), {"units": "1", "long_name": "training accuracy (batch)"}),
        ]

    def measure(self, context: Context, data: StepData) -> dict[str, torch.Tensor]:
        loss = data.loss.detach()
        if data.output is None or data.target is None:
            accuracy = torch.full((), float("nan"), device=loss.device)
        else:
            accuracy = batch_accuracy(data.output, data.target)
        if context.world_size > 1:  # the mean over the global batch: shards are of equal size
            loss, accuracy = context.all_reduce(torch.stack((loss.double(), accuracy.double()))) / context.world_size
        return {"loss": loss, "accuracy": accuracy}
