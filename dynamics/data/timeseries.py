"""A synthetic time-series classification set: waveform shape x frequency band, under phase, trend and noise.

Class ``c`` is one of four waveform shapes (sine, square, sawtooth, triangle) at one of two frequency
bands (low: 2-4 cycles per window, high: 6-9), drawn with a random phase, amplitude and frequency inside
its band, a random linear trend and additive Gaussian noise. The label depends on the shape and the
frequency, not on where the wave starts, so a model must learn translation-invariant features: a 1-D CNN
or a recurrent network solves it, a linear model does not.
"""

from __future__ import annotations

import math

import torch

from dynamics.data.base import Dataset
from dynamics.errors import ConfigError

SHAPES = ("sine", "square", "sawtooth", "triangle")
BANDS = ((2.0, 4.0), (6.0, 9.0))
NUM_CLASSES = len(SHAPES) * len(BANDS)


def _wave(shape: torch.Tensor, cycles: torch.Tensor, phase: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Unit-amplitude waves, one row per sample: ``shape`` indexes SHAPES, ``cycles`` per window of t in [0, 1)."""
    u = torch.frac(cycles[:, None] * t[None, :] + phase[:, None])  # position in the cycle, [0, 1)
    waves = torch.stack(
        [
            torch.sin(2 * math.pi * u),
            torch.where(u < 0.5, 1.0, -1.0),
            2 * u - 1,
            1 - 4 * (u - 0.5).abs(),
        ]
    )
    return waves.gather(0, shape[None, :, None].expand(1, -1, t.numel()))[0]


def make_timeseries(*, num_samples: int = 5000, length: int = 128, noise: float = 0.5, seed: int = 0) -> Dataset:
    """``num_samples`` balanced series shaped ``(N, 1, length)`` in 8 classes, split 80/20, seeded.

    ``noise`` is the standard deviation of the additive noise (amplitudes lie in 0.8..1.2).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 5 * NUM_CLASSES:
        raise ConfigError(
            f"timeseries num_samples must be an int >= {5 * NUM_CLASSES}, got {num_samples!r}; raise it",
            key="num_samples",
        )
    if isinstance(length, bool) or not isinstance(length, int) or length < 16:
        raise ConfigError(f"timeseries length must be an int >= 16, got {length!r}; raise it", key="length")
    if not (math.isfinite(noise) and noise >= 0):
        raise ConfigError(f"timeseries noise must be a finite number >= 0, got {noise!r}; pass one", key="noise")
    generator = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(num_samples, generator=generator)

    y = (torch.arange(num_samples) % NUM_CLASSES)[torch.randperm(num_samples, generator=generator)]
    shape, band = y % len(SHAPES), y // len(SHAPES)
    low, high = torch.tensor(BANDS).T
    cycles = low[band] + (high[band] - low[band]) * torch.rand(num_samples, generator=generator)
    t = torch.arange(length) / length
    x = uniform(0.8, 1.2)[:, None] * _wave(shape, cycles, uniform(0, 1), t)
    x = x + uniform(-1, 1)[:, None] * (t - 0.5)[None, :] + noise * torch.randn(num_samples, length, generator=generator)
    n_train = num_samples * 4 // 5
    x = x.unsqueeze(1).float()
    labels = tuple(f"{s}-{b}" for b in ("low", "high") for s in SHAPES)
    return Dataset("timeseries", x[:n_train], y[:n_train], x[n_train:], y[n_train:], NUM_CLASSES, labels=labels)
