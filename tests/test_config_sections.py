"""RunConfig in sections, help and choices from the fields themselves, and a library that speaks in parameters.

The library's errors name parameters (``mixup_alpha must be >= 0``, ``ConfigError.key``); only the command
line (``dynamics.collect``, ``dynamics.cli``) turns them into flags.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import subprocess
import sys
import tokenize
from dataclasses import fields
from pathlib import Path

import pytest

import dynamics
from dynamics.cli import flag_message
from dynamics.collect import FLAGS, SWITCHES, main
from dynamics.config import SECTIONS, RunConfig, make_config, probe_names, read_config_file
from dynamics.errors import ConfigError, parameters_as
from dynamics.probes import PRESETS, PROBES

PACKAGE = Path(dynamics.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]+")

# Flags in string literals of dynamics/ outside the command line that are not the toolkit's own, or not yet
# rewritten. Each entry is (path relative to dynamics/, flag).
NOT_OURS = {
    ("runinfo.py", "--porcelain"),  # arguments of `git status`, which runinfo runs
    ("runinfo.py", "--untracked-files"),
}
# Command-line entry points of their own (argparse parsers and their usage texts speak in flags).
ENTRY_POINTS = {
    "collect.py",
    "cli.py",
    "export.py",
    "lmc.py",
    "surface.py",
    "studies/interference_scale.py",
    "sweep/__main__.py",
    "sweep/command.py",  # the collect command line each point of a sweep runs
}
PENDING: set[tuple[str, str]] = set()
"""Modules not yet rewritten to name parameters (empty: every library module does)."""


def collect(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dynamics.collect", *args], cwd=cwd, capture_output=True, text=True, timeout=180
    )


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python -m dynamics.collect`` run in-process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


# ---- sections, help and choices ----


def test_every_field_has_a_section_and_help() -> None:
    config = RunConfig()
    seen: dict[str, object] = {}
    for field in fields(RunConfig):
        assert field.metadata["section"] in SECTIONS, field.name
        assert field.metadata["help"].strip(), field.name
        if "choices" in field.metadata:
            assert field.default in field.metadata["choices"], field.name
    for name in SECTIONS:
        section = config.section(name)
        assert section and not set(section) & set(seen)
        seen.update(section)
    assert seen == config.to_dict()
    assert config.section("optimisation")["lr"] == config.lr and "lr" not in config.section("data")
    assert set(config.section("run")) >= {
        "device",
        "precision",
        "flush_seconds",
        "checkpoint_steps",
        "on_nonfinite",
        "deterministic",
    }
    with pytest.raises(ConfigError, match="unknown section 'optimization'"):
        config.section("optimization")


def test_help_groups_flags_by_section_and_lists_choices(tmp_path: Path) -> None:
    result = collect("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    titles = [f"{name} settings:" for name in SECTIONS]
    positions = [text.index(title) for title in titles]
    assert positions == sorted(positions)
    for field in fields(RunConfig):
        flag = "--" + field.name.replace("_", "-")
        section = field.metadata["section"]
        position = text.index(f"  {flag}")
        title_before = max((p, t) for p, t in zip(positions, titles, strict=True) if p < position)[1]
        assert title_before == f"{section} settings:", (flag, title_before)
        if "choices" in field.metadata:
            assert f"{flag} {{{','.join(field.metadata['choices'])}}}" in text, flag
    for expected in (
        "{sgd,adamw}",
        "{constant,step,cosine}",
        "{batch,pair,elem}",
        "{iteration,epoch}",
        "{stop,skip,record}",
        "{auto,cpu,cuda}",
        "{fp32,bf16}",
        "{sign,dense,hashed}",
    ):
        assert expected in text, expected
    probes_help = " ".join(text[text.index("  --probes") : text.index("  --sketch-dim")].split())
    for name in (*PRESETS, *PROBES):
        assert name in probes_help, name


# ---- config files: flat or by section ----

FLAT = (
    'dataset = "gaussian"\nnum-samples = 400\nmodel = "mlp"\nwidth = 16\nlr = 0.02\nbatch_size = 40\n'
    'mixup_alpha = 0.2\nprobes = "minimal"\nseed = 3\n'
)
SECTIONED = """
[data]
dataset = "gaussian"
num-samples = 400

