"""A careless or hostile user at the command line: every input ends in exit 0, or in exit 1 or 2 with exactly one
``error:`` line on stderr, never a traceback.

The reported failures are reproduced as real ``python -m dynamics.collect`` subprocesses (started together by the
module's first test, collected by its last ones, so that they start up while the in-process tests run): tracebacks
from ``--lr 1e300``, a seed of 2**70, an over-long ``--out``, unreadable ``--data-dir``
paths, and unbounded memory from ``--width 1000000000`` or ``--depth 1000000``. Then hypothesis draws command
lines from the whole option space, extremes included (huge, negative, NaN and infinite numbers, empty strings,
unknown choices, unicode, paths that are files, FIFOs or over-long, random subsets of flags), and runs them
in-process: most with ``--check`` (every start-up validation, no training), some as tiny training runs (200
samples, one epoch). Usage errors exit 2; a failed run exits 1 with ``meta.json`` saying ``failed`` and its
store still readable. The last test asserts (and names) how many generated command lines ran.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynamics.collect import main
from dynamics.config import RunConfig
from dynamics.errors import StoreError
from dynamics.store import open_run, read_json

QUICK = ["--epochs", "1", "--batch-size", "32", "--no-progress", "--no-figure"]
TINY = [*QUICK, "--num-samples", "200"]
"""A training run of five steps (about half a second in-process)."""
EXAMPLES: dict[str, Counter[int]] = {"check": Counter(), "train": Counter()}
"""Exit statuses of the generated command lines run so far, by kind; the last test asserts their number."""
MIN_EXAMPLES = 300
PROPERTY = {
    "derandomize": True,
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture],
}


# --- running the command line ----------------------------------------------------------------------------------


def run_main(argv: list[str], entry: Callable[[list[str]], int] = main) -> tuple[int, str]:
    """Exit status and stderr of a CLI entry point run in-process (stdout discarded)."""
    stderr, stdout = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        try:
            status = entry(argv)
        except SystemExit as done:  # --help
            status = int(done.code or 0)
    return status, stderr.getvalue()


def assert_one_line(status: int, stderr: str, argv: object = None) -> None:
    """Exit 0, or exit 1/2 with exactly one line on stderr, an ``error:`` line; never a traceback."""
    assert "Traceback" not in stderr, (argv, stderr)
    assert status in (0, 1, 2), (argv, status, stderr)
    if status:
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, stderr)


def assert_failed_run_kept(run_dir: Path) -> None:
    """A run that exited 1 after it started is marked failed in meta.json and its store opens."""
    if not (run_dir / "meta.json").exists():
        return  # it failed before the Recorder started: nothing was written
    assert read_json(run_dir / "meta.json")["status"] == "failed"
    try:
        open_run(run_dir)
    except StoreError as err:  # pragma: no cover - the assertion's message
        pytest.fail(f"the failed run's store does not open: {err}")


@contextlib.contextmanager
def torch_state_kept() -> Iterator[None]:
    """Restore what an in-process training run changes process-wide: torch's threads and random generator."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.set_rng_state(rng)


# --- hostile paths -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Paths a careless user gives: files, a directory inside a file, a FIFO, over-long names and paths."""
    root = tmp_path_factory.mktemp("hostile")
    (root / "file").write_text("not a directory\n")
    (root / "empty").write_text("")
    (root / "dir").mkdir()
    os.mkfifo(root / "fifo")
    deep = root.joinpath(*(["d" * 200] * 21))
    return {
        "@file": str(root / "file"),
        "@empty": str(root / "empty"),
        "@in_file": str(root / "file" / "sub"),
        "@dir": str(root / "dir"),
        "@fifo": str(root / "fifo"),
        "@missing": str(root / "missing" / "x"),
        "@long_name": str(root / ("n" * 300)),
        "@long_path": str(deep),
        "@nul": str(root / "a\0b"),
        "@unicode": str(root / "☃ run\n\t"),
        "@devnull": os.devnull,
    }


PATH_TOKENS = ["@file", "@empty", "@in_file", "@dir", "@fifo", "@missing", "@long_name", "@long_path", "@unicode"]


def resolve(value: str, places: dict[str, str]) -> str:
    return places.get(value, value)


# --- the reported failures, as real subprocesses ------------------------------------------------------------------

