"""Overhead of the trajectory sketch: default probes (A) against default probes + sketch (B), in one process.

Same set-up as ``benchmarks/overhead.py`` (its ``Bench``: the MNIST-1D CNN, batch 128, SGD, one model and
data stream for both sides): after a warmup AB, ABBA rounds of recorded blocks, so that slow drifts hit both
sides alike. A round's ratio is mean(B block medians) / mean(A block medians), reported as the median over
rounds. On a busy machine block ratios spread by +-10%, so the verdict uses a paired measurement: one
default-recorded loop in which the sketch measures after a random half of the steps; its ratio is
median(steps with) / median(steps without), with a bootstrap 95% interval, in process CPU time on the CPU
(robust to other processes) and also reported in wall time.

    python benchmarks/sketch_overhead.py [--steps N] [--repeats R] [--k K] [--mode sign|dense|hashed] [--out PATH]

Writes ``benchmarks/results/sketch-overhead-<device>.json``; the target is a paired ratio <= 1.02.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import torch
from common import RESULTS, describe_machine, load_average, select_device
from overhead import Bench, paired
from tqdm import tqdm

from dynamics.probes import PRESETS, SKETCH_MODES, Sketch

TARGET = 1.02


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=200, help="optimizer steps per block (default 200)")
    parser.add_argument("--repeats", type=int, default=9, help="ABBA rounds (default 9)")
    parser.add_argument("--k", type=int, default=8, help="sketch directions (default 8)")
    parser.add_argument("--mode", choices=SKETCH_MODES, default="sign")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON result (default benchmarks/results/sketch-overhead-<device>.json)")
    args = parser.parse_args(argv)
    if args.steps < 10 or args.repeats < 1:
        parser.error("--steps must be >= 10 and --repeats >= 1")
    device = select_device(parser, args.device, args.threads)
    device_type = device.type
    load_before = load_average()
    out = args.out or RESULTS / f"sketch-overhead-{device_type}.json"

    base = [name for name in PRESETS["default"] if name != "sketch"]
    with tempfile.TemporaryDirectory(prefix="dynamics-sketch-overhead-") as workdir:
        bench = Bench(device, args.batch_size, lr=0.01, seed=args.seed, workdir=Path(workdir))

        with_sketch = [*base, Sketch(k=args.k, mode=args.mode)]
        bench.block(args.steps, base, "a")
        bench.block(args.steps, with_sketch, "b")
        a_medians, b_medians, ratios = [], [], []
        for _ in tqdm(range(args.repeats), desc="default vs default + sketch", leave=False):
            a1 = bench.block(args.steps, base, "a")
            b1 = bench.block(args.steps, with_sketch, "b")
            b2 = bench.block(args.steps, with_sketch, "b")
            a2 = bench.block(args.steps, base, "a")
            a = [statistics.median(a1), statistics.median(a2)]
            b = [statistics.median(b1), statistics.median(b2)]
            a_medians += a
            b_medians += b
            ratios.append(statistics.fmean(b) / statistics.fmean(a))
        bench.close("a")
        bench.close("b")
        plain = [statistics.median(bench.block(args.steps, None)) for _ in range(3)]
        fine = paired(bench, base, Sketch(k=args.k, mode=args.mode), args.steps, 2 * args.repeats)

    a_ms, b_ms, plain_ms = (1e3 * statistics.median(v) for v in (a_medians, b_medians, plain))
    clock = "cpu" if "cpu" in fine else "wall"
    verdict = fine[clock]
    report = {
        "benchmark": "sketch_overhead",
        "machine": describe_machine(device, load_before),
        "config": {"model": "cnn (CNN1d defaults: width 32, depth 3, relu)", "dataset": "mnist1d",
                   "batch_size": args.batch_size, "optimizer": "SGD lr 0.01 momentum 0.9",
                   "a": {"probes": base}, "b": {"probes": [*base, f"sketch(k={args.k}, mode={args.mode})"]},
                   "every": 1, "steps_per_block": args.steps, "rounds": args.repeats,
                   "order": "warmup AB, then ABBA per round; A and B are copies of the model, each with one "
                            "Recorder for all its blocks",
                   "ratio": "per round mean(B block medians) / mean(A block medians); median over rounds"},
        "a_ms_median": a_ms,
        "b_ms_median": b_ms,
        "plain_ms_median": plain_ms,
        "ratio_median": statistics.median(ratios),
        "ratios": ratios,
        "paired": fine,
        "target": TARGET,
        "meets_target": verdict["ratio"] <= TARGET,
        "verdict_on": f"paired ratio, {clock} time (per-step interleaving); block ratios spread too much on a "
                      "busy machine",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"sketch overhead on {report['machine']['device_name']} ({torch.get_num_threads()} threads), "
          f"{args.repeats} ABBA rounds of {args.steps} steps")
    print(f"  default          {a_ms:.3f} ms/step (median); plain loop {plain_ms:.3f} ms/step")
    print(f"  default + sketch {b_ms:.3f} ms/step (median)")
    verdict_word = "meets" if report["meets_target"] else "misses"
    print(f"  block ratio      {report['ratio_median']:.4f} (median over ABBA rounds; quartiles "
          f"{statistics.quantiles(ratios, n=4)[0]:.3f}..{statistics.quantiles(ratios, n=4)[2]:.3f})"
          if len(ratios) > 1 else f"  block ratio      {report['ratio_median']:.4f}")
    for name, result in fine.items():
        low, high = result["ratio_ci95"]
        print(f"  paired ratio     {result['ratio']:.4f} [{low:.4f}, {high:.4f}] ({name} time, 95% bootstrap CI), "
              f"{result['added_us']:+.0f} us/step over {result['steps_each']} steps each")
    print(f"  verdict          {verdict_word} target {TARGET} ({clock} time)")
    print(f"  wrote {out}")
    return report


if __name__ == "__main__":
    main()
