"""``python -m dynamics.sweep``: a grid of tiny captures, killed and continued, through both executors.

The runs are the smallest the CLI allows (1 epoch of 400 MNIST-1D samples, the loss probe only), two at a
time on one thread each, so the module stays well under three minutes on a loaded two-core machine.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dynamics.config import make_config
from dynamics.errors import ConfigError
from dynamics.runlock import RunLock
from dynamics.sweep import parse_sweep, plan_sweep, point_states, read_manifest, run_state
from dynamics.sweep.__main__ import main
from dynamics.sweep.command import fresh_argv

QUICK = """
name = "quick"
[base]
epochs = 1
num_samples = 400
batch_size = 32
probes = "loss"
snapshots = false
checkpoint_seconds = 0
mixup_alpha = 0.4
[axes]
seed = [0, 1]
[conditions.mixup]
[conditions.pause]
mixup_pause = true
enp_epochs = "auto"
"""
NAMES = {"mixup-seed0", "pause-seed0", "mixup-seed1", "pause-seed1"}


def run_main(argv: list[str]) -> tuple[int, str, str]:
    """Exit status, stdout and stderr of ``python -m dynamics.sweep`` run in this process."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    return status, out.getvalue(), err.getvalue()


def sweep_command(path: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dynamics.sweep", str(path), "--out", str(out), "--no-progress", *extra]


def finished(out: Path) -> set[str]:
    return {name for name in NAMES if run_state(out / name) == "finished"}


@pytest.fixture(scope="module")
def killed_and_continued(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The quick sweep on 2 local workers, SIGKILLed (its whole process group) once a run finished, then rerun."""
    root = tmp_path_factory.mktemp("sweep")
    path, out = root / "quick.toml", root / "out"
    path.write_text(QUICK)
    args = sweep_command(path, out, "--workers", "2", "--threads", "1")
    first = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 150
    while not finished(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    done_before = finished(out)
    assert done_before, "no run finished before the kill"
    while any(RunLock.holder(out / name) for name in NAMES if (out / name).is_dir()):
        time.sleep(0.1)  # the killed runs' processes are gone once their locks are free
    metas = {name: (out / name / "meta.json").read_text() for name in done_before}
    states = {name: run_state(out / name) for name in NAMES}
    second = run_main(args[3:])  # the same command again, in this process (one interpreter start less)
    return {"out": out, "path": path, "done_before": done_before, "metas": metas, "states": states, "second": second}


def test_a_killed_sweep_continues_without_rerunning_finished_runs(killed_and_continued: dict) -> None:
    out, (status, stdout, err) = killed_and_continued["out"], killed_and_continued["second"]
    assert status == 0, err
    assert finished(out) == NAMES
    for name, meta in killed_and_continued["metas"].items():
        assert (out / name / "meta.json").read_text() == meta, f"{name} was run again"
    for name, state in killed_and_continued["states"].items():
        log = (out / "logs" / f"{name}.log").read_text()
        if state == "killed":  # killed mid-run: continued from its checkpoint, not restarted
            assert "--resume=" in [line for line in log.splitlines() if line.startswith("$ ")][-1], log
            assert json.loads((out / name / "meta.json").read_text())["resumed"]
        assert json.loads((out / name / "config.json").read_text())["threads"] == 1
        assert not (out / name / "figures").exists()  # collect --no-figure
    assert f"4 of 4 runs finished ({4 - len(killed_and_continued['done_before'])} now" in stdout
    assert f"python -m analyses.compare {out} --baseline mixup" in stdout


def test_the_manifest_lists_every_point(killed_and_continued: dict) -> None:
    out = killed_and_continued["out"]
    manifest = read_manifest(out)
    assert manifest["name"] == "quick" and manifest["file"] == str(killed_and_continued["path"])
    assert manifest["text"] == QUICK and manifest["created"]
    assert manifest["axes"] == {"seed": [0, 1]}
    assert manifest["conditions"] == {"mixup": {}, "pause": {"mixup_pause": True, "enp_epochs": "auto"}}
    assert manifest["base"]["mixup_alpha"] == 0.4
    points = {point["name"]: point for point in manifest["points"]}
    assert set(points) == NAMES
    pause = points["pause-seed1"]
    assert pause["run_dir"] == "pause-seed1" and pause["condition"] == "pause" and pause["seed"] == 1
    assert pause["axes"] == {"seed": 1}
    assert pause["settings"]["mixup_pause"] is True and pause["settings"]["epochs"] == 1
    assert "threads" not in pause["settings"] and "mixup_pause" not in points["mixup-seed0"]["settings"]
    assert points["mixup-seed0"]["seed"] == 0
    assert point_states(out) == dict.fromkeys(NAMES, "finished")


def test_a_finished_sweep_is_kept_and_a_changed_one_refused(killed_and_continued: dict, tmp_path: Path) -> None:
    out = killed_and_continued["out"]
    sweep = parse_sweep(QUICK, killed_and_continued["path"])
    assert {step.action for step in plan_sweep(sweep, out, 1)} == {"keep"}
    changed = parse_sweep(QUICK.replace("epochs = 1", "epochs = 2"), killed_and_continued["path"])
    with pytest.raises(ConfigError, match="mixup-seed0 with other settings .*epochs is 1 there, 2 in the sweep"):
        plan_sweep(changed, out, 1)
    status, _, err = run_main([str(killed_and_continued["path"]), "--out", str(out), "--dry-run"])
    assert status == 0 and not err


def test_failed_and_killed_runs_resume_from_their_checkpoint(killed_and_continued: dict, tmp_path: Path) -> None:
    out = killed_and_continued["out"]
    sweep = parse_sweep(QUICK, killed_and_continued["path"])
    copy = tmp_path / "copy"
    for name in ("mixup-seed0", "pause-seed0"):
        shutil.copytree(out / name, copy / name)
    for name, status in (("mixup-seed0", "failed"), ("pause-seed0", "running")):
        meta = json.loads((copy / name / "meta.json").read_text())
        (copy / name / "meta.json").write_text(json.dumps({**meta, "status": status}))
    steps = {step.point.name: step for step in plan_sweep(sweep, copy, 1)}
    assert (steps["mixup-seed0"].state, steps["mixup-seed0"].action) == ("failed", "resume")
    assert (steps["pause-seed0"].state, steps["pause-seed0"].action) == ("killed", "resume")
    assert steps["pause-seed0"].attempts[0][0] == f"--resume={(copy / 'pause-seed0').resolve()}"
    assert steps["pause-seed0"].attempts[1][:2] == (f"--out={(copy / 'pause-seed0').resolve()}", "--overwrite")
    assert (steps["mixup-seed1"].state, steps["mixup-seed1"].action) == ("pending", "start")


def test_the_same_sweep_through_submitit_local_jobs(tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    path, out = tmp_path / "quick.toml", tmp_path / "out"
    path.write_text(QUICK)
    argv = [str(path), "--out", str(out), "--no-progress", "--workers", "2", "--threads", "1"]
    status, stdout, err = run_main([*argv, "--executor", "submitit", "--submitit-cluster", "local"])
    assert status == 0, err + stdout
    assert finished(out) == NAMES and (out / ".submitit").is_dir()
    assert "4 of 4 runs finished (4 now" in stdout


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (("epochs = 1", "epoch = 1"), "[base]: unknown setting 'epoch'; did you mean epochs?"),
        (("seed = [0, 1]", "sed = [0, 1]"), "[axes]: unknown setting 'sed'; did you mean seed?"),
        (("seed = [0, 1]", "seed = []"), "[axes]: axis seed is empty"),
        (("[conditions.mixup]", "[conditions.mixup]\nmixup_alpha = -1"), "point mixup-seed0: mixup_alpha must be"),
        (("[conditions.mixup]", "[conditions.mixup]\nseed = 3"), "[conditions.mixup] sets seed, which is an axis"),
    ],
    ids=["unknown-key", "unknown-axis", "empty-grid", "rejected-condition", "condition-sets-an-axis"],
)
def test_bad_sweep_files_fail_as_one_line_before_anything_runs(edit: tuple[str, str], problem: str, tmp_path: Path):
    path, out = tmp_path / "bad.toml", tmp_path / "out"
    assert QUICK.count(edit[0]) == 1
    path.write_text(QUICK.replace(*edit))
    status, stdout, err = run_main([str(path), "--out", str(out), "--no-progress"])
    assert status == 2 and not stdout
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}") and problem in lines[0], err
    assert not out.exists()


def test_usage_errors_name_the_flags(tmp_path: Path) -> None:
    path = tmp_path / "quick.toml"
    path.write_text(QUICK)
    status, _, err = run_main([str(path), "--out", str(tmp_path / "out"), "--workers", "0"])
    assert status == 2 and err.startswith("error: --workers must be >= 1") and not (tmp_path / "out").exists()
    status, _, err = run_main([str(tmp_path / "missing.toml")])
    assert status == 2 and "does not exist" in err and len(err.splitlines()) == 1


def test_point_names_and_order() -> None:
    text = """
[axes]
seed = [0, 1]
width = [16, 64]
model = ["cnn", "mlp"]
lr = [0.1]
[conditions."a b"]
[conditions.c]
"""
    sweep = parse_sweep(text, "grid.toml")
    names = [point.name for point in sweep.points]
    assert sweep.name == "grid" and len(names) == 16 == len(set(names))
    assert names[:3] == [
        "a_b-width16-model-cnn-lr0.1-seed0",
        "c-width16-model-cnn-lr0.1-seed0",
        "a_b-width16-model-mlp-lr0.1-seed0",
    ]
    assert all(point.config.seed == 0 for point in sweep.points[:8])  # seed first: every condition of seed 0 early
    single = parse_sweep("[base]\nepochs = 2\n", "one.toml").points
    assert [(p.name, p.condition, p.axes, p.settings) for p in single] == [("run", None, {}, {"epochs": 2})]


def test_a_point_command_parses_back_to_its_settings(tmp_path: Path) -> None:
    text = (
        "[base]\nlr = 0.123456789\naugment = false\nenp_epochs = 3\nepochs = 4\nmixup_alpha = 0.2\nmixup_pause = true\n"
    )
    point = parse_sweep(text, "x.toml").points[0]
    argv = fresh_argv(point.config, point.settings, tmp_path / "run")
    assert "--lr=0.123456789" in argv and "--no-augment" in argv and "--enp-epochs=3" in argv


def test_collect_takes_threads_and_no_figure(killed_and_continued: dict) -> None:
    from dynamics.collect import main as collect

    run = killed_and_continued["out"] / "pause-seed0"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = collect(["--resume", str(run), "--no-figure", "--no-progress", "--check"])
    assert status == 0 and json.loads(out.getvalue())["threads"] == 1, err.getvalue()
    with pytest.raises(ConfigError, match="threads must be a positive integer or None, got 0") as caught:
        make_config({"threads": 0})
    assert caught.value.key == "threads"
