"""Recording overhead: the same training loop with and without a Recorder, interleaved in one process.

The plain loop (A) and a copy of it with one Recorder (B, ``every=1``, the default probes) start from the
same weights and optimizer state and take turns in ABBA blocks after a warmup on the same batches, so slow
drifts of the machine (frequency scaling, other load) hit both sides alike. A round's ratio is mean(B block
medians) / mean(A block medians); the result is the median ratio over rounds. The recorder's flushes fall
inside B's blocks as in a run; the amortised ratio adds one closing flush per 1000 steps.

- ``--device cpu`` (the CPU reference): the MNIST-1D CNN (``CNN1d`` defaults), batch 128, SGD, fp32.
  Target <= 1.30.
- ``--device cuda``: ResNet-18 on CIFAR-10-shaped batches (32x32x3, 10 classes, drawn once on the GPU:
  the data does not change what recording costs), batch 512, bf16 autocast, SGD. Target <= 1.03, and zero
  host synchronisations in steps outside flushes, counted with
  ``torch.cuda.set_sync_debug_mode("warn")`` over recorded steps.

    python benchmarks/overhead.py [--device cpu|cuda] [--steps N] [--repeats R] [--per-probe] [--out PATH]

Writes ``benchmarks/results/overhead-<device>.json`` (the machine named in it) and prints a summary.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, describe_machine, load_average, select_device
from tqdm import tqdm

from dynamics import Recorder
from dynamics.data import load_dataset
from dynamics.models import build_model
from dynamics.probes import PRESETS

TARGETS = {"cpu": 1.30, "cuda": 1.03}
FLUSH_STEPS = 1000
"""The Recorder's default flush_steps: the amortised ratio spreads one flush over this many steps."""
SETUPS = {
    "cpu": {
        "model": "cnn (CNN1d defaults: width 32, depth 3, relu)",
        "data": "mnist1d (8000 train samples)",
        "batch_size": 128,
        "precision": "fp32",
    },
    "cuda": {
        "model": "resnet18",
        "data": "CIFAR-10-shaped batches (3x32x32, 10 classes) drawn on the GPU",
        "batch_size": 512,
        "precision": "bf16 autocast",
    },
}


