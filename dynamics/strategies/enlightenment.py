"""The Enlightenment Period as training sees it, and the strategies that act only during it.

The period is ``[0, end)``: given in epochs (``enp_epochs=N``), or detected online (``auto``) as the first
step at which the exponential moving average of a training accuracy (time constant ``tau`` steps, the same
smoothing as :func:`analyses.enlightenment.smooth_ema`: a gap of ``g`` steps between two observations weighs
the new one by ``1 - exp(-g / tau)``) reaches ``threshold``. Which accuracy is the ``signal`` (:data:`SIGNALS`):

- ``clean_probe`` (default): a fixed set of unmixed, unaugmented training samples (the same for every
  training seed), scored in eval mode without gradient every ``interval`` steps, after the update. Mixing
  never enters it, so Mixup, Mixup Pause, Alpha Boost and High-Loss Removal runs are measured alike;
- ``batch``: the step's own forward pass against its labels, every step, at no extra cost. It is clean
  under Mixup Pause (no mixing during the period) and High-Loss Removal alone (removal only changes the
  loss), but under Mixup or Alpha Boost the prediction on a mixed input is scored against each sample's
  own label, a mixed signal that rises later than the clean one.

The average stays on the device; the detection reads one number per observation, i.e. every ``interval``
steps, and only while the period lasts: after it ends nothing is evaluated or read back.

High-Loss Removal leaves the ``fraction`` of each batch with the largest per-sample losses out of the
loss (``floor(fraction * B)`` samples; ties broken by ``torch.topk``).
"""

from __future__ import annotations

import math

import torch

from dynamics.errors import ConfigError

SIGNALS = ("clean_probe", "batch")
"""The accuracies the online detection can smooth (see the module docstring); ``clean_probe`` is the default."""


class EnlightenmentTracker:
    """Says whether the period is active; ``epochs`` is an int or ``"auto"``.

    In auto mode the caller scores an accuracy at every step for which :meth:`due` is true (every
    ``interval`` steps) and hands it to :meth:`observe`.
    """

    def __init__(self, epochs: int | str, tau: float = 10.0, threshold: float = 0.5, interval: int = 1) -> None:
        if epochs != "auto" and (isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0):
            raise ConfigError(f"epochs must be an int >= 0 or 'auto', got {epochs!r}; fix it", key="epochs")
        if not tau > 0:
            raise ConfigError(f"tau must be > 0, got {tau}; pass e.g. 10", key="tau")
        if not 0 < threshold <= 1:
            raise ConfigError(f"threshold must lie in (0, 1], got {threshold}; pass e.g. 0.5", key="threshold")
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ConfigError(f"interval must be an int >= 1 (steps), got {interval!r}; pass e.g. 5", key="interval")
        self.epochs = epochs
        self.tau = tau
        self.alpha = 1.0 - math.exp(-1.0 / tau)
        """Weight of a new observation one step after the previous one."""
        self.threshold = threshold
        self.interval = interval
        self.end_step: int | None = None
        """First step outside the period once it is known (auto: the detected step + 1)."""
        self._epoch = 0
        self._smoothed: torch.Tensor | None = None
        self._last_step: int | None = None

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

    @property
    def smoothed(self) -> torch.Tensor | None:
        """The average the detection last compared with the threshold (0-d float64 on the device), or None."""
        return self._smoothed

    def due(self, step: int) -> bool:
        """Whether the accuracy of ``step`` should be observed: auto mode, period open, ``step % interval == 0``."""
        return self.epochs == "auto" and self.end_step is None and step % self.interval == 0

    def observe(self, step: int, accuracy: torch.Tensor) -> None:
        """Feed an accuracy of ``step`` (auto mode); ends the period when the average reaches the threshold.

        Reads the average back to the host once per call (the only synchronisation of the detection).
        """
        if self.epochs != "auto" or self.end_step is not None:
            return
        accuracy = accuracy.detach().double()
        if self._smoothed is None:
            self._smoothed = accuracy
        else:
            gap = step - self._last_step if self._last_step is not None else self.interval
            alpha = self.alpha if gap == 1 else 1.0 - math.exp(-gap / self.tau)
            self._smoothed = self._smoothed + alpha * (accuracy - self._smoothed)
        self._last_step = step
        if float(self._smoothed) >= self.threshold:
            self.end_step = step + 1

    def state_dict(self) -> dict[str, object]:
        """What a checkpoint needs to continue the detection."""
        smoothed = None if self._smoothed is None else float(self._smoothed)
        return {"end_step": self.end_step, "epoch": self._epoch, "smoothed": smoothed, "last_step": self._last_step}

    def load_state_dict(self, state: dict[str, object], device: torch.device | str | None = None) -> None:
        """Continue from :meth:`state_dict`; the float64 average is restored exactly, onto ``device``."""
        self.end_step = state["end_step"]
        self._epoch = state["epoch"]
        self._last_step = state.get("last_step")
        smoothed = state["smoothed"]
        self._smoothed = None if smoothed is None else torch.tensor(smoothed, dtype=torch.float64, device=device)


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
