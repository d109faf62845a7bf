"""What every command-line entry point of the toolkit shares: usage errors as one-line ConfigErrors."""

from __future__ import annotations

import argparse

from dynamics.errors import ConfigError


class UsageParser(argparse.ArgumentParser):
    """argparse whose usage errors raise ConfigError (printed as one line, exit status 2, by the caller)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message}; see {self.prog} --help")
