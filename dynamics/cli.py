"""What every command-line entry point of the toolkit shares: usage errors as one-line ConfigErrors, and the
translation of the library's parameter names into the entry point's flags."""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
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


RUN_FAILED = 1
"""Exit status of a command whose work failed (the settings were fine)."""


def one_line(text: object) -> str:
    """``text`` as one printable line: line breaks become spaces, other control characters escapes."""
    flat = " ".join(str(text).splitlines())
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in flat)


def fail(error: BaseException | str) -> None:
    """Print ``error: ...`` as exactly one printable line on stderr."""
    print("error: " + one_line(error), file=sys.stderr)


def os_error_message(err: OSError) -> str:
    """An OSError in one line: what failed, on which file, and the fix."""
    where = f" {err.filename}" if err.filename else ""
    return f"{err.strerror or err}:{where}; check the path, its permissions and the free space"


def one_line_errors(main: Callable[..., int]) -> Callable[..., int]:
    """The last safety net of an entry point ``main(argv) -> int``: whatever it lets escape ends as one
    ``error:`` line and exit status 1, never a traceback: an OSError or MemoryError as what failed, anything
    else as unexpected (a bug to report). ``--help``'s SystemExit and KeyboardInterrupt pass through."""

    @functools.wraps(main)
    def guarded(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except MemoryError as err:
            fail(f"out of memory ({type(err).__name__}: {err}); use smaller settings")
        except OSError as err:
            fail(os_error_message(err))
        except Exception as err:  # the safety net: a bug, reported in one line
            fail(f"unexpected {type(err).__name__}: {err}; please report it")
        return RUN_FAILED

    return guarded
