"""A training run for the crash and concurrent-read tests, run as a separate process.

    python tests/writer_process.py RUN_DIR [--every E] [--flush-steps F] [--slow-store S] [--wait-go] ...

Trains a small CNN on the synthetic Gaussian task with a Recorder until it is killed (or ``--max-steps`` /
``--max-seconds`` pass, or its parent dies). It reports on stdout, one line each, flushed at once:

    ready                     the Recorder exists (run directory created), no step taken yet
    begin <dim> <length>      an append along <dim> starts; <length> rows once it commits
    committed <dim> <length>  that append has committed: <length> rows are durable
    done <steps>              a clean finish (close) after --max-steps

``--slow-store S`` sleeps S seconds before every file the Zarr store writes (once ``--slow-after K`` step
appends have committed), so that a kill some milliseconds after ``begin`` lands inside the append, between
its file writes.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
import torch.nn.functional as F
from zarr.storage import LocalStore

from dynamics import Recorder
from dynamics.data import load_dataset
from dynamics.models import build_model
from dynamics.store import RunWriter


def report(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def instrument(slow_store: float, slow_after: int) -> None:
    """Report each append's start and commit; slow store writes down once ``slow_after`` step appends committed."""
    append = RunWriter.append
    commits = 0

    def reporting_append(self: RunWriter, append_dim: str, columns: dict) -> None:
        nonlocal commits
        rows = len(next(iter(columns.values()))[1]) if columns else 0
        report(f"begin {append_dim} {self.lengths[append_dim] + rows}")
        append(self, append_dim, columns)
        report(f"committed {append_dim} {self.lengths[append_dim]}")
        commits += append_dim == "step"

    RunWriter.append = reporting_append
    if slow_store > 0:
        store_set = LocalStore.set

        async def slow_set(self: LocalStore, key: str, value: object) -> None:
            if commits >= slow_after:
                time.sleep(slow_store)
            await store_set(self, key, value)

        LocalStore.set = slow_set


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--flush-steps", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slow-store", type=float, default=0.0)
    parser.add_argument("--slow-after", type=int, default=0, help="step appends committed before slowing down")
    parser.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep after each step")
    parser.add_argument("--wait-go", action="store_true", help="after 'ready', wait for a line on stdin")
    parser.add_argument("--max-steps", type=int, default=None)
    parser.add_argument("--max-seconds", type=float, default=120.0, help="safety limit if nobody kills us")
    args = parser.parse_args()

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    parent = os.getppid()
    data = load_dataset("gaussian", num_samples=640, seed=args.seed)
    model = build_model(
        "cnn", input_shape=data.input_shape, num_classes=data.num_classes, width=8, depth=2, activation="relu"
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    instrument(args.slow_store, args.slow_after)
    recorder = Recorder(
        model,
        optimizer,
        args.run_dir,
        every=args.every,
        flush_steps=args.flush_steps,
        flush_seconds=3600.0,
        seed=args.seed,
        config=vars(args),
    )
    report("ready")
    if args.wait_go:
        sys.stdin.readline()

    generator = torch.Generator().manual_seed(args.seed)
    started = time.monotonic()
    step = 0
    while args.max_steps is None or step < args.max_steps:
        order = torch.randperm(len(data.x_train), generator=generator)
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            index = order[start : start + args.batch_size]
            x, y = data.x_train[index], data.y_train[index]
            out = model(x)
            loss = F.cross_entropy(out, y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recorder.step(loss=loss, output=out, target=y)
            step += 1
            if args.step_sleep:
                time.sleep(args.step_sleep)
            if os.getppid() != parent or time.monotonic() - started > args.max_seconds:
                os._exit(3)  # orphaned or forgotten: stop without closing, like a crash
            if args.max_steps is not None and step >= args.max_steps:
                break
        recorder.epoch += 1
        with torch.no_grad():
            out = model(data.x_test)
            recorder.record_eval(
                val_loss=F.cross_entropy(out, data.y_test), val_accuracy=(out.argmax(1) == data.y_test).float().mean()
            )
    recorder.close()
    report(f"done {step}")


if __name__ == "__main__":
    main()
