"""What every command-line entry point of the toolkit shares: usage errors as one-line ConfigErrors."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from dynamics.errors import ConfigError


class UsageParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ConfigError (printed as one line, exit status 2, by the caller)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message}; see {self.prog} --help")

    def parse_known_args(self, args: Sequence[str] | None = None,
                         namespace: argparse.Namespace | None = None) -> tuple[argparse.Namespace, list[str]]:
        """argparse's parse, refusing a single-value option that got a list (``--out=--`` gives ``[]``)."""
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value: Any = getattr(parsed, action.dest, None)
            if action.option_strings and action.nargs is None and isinstance(value, list):
                self.error(f"argument {'/'.join(action.option_strings)}: expected one value, got '--'")
        return parsed, extras
