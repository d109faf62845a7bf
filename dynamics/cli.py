"""What every command-line entry point of the toolkit shares: usage errors as one-line ConfigErrors, and the
translation of the library's parameter names into the entry point's flags."""

from __future__ import annotations

import argparse
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from dynamics.errors import ConfigError, replace_name


class UsageParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ConfigError (printed as one line, exit status 2, by the caller)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message}; see {self.prog} --help")

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """argparse's parse, refusing a single-value option that got a list (``--out=--`` gives ``[]``)."""
        parsed, extras = super().parse_known_args(args, namespace)
        for action in self._actions:
            value: Any = getattr(parsed, action.dest, None)
            if action.option_strings and action.nargs is None and isinstance(value, list):
                self.error(f"argument {'/'.join(action.option_strings)}: expected one value, got '--'")
        return parsed, extras


def flag_message(error: ConfigError, flags: Mapping[str, str], switches: Collection[str] = ()) -> str:
    """``error``'s message in the command line's words: each parameter of ``error.keys`` becomes its flag.

    The library names parameters (``mixup_alpha must be >= 0``); ``flags`` maps each parameter to the flag
    that sets it (``{"mixup_alpha": "--mixup-alpha", "run_dir": "--out"}``) and ``switches`` lists those whose
    flag is an on/off switch. Where the message names a parameter of ``error.keys``, ``name=value`` becomes
    ``--flag value`` (for a switch ``name=True`` becomes ``--name`` and ``name=False`` ``--no-name``) and a bare
    ``name`` becomes ``--flag``; a parameter with a flag that the message does not name is appended as
    ``(--flag)``. Parameters without a flag (a function argument the command line never sets) stay as they are.
    """
    text = str(error)
    unnamed: list[str] = []
    for key in error.keys:
        flag = flags.get(key)
        if flag is None:
            continue

        def as_flag(value: str | None, key: str = key, flag: str = flag) -> str:
            if value is None:
                return flag
            if key in switches and value in ("True", "False"):
                return flag if value == "True" else "--no-" + flag.removeprefix("--")
            return f"{flag} {value}"

        text, count = replace_name(text, key, as_flag)
        if not count:
            unnamed.append(flag)
    return f"{text} ({', '.join(unnamed)})" if unnamed else text
