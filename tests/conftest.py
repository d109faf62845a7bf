"""Shared test setup: one MNIST-1D cache for the whole session, inherited by CLI subprocesses."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def shared_data_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point DYNAMICS_CACHE at one session directory unless the caller chose one."""
    if "DYNAMICS_CACHE" not in os.environ:
        os.environ["DYNAMICS_CACHE"] = str(tmp_path_factory.mktemp("data-cache"))


@pytest.fixture(scope="module")
def one_thread():
    """Run small models on one intra-op thread: on a loaded 2-core machine more threads only contend.

    Module-scoped, so a module's ``pytestmark = pytest.mark.usefixtures("one_thread")`` also covers its
    module-scoped fixtures that train.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