CASES: dict[str, tuple[list[str], int, list[str]]] = {
    # name: (argv, exit status, words of the error line); "@..." are the paths of `places`, "@out" a fresh --out
    "lr 1e300": (["--lr", "1e300", "--out", "@out"], 2, ["--lr must be at most", "1e+300"]),
    "seed 2**70": (["--seed", str(2**70), "--out", "@out"], 2, ["--seed must lie in [0, 2**63 - 1]", str(2**70)]),
    "out name over NAME_MAX": (
        ["--out", "@long_name"],
        2,
        ["--out", "has a name of 300 bytes", "choose another --out"],
    ),
    "data-dir inside a file": (
        ["--dataset", "cifar10", "--model", "mlp", "--data-dir", "@in_file", "--out", "@out"],
        2,
        ["--data-dir"],
    ),
    "width 1e9": (["--width", "1000000000", "--out", "@out"], 2, ["cannot fit", "GB", "lower --width", "parameters"]),
    "depth 1e6": (["--depth", "1000000", "--out", "@out"], 2, ["--depth 1000000", "lower --depth"]),
}


@pytest.fixture(scope="module")
def launched(places: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, tuple]]:
    """Each case of CASES started as ``python -m dynamics.collect``, all at once; the in-process tests run while
    they start up, and :func:`test_reported_failures_end_in_one_line` collects them at the end of the module."""
    root = tmp_path_factory.mktemp("cases")
    started = {}
    for index, (name, (argv, _, _)) in enumerate(CASES.items()):
        out = root / f"run{index}"
        args = [str(out) if value == "@out" else resolve(value, places) for value in argv]
        base = QUICK if "--data-dir" in argv else TINY
        command = [sys.executable, "-m", "dynamics.collect", *base, *args]
        process = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started[name] = (process, out)
    yield started
    for process, _ in started.values():
        if process.poll() is None:  # pragma: no cover - only when a test stopped early
            process.kill()
            process.communicate()


def test_reported_failures_start_as_subprocesses(launched: dict[str, tuple]) -> None:
    assert set(launched) == set(CASES)


def test_an_overflow_while_training_ends_in_one_line_and_keeps_the_failed_run(tmp_path: Path) -> None:
    """AdamW's first step divides lr by 1 - beta1: --lr 3e38 overflows float32 inside torch (a RuntimeError)."""
    out = tmp_path / "run"
    with torch_state_kept():
        status, stderr = run_main([*TINY, "--optimizer", "adamw", "--lr", "3e38", "--out", str(out)])
    assert_one_line(status, stderr)
    assert status == 1, stderr
    for word in ("numeric overflow", "lower --lr", "run marked failed"):
        assert word in stderr, (word, stderr)
    assert read_json(out / "meta.json")["status"] == "failed"
    open_run(out)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--data-seed", "-1"], ["--data-seed must lie in"]),
        (["--sketch-seed", str(2**63)], ["--sketch-seed must lie in"]),
        (["--seed", str(2**63 - 1)], None),
        (["--weight-decay", "1e39"], ["--weight-decay must be at most"]),
        (["--optimizer", "adamw", "--lr", "1e30", "--weight-decay", "1e10"], ["--lr * --weight-decay"]),
        (["--out", "@long_path"], ["--out", "bytes long as an absolute path"]),
        (["--out", "@nul"], ["--out", "NUL"]),
        (["--out", ""], ["--out is empty"]),
        (["--resume", "@long_name"], ["--resume", "has a name of 300 bytes"]),
        (["--dataset", "text", "--data-dir", "@long_name"], ["--data-dir", "has a name of 300 bytes"]),
        (["--dataset", "text", "--data-dir", "@long_path"], ["--data-dir"]),
    ],
)
def test_usage_errors_found_at_check(argv: list[str], words: list[str] | None, places: dict[str, str]) -> None:
    status, stderr = run_main(["--check", *(resolve(value, places) for value in argv)])
    assert_one_line(status, stderr, argv)
    if words is None:
        assert status == 0, stderr
        return
    assert status == 2, stderr
    for word in words:
        assert word in stderr, (word, stderr)


