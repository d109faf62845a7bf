"""``python -m dynamics.collect``: train a built-in model with the Recorder on, then draw its overview.

With no arguments it captures the default run (MNIST-1D, 1-D CNN; see :class:`dynamics.config.RunConfig`)
into ``runs/<timestamp>-mnist1d-cnn-s0``. Settings come from defaults, then ``--config FILE`` (TOML or
JSON, same keys as the flags with underscores), then the flags. Usage errors print one line and exit 2;
a diverging loss marks the run failed (keeping every recorded step) and exits 1.

``--resume RUN_DIR`` continues an interrupted run from its newest checkpoint with the settings of its own
``config.json``; only ``--no-progress``, ``--no-figure`` and ``--check`` may come with it, since any other flag
would make the continued run differ from the one it continues.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from analyses.overview import ONLINE, run_period
from dynamics.cli import UsageParser, fail, flag_message, one_line_errors, os_error_message
from dynamics.config import SECTIONS, RunConfig, make_config, read_config_file
from dynamics.distributed import is_main_process
from dynamics.engine import RunResult, default_run_dir, train
from dynamics.errors import ConfigError, DynamicsError, NonFiniteLossError, StoreError, parameters_as
from dynamics.paths import check_path
from dynamics.store import open_run, read_json
from dynamics.strategies import validate_strategies
from figures.overview import NAME as OVERVIEW
from figures.overview import draw_overview
from figures.registry import FIGURE_DIR

USAGE_ERROR = 2
RUN_FAILED = 1


def _flag(key: str) -> str:
    return "--" + key.replace("_", "-")


FLAGS: dict[str, str] = {
    **{field.name: _flag(field.name) for field in fields(RunConfig)},
    "config": "--config",
    "run_dir": "--out",
    "resume": "--resume",
    "overwrite": "--overwrite",
}
"""The flag of each parameter the library's errors may name (RunConfig keys, train's run_dir and overwrite)."""
SWITCHES: frozenset[str] = frozenset(
    {"overwrite", *(field.name for field in fields(RunConfig) if str(field.type) == "bool")}
)


def usage_message(error: ConfigError) -> str:
    """A library ConfigError in this command line's words: the parameters it names become flags."""
    return flag_message(error, FLAGS, SWITCHES)


def build_parser() -> argparse.ArgumentParser:
    """The CLI parser: one argument group per RunConfig section, every field a flag whose default is 'not given'.

    Help texts, choices and sections come from the fields' metadata (:mod:`dynamics.config`).
    """
    parser = UsageParser(
        prog="python -m dynamics.collect", description=__doc__.splitlines()[0], argument_default=argparse.SUPPRESS
    )
    parser.add_argument(
        "--config",
        help="TOML or JSON file of settings, flat or one table per section "
        "([data], [optimisation], ...); flags override it",
    )
    parser.add_argument("--out", help="run directory (default runs/<timestamp>-<dataset>-<model>-s<seed>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--no-figure", action="store_true", help="skip the overview figure (python -m figures RUN_DIR draws it later)"
    )
    parser.add_argument(
        "--check", action="store_true", help="validate the settings, print them as JSON and exit without training"
    )
    parser.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue the interrupted run in RUN_DIR from its newest checkpoint, with its own "
        "config.json (only --no-progress, --no-figure and --check may be added)",
    )
    groups = {
        name: parser.add_argument_group(f"{name} settings", description) for name, description in SECTIONS.items()
    }
    defaults = RunConfig()
    for field in fields(RunConfig):
        meta = field.metadata
        text = f"{meta['help']} (default: {getattr(defaults, field.name)})".replace("%", "%%")
        group = groups[meta["section"]]
        if str(field.type) == "bool":
            group.add_argument(_flag(field.name), dest=field.name, action=argparse.BooleanOptionalAction, help=text)
            continue
        kind = {"int": int, "float": float}.get(str(field.type).removesuffix(" | None"), str)
        metavar = (
            "{" + ",".join(meta["choices"]) + "}" if "choices" in meta else meta.get("metavar", field.name.upper())
        )
        group.add_argument(_flag(field.name), dest=field.name, type=kind, help=text, metavar=metavar)
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """Defaults < config file < flags."""
    given: dict[str, Any] = vars(args)
    values: dict[str, Any] = {}
    if "config" in given:
        with parameters_as({"path": "config"}):
            values = read_config_file(given["config"])
    names = {field.name for field in fields(RunConfig)}
    values.update({key: value for key, value in given.items() if key in names})
    return make_config(values)


RESUME_COMPANIONS = ("resume", "no_progress", "no_figure", "check")


def resume_config(args: argparse.Namespace) -> RunConfig:
    """The settings of the run ``--resume`` continues, read from its ``config.json``."""
    extra = [name for name in vars(args) if name not in RESUME_COMPANIONS]
    if extra:
        raise ConfigError(
            f"--resume continues {args.resume} with its own config.json; drop "
            f"--{extra[0].replace('_', '-')} (other flags would change the run)"
        )
    try:
        return make_config(read_json(Path(args.resume) / "config.json"))
    except StoreError as err:
        raise ConfigError(f"--resume {args.resume}: {err}") from None


