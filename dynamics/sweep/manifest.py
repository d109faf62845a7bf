"""A sweep's folder: ``sweep.json`` (what the grid is) and the state of each point's run (read from its run).

``SWEEP_DIR/sweep.json`` holds::

    {"name": ..., "file": <path of the sweep file>, "text": <its TOML text>, "description": ... or null,
     "base": {key: value}, "axes": {axis: [values]}, "conditions": {name: {key: value}},
     "points": [{"name": "pause-seed3", "run_dir": "pause-seed3", "condition": "pause" or null, "seed": 3,
                 "axes": {"seed": 3}, "settings": {every key that differs from RunConfig's default}}],
     "created": <ISO time the sweep was first started>}

``run_dir`` is relative to the sweep folder. Whether a point has run is not stored here: it is read from its
run's ``meta.json`` (:func:`dynamics.store.run_state`), so the manifest never disagrees with the runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dynamics.errors import StoreError
from dynamics.runinfo import now_iso
from dynamics.store import read_json, run_state, write_json_atomic
from dynamics.sweep.spec import Point, Sweep

MANIFEST = "sweep.json"


def point_entry(point: Point) -> dict[str, Any]:
    """A point as the manifest lists it."""
    return {
        "name": point.name,
        "run_dir": point.name,
        "condition": point.condition,
        "seed": point.config.seed,
        "axes": dict(point.axes),
        "settings": dict(point.settings),
    }


def write_manifest(sweep: Sweep, sweep_dir: Path) -> Path:
    """Write ``sweep_dir/sweep.json`` for ``sweep`` (atomically), keeping ``created`` of an earlier one."""
    path = Path(sweep_dir) / MANIFEST
    created = None
    if path.exists():
        try:
            created = read_json(path).get("created")
        except StoreError:
            created = None
    write_json_atomic(
        path,
        {
            "name": sweep.name,
            "file": str(sweep.file),
            "text": sweep.text,
            "description": sweep.description,
            "base": sweep.base,
            "axes": sweep.axes,
            "conditions": sweep.conditions,
            "points": [point_entry(point) for point in sweep.points],
            "created": created or now_iso(),
        },
    )
    return path


def read_manifest(sweep_dir: str | Path) -> dict[str, Any]:
    """The manifest of ``sweep_dir``; StoreError if it is missing or damaged."""
    manifest = read_json(Path(sweep_dir) / MANIFEST)
    if not isinstance(manifest.get("points"), list):
        raise StoreError(f"{Path(sweep_dir) / MANIFEST} lists no points; it is not a sweep manifest")
    return manifest


def point_states(sweep_dir: str | Path) -> dict[str, str]:
    """The state of every point of the sweep in ``sweep_dir`` (see :func:`run_state`), by point name."""
    sweep_dir = Path(sweep_dir)
    return {point["name"]: run_state(sweep_dir / point["run_dir"]) for point in read_manifest(sweep_dir)["points"]}