@pytest.mark.parametrize(
    ("dataset", "token"),
    [("text", "@fifo"), ("text", "@empty"), ("text", "@dir"), ("imagefolder", "@fifo"), ("tinyimagenet", "@file")],
)
def test_data_paths_that_are_no_data_are_usage_errors(
    dataset: str, token: str, places: dict[str, str], tmp_path: Path
) -> None:
    model = "lm" if dataset == "text" else "mlp"
    argv = [*QUICK, "--dataset", dataset, "--model", model, "--data-dir", places[token], "--out", str(tmp_path / "r")]
    status, stderr = run_main(argv)
    assert_one_line(status, stderr, argv)
    assert status == 2 and ("--data-dir" in stderr or places[token] in stderr), stderr


def test_an_os_error_reading_the_data_names_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Whatever the loader meets (EACCES, EIO, ENOTDIR, ...), the run is refused naming --data-dir."""

    def unreadable(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "data" / "train"))

    monkeypatch.setattr("dynamics.engine.load_dataset", unreadable)
    argv = [*QUICK, "--dataset", "imagefolder", "--model", "mlp", "--data-dir", str(tmp_path / "data")]
    status, stderr = run_main([*argv, "--out", str(tmp_path / "r")])
    assert_one_line(status, stderr)
    assert status == 2 and "Permission denied" in stderr and "check --data-dir" in stderr, stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a chmod 000 directory")
def test_an_unreadable_data_dir_is_a_usage_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "train" / "a").mkdir(parents=True)
    data.chmod(0)
    try:
        argv = [*QUICK, "--dataset", "imagefolder", "--model", "mlp", "--data-dir", str(data)]
        status, stderr = run_main([*argv, "--out", str(tmp_path / "r")])
    finally:
        data.chmod(0o755)
    assert_one_line(status, stderr)
    assert status == 2 and "--data-dir" in stderr, stderr


def test_an_error_during_the_run_is_one_line_and_keeps_the_failed_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """OSError, MemoryError and unexpected errors raised while training: exit 1, one line, the run marked failed."""
    from dynamics.recorder import Recorder

    step = Recorder.step
    for error, words in (
        (OSError(5, "Input/output error", "/mnt/x"), ["Input/output error: /mnt/x"]),
        (MemoryError(), ["out of memory"]),
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), ["out of memory"]),
        (OverflowError("int too large"), ["numeric overflow"]),
        (ZeroDivisionError("division by zero\nsecond line"), ["unexpected ZeroDivisionError", "please report it"]),
    ):

        def failing(self: Recorder, *args: object, error: Exception = error, **kwargs: object) -> None:
            if self.steps_done >= 2:
                raise error
            step(self, *args, **kwargs)

        monkeypatch.setattr(Recorder, "step", failing)
        out = tmp_path / type(error).__name__
        with torch_state_kept():
            status, stderr = run_main([*TINY, "--out", str(out)])
        assert_one_line(status, stderr, error)
        assert status == 1, stderr
        for word in [*words, "run marked failed"]:
            assert word in stderr, (word, stderr)
        assert read_json(out / "meta.json")["status"] == "failed"
        assert open_run(out).sizes["step"] == 2


# --- the other entry points ----------------------------------------------------------------------------------------

ENTRY_POINTS = [
    "analyses.phase",
    "analyses.trajectory",
    "analyses.interference",
    "figures.__main__",
    "dynamics.surface",
    "dynamics.studies.interference_scale",
]


@pytest.mark.parametrize("module", ENTRY_POINTS)
@pytest.mark.parametrize("token", ["@long_name", "@long_path", "@nul", "@in_file", "@fifo", "@unicode"])
def test_other_entry_points_refuse_hostile_paths_in_one_line(module: str, token: str, places: dict[str, str]) -> None:
    path = places[token]
    argv = {
        "analyses.interference": ["--runs", path, "--no-progress"],
        "figures.__main__": ["--runs-root", path],
        "dynamics.studies.interference_scale": ["--root", path, "--no-progress", "--train-only", "--steps", "1"],
    }.get(module, [path, "--no-progress"])
    if module == "dynamics.studies.interference_scale" and token in ("@unicode", "@in_file", "@fifo"):
        pytest.skip("a root that can be named: the study prepares its data before it is refused")
    status, stderr = run_main(argv, importlib.import_module(module).main)
    assert_one_line(status, stderr, argv)
    assert status in (1, 2), stderr


def test_the_safety_net_of_every_entry_point(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An error no handler expects still ends as one line, exit 1, naming its type."""
    import analyses.phase

    def broken(*args: object, **kwargs: object) -> None:
        raise KeyError("surprise\nacross lines")

    monkeypatch.setattr(analyses.phase, "distinct_runs", broken)
    status, stderr = run_main([str(tmp_path), "--no-progress"], analyses.phase.main)
    assert status == 1 and stderr.startswith("error: unexpected KeyError") and stderr.count("\n") == 1, stderr


