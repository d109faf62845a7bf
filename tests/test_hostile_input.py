"""Generated hostile flags and config files: every one is accepted or refused with one line, never a traceback.

``python -m dynamics.collect --check`` runs every start-up validation without training, so hundreds of
generated inputs run in-process in seconds; a few are repeated as real subprocesses.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamics.collect import main
from dynamics.config import RunConfig

KEYS = [field.name for field in fields(RunConfig)]
FLAGS = ["--" + key.replace("_", "-") for key in KEYS]
WORDS = [
    "auto",
    "cnn",
    "mlp",
    "mnist1d",
    "gaussian",
    "sgd",
    "adamw",
    "relu",
    "cosine",
    "batch",
    "pair",
    "elem",
    "iteration",
    "epoch",
    "cpu",
    "cuda",
    "default",
    "minimal",
    "nan",
    "inf",
    "-inf",
    "",
    "1:2",
    "2:1",
    "0:0",
    "a:b",
    "1e-5:8e-5",
    "-1:1",
    "nan:1",
    "10:20",
    "☃",
    "--",
    "0x10",
    "1_000",
]

numbers = st.one_of(st.integers(-(10**6), 10**6), st.floats(allow_nan=True, allow_infinity=True))
text_values = st.one_of(st.sampled_from(WORDS), numbers.map(str), st.text(max_size=8))
json_values = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.sampled_from(WORDS),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def run_main(argv: list[str], entry: Callable[[list[str]], int] = main) -> tuple[int, str]:
    """Exit status and stderr of a CLI entry point (default ``python -m dynamics.collect``) run in-process."""
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            status = entry(argv)
        except SystemExit as done:  # --help
            status = int(done.code or 0)
    return status, stderr.getvalue()


def assert_clean_outcome(status: int, stderr: str) -> None:
    assert status in (0, 2), (status, stderr)
    assert "Traceback" not in stderr
    if status == 2:
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), stderr


flag_lists = st.lists(
    st.tuples(st.sampled_from(FLAGS + ["--bogus", "--out", "--config", "--resume"]), text_values),
    min_size=1,
    max_size=5,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flags=flag_lists)
def test_generated_flags_never_crash(flags: list[tuple[str, str]], tmp_path: Path) -> None:
    argv = ["--check"]
    for flag, value in flags:
        if flag == "--out":
            value = str(tmp_path / "out")
        argv += [flag, value] if not value.startswith("-") else [f"{flag}={value}"]
    assert_clean_outcome(*run_main(argv))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.dictionaries(st.sampled_from(KEYS + ["epochz", "batch-size", "", "lr "]), json_values, max_size=6),
    as_toml=st.booleans(),
    garble=st.booleans(),
)
def test_generated_config_files_never_crash(payload: dict, as_toml: bool, garble: bool, tmp_path: Path) -> None:
    path = tmp_path / ("run.toml" if as_toml else "run.json")
    if as_toml:
        lines = [
            f"{json.dumps(key)} = {json.dumps(value)}"
            for key, value in payload.items()
            if value is not None and not isinstance(value, dict)
        ]
        text = "\n".join(lines)
    else:
        text = json.dumps(payload)
    path.write_text(text[: len(text) // 2] if garble else text)
    assert_clean_outcome(*run_main(["--check", "--config", str(path)]))


def test_check_prints_the_resolved_settings() -> None:
    status, _ = run_main(["--check", "--lr", "0.2"])
    assert status == 0
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        main(["--check", "--lr", "0.2", "--enp-epochs", "3"])
    resolved = json.loads(stdout.getvalue())
    assert resolved["lr"] == 0.2 and resolved["enp_epochs"] == 3 and resolved["dataset"] == "mnist1d"


def test_hostile_inputs_as_real_subprocesses(tmp_path: Path) -> None:
    for argv in (["--lr", "nan"], ["--cyclical-wd", "nan:1"], ["--mixup-alpha", "inf"], ["--width", "1e3"]):
        result = subprocess.run(
            [sys.executable, "-m", "dynamics.collect", "--check", *argv],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert_clean_outcome(result.returncode, result.stderr)
        assert result.returncode == 2, argv


@pytest.mark.parametrize("argv", [["--config=--"], ["--out=--"], ["--resume=--"], ["--lr=--"], ["--dataset=--"]])
def test_a_value_of_double_dash_is_a_usage_error(argv: list[str]) -> None:
    """argparse turns ``--flag=--`` into an empty list; every entry point must refuse it in one line."""
    status, stderr = run_main(["--check", *argv])
    assert status == 2 and stderr.count("\n") == 1 and "expected one value" in stderr, stderr


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("figures.__main__", ["--out=--"]),
        ("analyses.interference", ["--runs=--"]),
        ("figures.phase", ["--out=--"]),
        ("analyses.trajectory", ["--out=--"]),
    ],
)
def test_other_entry_points_refuse_double_dash_values(module: str, argv: list[str]) -> None:
    entry = importlib.import_module(module).main
    status, stderr = run_main(argv, entry)
    assert status == 2 and stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
