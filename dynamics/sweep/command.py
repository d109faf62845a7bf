"""The command line of one point's run: ``python -m dynamics.collect`` with the point's settings as flags.

Both executors run exactly these arguments: the local pool as a subprocess, submitit inside its job's process
(:func:`dynamics.collect.main`). A fresh run replaces whatever its folder held (``--overwrite``); a continued
one is ``--resume RUN`` with the run's own ``config.json``. Runs show no progress bar and draw no overview
figure: the sweep shows its own progress, and ``python -m figures RUN`` draws a run's figure later.
"""

from __future__ import annotations

import dataclasses
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dynamics.collect import FLAGS, SWITCHES, build_parser, config_from_args
from dynamics.config import RunConfig
from dynamics.errors import ConfigError

MODULE = ("-m", "dynamics.collect")
QUIET = ("--no-progress", "--no-figure")


def _flag(key: str, value: Any) -> str:
    flag = FLAGS[key]
    if key in SWITCHES:
        return flag if value else "--no-" + flag.removeprefix("--")
    return f"{flag}={value!r}" if isinstance(value, float) else f"{flag}={value}"


def fresh_argv(config: RunConfig, settings: Mapping[str, Any], run_dir: Path) -> list[str]:
    """collect's arguments that capture ``config`` (given by its non-default ``settings``, plus its threads)
    into ``run_dir`` from scratch; checked to parse back to ``config`` exactly."""
    argv = [f"--out={run_dir}", "--overwrite", *QUIET, *(_flag(key, value) for key, value in settings.items())]
    if config.threads is not None:
        argv.append(_flag("threads", config.threads))
    parsed = config_from_args(build_parser().parse_args(argv))
    if parsed != config:
        differ = next(f.name for f in dataclasses.fields(config) if getattr(parsed, f.name) != getattr(config, f.name))
        raise ConfigError(
            f"the setting {differ}={getattr(config, differ)!r} does not survive collect's command line "
            f"(it reads {getattr(parsed, differ)!r}); give it another value"
        )
    return argv


def resume_argv(run_dir: Path) -> list[str]:
    """collect's arguments that continue the run in ``run_dir`` from its newest checkpoint."""
    return [f"--resume={run_dir}", *QUIET]


def shown(argv: Sequence[str]) -> str:
    """The whole command as a shell would take it (for logs and the dry run)."""
    return shlex.join([Path(sys.executable).name, *MODULE, *argv])
