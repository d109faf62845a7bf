"""Error types of the toolkit: each carries a one-line message that names the problem and the fix."""

from __future__ import annotations


class DynamicsError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ConfigError(DynamicsError, ValueError):
    """A configuration value, flag or file is invalid; the message says which and how to fix it."""


class StoreError(DynamicsError):
    """A run directory or its Zarr store is missing, unreadable or not a run of this toolkit."""


class NonFiniteLossError(DynamicsError, FloatingPointError):
    """Training produced a NaN or infinite loss; ``step`` is the first optimizer step where it appeared."""

    def __init__(self, step: int, value: float) -> None:
        super().__init__(f"non-finite loss {value} at step {step}; lower the learning rate or check the data")
        self.step = step
        self.value = value
