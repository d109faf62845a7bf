"""A fork server for the fault-injection tests: imports the toolkit once, then trains each requested run in a child.

    python tests/train_server.py

stdin, one line per job: ``<id> <JSON {"out": RUN_DIR, "config": {...}, "resume": bool}>``. stdout, one line
each: ``<id> pid <pid>`` when the child starts, then the child's events, then ``<id> exit <status>`` when it
ended (``-9`` when it was killed by SIGKILL):

    <id> committed <dim> <length>   an append to data.zarr committed: <length> rows are durable
    <id> checkpoint                 a checkpoint write begins (it stays 20 ms before its rename)
    <id> saved                      a checkpoint write ended
    <id> eval                       an evaluation begins

Every file the Zarr store writes takes 1 ms longer, so that a kill after an event lands inside a write.
Each child is a real process, killed by the test with SIGKILL; forking spares the import time per run.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import torch
import torch._inductor  # noqa: F401 - what --deterministic imports, loaded once here rather than in each child
from zarr.storage import LocalStore

import dynamics.engine as engine
from dynamics.config import make_config
from dynamics.store import RunWriter


def emit(line: str) -> None:
    """One line in one write: atomic on a pipe, so lines of concurrent children never interleave."""
    os.write(1, (line + "\n").encode())


def instrument(job: str) -> None:
    """In the child: report appends, checkpoints and evaluations; slow the store's file writes down."""
    append, save, evaluate, torch_save = RunWriter.append, engine.save_checkpoint, engine.evaluate_split, torch.save
    store_set = LocalStore.set

    def reporting_append(self: RunWriter, dim: str, columns: dict) -> None:
        append(self, dim, columns)
        emit(f"{job} committed {dim} {self.lengths[dim]}")

    def reporting_save(*args: object, **kwargs: object) -> object:
        emit(f"{job} checkpoint")
        path = save(*args, **kwargs)
        emit(f"{job} saved")
        return path

    def slow_torch_save(*args: object, **kwargs: object) -> None:
        torch_save(*args, **kwargs)
        time.sleep(0.02)

    def reporting_evaluate(*args: object, **kwargs: object) -> object:
        emit(f"{job} eval")
        return evaluate(*args, **kwargs)

    async def slow_set(self: LocalStore, key: str, value: object) -> None:
        time.sleep(0.001)
        await store_set(self, key, value)

    RunWriter.append = reporting_append
    engine.save_checkpoint, engine.evaluate_split, torch.save = reporting_save, reporting_evaluate, slow_torch_save
    LocalStore.set = slow_set


def child(job: str, spec: dict) -> None:
    """Train the job's run (or resume it) and leave with 0, or 1 after printing the error on stderr."""
    err = os.open(spec["out"] + ".stderr", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(err, 2)
    torch.set_num_threads(1)
    instrument(job)
    try:
        engine.train(make_config(spec["config"]), spec["out"], progress=False, resume=spec.get("resume", False))
    except Exception as error:  # noqa: BLE001 - reported to the test through stderr and the exit status
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        os._exit(1)
    os._exit(0)


def watch(job: str, pid: int) -> None:
    _, status = os.waitpid(pid, 0)
    emit(f"{job} exit {os.waitstatus_to_exitcode(status)}")


def main() -> None:
    for line in sys.stdin:
        job, payload = line.split(" ", 1)
        spec = json.loads(payload)
        pid = os.fork()
        if pid == 0:
            child(job, spec)
        emit(f"{job} pid {pid}")
        threading.Thread(target=watch, args=(job, pid), daemon=True).start()


if __name__ == "__main__":
    main()
