"""``python -m figures [RUN_DIR ...] [--runs-root runs] [--out DIR]``: regenerate the overview figure of runs.

Without RUN_DIR arguments every run directory under ``--runs-root`` (any depth; a run directory holds
``meta.json`` and ``data.zarr``) is drawn, and so is every interference scale study there (a folder holding
``interference_study.json``, see ``analyses.interference``), redrawn from its runs into that folder (with
``--out``: ``<out>/<folder name>/``). Figures go to ``<run_dir>/overview.png/.pdf``, or with ``--out``
to ``<out>/<run_name>-overview.png/.pdf``. Each written path is printed. A run that cannot be read or
drawn prints one ``error: ...`` line on stderr; the others are still drawn, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from analyses.interference import SUMMARY_NAME, summarise, write_study
from analyses.overview import plot_overview
from dynamics import open_run
from dynamics.cli import UsageParser, one_line, one_line_errors
from dynamics.errors import ConfigError, DynamicsError

USAGE_ERROR = 2


def find_runs(root: Path) -> list[Path]:
    """Run directories under ``root`` (``root`` itself included), sorted; store internals are not searched."""
    return sorted(
        meta.parent
        for meta in root.rglob("meta.json")
        if (meta.parent / "data.zarr").is_dir() and "data.zarr" not in meta.parent.parts
    )


def output_names(runs: Sequence[Path]) -> list[str]:
    """Unique file-name prefixes: each run's folder name, with as many parent names as needed to tell apart."""
    parts = [run.resolve().parts for run in runs]
    depth = 1
    while True:
        names = ["-".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names) or depth >= max(len(p) for p in parts):
            return names
        depth += 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; a usage error raises ConfigError (one line, exit status 2, from :func:`main`)."""
    description = __doc__.split("\n\n")[1].replace("``", "")
    parser = UsageParser(prog="python -m figures", description=description)
    parser.add_argument(
        "run_dirs",
        nargs="*",
        type=Path,
        metavar="RUN_DIR",
        help="run directories to draw (default: every run under --runs-root)",
    )
    parser.add_argument(
        "--runs-root",
        type=Path,
        default=Path("runs"),
        help="where to look for runs when no RUN_DIR is given (default: runs)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="write <out>/<run_name>-overview.png/.pdf instead of into each run directory",
    )
    return parser.parse_args(argv)


def error(message: str) -> None:
    """One line on stderr, without disturbing a progress bar."""
    tqdm.write(f"error: {one_line(message)}", file=sys.stderr)


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Draw every requested run; returns the exit status (0, or 2 if anything failed)."""
    try:
        args = parse_args(argv)
    except ConfigError as err:
        error(str(err))
        return USAGE_ERROR
    if args.run_dirs:
        runs = list(args.run_dirs)
    elif not args.runs_root.is_dir():
        error(f"no runs found: --runs-root {args.runs_root} is not a directory; pass RUN_DIR or --runs-root")
        return USAGE_ERROR
    else:
        runs = find_runs(args.runs_root)
        if not runs:
            error(
                f"no runs found under {args.runs_root} (a run holds meta.json and data.zarr); "
                "pass RUN_DIR or --runs-root"
            )
            return USAGE_ERROR

    # Open every store first, so that bad paths are reported before the progress bar starts.
    opened = []
    failed = 0
    for run, name in zip(runs, output_names(runs), strict=True):
        try:
            opened.append((run, name, open_run(run)))
        except DynamicsError as err:
            error(str(err))
            failed += 1
    if args.out is not None and opened:
        try:
            args.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            error(f"cannot create --out {args.out} ({err.strerror or err}); choose a writable --out")
            return USAGE_ERROR

    for run, name, ds in tqdm(opened, desc="figures", unit="run", disable=None, dynamic_ncols=True):
        stem = run / "overview" if args.out is None else args.out / f"{name}-overview"
        try:
            ds = ds.load()
        except DynamicsError as err:  # a missing or damaged chunk, named with its array and rows
            error(str(err))
            failed += 1
            continue
        except Exception as err:  # zarr and its codecs raise many types for damaged chunks
            error(f"{run}/data.zarr is unreadable ({type(err).__name__}: {err}); the store is damaged")
            failed += 1
            continue
        failed += not draw(run, stem, partial(plot_overview, ds, stem))
    studies = [] if args.run_dirs else sorted(p.parent for p in args.runs_root.rglob(f"{SUMMARY_NAME}.json"))
    for study in studies:
        out = study if args.out is None else args.out / study.name
        failed += not draw(study, out / SUMMARY_NAME, lambda study=study, out=out: write_study(summarise(study), out))
    return USAGE_ERROR if failed else 0


def draw(source: Path, stem: Path, write: Callable[[], Sequence[Path]]) -> bool:
    """Write one figure (``write`` returns the files), print the files; on failure one error line and False."""
    try:
        paths = write()
    except DynamicsError as err:
        error(f"{source}: {err}")
        return False
    except OSError as err:
        error(f"cannot write {stem}.png/.pdf ({err.strerror or err}); choose a writable --out")
        return False
    for path in paths:
        tqdm.write(str(path))
    return True


if __name__ == "__main__":
    sys.exit(main())
