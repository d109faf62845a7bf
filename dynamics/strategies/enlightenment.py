"""The Enlightenment Period as training sees it, and the strategies that act only during it.

The period is ``[0, end)``: given in epochs (``enp_epochs=N``), or detected online (``auto``) as the first
step at which the exponential moving average of the training accuracy (time constant ``tau`` steps, the
same smoothing as :func:`analyses.enlightenment.smooth_ema` with unit spacing) reaches ``threshold``.
The accuracy is that of the step's batch against its clean labels: the batch is clean during the period
for Mixup Pause and High-Loss Removal; with Alpha Boost the samples are mixed and the accuracy is taken
against each sample's dominant (own) label. Online detection keeps the average on the device and reads
one number per step only while the period lasts; after it ends nothing is read back.

High-Loss Removal leaves the ``fraction`` of each batch with the largest per-sample losses out of the
loss (``floor(fraction * B)`` samples; ties broken by ``torch.topk``).
"""

from __future__ import annotations

import math

import torch

from dynamics.errors import ConfigError


class EnlightenmentTracker:
    """Says whether the period is active; ``epochs`` is an int or ``"auto"``."""

    def __init__(self, epochs: int | str, tau: float = 10.0, threshold: float = 0.5) -> None:
        if epochs != "auto" and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
            raise ConfigError(f"epochs must be an int >= 0 or 'auto', got {epochs!r}; fix it", key="epochs")
        if not tau > 0:
            raise ConfigError(f"tau must be > 0, got {tau}; pass e.g. 10", key="tau")
        if not 0 < threshold <= 1:
            raise ConfigError(f"threshold must lie in (0, 1], got {threshold}; pass e.g. 0.5", key="threshold")
        self.epochs = epochs
        self.alpha = 1.0 - math.exp(-1.0 / tau)
        self.threshold = threshold
        self.end_step: int | None = None
        """First step outside the period once it is known (auto: the detected step + 1)."""
        self._epoch = 0
        self._smoothed: torch.Tensor | None = None

    def start_epoch(self, epoch: int, step: int) -> None:
        """Called at each epoch start; a period given in epochs ends at the first step of epoch ``epochs``."""
        self._epoch = epoch
        if self.epochs != "auto" and self.end_step is None and epoch >= self.epochs:
            self.end_step = step

    @property
    def active(self) -> bool:
        """Whether the current step lies inside the period."""
        if self.epochs == "auto":
            return self.end_step is None
        return self._epoch < self.epochs

    def observe(self, step: int, accuracy: torch.Tensor) -> None:
        """Feed the step's clean batch accuracy (auto mode); ends the period when the average crosses."""
        if self.epochs != "auto" or self.end_step is not None:
            return
        accuracy = accuracy.detach().double()
        self._smoothed = (
            accuracy if self._smoothed is None else self._smoothed + self.alpha * (accuracy - self._smoothed)
        )
        if float(self._smoothed) >= self.threshold:
            self.end_step = step + 1

    def state_dict(self) -> dict[str, object]:
        """What a checkpoint needs to continue the detection."""
        smoothed = None if self._smoothed is None else float(self._smoothed)
        return {"end_step": self.end_step, "epoch": self._epoch, "smoothed": smoothed}

    def load_state_dict(self, state: dict[str, object]) -> None:
        """Continue from :meth:`state_dict` (the float64 average is restored exactly)."""
        self.end_step = state["end_step"]
        self._epoch = state["epoch"]
        smoothed = state["smoothed"]
        self._smoothed = None if smoothed is None else torch.tensor(smoothed, dtype=torch.float64)


def high_loss_keep_mask(per_sample_loss: torch.Tensor, fraction: float) -> torch.Tensor:
    """Float mask (B,) that is 0 for the ``floor(fraction * B)`` largest losses and 1 elsewhere."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"fraction must lie in [0, 1), got {fraction}; fix it", key="fraction")
    batch = per_sample_loss.shape[0]
    removed = int(math.floor(fraction * batch))
    keep = torch.ones(batch, device=per_sample_loss.device)
    if removed:
        keep[torch.topk(per_sample_loss.detach(), removed).indices] = 0.0
    return keep
