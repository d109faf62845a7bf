"""All configured strategies of a run, composed: what the built-in loop asks before and after each step.

The loop calls, per epoch, :meth:`StrategyPlan.start_epoch` (sets the epoch's scheduled hyperparameters on
the optimizer) and, per step, :meth:`prepare` (mixing), :meth:`loss` (temperature, focal loss, High-Loss
Removal), :meth:`after_backward` (clipping; the recorded ``grad_norm`` is taken before it),
:meth:`after_step` (PLP, period detection) and :meth:`scalars` (the hyperparameters applied, recorded
per step). The ``clean_probe`` signal of the period detection scores samples handed over once by
:meth:`attach_clean_probe`. Every strategy composes with every other; invalid settings fail in
:func:`validate_strategies` before training starts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from dynamics.errors import ConfigError, parameters_as
from dynamics.steps import evaluate_split
from dynamics.strategies.cyclical import Range, cyclical_eta
from dynamics.strategies.enlightenment import EnlightenmentTracker, high_loss_keep_mask
from dynamics.strategies.focal import CyclicalFocalLoss
from dynamics.strategies.mixup import MixInfo, Mixup, soft_targets
from dynamics.strategies.plp import PLP

if TYPE_CHECKING:  # dynamics.config imports the strategies' choices
    from dynamics.config import RunConfig

MIXUP_KEYS = {"prob": "mix_prob", "mode": "mix_mode"}
"""Mixup's arguments that RunConfig names otherwise (the others have the same names)."""
TRACKER_KEYS = {"epochs": "enp_epochs", "tau": "enp_tau", "threshold": "enp_threshold", "interval": "enp_probe_every"}
PROBE_SEED_OFFSET = 6007
"""Added to ``data_seed`` to draw the ``clean_probe`` samples (the same for every training seed)."""
FOCAL_KEYS = {
    "gamma_hc": "focal_gamma_hc",
    "gamma_pos": "focal_gamma_pos",
    "gamma_neg": "focal_gamma_neg",
    "label_smoothing": "focal_label_smoothing",
}
PLP_KEYS = {"k": "plp_k", "unit": "plp_unit", "weights_only": "plp_weights_only"}


def _range(text: str | None, name: str, *, positive: bool = False) -> Range | None:
    return None if text is None else Range.parse(text, name, positive=positive)


def _mixer(config: RunConfig, num_classes: int, seed: int = 0) -> Mixup:
    with parameters_as(MIXUP_KEYS):
        return Mixup(
            num_classes,
            config.mixup_alpha,
            config.cutmix_alpha,
            config.mix_prob,
            config.switch_prob,
            config.mix_mode,
            config.label_smoothing,
            seed=seed,
        )


def _tracker(config: RunConfig) -> EnlightenmentTracker | None:
    """The period of ``config``: observed every ``enp_probe_every`` steps (``clean_probe``) or every step."""
    if config.enp_epochs is None:
        return None
    interval = config.enp_probe_every if config.enp_signal == "clean_probe" else 1
    with parameters_as(TRACKER_KEYS):
        return EnlightenmentTracker(config.enp_epochs, config.enp_tau, config.enp_threshold, interval)