def report(result: RunResult, figure: tuple[Path, Path] | None) -> str:
    """The closing summary: accuracies, where the Enlightenment Period ended, and the paths."""
    period = run_period(open_run(result.run_dir))
    if period is None:
        enp = "unknown (no clean training accuracy was recorded)"
    elif period.method == ONLINE:
        enp = (
            f"ended at step {period.end_step} of {result.steps} ({period.fraction:.1%} of training; as the strategy "
            "tracked it while training)"
            if period.end_step is not None
            else "not ended (the strategy's period lasted the whole run)"
        )
    elif period.end_step is None:
        enp = f"not reached (smoothed training accuracy never reached {period.threshold:.0%})"
    else:
        enp = (
            f"ended at step {period.end_step} of {result.steps} ({period.fraction:.1%} of training; "
            f"first step with smoothed training accuracy >= {period.threshold:.0%})"
        )
    return "\n".join(
        [
            f"final accuracy       train {result.train_accuracy:.4f}   test {result.test_accuracy:.4f}",
            f"Enlightenment Period {enp}",
            f"run                  {result.run_dir.resolve()}",
            *(
                [f"overview figure      {figure[0].resolve()}", f"                     {figure[1].resolve()}"]
                if figure
                else []
            ),
        ]
    )


def lmc_report(run_dir: Path, progress: bool) -> str:
    """Measure the linear-mode-connectivity instability of the run just trained (:mod:`dynamics.studies.lmc`)
    and summarise it; under torchrun it is left for ``python -m dynamics.lmc`` (the children train in one process)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return f"lmc                  not measured under torchrun; run python -m dynamics.lmc {run_dir}"
    from dynamics.studies.lmc import measure, summary  # scipy and the children's training: only when asked

    return summary(measure(run_dir, progress=progress))


def _fail(error: BaseException | str) -> None:
    """Print ``error: ...`` as exactly one printable line on stderr (control characters escaped)."""
    fail(error)


def failed_run_note(run_dir: Path) -> str:
    """`` (run marked failed in RUN/meta.json; recorded steps kept)`` when the run got that far, else ''."""
    meta = run_dir / "meta.json"
    try:
        marked = read_json(meta).get("status") == "failed"
    except (DynamicsError, OSError, ValueError, AttributeError):
        marked = False
    return f" (run marked failed in {meta}; recorded steps kept)" if marked else ""


def runtime_message(err: Exception) -> str:
    """What an error raised while training means, and its fix, as flags."""
    text = f"{type(err).__name__}: {err}"
    if isinstance(err, MemoryError | torch.OutOfMemoryError) or "out of memory" in str(err).lower():
        return f"out of memory while training ({text}); lower --batch-size, --eval-batch-size or the model's size"
    if isinstance(err, OSError):
        return os_error_message(err)
    if isinstance(err, OverflowError | FloatingPointError) or "overflow" in str(err).lower():
        return f"a numeric overflow stopped the training ({text}); lower --lr or the setting that scales it"
    return f"unexpected {text}; please report it"


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status: 0, 1 (the run failed, marked so, its data kept) or 2 (usage error).

    Every failure prints one ``error:`` line, never a traceback.
    """
    try:
        args = build_parser().parse_args(argv)
        resume = "resume" in args
        if resume or "out" in args:  # before anything reads or writes there
            check_path(args.resume if resume else args.out, "resume" if resume else "run_dir")
        config = resume_config(args) if resume else config_from_args(args)
        validate_strategies(config)
        run_dir = Path(args.resume) if resume else Path(args.out) if "out" in args else default_run_dir(config)
        if "check" in args:
            print(json.dumps(config.to_dict(), indent=2))
            return 0
    except ConfigError as err:
        _fail(usage_message(err))
        return USAGE_ERROR
    try:
        result = train(
            config, run_dir, overwrite="overwrite" in args, progress="no_progress" not in args, resume=resume
        )
        if is_main_process():  # under torchrun, rank 0 reports and draws the run it wrote
            figure = None if "no_figure" in args else draw_overview(run_dir, run_dir / FIGURE_DIR / OVERVIEW)
            print(report(result, figure))
            if config.lmc_spawn is not None:
                print(lmc_report(run_dir, progress="no_progress" not in args))
    except ConfigError as err:
        _fail(usage_message(err))
        return USAGE_ERROR
    except NonFiniteLossError as err:
        _fail(f"{err} (run marked failed in {run_dir / 'meta.json'}; recorded steps kept)")
        return RUN_FAILED
    except DynamicsError as err:
        _fail(f"{err}{failed_run_note(run_dir)}")
        return RUN_FAILED
    except KeyboardInterrupt:
        print(
            f"interrupted; the run is marked failed and keeps every recorded step in {run_dir} "
            f"(continue it with --resume {run_dir})",
            file=sys.stderr,
        )
        return 130
    except Exception as err:  # OSError, MemoryError, overflow and the safety net: one line, the run marked failed
        _fail(f"{runtime_message(err)}{failed_run_note(run_dir)}")
        return RUN_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
