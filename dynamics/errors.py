"""Error types of the toolkit: each carries a one-line message that names the problem and the fix."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any


class DynamicsError(Exception):
    """Base class of every error the toolkit raises on purpose."""


class ConfigError(DynamicsError, ValueError):
    """A configuration value or file is invalid; the one-line message says which and how to fix it.

    The library speaks in parameters: a message names the RunConfig key or function argument
    (``mixup_alpha must be >= 0, got -1``), never a command-line flag. ``key`` is the parameter the error
    is about, or a sequence of them when the fix involves several; ``keys`` holds them all and ``key`` the
    first. A command-line front end rewrites each of them, where the message names it, into its own flag
    (:func:`dynamics.cli.flag_message`): so a message names a parameter in ``keys`` only where it means the
    parameter, as ``name`` or ``name=value``.
    """

    def __init__(self, message: str, key: str | Sequence[str] | None = None) -> None:
        super().__init__(message)
        self.keys: tuple[str, ...] = (key,) if isinstance(key, str) else tuple(key or ())
        self.key: str | None = self.keys[0] if self.keys else None

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle with the keys (a worker process's error keeps them)."""
        return type(self), (str(self), self.keys or None)

    def renamed(self, names: Mapping[str, str]) -> ConfigError:
        """The same error naming each parameter of ``keys`` that ``names`` maps by its new name.

        ``name`` and ``name=value`` in the message become ``new`` and ``new=value``; see :func:`parameters_as`.
        """
        text = str(self)
        for key in self.keys:
            if key in names:
                new = names[key]
                text, _ = replace_name(text, key, lambda value, new=new: new if value is None else f"{new}={value}")
        return ConfigError(text, tuple(names.get(key, key) for key in self.keys) or None)


def replace_name(text: str, name: str, replace: Callable[[str | None], str]) -> tuple[str, int]:
    """Replace each mention of the parameter ``name`` in ``text``: ``name`` or ``name=value`` as a whole word
    (not part of ``other_name``, ``name-x`` or ``obj.name``), by ``replace(value)`` (``value`` None for a bare
    name; quotes around a value are dropped). Returns the text and the number of mentions."""
    pattern = rf"(?<![\w.-]){re.escape(name)}(?:=(['\"]?)([^\s;,)'\"]+)\1)?(?![\w-])"
    return re.subn(pattern, lambda match: replace(match.group(2)), text)


@contextmanager
def parameters_as(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a ConfigError about a parameter in ``names`` naming the caller's parameter instead.

    A caller that passes its own settings to a function uses it to keep errors in its own terms::

        with parameters_as({"epochs": "enp_epochs", "tau": "enp_tau"}):
            EnlightenmentTracker(config.enp_epochs, config.enp_tau)

    so ``epochs must be >= 0`` from the tracker reaches the user as ``enp_epochs must be >= 0``.
    """
    try:
        yield
    except ConfigError as err:
        if not any(key in names for key in err.keys):
            raise
        raise err.renamed(names) from err


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
