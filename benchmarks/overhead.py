"""Recording overhead: the same training loop with and without a Recorder, interleaved in one process.

The plain loop (A) trains the MNIST-1D CNN (the defaults of ``dynamics.models.CNN1d``, batch 128, SGD), the
recorded loop (B) a copy of it that starts from the same weights and optimizer state, with one Recorder
(``every=1``, default flush settings, a temporary run directory) for the whole measurement, as a run has
one; they take turns in ABBA blocks after a warmup on the same data stream, so slow drifts of the machine
(frequency scaling, other load, the models' training) hit both sides alike. Each block reports its median
step time; a round's ratio is mean(B medians) / mean(A medians), and the result is the median ratio over
rounds. (Starting and closing a Recorder for every B block, as this benchmark once did, measured the
recorder's churn too: in one run its blocks took 245 minor page faults a step against 71.) The recorder's
closing flush is timed apart and reported as the amortised ratio, one flush per 1000 steps.

    python benchmarks/overhead.py [--steps N] [--repeats R] [--device cpu|cuda|auto] [--out PATH]

A separate line measures what the default sketch adds on top of the other default probes, paired per step
(``paired``: within one recorded loop the sketch runs after a random half of the steps), in wall and CPU time.

Writes ``benchmarks/results/overhead-<device>.json`` and prints a short summary; the targets are a median
ratio <= 1.10 and a sketch ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS, describe_machine, load_average, select_device
from tqdm import tqdm

from dynamics import Recorder
from dynamics.data import load_dataset
from dynamics.models import build_model
from dynamics.probes import PRESETS, Sketch, StepData

TARGET = 1.10
SKETCH_TARGET = 1.02
"""The default sketch's share: at most 2% added to the step time (the paired sketch line)."""
FLUSH_STEPS = 1000
"""The Recorder's default flush_steps: the amortised ratio spreads one flush over this many steps."""


