"""``python -m dynamics.collect`` as a real subprocess: a successful capture and every kind of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynamics import open_run

QUICK = ["--dataset", "mnist1d", "--num-samples", "2000", "--epochs", "4", "--batch-size", "32", "--no-progress"]


def collect(*args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run the CLI in ``cwd`` (the data cache is the session one, see conftest.py)."""
    return subprocess.run(
        [sys.executable, "-m", "dynamics.collect", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def assert_usage_error(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """Exit 2, one line on stderr naming the problem (``words``), no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    cwd = tmp_path_factory.mktemp("cli")
    result = collect(*QUICK, "--out", "run", cwd=cwd)
    return cwd, result


def test_capture_succeeds_and_reports(finished_run) -> None:
    cwd, result = finished_run
    assert result.returncode == 0, result.stderr
    run = (cwd / "run").resolve()
    out = result.stdout
    assert "final accuracy" in out and "Enlightenment Period" in out
    figure = run / "figures" / "overview"
    assert str(run) in out and f"{figure}.png" in out and f"{figure}.pdf" in out
    assert Path(f"{figure}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Path(f"{figure}.pdf").read_bytes()[:4] == b"%PDF"
    meta = json.loads((run / "meta.json").read_text())
    config = json.loads((run / "config.json").read_text())
    assert meta["status"] == "finished" and meta["error"] is None
    assert config["epochs"] == 4 and config["batch_size"] == 32 and config["dataset"] == "mnist1d"
    ds = open_run(run)
    steps_per_epoch = 1600 // 32
    np.testing.assert_array_equal(ds["step"].values, np.arange(4 * steps_per_epoch))
    np.testing.assert_array_equal(ds["eval_step"].values, steps_per_epoch * np.arange(1, 5) - 1)
    assert meta["steps"] == 4 * steps_per_epoch
    enp_line = next(line for line in out.splitlines() if line.startswith("Enlightenment Period"))
    assert "ended at step" in enp_line and f"of {4 * steps_per_epoch}" in enp_line
    reported_test = float(out.split("test")[1].split()[0])
    assert reported_test == pytest.approx(float(ds["val_accuracy"][-1]), abs=1e-4)
    assert np.isfinite(ds["loss"].values).all()


def test_config_file_is_read_and_flags_override_it(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        'dataset = "gaussian"\nnum-samples = 400\nepochs = 2\nlr = 0.02\nbatch_size = 40\nmodel = "mlp"\n'
    )
    result = collect("--config", "run.toml", "--epochs", "1", "--no-progress", "--out", "r", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["dataset"], config["model"], config["lr"], config["epochs"]) == ("gaussian", "mlp", 0.02, 1)
    assert open_run(tmp_path / "r").sizes["step"] == 320 // 40


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--dataset", "cifar99"], ["cifar99", "--dataset"]),
        (["--model", "transformerx"], ["transformerx", "--model"]),
        (["--epochs", "0"], ["epochs", "--epochs"]),
        (["--epochs", "-3"], ["epochs", "--epochs"]),
        (["--batch-size", "0"], ["--batch-size", "positive integer"]),
        (["--lr", "0"], ["learning rate", "--lr"]),
        (["--lr", "-0.1"], ["learning rate", "--lr"]),
        (["--epochs", "two"], ["--epochs"]),
        (["--no-such-flag"], ["--no-such-flag"]),
        (["--config", "missing.toml"], ["missing.toml", "--config"]),
    ],
)
def test_bad_flags_exit_2_with_one_line(tmp_path: Path, args: list[str], words: list[str]) -> None:
    result = collect(*args, "--out", "r", cwd=tmp_path)
    assert_usage_error(result, *words)
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("bad.toml", "epochs = = 3\n", ["malformed", "bad.toml"]),
        ("bad.json", '{"epochs": 3,', ["malformed", "bad.json"]),
        ("list.json", "[1, 2]", ["list.json"]),
        ("unknown.toml", "epochz = 3\n", ["epochz", "valid keys"]),
        ("wrongtype.toml", 'epochs = "many"\n', ["epochs", "int"]),
        ("binary.toml", b"\xff\xfe\x00\x81", ["unreadable", "binary.toml"]),
        ("settings.yaml", "epochs: 3\n", [".toml or .json"]),
    ],
)
def test_bad_config_file_exit_2(tmp_path: Path, name: str, content: str | bytes, words: list[str]) -> None:
    path = tmp_path / name
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    assert_usage_error(collect("--config", name, "--out", "r", cwd=tmp_path), *words)


def test_config_path_that_is_a_directory_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "conf.toml").mkdir()
    assert_usage_error(collect("--config", "conf.toml", cwd=tmp_path), "unreadable", "conf.toml")


def test_finished_run_is_not_overwritten_without_flag(finished_run, tmp_path: Path) -> None:
    cwd, first = finished_run
    assert first.returncode == 0
    before = (cwd / "run" / "meta.json").read_text()
    assert_usage_error(collect(*QUICK, "--out", "run", cwd=cwd), "--overwrite")
    assert (cwd / "run" / "meta.json").read_text() == before
    assert open_run(cwd / "run").sizes["step"] == 200


def test_overwrite_replaces_a_finished_run(tmp_path: Path) -> None:
    args = ["--dataset", "gaussian", "--num-samples", "200", "--epochs", "1", "--batch-size", "20", "--no-progress"]
    assert collect(*args, "--out", "r", cwd=tmp_path).returncode == 0
    result = collect(*args, "--batch-size", "40", "--out", "r", "--overwrite", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert open_run(tmp_path / "r").sizes["step"] == 160 // 40


def test_out_that_is_not_a_run_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "paper.txt").write_text("keep me")
    assert_usage_error(collect("--out", "notes", "--overwrite", cwd=tmp_path), "not a run directory")
    assert (tmp_path / "notes" / "paper.txt").read_text() == "keep me"


def test_diverging_loss_marks_run_failed_and_keeps_data(tmp_path: Path) -> None:
    result = collect(
        "--dataset",
        "gaussian",
        "--num-samples",
        "2000",
        "--epochs",
        "5",
        "--batch-size",
        "16",
        "--lr",
        "1e12",
        "--no-progress",
        "--out",
        "r",
        cwd=tmp_path,
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "non-finite loss" in result.stderr and "lower the learning rate" in result.stderr
    meta = json.loads((tmp_path / "r" / "meta.json").read_text())
    assert meta["status"] == "failed"
    assert "non-finite loss" in meta["error"]
    ds = open_run(tmp_path / "r")
    failed = meta["failed_step"]
    assert ds.sizes["step"] > failed
    np.testing.assert_array_equal(ds["step"].values, np.arange(ds.sizes["step"]))
    loss = ds["loss"].values
    assert np.isfinite(loss[:failed]).all() and not np.isfinite(loss[failed])


def test_help_lists_every_setting(tmp_path: Path) -> None:
    from dataclasses import fields

    from dynamics.config import RunConfig

    result = collect("--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for field in fields(RunConfig):
        assert "--" + field.name.replace("_", "-") in result.stdout
