"""Mixup and CutMix on the device, batched (after timm's ``mixup.py``), with soft targets.

Each sample ``i`` is mixed with its mirror ``B-1-i`` of the same batch::

    x~_i = lam_i x_i + (1 - lam_i) x_{B-1-i}          (Mixup, lam ~ Beta(alpha, alpha))
    x~_i = x_i with a box pasted from x_{B-1-i}         (CutMix, lam = 1 - box area / image area)
    y~_i = lam_i y_i + (1 - lam_i) y_{B-1-i}            (one-hot targets, label-smoothed if asked)

Modes: ``batch`` draws one lam (and one box) per batch; ``pair`` one per mirrored pair (both members get
the same lam, each keeps its own image as the major part); ``elem`` one per sample. ``prob`` is the chance
of mixing a batch (``batch``) or a sample/pair (``pair``/``elem``); when both alphas are positive, CutMix
is chosen with probability ``switch_prob``. Random draws come from a private NumPy generator on the host
(a handful of numbers per step) so that mixing never reads back from the device and never perturbs
torch's global RNG. CutMix needs images shaped (N, C, H, W).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from dynamics.errors import ConfigError

MODES = ("batch", "pair", "elem")


@dataclass(frozen=True)
class MixInfo:
    """What one call applied: the alpha in force, the fraction of samples mixed, the kind, and the strength.

    ``strength`` is the mean over samples of min(lambda, 1 - lambda) (CutMix: of the pasted area fraction),
    in [0, 0.5]: 0 when nothing was mixed, 0.5 for even halves.
    """

    alpha: float
    applied: float
    kind: str
    strength: float = 0.0


def soft_targets(target: torch.Tensor, num_classes: int, smoothing: float = 0.0) -> torch.Tensor:
    """One-hot (N, C) float targets with ``smoothing`` spread uniformly (timm's convention)."""
    off = smoothing / num_classes
    return F.one_hot(target, num_classes).float() * (1.0 - smoothing) + off


class Mixup:
    """Callable ``(x, y) -> (x_mixed, soft_y, MixInfo)`` applying Mixup/CutMix to a batch on its device.

    Args:
        num_classes: classes of the integer targets.
        mixup_alpha: Beta(alpha, alpha) concentration of Mixup; 0 disables Mixup.
        cutmix_alpha: Beta(alpha, alpha) concentration of CutMix; 0 disables CutMix.
        prob: probability of mixing (per batch, pair or sample, by ``mode``).
        switch_prob: probability of CutMix instead of Mixup when both are enabled.
        mode: ``"batch"``, ``"pair"`` or ``"elem"``.
        label_smoothing: smoothing of the one-hot targets before mixing.
        seed: seed of the private generator.
    """

    def __init__(
        self,
        num_classes: int,
        mixup_alpha: float = 1.0,
        cutmix_alpha: float = 0.0,
        prob: float = 1.0,
        switch_prob: float = 0.5,
        mode: str = "batch",
        label_smoothing: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not all(math.isfinite(a) and a >= 0 for a in (mixup_alpha, cutmix_alpha)):
            bad = "mixup_alpha" if not (math.isfinite(mixup_alpha) and mixup_alpha >= 0) else "cutmix_alpha"
            value = mixup_alpha if bad == "mixup_alpha" else cutmix_alpha
            raise ConfigError(f"{bad} must be a finite number >= 0, got {value}; fix it", key=bad)
        for name, value in (("prob", prob), ("switch_prob", switch_prob)):
            if not 0 <= value <= 1:
                raise ConfigError(f"{name} must lie in [0, 1], got {value}; fix it", key=name)
        if mode not in MODES:
            raise ConfigError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}", key="mode")
        if not 0 <= label_smoothing < 1:
            raise ConfigError(
                f"label_smoothing must lie in [0, 1), got {label_smoothing}; fix it", key="label_smoothing"
            )
        self.num_classes = num_classes
        self.mixup_alpha = mixup_alpha
        self.cutmix_alpha = cutmix_alpha
        self.prob = prob
        self.switch_prob = switch_prob
        self.mode = mode
        self.label_smoothing = label_smoothing
        self.rng = np.random.default_rng(seed)

    @property
    def enabled(self) -> bool:
        """Whether any mixing can happen."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def _kind(self) -> str:
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            return "cutmix" if self.rng.random() < self.switch_prob else "mixup"
        return "cutmix" if self.cutmix_alpha > 0 else "mixup"

    def _lams(self, count: int, alpha: float) -> np.ndarray:
        """``count`` lams, 1.0 where the sample is left unmixed (with probability 1 - prob)."""
        lam = self.rng.beta(alpha, alpha, size=count) if alpha > 0 else np.ones(count)
        keep = self.rng.random(count) >= self.prob
        return np.where(keep, 1.0, lam)

    def __call__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        alpha: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, MixInfo]:
        """Mix a batch. ``alpha`` overrides the alpha of the chosen kind for this call (Alpha Boost)."""
        batch = x.shape[0]
        targets = soft_targets(y, self.num_classes, self.label_smoothing)
        if self.prob == 0 or alpha == 0 or (alpha is None and not self.enabled):
            return x, targets, MixInfo(0.0, 0.0, "none")
        kind = self._kind()
        if kind == "cutmix" and x.ndim != 4:
            raise ConfigError(
                f"CutMix needs images shaped (N, C, H, W), got {tuple(x.shape)}; mix with mixup_alpha "
                "instead of cutmix_alpha",
                key=("cutmix_alpha", "mixup_alpha"),
            )
        used_alpha = (self.cutmix_alpha if kind == "cutmix" else self.mixup_alpha) if alpha is None else alpha
        if self.mode == "batch":
            lam = np.full(batch, self._lams(1, used_alpha)[0])
        elif self.mode == "pair":
            if batch % 2:
                raise ConfigError(
                    f"mode='pair' needs an even batch size, got {batch}; mix an even batch or choose another mode",
                    key="mode",
                )
            half = self._lams(batch // 2, used_alpha)
            lam = np.concatenate([half, half[::-1]])
        else:
            lam = self._lams(batch, used_alpha)
        mixed_x, lam = self._cutmix(x, lam) if kind == "cutmix" else (self._mixup(x, lam), lam)
        lam_t = torch.as_tensor(lam, dtype=targets.dtype).to(targets.device, non_blocking=True).unsqueeze(1)
        mixed_y = lam_t * targets + (1 - lam_t) * targets.flip(0)
        strength = float(np.mean(np.minimum(lam, 1.0 - lam)))
        return mixed_x, mixed_y, MixInfo(float(used_alpha), float(np.mean(lam < 1.0)), kind, strength)

    @staticmethod
    def _mixup(x: torch.Tensor, lam: np.ndarray) -> torch.Tensor:
        shape = (len(lam),) + (1,) * (x.ndim - 1)
        lam_t = torch.as_tensor(lam, dtype=x.dtype).to(x.device, non_blocking=True).reshape(shape)
        return lam_t * x + (1 - lam_t) * x.flip(0)

    def _cutmix(self, x: torch.Tensor, lam: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """Paste a box of the mirror sample; returns the mixed batch and the area-corrected lams."""
        batch, _, height, width = x.shape
        cut = np.sqrt(1.0 - lam)
        cut_h, cut_w = (height * cut).astype(int), (width * cut).astype(int)
        cy, cx = self.rng.integers(0, height, batch), self.rng.integers(0, width, batch)
        if self.mode == "pair":  # both members of a pair use the same box
            half = batch // 2
            cy[half:], cx[half:] = cy[:half][::-1], cx[:half][::-1]
        elif self.mode == "batch":
            cy[:], cx[:] = cy[0], cx[0]
        top, bottom = np.clip(cy - cut_h // 2, 0, height), np.clip(cy + cut_h // 2, 0, height)
        left, right = np.clip(cx - cut_w // 2, 0, width), np.clip(cx + cut_w // 2, 0, width)
        corrected = 1.0 - (bottom - top) * (right - left) / (height * width)
        bounds = torch.as_tensor(np.stack([top, bottom, left, right]), device=x.device)
        rows = torch.arange(height, device=x.device).view(1, height, 1)
        cols = torch.arange(width, device=x.device).view(1, 1, width)
        inside = (
            (rows >= bounds[0].view(-1, 1, 1))
            & (rows < bounds[1].view(-1, 1, 1))
            & (cols >= bounds[2].view(-1, 1, 1))
            & (cols < bounds[3].view(-1, 1, 1))
        )
        mixed = torch.where(inside.unsqueeze(1), x.flip(0), x)
        return mixed, np.where(lam < 1.0, corrected, 1.0)
