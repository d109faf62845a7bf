"""The sweep files shipped in ``experiments/``: every key is a RunConfig field, every grid point of every condition
builds a valid configuration (``make_config`` and the strategies' checks), and together they serve every claim of
``analyses.claims`` in a quick CPU form (MNIST-1D, small) and a full GPU form."""

from __future__ import annotations

import itertools
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from analyses.claims import CLAIMS
from dynamics.config import RunConfig, make_config
from dynamics.data import DATASETS
from dynamics.models import MODELS
from dynamics.strategies import validate_strategies

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"
FILES = sorted([*EXPERIMENTS.glob("quick/*.toml"), *EXPERIMENTS.glob("full/*.toml")])
"""The claims' sweep files (``experiments/figures/`` holds the figures' quick sweeps: tests/test_figures.py)."""
FIELDS = {f.name for f in fields(RunConfig)}


def _load(path: Path) -> dict:
    return tomllib.loads(path.read_text())


def test_the_quick_and_full_forms_are_shipped():
    assert {path.parent.name for path in FILES} == {"quick", "full"}
    for form in ("quick", "full"):
        assert sorted(p.stem for p in FILES if p.parent.name == form) == sorted(
            claim.id for claim in CLAIMS if claim.kind == "paired"
        )


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_sweep_file_builds_valid_configs(path):
    sweep = _load(path)
    assert set(sweep) <= {"name", "description", "base", "axes", "conditions"}, set(sweep)
    assert sweep["name"] == f"{path.stem}-{path.parent.name}"
    base, axes, conditions = sweep["base"], sweep["axes"], sweep["conditions"]
    keys = set(base) | set(axes) | {key for settings in conditions.values() for key in settings}
    assert keys <= FIELDS, f"not RunConfig fields: {sorted(keys - FIELDS)}"
    assert axes["seed"] == [0, 1, 2, 3, 4]
    assert all(isinstance(values, list) and values for values in axes.values())
    claim = next(c for c in CLAIMS if sweep["name"] in c.sweeps)
    assert {claim.condition, claim.baseline} == set(conditions)
    for settings, combination in itertools.product(conditions.values(), itertools.product(*axes.values())):
        config = make_config({**base, **dict(zip(axes, combination, strict=True)), **settings})
        validate_strategies(config)
        assert config.dataset in DATASETS and config.model in MODELS
        if path.parent.name == "quick":
            assert config.dataset == "mnist1d" and config.epochs <= 15 and config.device != "cuda"
        else:
            assert config.dataset in ("cifar100", "tinyimagenet") and config.device == "cuda"
            assert config.data_dir  # a documented placeholder
            assert config.model in ("resnet18", "vit_tiny", "preact_resnet50")


def test_conditions_differ_only_in_the_strategy():
    """Within a file the two conditions share the base; each condition sets only strategy (or decay) keys."""
    for path in FILES:
        conditions = _load(path)["conditions"]
        for settings in conditions.values():
            assert set(settings) <= {
                "mixup_pause",
                "enp_epochs",
                "alpha_boost",
                "high_loss_removal",
                "plp",
                "plp_unit",
                "plp_k",
                "weight_decay",
                "cyclical_wd",
                "cyclical_factor",
            }, path


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_the_sweep_runner_accepts_the_file(path):
    """``python -m dynamics.sweep FILE`` reads it: every point checked as a capture would be, condition x seed."""
    spec = pytest.importorskip("dynamics.sweep.spec")
    sweep = spec.read_sweep(path)
    assert sweep.name == _load(path)["name"] and len(sweep.points) == 10
    assert {point.condition for point in sweep.points} == set(_load(path)["conditions"])
