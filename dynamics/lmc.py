"""``python -m dynamics.lmc RUN_DIR``: measure the linear-mode-connectivity instability of a run from its spawn states.

The run must have been trained with ``--lmc-spawn`` (``python -m dynamics.collect``), which keeps its training
state at each spawn step in ``RUN_DIR/lmc/``. For every spawn step not yet in ``RUN_DIR/lmc.json`` two children
train ``lmc_steps`` steps with different data orders and the test error along the straight line between them
is measured (:mod:`dynamics.studies.lmc`); ``--overwrite`` measures every spawn step again, children included.
Usage errors print one line and exit 2; a failed child training exits 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from analyses.lmc import LMC_FILE
from dynamics.cli import RUN_FAILED, UsageParser, fail, flag_message, one_line_errors
from dynamics.collect import FLAGS, SWITCHES
from dynamics.errors import ConfigError, DynamicsError
from dynamics.studies.lmc import measure, summary

USAGE_ERROR = 2


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status: 0, 1 (a child's training failed) or 2 (usage error)."""
    parser = UsageParser(
        prog="python -m dynamics.lmc",
        description="measure the linear-mode-connectivity instability of a run from its saved spawn states",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run trained with --lmc-spawn")
    parser.add_argument("--overwrite", action="store_true", help="measure every spawn step again, children included")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    try:
        args = parser.parse_args(argv)
        payload = measure(args.run_dir, overwrite=args.overwrite, progress=not args.no_progress)
    except ConfigError as err:
        fail(flag_message(err, {**FLAGS, "run_dir": "RUN_DIR"}, SWITCHES))
        return USAGE_ERROR
    except DynamicsError as err:
        fail(err)
        return RUN_FAILED
    print(summary(payload))
    print(args.run_dir / LMC_FILE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