[model]
model = "mlp"
width = 16

[optimisation]
lr = 0.02
batch_size = 40

[strategies]
mixup_alpha = 0.2

[probes]
probes = "minimal"

[run]
seed = 3
"""


def test_sectioned_file_gives_the_same_config_as_the_flat_one(tmp_path: Path) -> None:
    (tmp_path / "flat.toml").write_text(FLAT)
    (tmp_path / "sections.toml").write_text(SECTIONED)
    flat = make_config(read_config_file(tmp_path / "flat.toml"))
    sectioned = make_config(read_config_file(tmp_path / "sections.toml"))
    assert sectioned == flat and flat.lr == 0.02 and flat.model == "mlp" and flat.num_samples == 400
    as_json = {name: flat.section(name) for name in SECTIONS}
    (tmp_path / "sections.json").write_text(json.dumps(as_json))
    assert make_config(read_config_file(tmp_path / "sections.json")) == flat
    assert make_config(flat.to_dict()) == flat  # config.json files stay flat
    mixed = {"data": {"dataset": "gaussian"}, "lr": 0.3}
    assert make_config(mixed).lr == 0.3
    status, out, _ = run_main(["--check", "--config", str(tmp_path / "sections.toml"), "--width", "8"])
    assert status == 0 and json.loads(out) == {**flat.to_dict(), "width": 8}


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("[data]\nlr = 0.1\n", ["lr belongs in [optimisation], not [data]"]),
        ("[run]\nprobes = 'loss'\n", ["probes belongs in [probes], not [run]"]),
        ("[optimisation]\nepochz = 3\n", ["unknown setting 'epochz' in [optimisation]", "epochs"]),
        ("[training]\nlr = 0.1\n", ["'training'", "no section", "optimisation"]),
        ("lr = 0.2\n[optimisation]\nlr = 0.1\n", ["sets lr twice"]),
    ],
)
def test_a_key_in_the_wrong_section_is_one_line_exit_2(tmp_path: Path, content: str, words: list[str]) -> None:
    (tmp_path / "run.toml").write_text(content)
    status, _, err = run_main(["--check", "--config", str(tmp_path / "run.toml")])
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    for word in ["--config", "run.toml", *words]:
        assert word in lines[0], (word, lines[0])


def test_wrong_section_as_a_real_subprocess(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text("[data]\nbatch-size = 32\n")
    result = collect("--check", "--config", "run.toml", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "batch_size belongs in [optimisation], not [data]" in lines[0]


# ---- probes: a preset or a list of registered probes ----


def test_probes_take_a_preset_or_a_list_of_registered_probes() -> None:
    assert probe_names("minimal") == PRESETS["minimal"]
    assert make_config({"probes": "loss,grad_norm"}).probes == "loss,grad_norm"
    assert probe_names("loss, grad_norm") == ("loss", "grad_norm")
    for bad, word in (
        ("everything", "unknown probe 'everything'"),
        ("loss,nope", "unknown probe 'nope'"),
        ("loss,,grad_norm", "unknown probe ''"),
        ("loss,loss", "listed twice"),
    ):
        with pytest.raises(ConfigError, match=re.escape(word)) as excinfo:
            make_config({"probes": bad})
        assert excinfo.value.key == "probes" and "--" not in str(excinfo.value)


def test_a_run_records_the_listed_probes(tmp_path: Path) -> None:
    from dynamics.engine import train

    config = make_config(
        {
            "dataset": "gaussian",
            "num_samples": 200,
            "model": "mlp",
            "width": 8,
            "depth": 1,
            "epochs": 1,
            "batch_size": 40,
            "probes": "loss,grad_norm",
            "snapshots": False,
            "device": "cpu",
        }
    )
    train(config, tmp_path / "r", progress=False)
    ds = dynamics.open_run(tmp_path / "r")
    assert {"loss", "accuracy", "grad_norm"} <= set(ds.data_vars)
    assert not {"param_norm", "traj_proj", "act_zero_frac"} & set(ds.data_vars)


# ---- the library names parameters; the command line names flags ----


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -1.0}, "lr"),
        ({"store_features": True}, "store_features"),
        ({"mix_mode": "pairs"}, "mix_mode"),
        ({"enp_epochs": -1}, "enp_epochs"),
        ({"mixup_alpha": -1.0}, "mixup_alpha"),
        ({"cyclical_wd": "2:1"}, "cyclical_wd"),
        ({"focal_label_smoothing": 1.0}, "focal_label_smoothing"),
        ({"alpha_boost": 1.0}, "alpha_boost"),
    ],
)
def test_library_errors_name_the_parameter(values: dict[str, object], key: str) -> None:
    from dynamics.strategies import validate_strategies

    with pytest.raises(ConfigError) as excinfo:
        validate_strategies(make_config(values))
    message = str(excinfo.value)
    assert excinfo.value.key == key and key in message and not FLAG.search(message), message


def test_parameters_as_renames_a_callee_s_parameters() -> None:
    from dynamics.strategies import EnlightenmentTracker

    with pytest.raises(ConfigError) as excinfo:
        EnlightenmentTracker(-1)
    assert excinfo.value.key == "epochs" and str(excinfo.value).startswith("epochs must")
    with pytest.raises(ConfigError) as excinfo, parameters_as({"epochs": "enp_epochs", "tau": "enp_tau"}):
        EnlightenmentTracker(-1)
    assert excinfo.value.keys == ("enp_epochs",) and str(excinfo.value).startswith("enp_epochs must")
    with pytest.raises(ConfigError) as excinfo, parameters_as({"k": "plp_k"}):  # not about k: unchanged
        EnlightenmentTracker(2, tau=0)
    assert excinfo.value.key == "tau"
    copy = pickle.loads(pickle.dumps(ConfigError("a must be 1", ("a", "b"))))
    assert copy.keys == ("a", "b") and str(copy) == "a must be 1"


def test_flag_message_writes_parameters_as_flags() -> None:
    def cli(message: str, key: object) -> str:
        return flag_message(ConfigError(message, key), FLAGS, SWITCHES)

    assert cli("mixup_alpha must be >= 0, got -1", "mixup_alpha") == "--mixup-alpha must be >= 0, got -1"
    assert (
        cli("nesterov needs momentum > 0; set momentum=0.9 or nesterov=False", ("nesterov", "momentum"))
        == "--nesterov needs --momentum > 0; set --momentum 0.9 or --no-nesterov"
    )
    assert (
        cli("device='cuda' was asked for; use device='cpu'", "device")
        == "--device cuda was asked for; use --device cpu"
    )
    assert cli("mnist1d num_samples must be >= 10", "num_samples") == "mnist1d --num-samples must be >= 10"
    assert cli("epochs must be >= 1 (not enp_epochs)", "epochs") == "--epochs must be >= 1 (not enp_epochs)"
    assert cli("the run is busy; wait", "run_dir") == "the run is busy; wait (--out)"
    assert cli("gamma must be > 0", "gamma") == "gamma must be > 0"  # no flag sets it
    assert cli("plain message", None) == "plain message"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--batch-size", "0"], ["--batch-size must be a positive integer"]),
        (["--enp-epochs", "40"], ["--enp-epochs 40 exceeds --epochs 30"]),
        (["--mix-mode", "pairs"], ["unknown --mix-mode 'pairs'", "batch, pair, elem"]),
        (["--store-features"], ["--store-features", "--representation", "--no-store-features"]),
        (["--focal-label-smoothing", "1"], ["--focal-label-smoothing must lie in [0, 1)"]),
        (["--probes", "loss,nope"], ["--probes", "unknown probe 'nope'"]),
    ],
)
def test_the_command_line_names_flags(argv: list[str], words: list[str]) -> None:
    status, _, err = run_main(["--check", *argv])
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    for word in words:
        assert word in lines[0], (word, lines[0])


def _string_literals(path: Path) -> list[str]:
    with path.open("rb") as source:
        tokens = list(tokenize.tokenize(source.readline))
    kinds = {tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    return [token.string for token in tokens if token.type in kinds]


def test_the_library_names_no_flags() -> None:
    """No string literal in dynamics/ outside the command line (collect.py, cli.py) names a flag."""
    found = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative in ENTRY_POINTS:
            continue
        for literal in _string_literals(path):
            found.update((relative, flag.split("=")[0]) for flag in FLAG.findall(literal))
    assert found - NOT_OURS - PENDING == set()
    assert PENDING - found == set(), "fixed: remove these from PENDING"
