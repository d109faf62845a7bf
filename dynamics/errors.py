"""Error types of the toolkit: each carries a one-line message that names the problem and the fix."""

from __future__ import annotations


class DynamicsError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ConfigError(DynamicsError, ValueError):
    """A configuration value, flag or file is invalid; the message says which and how to fix it."""


class StoreError(DynamicsError):
    """A run directory or its Zarr store is missing, unreadable or not a run of this toolkit."""


class NonFiniteLossError(DynamicsError, FloatingPointError):
    """Training produced a NaN or infinite loss or gradient; ``step`` is the first optimizer step where it appeared.

    ``kind`` is ``"loss"`` or ``"gradient"`` (the loss was finite, a gradient was not); ``where`` names the
    first parameter with a non-finite gradient or the first layer with non-finite activations, when known.
    """

    def __init__(self, step: int, value: float, kind: str = "loss", where: str | None = None) -> None:
        place = f" ({where})" if where else ""
        what = f"loss {value}" if kind == "loss" else f"gradient (loss {value})"
        super().__init__(f"non-finite {what} at step {step}{place}; lower the learning rate or check the data")
        self.step = step
        self.value = value
        self.kind = kind
        self.where = where
