"""Store integrity: chunks carry a checksum, a missing or damaged chunk is a StoreError naming the array and the
chunk (never fill values read in its place), and analyses refuse the same run twice.

One run is recorded with the Recorder (1100 steps, so every step-indexed array has three chunks of 512 rows);
each test damages a copy of it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from dynamics import ConfigError, Recorder, StoreError, open_run
from dynamics import store as store_module
from dynamics.store import CHUNK_ROWS, FIRST_ROW, RunWriter, distinct_runs

STEPS = 1100
EXTRA_FROM = 700
"""The extra scalar ``hyper`` is given from this step on (its array is created after earlier appends)."""
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A finished run, and the values given to its Recorder."""
    run = tmp_path_factory.mktemp("integrity") / "run"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    given: dict[str, list] = {"loss": [], "epoch": [], "hyper": [], "val_loss": []}
    with Recorder(model, optimizer, run, flush_steps=300, probes="minimal") as rec:
        for i in range(STEPS):
            rec.epoch = i // 600  # epoch's first chunk holds only zeros, its fill value: it must be stored too
            x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            extra = {"hyper": 0.25 * (i % 4)} if i >= EXTRA_FROM else {}
            rec.step(loss=loss, output=out, target=y, **extra)
            given["loss"].append(loss.item())
            given["epoch"].append(rec.epoch)
            given["hyper"].append(extra.get("hyper", np.nan))
            if i % 500 == 499:
                rec.record_eval(val_loss=0.5 + i)
                given["val_loss"].append(0.5 + i)
    return run, given


@pytest.fixture
def run(recorded, tmp_path):
    """A copy of the recorded run, free to damage."""
    copy = tmp_path / "run"
    shutil.copytree(recorded[0], copy)
    return copy


def chunk_file(run: Path, name: str, index: int) -> Path:
    array = zarr.open_array(run / "data.zarr" / name, mode="r")
    return run / "data.zarr" / name / array.metadata.encode_chunk_key((index,) + (0,) * (array.ndim - 1))


def delete(path: Path) -> None:
    path.unlink()


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


DAMAGES = {
    "deleted": (delete, "is missing"),
    "truncated": (truncate, "is unreadable"),
    "flipped": (flip, "is unreadable"),
}
ARRAYS = {"loss": "chunk 1 (rows 512-1023", "epoch": "chunk 0 (rows 0-511", "grad_norm": "chunk 2,0 (rows 1024-1099"}


def test_undamaged_store_reads_back_what_the_recorder_was_given(recorded):
    run, given = recorded
    ds = open_run(run).load()
    assert ds.sizes["step"] == STEPS
    np.testing.assert_array_equal(ds.loss.values, np.asarray(given["loss"], dtype=np.float32))
    np.testing.assert_array_equal(ds.epoch.values, given["epoch"])
    np.testing.assert_array_equal(ds.hyper.values, given["hyper"])  # NaN before it was first given
    np.testing.assert_array_equal(ds.val_loss.values, given["val_loss"])
    assert np.isfinite(ds.grad_norm.values).all()
    assert FIRST_ROW not in ds.hyper.attrs  # bookkeeping of the store, not an attribute of the variable
    for name in ("loss", "epoch", "grad_norm", "param", "val_loss"):
        codecs = json.loads((run / "data.zarr" / name / "zarr.json").read_text())["codecs"]
        assert codecs[-1]["name"] == "crc32c", (name, codecs)


@pytest.mark.parametrize("damage", list(DAMAGES))
@pytest.mark.parametrize("name", list(ARRAYS))
def test_damaged_chunk_raises_store_error_naming_array_and_chunk(run, name, damage):
    spoil, words = DAMAGES[damage]
    index = int(ARRAYS[name].split()[1].split(",")[0])
    spoil(chunk_file(run, name, index))
    with pytest.raises(StoreError) as caught:
        open_run(run).load()
    message = str(caught.value)
    assert "\n" not in message
    assert f"data.zarr/{name}: {ARRAYS[name]}" in message and words in message and "damaged" in message, message


def test_damaged_fixed_array_is_named_when_opened(run):
    flip(chunk_file(run, "param", 0))
    with pytest.raises(StoreError, match=r"data\.zarr/param: chunk 0 \(rows 0-3, file c/0\) is unreadable"):
        open_run(run)


def test_a_read_of_undamaged_rows_still_works(run):
    """Damage is reported by the reads that reach it; the other chunks stay readable."""
    flip(chunk_file(run, "loss", 2))
    ds = open_run(run)
    assert ds.loss[: CHUNK_ROWS * 2].values.shape == (CHUNK_ROWS * 2,)
    with pytest.raises(StoreError, match="chunk 2 "):
        ds.loss[-1].load()


