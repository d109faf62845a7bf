"""Cost of one measurement of each curvature probe, as a multiple of one training step, interleaved in one process.

The MNIST-1D CNN (the RunConfig defaults: width 32, depth 3, relu, kernel 5) trains with SGD (lr 0.05, momentum
0.9) on batches of 128 MNIST-1D training samples; the probes measure on the default probe set (256 training
samples, ``make_probe_set`` with data seed 0) with their default settings:

- ``sharpness``: top eigenvalue by 20 Lanczos steps (20 Hessian-vector products; under Adam a second run gives
  the preconditioned sharpness, about twice this);
- ``hessian_trace``: Hutchinson with 20 Rademacher vectors (20 products);
- ``hessian_density``: SLQ with 4 vectors x 20 Lanczos steps (80 products), at its own sparser cadence;
- ``noise_scale``: one per-sample gradient Gram of the 256 samples (one forward and one backward pass);
- ``hvp``: one Hessian-vector product alone (whole probe set in one chunk, gradient graph built once and reused,
  as inside the probes), for sizing other settings.

Each round runs one block of every variant, the order rotating from round to round; a block's time is the
median of its calls, by wall time (perf_counter) and by this process's CPU time (process_time, which other load
on a shared machine distorts less), a round's cost of a variant its block time over the round's ``step`` block
time, and the result the median over rounds. A probe is called through ``measure_now`` (its
whole measurement: side pass, isolation, the numerical method, the values on the device).

    python benchmarks/curvature.py [--rounds R] [--threads T] [--out PATH]

Writes ``benchmarks/results/curvature-cpu.json`` with the machine named in it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, describe_machine, load_average, select_device

from dynamics.data import load_dataset
from dynamics.models import build_model
from dynamics.probes import (
    Context,
    HessianDensity,
    HessianOperator,
    HessianTrace,
    NoiseScale,
    Sharpness,
    make_probe_set,
)

BATCH = 128
PROBE_SAMPLES = 256
CALLS = {"step": 20, "hvp": 10, "sharpness": 3, "hessian_trace": 3, "hessian_density": 2, "noise_scale": 5}
"""Calls per block of each variant (fewer for the costly ones)."""


class Case:
    """The model, optimizer, batches and probes, and each variant as a callable."""

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        torch.manual_seed(seed)
        data = load_dataset("mnist1d", seed=seed)
        self.x, self.y = data.x_train.to(device), data.y_train.to(device)
        self.model = build_model(
            "cnn", input_shape=data.input_shape, num_classes=data.num_classes, width=32, depth=3, activation="relu"
        ).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.context = Context(self.model, self.optimizer)
        self.probe_set = make_probe_set(data, PROBE_SAMPLES, seed=0)
        self.probes = {
            "sharpness": Sharpness(self.probe_set),
            "hessian_trace": HessianTrace(self.probe_set),
            "hessian_density": HessianDensity(self.probe_set),
            "noise_scale": NoiseScale(self.probe_set),
        }
        for probe in self.probes.values():
            probe.attach(self.context)
        self.generator = torch.Generator().manual_seed(seed)

    def step(self) -> None:
        index = torch.randint(0, len(self.x), (BATCH,), generator=self.generator).to(self.x.device)
        loss = F.cross_entropy(self.model(self.x[index]), self.y[index])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def variant(self, name: str) -> Callable[[], object]:
        if name == "step":
            return self.step
        if name == "hvp":
            self.model.eval()
            operator = HessianOperator(self.model, self.probe_set.x_train, self.probe_set.y_train)
            self.model.train()
            vector = torch.randn(operator.dim, generator=self.generator)
            return lambda: operator(vector)
        probe = self.probes[name]
        return lambda: probe.measure_now(self.context)


CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
"""Wall time, and this process's CPU time (all its threads), which other load on a shared machine distorts less."""


def block(case: Case, name: str) -> dict[str, float]:
    """Median seconds of the block's calls of variant ``name``, by each clock."""
    run = case.variant(name)
    times: dict[str, list[float]] = {clock: [] for clock in CLOCKS}
    for _ in range(CALLS[name]):
        start = {clock: read() for clock, read in CLOCKS.items()}
        run()
        for clock, read in CLOCKS.items():
            times[clock].append(read() - start[clock])
    return {clock: statistics.median(t) for clock, t in times.items()}


def measure(case: Case, rounds: int) -> dict[str, object]:
    names = list(CALLS)
    for name in names:  # warmup
        block(case, name)
    times = {clock: {name: [] for name in names} for clock in CLOCKS}
    ratios = {clock: {name: [] for name in names[1:]} for clock in CLOCKS}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        seconds = {name: block(case, name) for name in order}
        for clock in CLOCKS:
            for name in names:
                times[clock][name].append(seconds[name][clock])
            for name in names[1:]:
                ratios[clock][name].append(seconds[name][clock] / seconds["step"][clock])
    return {
        "ms_median": {c: {n: 1e3 * statistics.median(t) for n, t in times[c].items()} for c in CLOCKS},
        "ratio_to_step_median": {c: {n: statistics.median(r) for n, r in ratios[c].items()} for c in CLOCKS},
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds of one block per variant (default 7)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: the cores available)"
    )
    parser.add_argument("--out", type=Path, default=None, help="JSON result (default results/curvature-cpu.json)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    device = select_device(parser, "cpu", args.threads)
    load_before = load_average()
    result = measure(Case(device), args.rounds)
    report = {
        "benchmark": "curvature",
        "machine": describe_machine(device, load_before),
        "config": {
            "model": "cnn (width 32, depth 3, relu, kernel 5), mnist1d",
            "step": f"forward + backward + SGD(lr 0.05, momentum 0.9) step, batch {BATCH}",
            "probe_samples": PROBE_SAMPLES,
            "variants": {
                "sharpness": "Sharpness.measure_now: k=1, 20 Lanczos steps",
                "hessian_trace": "HessianTrace.measure_now: 20 Rademacher vectors",
                "hessian_density": "HessianDensity.measure_now: 4 vectors x 20 Lanczos steps, 200 bins",
                "noise_scale": "NoiseScale.measure_now: per-sample Gram of the probe samples",
                "hvp": "one Hessian-vector product on the probe samples (gradient graph reused)",
            },
            "calls_per_block": CALLS,
            "rounds": args.rounds,
            "order": "one block per variant per round, order rotating",
            "timing": "per call: perf_counter (wall) and process_time (CPU time of this process, all threads)",
            "ratio": "per clock and round: block median of the variant / block median of step; median over rounds",
        },
        **result,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = args.out or RESULTS / "curvature-cpu.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"curvature probes on {report['machine']['device_name']} ({torch.get_num_threads()} torch threads)")
    wall, cpu = result["ratio_to_step_median"]["wall"], result["ratio_to_step_median"]["cpu"]
    print(f"  step {result['ms_median']['wall']['step']:.2f} ms wall (batch {BATCH})")
    for name in wall:
        ms = result["ms_median"]["wall"][name]
        print(f"  {name:<16} {ms:8.1f} ms  {wall[name]:7.1f}x a step (wall), {cpu[name]:7.1f}x (CPU time)")
    print(f"  wrote {out}")
    return report


if __name__ == "__main__":
    main()
