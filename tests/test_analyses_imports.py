"""Analyses only read stores: importing any module of ``analyses/`` imports nothing that trains or builds models."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import analyses

TRAINING = (
    "dynamics.engine",
    "dynamics.collect",
    "dynamics.config",
    "dynamics.optim",
    "dynamics.checkpoint",
    "dynamics.recorder",
    "dynamics.probes",
    "dynamics.native",
    "dynamics.models",
    "dynamics.data",
    "dynamics.augment",
    "dynamics.steps",
    "dynamics.strategies",
    "dynamics.surface",
    "dynamics.studies",
)
"""Packages and modules that train, build models, load data sets or evaluate models (and their submodules)."""

MODULES = sorted(
    f"analyses.{path.stem}" for path in Path(analyses.__file__).parent.glob("*.py") if path.stem != "__init__"
)


def _imported_in_a_fresh_process(modules: list[str]) -> dict[str, list[str]]:
    """For each module, in order, the TRAINING modules its import added to ``sys.modules``."""
    script = textwrap.dedent(f"""
        import importlib, json, sys
        training = {TRAINING!r}
        def loaded():
            return {{name for name in sys.modules if any(name == t or name.startswith(t + ".") for t in training)}}
        added = {{}}
        for module in ["analyses", *{modules!r}]:
            before = loaded()
            importlib.import_module(module)
            added[module] = sorted(loaded() - before)
        print(json.dumps(added))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(analyses.__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_analyses_module_is_found() -> None:
    assert {"analyses.interference", "analyses.trajectory", "analyses.phase"} <= set(MODULES)


def test_no_analyses_module_imports_training_code() -> None:
    added = _imported_in_a_fresh_process(MODULES)
    assert set(added) == {"analyses", *MODULES}
    assert {module: names for module, names in added.items() if names} == {}


def test_the_dynamics_package_imports_the_recorder_only_when_asked() -> None:
    script = textwrap.dedent("""
        import sys
        import dynamics
        from dynamics import open_run, ConfigError
        assert "dynamics.recorder" not in sys.modules, "import dynamics loaded the recorder"
        from dynamics import Recorder
        assert Recorder.__module__ == "dynamics.recorder" and "Recorder" in dynamics.__all__
        try:
            dynamics.nonexistent
        except AttributeError as err:
            assert "nonexistent" in str(err)
        else:
            raise AssertionError("an unknown attribute of dynamics did not raise")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(analyses.__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