def test_figures_exits_2_with_one_line_on_a_damaged_store(run):
    flip(chunk_file(run, "loss", 1))
    done = subprocess.run(
        [sys.executable, "-m", "figures", str(run)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "MPLBACKEND": "Agg"},
        timeout=120,
    )
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "data.zarr/loss: chunk 1 (rows 512-1023" in lines[0], lines[0]
    assert not (run / "figures" / "overview.png").exists()


def test_run_deleted_after_open_run_raises_on_read(run):
    ds = open_run(run)
    shutil.rmtree(run)
    with pytest.raises(StoreError, match="moved or deleted after open_run"):
        ds.load()


def test_chunk_deleted_after_open_run_raises_on_read(run):
    ds = open_run(run)
    chunk_file(run, "loss", 0).unlink()
    with pytest.raises(StoreError, match=r"data\.zarr/loss: chunk 0 \(rows 0-511, file c/0\) is missing"):
        ds.loss.load()


def test_uncommitted_damage_is_ignored(run):
    """Chunks beyond the committed length (an interrupted append) are never required nor read."""
    group = zarr.open_group(run / "data.zarr", mode="r+")
    group.attrs["committed"] = {**group.attrs["committed"], "step": 2 * CHUNK_ROWS}
    chunk_file(run, "loss", 2).unlink()
    flip(chunk_file(run, "grad_norm", 2))
    ds = open_run(run).load()
    assert ds.sizes["step"] == 2 * CHUNK_ROWS


def test_same_run_twice_is_refused(recorded, tmp_path, capsys):
    from analyses.phase import analyse_phase, main

    run = recorded[0]
    link = tmp_path / "link"
    link.symlink_to(run)
    for twice in (
        [run, run],
        [run, Path(f"{run}/")],
        [run, link],
        [run, run / "data.zarr"],
        [run, run.parent / ".." / run.parent.name / run.name],
    ):
        with pytest.raises(ConfigError, match="same run"):
            distinct_runs(twice)
    assert distinct_runs([run, tmp_path]) == [run, tmp_path]
    with pytest.raises(ConfigError, match="same run"):
        analyse_phase([open_run(run), open_run(link)], num_classes=3)
    assert main([str(run), str(link), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "same run" in err[0] and err[0].startswith("error: "), err


def test_store_without_checksums_still_opens(tmp_path, monkeypatch):
    """Stores written before the checksum have no crc32c codec: they open and read, unverified."""
    monkeypatch.setattr(store_module, "checked_array_options", lambda: {})
    run = tmp_path / "old"
    run.mkdir()
    writer = RunWriter(run, {"param": ["a", "b"]}, {})
    writer.append(
        "step",
        {
            "step": (("step",), np.arange(600)),
            "loss": (("step",), np.linspace(0, 1, 600, dtype=np.float32)),
            "grad_norm": (("step", "param"), np.ones((600, 2), dtype=np.float32)),
        },
    )
    monkeypatch.undo()
    codecs = json.loads((run / "data.zarr" / "loss" / "zarr.json").read_text())["codecs"]
    assert all(codec["name"] != "crc32c" for codec in codecs)
    ds = open_run(run).load()
    np.testing.assert_array_equal(ds.loss.values, np.linspace(0, 1, 600, dtype=np.float32))
    # a resumed old store appends to its old arrays; a variable new to it is checked
    writer = RunWriter.reopen(run, 600)
    writer.append(
        "step",
        {
            "step": (("step",), np.arange(600, 700)),
            "loss": (("step",), np.zeros(100, dtype=np.float32)),
            "new": (("step",), np.ones(100)),
        },
    )
    ds = open_run(run).load()
    assert ds.sizes["step"] == 700 and np.isnan(ds.new.values[:600]).all() and (ds.new.values[600:] == 1).all()


def test_padded_and_late_arrays_keep_every_committed_chunk(tmp_path, monkeypatch):
    """A variable missing from an append is padded with stored fill values, and a writer killed between creating a
    new variable's array and writing its rows leaves a store that opens with every committed row."""
    run = tmp_path / "run"
    run.mkdir()
    writer = RunWriter(run, {}, {})
    writer.append("step", {"step": (("step",), np.arange(600)), "a": (("step",), np.zeros(600))})
    writer.append("step", {"step": (("step",), np.arange(600, 1100))})  # "a" padded: its chunks are all NaN
    assert sorted(p.name for p in (run / "data.zarr" / "a" / "c").iterdir()) == ["0", "1", "2"]

    def killed(self, key, value):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(zarr.Array, "__setitem__", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.append("step", {"late": (("step",), np.ones(100)), "step": (("step",), np.arange(1100, 1200))})
    monkeypatch.undo()
    assert (run / "data.zarr" / "late" / "zarr.json").is_file()
    ds = open_run(run).load()
    assert ds.sizes["step"] == 1100 and "late" in ds and np.isnan(ds.late.values).all()
    np.testing.assert_array_equal(ds.a.values[:600], 0)
    assert np.isnan(ds.a.values[600:]).all()
