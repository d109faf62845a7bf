"""``python -m dynamics.sweep SWEEP.toml``: run a grid of captures, resumably, on a local pool or submitit.

Every point of the sweep file is checked before anything runs; a problem prints one ``error:`` line naming
the file, the point and the fix, and exits 2. The runs go to ``--out`` (default ``sweeps/<name>``), one
directory per point, with the manifest ``sweep.json``; finished runs are kept, so running the same command
again continues a stopped sweep. Exits 0 when every run finished, 1 when some did not, 130 on Ctrl-C.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from dynamics.cli import UsageParser, fail, flag_message, one_line_errors
from dynamics.errors import ConfigError, DynamicsError
from dynamics.sweep.command import shown
from dynamics.sweep.executors import CLUSTERS, EXECUTORS
from dynamics.sweep.run import SweepReport, available_cores, plan_sweep, run_sweep, run_threads
from dynamics.sweep.spec import read_sweep

USAGE_ERROR = 2
RUN_FAILED = 1
INTERRUPTED = 130
FLAGS = {
    "sweep_dir": "--out",
    "executor": "--executor",
    "cluster": "--submitit-cluster",
    "workers": "--workers",
    "threads": "--threads",
}
"""The flag of each parameter of :func:`dynamics.sweep.run_sweep` its errors may name."""


def build_parser() -> UsageParser:
    """The command line."""
    parser = UsageParser(
        prog="python -m dynamics.sweep",
        description="Run a grid of captures described in a TOML sweep file, resumably, on a local pool or submitit.",
    )
    parser.add_argument("sweep", metavar="SWEEP.toml", help="the sweep file: name, [base], [axes], [conditions.NAME]")
    parser.add_argument("--out", help="the sweep folder (default sweeps/<name of the sweep>)")
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="local",
        help="local: a pool of --workers collect processes on this machine; submitit: Slurm job arrays "
        "(or local jobs, see --submitit-cluster) (default: local)",
    )
    parser.add_argument(
        "--submitit-cluster",
        choices=CLUSTERS,
        help="submitit's cluster (default: Slurm where available, else local)",
    )
    parser.add_argument("--workers", type=int, default=1, help="runs at a time (default 1)")
    parser.add_argument(
        "--threads",
        type=int,
        help=f"torch threads of each run (default: threads in [base], else cores // --workers; {available_cores()} "
        "cores here)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check the file and show what each point would do; run nothing"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar of the sweep")
    return parser


def summary(report: SweepReport, baseline: str | None) -> str:
    """The closing lines: counts, failures with their logs, the manifest and the analysis to run next."""
    total = len(report.sweep.points)
    lines = [
        f"sweep {report.sweep.name}: {len(report.finished)} of {total} runs finished "
        f"({len(report.ran)} now, in {report.seconds:.0f} s), {len(report.failed)} failed"
        + (f", {len(report.busy)} being written by other processes" if report.busy else "")
    ]
    for name, (error, log) in report.failed.items():
        lines.append(f"failed    {name}: {error} (log {log})")
    for name in report.busy:
        lines.append(f"running   {name} is written by another process; run this command again when it ends")
    if report.failed:
        lines.append("          run this command again to retry the failed runs (finished runs are kept)")
    lines.append(f"manifest  {report.manifest}")
    command = ["python", "-m", "analyses.compare", str(report.sweep_dir)]
    if baseline is not None:
        command += ["--baseline", baseline]
    lines.append(f"next      {shlex.join(command)}")
    return "\n".join(lines)


@one_line_errors
def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status (an OSError, e.g. a full disk in the sweep folder: one line, 1)."""
    try:
        args = build_parser().parse_args(argv)
        if args.submitit_cluster is not None and args.executor != "submitit":
            raise ConfigError("--submitit-cluster needs --executor submitit; add it or drop --submitit-cluster")
        sweep = read_sweep(args.sweep)
        sweep_dir = Path(args.out) if args.out is not None else Path("sweeps") / sweep.name
        if args.dry_run:
            local = args.executor == "local" or args.submitit_cluster == "local"
            for step in plan_sweep(sweep, sweep_dir, run_threads(sweep, args.workers, args.threads, local)):
                print(f"{step.point.name}: {step.state}, {step.action}")
                for attempt in step.attempts:
                    print(f"    {shown(attempt)}")
            print(f"{len(sweep.points)} points; sweep folder {sweep_dir} (dry run: nothing was run or written)")
            return 0
        report = run_sweep(
            sweep,
            sweep_dir,
            executor=args.executor,
            workers=args.workers,
            threads=args.threads,
            cluster=args.submitit_cluster,
            progress=not args.no_progress,
        )
    except ConfigError as err:
        fail(flag_message(err, FLAGS))
        return USAGE_ERROR
    except DynamicsError as err:
        fail(str(err))
        return RUN_FAILED
    except KeyboardInterrupt:
        print(
            "interrupted; finished runs are kept and unfinished ones are continued by running this command again",
            file=sys.stderr,
        )
        return INTERRUPTED
    print(summary(report, next(iter(sweep.conditions), None)))
    return 0 if report.complete else RUN_FAILED


if __name__ == "__main__":
    sys.exit(main())