class Bench:
    """One model, optimizer and data stream shared by the plain and the recorded blocks."""

    def __init__(self, device: torch.device, batch_size: int, seed: int, workdir: Path) -> None:
        torch.manual_seed(seed)
        if device.type == "cuda":
            self.x = torch.randn(10 * batch_size, 3, 32, 32, device=device)
            self.y = torch.randint(0, 10, (len(self.x),), device=device)
            self.model = build_model(
                "resnet18", input_shape=(3, 32, 32), num_classes=10, width=32, depth=3, activation="relu"
            ).to(device, memory_format=torch.channels_last)
            self.autocast: Callable[[], object] = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
        else:
            data = load_dataset("mnist1d", seed=seed)
            self.x, self.y = data.x_train.to(device), data.y_train.to(device)
            self.model = build_model(
                "cnn", input_shape=data.input_shape, num_classes=data.num_classes, width=32, depth=3, activation="relu"
            ).to(device)
            self.autocast = nullcontext
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.batch_size = batch_size
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.device = device
        self.workdir = workdir
        self.sides: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer, Recorder]] = {}

    def batches(self, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``steps`` random batches, indexed before timing starts."""
        index = torch.randint(0, len(self.x), (steps, self.batch_size), generator=self.generator).to(self.device)
        return [(self.x[i], self.y[i]) for i in index]

    def step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        x: torch.Tensor,
        y: torch.Tensor,
        recorder: Recorder | None,
    ) -> None:
        """One optimizer step (recorded when a recorder is given)."""
        with self.autocast():
            out = model(x)
            loss = F.cross_entropy(out, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if recorder is not None:
            recorder.step(loss=loss, output=out, target=y)

    def recorded_side(
        self, probes: str | list[str], label: str
    ) -> tuple[torch.nn.Module, torch.optim.Optimizer, Recorder]:
        """A copy of the model (same weights and optimizer state) with one Recorder of ``probes``, kept per label."""
        if label not in self.sides:
            twin = copy.deepcopy(self.model)
            optimizer = torch.optim.SGD(twin.parameters(), lr=0.01, momentum=0.9)
            optimizer.load_state_dict(self.optimizer.state_dict())
            recorder = Recorder(twin, optimizer, self.workdir / f"run-{len(self.sides)}-{label}", probes=probes)
            self.sides[label] = (twin, optimizer, recorder)
        return self.sides[label]

    def block(self, steps: int, probes: str | list[str] | None, label: str = "") -> list[float]:
        """Seconds of each step of one block: plain when ``probes`` is None, else the recorded side ``label``."""
        batches = self.batches(steps)
        model, optimizer, recorder = (
            (self.model, self.optimizer, None) if probes is None else self.recorded_side(probes, label)
        )
        if self.device.type == "cuda":
            events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
            torch.cuda.synchronize()
            events[0].record()
            for i, (x, y) in enumerate(batches):
                self.step(model, optimizer, x, y, recorder)
                events[i + 1].record()
            torch.cuda.synchronize()
            return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)]
        times, last = [], time.perf_counter()
        for x, y in batches:
            self.step(model, optimizer, x, y, recorder)
            now = time.perf_counter()
            times.append(now - last)
            last = now
        return times

    def close(self, label: str) -> float:
        """Close the recorder of ``label`` (its last flush); the seconds it took."""
        start = time.perf_counter()
        self.sides.pop(label)[2].close()
        return time.perf_counter() - start


def compare(bench: Bench, probes: str | list[str], steps: int, rounds: int, label: str) -> dict[str, object]:
    """ABBA rounds (after one warmup AB) of plain vs recorded blocks; ratios of per-block median step times."""
    bench.block(steps, None)
    bench.block(steps, probes, label)
    plain, recorded, ratios = [], [], []
    for _ in tqdm(range(rounds), desc=label, leave=False):
        a1 = bench.block(steps, None)
        b1 = bench.block(steps, probes, label)
        b2 = bench.block(steps, probes, label)
        a2 = bench.block(steps, None)
        a = [statistics.median(a1), statistics.median(a2)]
        b = [statistics.median(b1), statistics.median(b2)]
        plain += a
        recorded += b
        ratios.append(statistics.fmean(b) / statistics.fmean(a))
    plain_ms = 1e3 * statistics.median(plain)
    flush_ms = 1e3 * bench.close(label)
    ratio = statistics.median(ratios)
    return {
        "plain_ms_median": plain_ms,
        "recorded_ms_median": 1e3 * statistics.median(recorded),
        "ratio_median": ratio,
        "ratios": ratios,
        "flush_ms": flush_ms,
        "amortised_ratio": ratio + flush_ms / (FLUSH_STEPS * plain_ms),
    }


def count_syncs(bench: Bench, probes: str | list[str], steps: int) -> dict[str, int]:
    """Host synchronisations CUDA reports (``set_sync_debug_mode("warn")``) in ``steps`` plain and recorded steps,
    with flushes kept out of the window (they move the rows to the host: one synchronisation per 1000 steps);
    the finite checks every 50 steps stay in (on CUDA they read their flag without waiting)."""
    counts = {}
    batches = bench.batches(steps)
    for label, side in (("plain", (bench.model, bench.optimizer, None)), ("recorded", None)):
        if side is None:
            model, optimizer, recorder = bench.recorded_side(probes, "syncs")
            recorder.flush_steps, recorder.flush_seconds = 10 * steps + 1, 1e9
            side = (model, optimizer, recorder)
        bench.step(*side[:2], *batches[0], side[2])  # the first recorded step checks shapes and writes meta.json
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                for x, y in batches[1:]:
                    bench.step(*side[:2], x, y, side[2])
        finally:
            torch.cuda.set_sync_debug_mode("default")
        counts[label] = sum("synchroniz" in str(w.message) for w in caught)
    bench.close("syncs")
    return {**counts, "steps": steps - 1}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per block (default 100)")
    parser.add_argument("--repeats", type=int, default=30, help="ABBA rounds (default 30)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: the cores available to this process)",
    )
    parser.add_argument(
        "--probes",
        default="default",
        help="probe preset recorded in the B blocks, or a comma-separated list of probe names",
    )
    parser.add_argument("--per-probe", action="store_true", help="also measure each probe of the preset alone")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=None, help="JSON result (default benchmarks/results/overhead-<device>.json)"
    )
    args = parser.parse_args(argv)
    if args.steps < 10 or args.repeats < 1:
        parser.error("--steps must be >= 10 and --repeats >= 1")
    device = select_device(parser, args.device, args.threads)
    setup, target = SETUPS[device.type], TARGETS[device.type]
    out = args.out or RESULTS / f"overhead-{device.type}.json"
    probes = args.probes if args.probes in PRESETS else args.probes.split(",")

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="dynamics-overhead-") as workdir:
        bench = Bench(device, setup["batch_size"], args.seed, Path(workdir))
        result = compare(bench, probes, args.steps, args.repeats, f"{args.probes} vs plain")
        per_probe = {}
        if args.per_probe:
            for name in PRESETS.get(args.probes, probes):
                single = compare(bench, [name], args.steps, max(3, args.repeats // 3), name)
                per_probe[name] = {key: single[key] for key in ("ratio_median", "recorded_ms_median")}
        syncs = count_syncs(bench, probes, args.steps) if device.type == "cuda" else None

    report = {
        "benchmark": "overhead",
        "machine": describe_machine(device, load_before),
        "config": {
            **setup,
            "optimizer": "SGD lr 0.01 momentum 0.9",
            "recorder": {"every": 1, "probes": args.probes, "flush_steps": FLUSH_STEPS, "flush_seconds": 10.0},
            "steps_per_block": args.steps,
            "rounds": args.repeats,
            "order": "warmup AB, then ABBA per round; B is a copy of the model with one Recorder",
            "timing": "CUDA events per step" if device.type == "cuda" else "perf_counter per step",
            "ratio": "per round mean(B block medians) / mean(A block medians); median over rounds",
        },
        **result,
        "per_probe": per_probe,
        "host_syncs": syncs,
        "target": target,
        "meets_target": result["ratio_median"] <= target and (syncs is None or syncs["recorded"] == 0),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(
        f"overhead on {report['machine']['device_name']} ({torch.get_num_threads()} torch threads), "
        f"{setup['model']}, batch {setup['batch_size']}, {setup['precision']}; "
        f"{args.repeats} ABBA rounds of {args.steps} steps"
    )
    print(f"  plain    {result['plain_ms_median']:.3f} ms/step (median)")
    print(f"  recorded {result['recorded_ms_median']:.3f} ms/step (median), probes={args.probes!r}")
    verdict = "meets" if result["ratio_median"] <= target else "misses"
    print(
        f"  ratio    {result['ratio_median']:.3f} (median over rounds; {verdict} target {target}); closing flush "
        f"{result['flush_ms']:.1f} ms, amortised over {FLUSH_STEPS} steps {result['amortised_ratio']:.3f}"
    )
    for name, single in per_probe.items():
        print(f"    {name:<15} alone: ratio {single['ratio_median']:.3f}")
    if syncs is not None:
        print(
            f"  host synchronisations in {syncs['steps']} steps: plain {syncs['plain']}, recorded {syncs['recorded']}"
        )
    print(f"  wrote {out}")
    return report


if __name__ == "__main__":
    main()