def minor_faults() -> int:
    """Minor page faults of this process so far (each costs a zeroed page; large temporaries cause many)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Timer:
    """Per-step times: CUDA events on the GPU, read after one synchronize; on the CPU wall time
    (perf_counter) or, with ``clock="cpu"``, this thread's CPU time (thread_time), which other processes'
    load does not inflate (only meaningful with one torch thread, since other threads' work is not seen).
    """

    def __init__(self, device: torch.device, clock: str = "wall") -> None:
        self.cuda = device.type == "cuda"
        self.clock = time.thread_time if clock == "cpu" else time.perf_counter

    def run(self, steps: int, step: Callable[[int], None]) -> list[float]:
        """Seconds taken by each of ``steps`` calls of ``step(i)``."""
        if self.cuda:
            torch.cuda.synchronize()
            events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)]
            events[0].record()
            for i in range(steps):
                step(i)
                events[i + 1].record()
            torch.cuda.synchronize()
            return [events[i].elapsed_time(events[i + 1]) / 1e3 for i in range(steps)]
        times = []
        clock = self.clock
        last = clock()
        for i in range(steps):
            step(i)
            now = clock()
            times.append(now - last)
            last = now
        return times


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               recorder: Recorder | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step of the benchmark loop (recorded when a recorder is given); returns (loss, output)."""
    out = model(x)
    loss = F.cross_entropy(out, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if recorder is not None:
        recorder.step(loss=loss, output=out, target=y)
    return loss, out


class Bench:
    """One model, optimizer and data stream shared by the plain and the recorded blocks."""

    def __init__(self, device: torch.device, batch_size: int, lr: float, seed: int, workdir: Path,
                 clock: str = "wall") -> None:
        torch.manual_seed(seed)
        data = load_dataset("mnist1d", seed=seed)
        self.x = data.x_train.to(device)
        self.y = data.y_train.to(device)
        self.model = build_model("cnn", input_shape=data.input_shape, num_classes=data.num_classes,
                                 width=32, depth=3, activation="relu").to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=0.9)
        self.batch_size = batch_size
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.order = torch.empty(0, dtype=torch.long)
        self.position = 0
        self.device = device
        self.timer = Timer(device, clock)
        self.workdir = workdir
        self.sides: dict[str, tuple[torch.nn.Module, torch.optim.Optimizer, Recorder]] = {}
        """Recorded sides by label (``recorded_side``)."""
        self.runs = 0
        self.faults: dict[bool, list[float]] = {False: [], True: []}
        """Minor page faults per step of plain (False) and recorded (True) blocks."""

    def batches(self, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The next ``steps`` batches of a running random permutation, prepared before timing starts."""
        out = []
        for _ in range(steps):
            if self.position + self.batch_size > len(self.order):
                self.order = torch.randperm(len(self.x), generator=self.generator).to(self.device)
                self.position = 0
            index = self.order[self.position:self.position + self.batch_size]
            self.position += self.batch_size
            out.append((self.x[index], self.y[index]))
        return out

    def recorded_side(self, probes: str | list[str], label: str) -> tuple[
            torch.nn.Module, torch.optim.Optimizer, Recorder]:
        """A copy of the model (same weights and optimizer state) with a Recorder of ``probes``, made once per
        ``label`` and kept for every later block of it."""
        side = self.sides.get(label)
        if side is None:
            twin = copy.deepcopy(self.model)
            optimizer = torch.optim.SGD(twin.parameters(), lr=self.optimizer.param_groups[0]["lr"], momentum=0.9)
            optimizer.load_state_dict(self.optimizer.state_dict())
            self.runs += 1
            recorder = Recorder(twin, optimizer, self.workdir / f"run-{self.runs}", every=1, probes=probes)
            side = self.sides[label] = (twin, optimizer, recorder)
        return side

    def close(self, label: str) -> float:
        """Close the recorder of ``label`` (its last flush); returns the seconds it took."""
        start = time.perf_counter()
        self.sides.pop(label)[2].close()
        return time.perf_counter() - start

    def block(self, steps: int, probes: str | list[str] | None, label: str = "") -> list[float]:
        """Per-step times of one block: plain when ``probes`` is None, else the recorded side ``label``."""
        batches = self.batches(steps)
        model, optimizer, recorder = (self.model, self.optimizer, None) if probes is None else \
            self.recorded_side(probes, label)

        def step(i: int) -> None:
            train_step(model, optimizer, *batches[i], recorder)

        faults = minor_faults()
        times = self.timer.run(steps, step)
        self.faults[probes is not None].append((minor_faults() - faults) / steps)
        return times


def twins(bench: Bench, probes: str | list[str], steps: int, rounds: int) -> dict[str, object]:
    """Step-interleaved A/B: the bench's model (plain) and a copy of it with a Recorder take turns, step by step,
    on the same batches, so that the machine's slow spells (seconds long on a shared host) hit both alike.

    The copy starts from the same weights and optimizer state and trains on the same batches, so both do the
    same work at every step (the recorder changes nothing in training). Each pair of steps alternates which
    goes first. The recorder flushes when it would in a run (every 10 s or 1000 steps), inside B's steps: the
    median ignores those steps, the mean counts them.
    """
    twin, optimizer, recorder = bench.recorded_side(probes, "twins")
    sides = {False: (bench.model, bench.optimizer, None), True: (twin, optimizer, recorder)}
    times: dict[bool, list[float]] = {False: [], True: []}
    clock = bench.timer.clock
    for index in tqdm(range(rounds), desc="step-interleaved twins", leave=False):
        for i, (x, y) in enumerate(bench.batches(steps)):
            for recorded in ((False, True) if (index + i) % 2 == 0 else (True, False)):
                start = clock()
                train_step(*sides[recorded][:2], x, y, sides[recorded][2])
                times[recorded].append(clock() - start)
    bench.close("twins")
    summary = _summary(times[True], times[False])
    summary["mean_ratio"] = statistics.fmean(times[True]) / statistics.fmean(times[False])
    return summary


def _summary(with_sketch: list[float], without: list[float]) -> dict[str, object]:
    """Medians of the two halves, their ratio with a bootstrap 95% interval, and the added time."""
    b, a = np.asarray(with_sketch), np.asarray(without)
    draws = np.random.default_rng(0)
    boot = [np.median(draws.choice(b, b.size)) / np.median(draws.choice(a, a.size)) for _ in range(2000)]
    return {"steps_each": int(a.size), "a_ms_median": 1e3 * float(np.median(a)),
            "b_ms_median": 1e3 * float(np.median(b)), "ratio": float(np.median(b) / np.median(a)),
            "ratio_ci95": [float(v) for v in np.percentile(boot, [2.5, 97.5])],
            "added_us": 1e6 * float(np.median(b) - np.median(a))}


def paired(bench: Bench, base: list[str], sketch: Sketch, steps: int, rounds: int) -> dict[str, dict[str, object]]:
    """Per-step interleaving in one recorded loop (default probes): the sketch measures after a random half of
    the steps, as the recorder would call it, so bursts of load hit both halves alike.

    On the CPU each step is timed twice: wall time, and the process's CPU time (``time.process_time``, all
    its threads), which other processes on a busy machine barely disturb; on CUDA, events (wall time).
    """
    recorder = Recorder(bench.model, bench.optimizer, bench.workdir / "paired", every=1, probes=base)
    sketch.attach(recorder.context)
    scratch = np.empty((len(recorder.context.params) + 1) * sketch.k, dtype=np.float32)  # traj_proj + total
    scratch_address = scratch.ctypes.data
    rng = random.Random(0)
    model, optimizer = bench.model, bench.optimizer
    clocks: dict[str, tuple[list[float], list[float]]] = {"wall": ([], []), "cpu": ([], [])}
    for _ in tqdm(range(rounds), desc="paired steps", leave=False):
        batches = bench.batches(steps)
        flags = [i % 2 == 0 for i in range(steps)]
        rng.shuffle(flags)

        def step(i: int, batches: list = batches, flags: list[bool] = flags) -> None:
            x, y = batches[i]
            loss, out = train_step(model, optimizer, x, y, recorder)
            if flags[i]:
                with torch.no_grad():  # as the recorder calls it: into a host row where it can, else measure()
                    data = StepData(loss, out, y)
                    if not sketch.measure_into(recorder.context, data, scratch_address):
                        sketch.measure(recorder.context, data)

        if bench.device.type == "cuda":
            times = {"wall": bench.timer.run(steps, step)}
        else:
            times = {"wall": [], "cpu": []}
            for i in range(steps):
                wall, cpu = time.perf_counter(), time.process_time()
                step(i)
                times["cpu"].append(time.process_time() - cpu)
                times["wall"].append(time.perf_counter() - wall)
        for name, values in times.items():
            clocks[name][0].extend(t for t, flag in zip(values, flags, strict=True) if flag)
            clocks[name][1].extend(t for t, flag in zip(values, flags, strict=True) if not flag)
    recorder.close()
    return {name: _summary(*halves) for name, halves in clocks.items() if halves[0]}


def compare(bench: Bench, probes: str | list[str], steps: int, rounds: int, label: str) -> dict[str, object]:
    """ABBA rounds (after one warmup AB) of plain vs recorded blocks; ratios of per-block median step times."""
    bench.block(steps, None)
    bench.block(steps, probes, label)
    plain, recorded, ratios, mean_ratios = [], [], [], []
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
        mean_ratios.append(statistics.fmean(b1 + b2) / statistics.fmean(a1 + a2))
    faults = {kind: statistics.median(bench.faults[kind][-2 * rounds:]) for kind in (False, True)}
    plain_ms = 1e3 * statistics.median(plain)
    flush_ms = 1e3 * bench.close(label)
    mean_ratio = statistics.median(mean_ratios)
    return {
        "plain_ms_median": plain_ms,
        "recorded_ms_median": 1e3 * statistics.median(recorded),
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "mean_ratio_median": mean_ratio,
        "flush_ms_median": flush_ms,
        "amortised_ratio": mean_ratio + flush_ms / (FLUSH_STEPS * plain_ms),
        "minor_page_faults_per_step": {"plain": faults[False], "recorded": faults[True]},
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per block (default 100)")
    parser.add_argument("--repeats", type=int, default=30,
                        help="ABBA rounds (default 30: on a shared host 15 left the median +-0.03 from run to run)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: the cores available to this process)")
    parser.add_argument("--probes", default="default",
                        help="probe preset recorded in the B blocks, or a comma-separated list of probe names")
    parser.add_argument("--per-probe", action="store_true",
                        help="also measure each probe of the preset alone (fewer rounds)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="CPU step timing: wall time, or this thread's CPU time (needs --threads 1; "
                             "robust to other processes' load)")
    parser.add_argument("--twin-rounds", type=int, default=30,
                        help="rounds of the step-interleaved twin measurement (0 skips it)")
    parser.add_argument("--sketch-rounds", type=int, default=10,
                        help="rounds of the paired sketch measurement (the sketch line; 0 skips it)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON result (default benchmarks/results/overhead-<device>.json)")
    args = parser.parse_args(argv)
    if args.steps < 10 or args.repeats < 1:
        parser.error("--steps must be >= 10 and --repeats >= 1")

    device = select_device(parser, args.device, args.threads)
    device_type, threads = device.type, torch.get_num_threads()
    if args.clock == "cpu" and (threads != 1 or device_type != "cpu"):
        parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1 on the CPU")
    out = args.out or RESULTS / f"overhead-{device_type}.json"

    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="dynamics-overhead-") as workdir:
        bench = Bench(device, args.batch_size, lr=0.01, seed=args.seed, workdir=Path(workdir), clock=args.clock)
        probes = args.probes if args.probes in PRESETS else args.probes.split(",")
        result = compare(bench, probes, args.steps, args.repeats, f"{args.probes} vs plain")
        result["twins"] = twins(bench, probes, args.steps, args.twin_rounds) if args.twin_rounds > 0 else None
        per_probe = {}
        if args.per_probe:
            for name in PRESETS.get(args.probes, probes):
                single = compare(bench, [name], args.steps, max(3, args.repeats // 2), name)
                per_probe[name] = {k: single[k] for k in ("ratio_median", "ratios", "recorded_ms_median",
                                                          "plain_ms_median", "mean_ratio_median")}
        sketch = None
        if args.sketch_rounds > 0:
            base = [name for name in PRESETS["default"] if name != "sketch"]
            sketch = paired(bench, base, Sketch(), args.steps, args.sketch_rounds)

    report = {
        "benchmark": "overhead",
        "machine": describe_machine(device, load_before),
        "config": {
            "model": "cnn (CNN1d defaults: width 32, depth 3, relu, kernel 5)",
            "dataset": "mnist1d (8000 train samples)",
            "batch_size": args.batch_size,
            "optimizer": "SGD lr 0.01 momentum 0.9",
            "recorder": {"every": 1, "probes": args.probes, "flush_steps": 1000, "flush_seconds": 10.0},
            "steps_per_block": args.steps,
            "rounds": args.repeats,
            "order": "warmup AB, then ABBA per round; B is a copy of the model with one Recorder for all its blocks",
            "timing": "CUDA events per step" if device_type == "cuda" else
                      {"wall": "perf_counter per step", "cpu": "thread_time (CPU time) per step"}[args.clock],
            "torch_threads": torch.get_num_threads(),
            "ratio": "per round mean(B block medians) / mean(A block medians); ratio_median over rounds",
            "mean_ratio": "per round mean of all B step times / mean of all A step times (spikes included)",
            "flush_ms": "the recorded side's Recorder.close() after the last round: one flush of the rows since its "
                        "last flush (at most 1000)",
            "amortised_ratio": f"mean_ratio_median + flush_ms_median / ({FLUSH_STEPS} * plain_ms_median): "
                               f"one flush per {FLUSH_STEPS} steps, the default flush_steps",
        },
        **result,
        "per_probe": per_probe,
        "sketch": None if sketch is None else {
            "method": "one recording loop with the default probes less the sketch; the default sketch measures "
                      "after a random half of the steps; ratio = median(steps with) / median(steps without)",
            "target": SKETCH_TARGET, **sketch},
        "target": TARGET,
        "meets_target": result["ratio_median"] <= TARGET,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"overhead on {report['machine']['device_name']} ({threads} torch threads), "
          f"{args.repeats} ABBA rounds of {args.steps} steps")
    print(f"  plain    {result['plain_ms_median']:.3f} ms/step (median)")
    print(f"  recorded {result['recorded_ms_median']:.3f} ms/step (median), probes={args.probes!r}")
    verdict = "meets" if report["meets_target"] else "misses"
    print(f"  ratio    {result['ratio_median']:.3f} (median over rounds; {verdict} target {TARGET}); "
          f"mean-based {result['mean_ratio_median']:.3f}; flush {result['flush_ms_median']:.1f} ms, "
          f"amortised over {FLUSH_STEPS} steps {result['amortised_ratio']:.3f}")
    if result["twins"] is not None:
        pair = result["twins"]
        low, high = pair["ratio_ci95"]
        verdict = "meets" if pair["ratio"] <= TARGET else "misses"
        print(f"  twins    {pair['ratio']:.3f} [{low:.3f}, {high:.3f}] (step-interleaved, median step, 95% CI; "
              f"{verdict} target {TARGET}); mean-based {pair['mean_ratio']:.3f} (flushes included), "
              f"{pair['added_us']:+.0f} us/step over {pair['steps_each']} steps each")
    for name, single in per_probe.items():
        print(f"    {name:<15} alone: ratio {single['ratio_median']:.3f}")
    for clock, result in (sketch or {}).items():
        low, high = result["ratio_ci95"]
        verdict = "meets" if result["ratio"] <= SKETCH_TARGET else "misses"
        print(f"  sketch   {result['ratio']:.4f} [{low:.4f}, {high:.4f}] ({clock} time, paired, 95% CI; {verdict} "
              f"target {SKETCH_TARGET}), {result['added_us']:+.0f} us/step")
    print(f"  wrote {out}")
    return report


if __name__ == "__main__":
    main()