def validate_strategies(config: RunConfig) -> None:
    """Raise ConfigError for a strategy setting or combination that cannot run, before any data is loaded.

    Errors name RunConfig keys (``enp_epochs``), also those raised by the strategies' own classes.
    """
    mixing = config.mixup_alpha > 0 or config.cutmix_alpha > 0
    _mixer(config, 2)
    period_strategies = [
        name
        for name, on in (
            ("mixup_pause", config.mixup_pause),
            ("alpha_boost", config.alpha_boost is not None),
            ("high_loss_removal", config.high_loss_removal is not None),
        )
        if on
    ]
    if period_strategies and config.enp_epochs is None:
        raise ConfigError(
            f"{period_strategies[0]} acts during the Enlightenment Period; set enp_epochs to a "
            "number of epochs or 'auto'",
            key=(period_strategies[0], "enp_epochs"),
        )
    for key in ("enp_probe_samples", "enp_probe_every"):
        value = getattr(config, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be an integer >= 1, got {value!r}; fix it", key=key)
    if config.enp_epochs is not None:
        _tracker(config)
        if config.enp_epochs != "auto" and config.enp_epochs > config.epochs:
            raise ConfigError(
                f"enp_epochs {config.enp_epochs} exceeds epochs {config.epochs}; shorten enp_epochs",
                key=("enp_epochs", "epochs"),
            )
    if config.mixup_pause and not mixing:
        raise ConfigError(
            "mixup_pause pauses Mixup, but no Mixup is configured; set mixup_alpha (e.g. 0.4)",
            key=("mixup_pause", "mixup_alpha"),
        )
    if config.mixup_pause and config.alpha_boost is not None:
        raise ConfigError(
            "mixup_pause and alpha_boost contradict each other; choose one", key=("mixup_pause", "alpha_boost")
        )
    if config.alpha_boost is not None and not (math.isfinite(config.alpha_boost) and config.alpha_boost > 0):
        raise ConfigError(
            f"alpha_boost must be a finite number > 0, got {config.alpha_boost}; fix it", key="alpha_boost"
        )
    if config.high_loss_removal is not None and not 0 <= config.high_loss_removal < 1:
        raise ConfigError(
            f"high_loss_removal takes a fraction in [0, 1), got {config.high_loss_removal}; fix it",
            key="high_loss_removal",
        )
    if not (math.isfinite(config.cyclical_factor) and config.cyclical_factor >= 1):
        raise ConfigError(
            f"cyclical_factor must be a finite number >= 1, got {config.cyclical_factor}; fix it", key="cyclical_factor"
        )
    _range(config.cyclical_wd, "cyclical_wd")
    _range(config.cyclical_temperature, "cyclical_temperature", positive=True)
    _range(config.cyclical_clip, "cyclical_clip", positive=True)
    _range(config.cyclical_aug, "cyclical_aug")
    if config.cyclical_wd is not None and config.weight_decay > 0:
        raise ConfigError(
            "weight_decay and cyclical_wd both set the weight decay; keep one", key=("weight_decay", "cyclical_wd")
        )
    sizes = _range(config.cyclical_batch_size, "cyclical_batch_size", positive=True)
    if sizes is not None and (sizes.low != int(sizes.low) or sizes.high != int(sizes.high)):
        raise ConfigError(
            f"cyclical_batch_size takes integers MIN:MAX, got {config.cyclical_batch_size}; fix it",
            key="cyclical_batch_size",
        )
    mixes = mixing or config.alpha_boost is not None or config.cyclical_aug is not None
    if mixes and config.mix_mode == "pair" and config.cyclical_batch_size is None and config.batch_size % 2:
        raise ConfigError(
            f"mix_mode='pair' mixes pairs of samples and needs an even batch_size, got "
            f"{config.batch_size}; make batch_size even or choose another mix_mode",
            key=("mix_mode", "batch_size"),
        )
    with parameters_as(FOCAL_KEYS):
        CyclicalFocalLoss(
            config.focal_gamma_hc, config.focal_gamma_pos, config.focal_gamma_neg, config.focal_label_smoothing
        )
    if config.plp and not config.plp_k > 0:
        raise ConfigError(f"plp_k must be > 0, got {config.plp_k}; pass e.g. 1.0", key="plp_k")


def check_strategies_fit_data(config: RunConfig, input_shape: Sequence[int], train_samples: int) -> None:
    """Raise ConfigError for a strategy that the loaded data cannot support (CutMix, batch sizes)."""
    if config.cutmix_alpha > 0 and len(input_shape) != 3:
        raise ConfigError(
            f"CutMix needs image data (C, H, W), but samples are shaped {tuple(input_shape)}; "
            "mix with mixup_alpha instead of cutmix_alpha",
            key=("cutmix_alpha", "mixup_alpha"),
        )
    sizes = _range(config.cyclical_batch_size, "cyclical_batch_size", positive=True)
    if sizes is not None and sizes.high > train_samples:
        raise ConfigError(
            f"cyclical_batch_size MAX {int(sizes.high)} exceeds the {train_samples} training samples; lower it",
            key="cyclical_batch_size",
        )


def per_sample_cross_entropy(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy per sample for hard (N,) or soft (N, C) targets; sequences (N, T, V) average over T."""
    if output.ndim == 3:
        tokens = F.cross_entropy(output.flatten(0, 1), target.flatten(0, 1), reduction="none")
        return tokens.view(output.shape[0], -1).mean(1)
    return F.cross_entropy(output, target, reduction="none")


class StrategyPlan:
    """The strategies of ``config`` bound to one model and optimizer."""

    def __init__(
        self, config: RunConfig, model: nn.Module, optimizer: torch.optim.Optimizer, num_classes: int, seed: int
    ) -> None:
        self.config = config
        self.model = model
        self.optimizer = optimizer
        self.num_classes = num_classes
        self.epochs = config.epochs
        self.mixer = _mixer(config, num_classes, seed + 7919)
        self.tracker = _tracker(config)
        self._clean_probe: tuple[torch.Tensor, torch.Tensor, Callable | None, str] | None = None
        with parameters_as(PLP_KEYS):
            self.plp = (
                PLP(model.parameters(), config.plp_k, config.plp_unit, config.plp_weights_only) if config.plp else None
            )
        with parameters_as(FOCAL_KEYS):
            self.focal = (
                CyclicalFocalLoss(
                    config.focal_gamma_hc,
                    config.focal_gamma_pos,
                    config.focal_gamma_neg,
                    config.focal_label_smoothing,
                    reduction="none",
                )
                if config.cyclical_focal
                else None
            )
        self.wd_range = _range(config.cyclical_wd, "cyclical_wd")
        self.temperature_range = _range(config.cyclical_temperature, "cyclical_temperature", positive=True)
        self.clip_range = _range(config.cyclical_clip, "cyclical_clip", positive=True)
        self.batch_range = _range(config.cyclical_batch_size, "cyclical_batch_size", positive=True)
        self.aug_range = _range(config.cyclical_aug, "cyclical_aug")
        self.eta = 1.0
        self.temperature = 1.0
        self.clip_norm: float | None = None
        self.aug_alpha: float | None = None
        self._mix = MixInfo(0.0, 0.0, "none")
        self._removed = 0.0
        self._plp_applied = 0.0
        self._epoch = 0
        self._step_in_period = False

    @property
    def detects_on_clean_probe(self) -> bool:
        """Whether the period is detected online on the ``clean_probe`` signal (it then needs its samples)."""
        return self.tracker is not None and self.tracker.epochs == "auto" and self.config.enp_signal == "clean_probe"

    def attach_clean_probe(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        prepare: Callable[[torch.Tensor, bool], torch.Tensor] | None = None,
        precision: str = "fp32",
    ) -> None:
        """Hand over the training split for the ``clean_probe`` signal; a no-op for other settings.

        Keeps ``enp_probe_samples`` samples (all when the split is smaller), drawn once from ``data_seed``
        on the host, so the same samples for every training seed and no draw from torch's global RNG.
        ``prepare(batch, False)`` turns stored samples into unaugmented model inputs; ``precision`` is
        the autocast of the evaluation (:func:`dynamics.steps.evaluate_split`).
        """
        if not self.detects_on_clean_probe:
            return
        count = min(self.config.enp_probe_samples, len(x))
        generator = torch.Generator().manual_seed(self.config.data_seed + PROBE_SEED_OFFSET)
        index = torch.randperm(len(x), generator=generator)[:count].sort().values.to(x.device)
        self._clean_probe = (x[index], y[index], prepare, precision)

    def batch_size(self, epoch: int) -> int:
        """Samples per step in ``epoch`` (cyclical when ``cyclical_batch_size`` is set)."""
        if self.batch_range is None:
            return self.config.batch_size
        return int(round(self.batch_range.at(epoch, self.epochs, self.config.cyclical_factor)))

    def start_epoch(self, epoch: int, step: int) -> None:
        """Set the epoch's scheduled values (weight decay goes onto every parameter group)."""
        self._epoch = epoch
        factor = self.config.cyclical_factor
        self.eta = cyclical_eta(epoch, self.epochs, factor)
        if self.wd_range is not None:
            for group in self.optimizer.param_groups:
                group["weight_decay"] = self.wd_range.at(epoch, self.epochs, factor)
        if self.temperature_range is not None:
            self.temperature = self.temperature_range.at(epoch, self.epochs, factor)
        if self.clip_range is not None:
            self.clip_norm = self.clip_range.at(epoch, self.epochs, factor)
        if self.aug_range is not None:
            self.aug_alpha = self.aug_range.at(epoch, self.epochs, factor)
        if self.tracker is not None:
            self.tracker.start_epoch(epoch, step)

    @property
    def in_period(self) -> bool:
        """Whether the current step is inside the Enlightenment Period (False when no period is configured)."""
        return self.tracker is not None and self.tracker.active

    def _mix_alpha(self) -> float | None:
        """Alpha override of this step: 0 pauses, None keeps the configured alpha."""
        if self.in_period and self.config.mixup_pause:
            return 0.0
        if self.in_period and self.config.alpha_boost is not None:
            return self.config.alpha_boost
        return self.aug_alpha

    def prepare(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's inputs and targets: mixed with soft targets, soft (label smoothing), or as given."""
        self._step_in_period = self.in_period
        alpha = self._mix_alpha()
        if y.ndim == 1 and alpha != 0.0 and (self.mixer.enabled or alpha is not None):
            with parameters_as(MIXUP_KEYS):
                x, target, self._mix = self.mixer(x, y, alpha)
            return x, target
        self._mix = MixInfo(0.0, 0.0, "none")
        if self.config.label_smoothing > 0 and y.ndim == 1:
            return x, soft_targets(y, self.num_classes, self.config.label_smoothing)
        return x, y

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The training loss: temperature-scaled logits, focal or cross-entropy, minus removed samples."""
        logits = output / self.temperature if self.temperature != 1.0 else output
        if self.focal is not None:
            per_sample = self.focal(logits, target, self.eta)
        else:
            per_sample = per_sample_cross_entropy(logits, target)
        self._removed = 0.0
        if self._step_in_period and self.config.high_loss_removal:
            keep = high_loss_keep_mask(per_sample, self.config.high_loss_removal)
            kept = len(keep) - math.floor(self.config.high_loss_removal * len(keep))
            self._removed = 1.0 - kept / len(keep)
            return (per_sample * keep).sum() / kept
        return per_sample.mean()

    def after_backward(self) -> None:
        """Clip the gradient norm to the epoch's scheduled bound (after the probes saw it)."""
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)

    def after_step(
        self, step: int, output: torch.Tensor, labels: torch.Tensor, epoch_end: bool, skipped: bool = False
    ) -> None:
        """After ``optimizer.step()``, before the step is recorded: PLP and the online period detection.

        PLP observes after every step (``unit="iteration"``) or after the last step of each epoch
        (``"epoch"``), so a prediction shows in that step's recorded ``update_norm`` and ``plp_applied``.
        The period detection observes at the steps :meth:`EnlightenmentTracker.due` names: ``clean_probe``
        evaluates the probe set on the updated (and PLP-predicted) model, ``batch`` scores ``output``, the
        step's forward pass, against ``labels``. A ``skipped`` step (non-finite loss or gradient, no update)
        is neither a PLP point nor observed.
        """
        self._plp_applied = 0.0
        if skipped:
            return
        if self.plp is not None and (self.plp.unit == "iteration" or epoch_end):
            self._plp_applied = float(self.plp.observe())
        if self.tracker is not None and self.tracker.due(step):
            self.tracker.observe(step, self._period_accuracy(output, labels))
            if not self.tracker.active:
                self._clean_probe = None  # the period is over: nothing is evaluated any more

    def _period_accuracy(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The accuracy the period detection smooths (``enp_signal``), a device tensor: nothing is read back."""
        if self.config.enp_signal == "batch":
            return (output.detach().argmax(-1) == labels).float().mean()
        if self._clean_probe is None:
            raise ConfigError(
                "enp_signal='clean_probe' scores a fixed clean probe set, but none was attached; call "
                "StrategyPlan.attach_clean_probe(x_train, y_train) before training or set enp_signal='batch'",
                key="enp_signal",
            )
        x, y, prepare, precision = self._clean_probe
        batch_size = self.config.eval_batch_size
        return evaluate_split(self.model, x, y, batch_size, prepare=prepare, precision=precision)[1]

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint needs beyond the optimizer: the mixer's generator, period detection, PLP points.

        The per-epoch values (cyclical schedules) are set again by :meth:`start_epoch`.
        """
        return {
            "mixer": self.mixer.rng.bit_generator.state,
            "tracker": None if self.tracker is None else self.tracker.state_dict(),
            "plp": None if self.plp is None else self.plp.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved."""
        self.mixer.rng.bit_generator.state = state["mixer"]
        if self.tracker is not None:
            device = next(iter(self.model.parameters()), torch.empty(0)).device
            self.tracker.load_state_dict(state["tracker"], device=device)
        if self.plp is not None:
            self.plp.load_state_dict(state["plp"])

    def scalars(self) -> dict[str, float | torch.Tensor]:
        """Hyperparameters applied at this step, recorded under their own names.

        With an auto period, ``enp_accuracy`` is the smoothed accuracy the detection held at the step (a
        device tensor, so nothing is read back; NaN after the period and before the first observation).
        """
        config = self.config
        weight_decay = float(self.optimizer.param_groups[0].get("weight_decay", 0.0))
        values: dict[str, float | torch.Tensor] = {"weight_decay": weight_decay}
        if self.mixer.enabled or config.alpha_boost is not None or self.aug_range is not None:
            values["mixup_alpha"] = self._mix.alpha
            values["mix_applied"] = self._mix.applied
        if self.tracker is not None:
            values["enp_active"] = float(self._step_in_period)
            if self.tracker.epochs == "auto":  # the smoothed accuracy the detection held (device tensor)
                smoothed = self.tracker.smoothed
                inside = self._step_in_period and smoothed is not None
                values["enp_accuracy"] = smoothed if inside else math.nan
        if config.high_loss_removal is not None:
            values["removed_frac"] = self._removed
        if self.plp is not None:
            values["plp_applied"] = self._plp_applied
        if self.temperature_range is not None:
            values["temperature"] = self.temperature
        if self.clip_range is not None:
            values["clip_norm"] = float(self.clip_norm)
        if self.focal is not None:
            values["focal_eta"] = self.eta
        if self.batch_range is not None:
            values["batch_size"] = float(self.batch_size(self._epoch))
        return values
