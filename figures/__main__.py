"""``python -m figures [DIR ...] [--runs-root runs] [--out DIR] [--only NAME,...] [--workers N] [--quick]``.

Each DIR is a run (``meta.json`` and ``data.zarr``), a sweep (``sweep.json``; its runs are drawn too) or an
interference scale study (``interference_study.json``). Without DIR every such folder under ``--runs-root`` (any
depth) is drawn. Every registered figure (``figures.registry``) whose folder kind matches and whose data the
folder holds is drawn into ``<folder>/figures/<figure>.png/.pdf/.txt`` (with ``--out``:
``<out>/<folder name>/<figure>...``); ``--only`` picks figures by name. Each written file is printed. Runs still
being written are named in one warning and their figures stamped PARTIAL. A figure that cannot be drawn prints
one ``error: ...`` line (a damaged store once for its run); the others are still drawn, and the exit status is 2.
``--workers N`` draws N folders at a time, each in its own process (``figures.drawing``).

``--quick`` first trains what the quick form of every figure needs (``figures.quick``: the sweeps in
``experiments/figures/`` through the sweep machinery, loss surfaces and a reduced interference scale study,
into ``--out``, default ``figures-quick``; a second call reuses the finished runs), then draws everything and
says which registered figures were drawn and which were not, and why.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from dynamics.cli import UsageParser, one_line_errors
from dynamics.errors import ConfigError
from dynamics.sweep.run import available_cores
from figures.drawing import coverage, draw_all, error, expand, find_folders
from figures.registry import FigureSpec, load_figures

USAGE_ERROR = 2
QUICK_OUT = Path("figures-quick")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; a usage error raises ConfigError (one line, exit status 2, from :func:`main`)."""
    description = __doc__.split("\n\n")[1].replace("``", "")
    parser = UsageParser(prog="python -m figures", description=description)
    parser.add_argument("dirs", nargs="*", type=Path, metavar="DIR", help="run, sweep or study folders to draw")
    parser.add_argument(
        "--runs-root",
        type=Path,
        default=Path("runs"),
        help="where to look for folders when no DIR is given (default: runs)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write <out>/<folder name>/<figure>.png/.pdf instead of into each folder's figures/; "
        f"with --quick: where the quick runs go (default {QUICK_OUT})",
    )
    parser.add_argument("--only", default=None, metavar="NAME,...", help="draw only these figures")
    parser.add_argument("--quick", action="store_true", help="train the quick runs every figure needs, then draw")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="folders drawn at a time, in as many processes (default 1; with --quick also the runs trained at a "
        "time, default: the CPU cores)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    if args.quick and args.dirs:
        raise ConfigError("--quick draws the runs it trains; drop the DIR arguments (or drop --quick)")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    return args


def chosen(figures: dict[str, FigureSpec], only: str | None) -> dict[str, FigureSpec]:
    """The figures ``--only`` names (all without it); ConfigError naming the registered ones otherwise."""
    if only is None:
        return figures
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in figures]
    if unknown or not names:
        raise ConfigError(f"--only names no registered figure {unknown or only!r}; choose from {', '.join(figures)}")
    return {name: figures[name] for name in names}


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Draw every figure of the requested folders; returns the exit status (0, or 2 if anything failed)."""
    start = time.monotonic()
    failed = 0
    try:
        args = parse_args(argv)
        figures = chosen(load_figures(), args.only)
        if args.quick:
            from figures.quick import prepare  # trains through the sweep machinery: only when asked

            out = args.out or QUICK_OUT
            paths, failed = prepare(
                out, workers=args.workers or available_cores(), progress=not args.no_progress, error=error
            )
            args.out = None
        elif args.dirs:
            paths = list(args.dirs)
        elif not args.runs_root.is_dir():
            raise ConfigError(
                f"no runs found: --runs-root {args.runs_root} is not a directory; pass DIR or --runs-root"
            )
        else:
            paths = find_folders(args.runs_root)
            if not paths:
                raise ConfigError(
                    f"no runs found under {args.runs_root} (a run holds meta.json and data.zarr, a sweep "
                    "sweep.json, a study interference_study.json); pass DIR or --runs-root"
                )
    except ConfigError as err:
        error(str(err))
        return USAGE_ERROR
    bad: list[str] = []
    folders = expand(paths, bad.append)
    for message in bad:
        error(message)
    workers = args.workers or (available_cores() if args.quick else 1)
    drawn, draw_failed = draw_all(folders, figures, args.out, workers=workers, progress=not args.no_progress)
    if args.quick:
        print(coverage(figures, folders, drawn))
        print(f"python -m figures --quick took {time.monotonic() - start:.0f} s")
    return USAGE_ERROR if failed or bad or draw_failed else 0


if __name__ == "__main__":
    sys.exit(main())
