"""Grids of captures: a TOML sweep file, one run directory per point, a manifest, a local pool or submitit.

``python -m dynamics.sweep SWEEP.toml`` (:mod:`dynamics.sweep.__main__`) reads the file
(:mod:`~dynamics.sweep.spec`), checks every point, writes ``SWEEP_DIR/sweep.json``
(:mod:`~dynamics.sweep.manifest`) and runs the points that are not finished (:mod:`~dynamics.sweep.run`) as
``python -m dynamics.collect`` command lines (:mod:`~dynamics.sweep.command`) on an executor
(:mod:`~dynamics.sweep.executors`). Running it again continues it.
"""

from dynamics.sweep.manifest import MANIFEST, point_states, read_manifest, run_state
from dynamics.sweep.run import SweepReport, plan_sweep, run_sweep
from dynamics.sweep.spec import Point, Sweep, parse_sweep, read_sweep

__all__ = [
    "MANIFEST",
    "Point",
    "Sweep",
    "SweepReport",
    "parse_sweep",
    "plan_sweep",
    "point_states",
    "read_manifest",
    "read_sweep",
    "run_state",
    "run_sweep",
]