# --- generated command lines ---------------------------------------------------------------------------------------

FIELDS = {field.name: field for field in fields(RunConfig)}
HUGE_INTS = ["2147483648", "9223372036854775807", "9223372036854775808", str(2**70), "1" * 5000]
INTS = st.one_of(
    st.sampled_from(["0", "-1", "1", "2", "3", "7", "64", *HUGE_INTS, "1e3", "0x10", "1_000", " 5", "", "nan", "☃"]),
    st.integers(-(10**20), 10**20).map(str),
)
FLOATS = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e300", "-1e300", "3e38", "3.5e38", "1e-320", "0", "-0.0", "1e400"]),
    st.sampled_from(["0.5", "1", "0.999999", "1.0000001", "", "one", "1,5", "٣"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)
WORDS = ["", "☃", "--", "a b", "\t", "../x", "default,loss", "loss,loss", "loss,", "1:2", "2:1", "nan:1", "a:b"]
TEXT = st.one_of(
    st.sampled_from([*WORDS, "-1:1", "1e-5:8e-5", "0:0", "auto", "0", "None", "null"]), st.text(max_size=10)
)
PROBE_MODULES = ["", "os", "json,os", "dynamics.nope", "☃", "a..b", ",", "dynamics.probes"]
"""probe_modules imports what it names: only these harmless names are drawn."""
PATH_KEYS = {"data_dir": "--data-dir"}


SMALL = {
    # training examples: values that run in well under a second or are refused at once, never a slow or huge run
    "epochs": ["1", "0", "-1", "2"],
    "num_samples": ["200", "0", "1", "10", "-5", "300"],
    "train_size": ["1", "2", "50", "0", "100000"],
    "batch_size": ["1", "8", "32", "0", "1000000000"],
    "eval_batch_size": ["1", "7", "0", *HUGE_INTS[:3]],
    "width": ["1", "2", "64", "0", "1000000000", "4611686018427387904", "-3"],
    "depth": ["1", "2", "5", "0", "10001", "1000000", *HUGE_INTS[:3]],
    "seq_len": ["1", "2", "64", "0"],
    "image_size": ["8", "0", "1000000"],
    "sketch_dim": ["1", "64", "0", "1000000000000", "99999999999999999999"],
    "every": ["1", "3", "0", "1000000000"],
    "probe_samples": ["2", "1", "7", "1000000000"],
    "interference_every": ["1", "2", "0", *HUGE_INTS[:2]],
    "warmup_steps": ["0", "3", "-1", "1000000000000000000"],
    "checkpoint_steps": ["0", "1", "-1", "1000000000000000000"],
    "checkpoint_keep": ["1", "0", "1000000000000000000"],
    "probe_max_interval": ["1", "0", "1000000000000000000"],
    "enp_epochs": ["0", "1", "auto", "2", "-1", "x"],
    "enp_probe_samples": ["1", "2", "0", "1000000000"],
    "enp_probe_every": ["1", "0", "1000000000"],
    "width_mult": ["0.5", "1", "2", "1e-300", "1e9", "1e300", "nan"],
    "cyclical_batch_size": ["8:32", "1:1", "32:8", "0:4", "1:1000000000", "a:b"],
}


def _values(name: str, training: bool) -> st.SearchStrategy[str]:
    """The values drawn for the flag of RunConfig field ``name``."""
    field = FIELDS[name]
    kind = str(field.type).replace(" | None", "")
    if name == "probe_modules":
        return st.sampled_from(PROBE_MODULES)
    if name == "data_dir":
        return st.one_of(st.sampled_from(PATH_TOKENS), TEXT)
    if "choices" in field.metadata:
        return st.one_of(st.sampled_from(field.metadata["choices"]), TEXT)
    if training and name in SMALL:
        return st.sampled_from(SMALL[name])
    if kind == "int" or kind == "int | str":
        return st.one_of(INTS, TEXT) if kind == "int | str" else INTS
    if kind == "float":
        return FLOATS
    return TEXT


SKIPPED_IN_TRAINING = {"deterministic", "threads", "compile", "probe_modules", "device", "patch_size"}
"""Process-wide settings (kept out of in-process runs), and ones whose only effect on this data is a refusal."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _pairs(training: bool) -> st.SearchStrategy[list[str]]:
    """One ``--flag=value`` (or a bare switch) for a field, a bogus flag, or an extra option of the command line."""
    names = [name for name in FIELDS if not (training and name in SKIPPED_IN_TRAINING)]
    switches = [name for name in names if str(FIELDS[name].type) == "bool"]
    valued = [name for name in names if name not in switches]
    options = [
        st.sampled_from(valued).flatmap(
            lambda name: _values(name, training).map(lambda v, n=name: [f"{_flag(n)}={v}"])
        ),
        st.sampled_from(switches).flatmap(
            lambda name: st.sampled_from([[_flag(name)], [_flag(name).replace("--", "--no-", 1)], [f"{_flag(name)}=x"]])
        ),
        st.sampled_from([["--bogus"], ["--bogus=1"], ["-x"], ["positional"], ["--overwrite"], ["--no-figure"]]),
        st.sampled_from(PATH_TOKENS + ["@nul", "@devnull"]).map(lambda token: [f"--out={token}"]),
    ]
    if not training:
        options += [
            st.sampled_from(PATH_TOKENS + ["@nul", "", "x.toml", "x.json"]).map(lambda token: [f"--config={token}"]),
            st.sampled_from(PATH_TOKENS + ["@nul", ""]).map(lambda token: [f"--resume={token}"]),
            st.just(["--help"]),
        ]
    return st.one_of(*options)


@settings(max_examples=MIN_EXAMPLES, **PROPERTY)
@given(pairs=st.lists(_pairs(training=False), min_size=1, max_size=6), position=st.integers(0, 6))
def test_generated_command_lines_check_in_one_line(pairs: list[list[str]], position: int, places: dict) -> None:
    argv = [item for pair in pairs for item in pair]
    argv = [_resolved(item, places) for item in argv]
    argv.insert(min(position, len(argv)), "--check")
    status, stderr = run_main(argv)
    EXAMPLES["check"][status] += 1
    assert_one_line(status, stderr, argv)


RUNS = {"count": 0}


@settings(max_examples=20, **PROPERTY)
@given(pairs=st.lists(_pairs(training=True), max_size=3))
def test_generated_training_runs_end_in_one_line(
    pairs: list[list[str]], places: dict, tmp_path_factory: pytest.TempPathFactory
) -> None:
    RUNS["count"] += 1
    out = tmp_path_factory.getbasetemp() / "generated" / f"run{RUNS['count']}"
    argv = [*TINY, "--device=cpu", f"--out={out}", *(_resolved(item, places) for pair in pairs for item in pair)]
    with torch_state_kept():
        status, stderr = run_main(argv)
    EXAMPLES["train"][status] += 1
    assert_one_line(status, stderr, argv)
    if status == 1:
        assert_failed_run_kept(out)


def _resolved(item: str, places: dict[str, str]) -> str:
    """``--flag=@token`` with the token's path."""
    flag, sep, value = item.partition("=")
    return f"{flag}={resolve(value, places)}" if sep else item


@pytest.mark.parametrize("name", list(CASES))
def test_reported_failures_end_in_one_line(name: str, launched: dict[str, tuple]) -> None:
    """The subprocesses started by :func:`launched`: each exits with its status and one error line."""
    process, out = launched[name]
    _, stderr = process.communicate(timeout=300)
    status = process.returncode
    _, expected, words = CASES[name]
    assert_one_line(status, stderr, name)
    assert status == expected, (name, stderr)
    for word in words:
        assert word in stderr, (name, word, stderr)
    assert not out.exists()  # refused before anything was written


def test_at_least_300_generated_command_lines_ran(record_property: Callable[[str, object], None]) -> None:
    """The example count, in the junit report and in this assertion's message."""
    total = sum(sum(statuses.values()) for statuses in EXAMPLES.values())
    if total == 0:
        pytest.skip("run together with the generated tests")
    summary = ", ".join(
        f"{sum(statuses.values())} {kind} (exit status: count {dict(sorted(statuses.items()))})"
        for kind, statuses in EXAMPLES.items()
    )
    record_property("generated_command_lines", total)
    print(f"generated command lines: {total}: {summary}")
    assert total >= MIN_EXAMPLES, f"only {total} generated command lines ran: {summary}"
