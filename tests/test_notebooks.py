"""Every notebook runs top to bottom on the quick setting (DYNAMICS_QUICK=1), in a scratch directory, and shows
at least one figure inline; the committed notebooks carry no outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNAMICS_QUICK", "1")
    monkeypatch.setenv("DYNAMICS_CACHE", os.environ.get("DYNAMICS_CACHE", str(tmp_path / "cache")))
    # the kernel's own default in Jupyter: figures shown inline as PNG, no display needed
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    errors = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors
    images = [
        out
        for cell in notebook.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert images, "a notebook should show at least one figure inline (an image/png output)"
    written = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert written, "a notebook should record at least one run"


def test_there_are_notebooks() -> None:
    expected = {
        "01_quickstart.ipynb",
        "02_enlightenment_phase.ipynb",
        "03_interference_revival.ipynb",
        "04_strategies_compared.ipynb",
        "05_plp_cyclical.ipynb",
    }
    assert expected <= {p.name for p in NOTEBOOKS}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_has_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    dirty = [
        index
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)
    ]
    assert not dirty, f"cells {dirty} of {path.name} hold outputs or execution counts; clear them before committing"
