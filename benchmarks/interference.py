"""Cost of the per-sample gradient Gram: ``per_sample_gram`` and torch.func against one plain training step.

Three variants share one model and one stream of batches, in one process: ``step`` (forward, backward
and an SGD step of the mean cross-entropy), ``per_sample_gram`` (``dynamics.probes.per_sample_gram``, every
parameter's B x B Gram and their total) and ``torch_func`` (``vmap(grad)`` of a ``functional_call`` for all
per-sample gradients at once, then the same Grams). Each round runs one block of ``--calls`` calls of
every variant, the order rotating from round to round (ABC, BCA, CAB, ...); a block's time is its median
call, and a round's cost of a Gram variant is its block time over the round's ``step`` block time. The
result is the median over rounds. Cases:

- ``cnn-cpu``: the MNIST-1D CNN (width 32, depth 3, relu, kernel 5: the RunConfig defaults), batch 128 of
  MNIST-1D training samples, on the CPU (wall time, perf_counter);
- ``resnet18-cuda``, when CUDA is available: ResNet-18 for 3x32x32 images (random normal images and
  labels), batch 128, CUDA events. The step trains in train mode; both Gram variants evaluate BatchNorm with
  its running statistics (``batchnorm="eval"``; torch.func on the model in eval mode), since train-mode
  BatchNorm couples the samples.

Peak memory of one call above the resting state: on CUDA ``torch.cuda.max_memory_allocated`` after
``reset_peak_memory_stats``, minus the memory allocated before the call (tensors only, not the caching
allocator's reserve). On the CPU, each variant runs in a fresh Python process that builds the same model
and a random MNIST-1D-shaped batch (generating the data set would set the peak), reads its peak resident
set size (``ru_maxrss``), calls the variant three times and reads it again: the growth of the process's
peak RSS, which includes allocator and page effects, not only tensors. The children run first, while this
process is small: a child's peak RSS starts at least at its parent's RSS at the time it started.

    python benchmarks/interference.py [--rounds R] [--calls N] [--threads T] [--out PATH]

Writes ``benchmarks/results/interference-cpu.json`` (and ``interference-cuda.json`` on a GPU machine); the
target is ``per_sample_gram`` <= 3x a plain step on the MNIST-1D CNN at batch 128 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from common import RESULTS, Timer, available_cores, describe_machine, load_average

from dynamics.data import load_dataset
from dynamics.models import build_model
from dynamics.probes import per_sample_gram

TARGET = 3.0
VARIANTS = ("step", "per_sample_gram", "torch_func")
BATCH = 128


def per_sample_losses(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, target, reduction="none")


def torch_func_gram(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The same Grams from all per-sample gradients at once (vmap over grad of a functional_call)."""
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())

    def loss(theta: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return per_sample_losses(functional_call(model, (theta, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0)).sum()

    per = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    grams = {name: (g.flatten(1) @ g.flatten(1).T).double() for name, g in per.items()}
    grams["total"] = sum(grams.values())
    return grams


class Case:
    """One model, optimizer and batch stream, and the three variants as callables of a batch."""

    def __init__(self, name: str, device: torch.device, seed: int = 0, synthetic: bool = False) -> None:
        torch.manual_seed(seed)
        self.name = name
        self.device = device
        if name == "cnn-cpu" and synthetic:  # MNIST-1D shapes without generating the data set
            self.x, self.y = torch.randn(4 * BATCH, 1, 40, device=device), torch.randint(0, 10, (4 * BATCH,))
            self.model = build_model(
                "cnn", input_shape=(1, 40), num_classes=10, width=32, depth=3, activation="relu"
            ).to(device)
        elif name == "cnn-cpu":
            data = load_dataset("mnist1d", seed=seed)
            self.x, self.y = data.x_train.to(device), data.y_train.to(device)
            self.model = build_model(
                "cnn", input_shape=data.input_shape, num_classes=data.num_classes, width=32, depth=3, activation="relu"
            ).to(device)
        else:
            self.x = torch.randn(4 * BATCH, 3, 32, 32, device=device)
            self.y = torch.randint(0, 10, (4 * BATCH,), device=device)
            self.model = build_model(
                "resnet18", input_shape=(3, 32, 32), num_classes=10, width=1, depth=1, activation="relu"
            ).to(device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.generator = torch.Generator().manual_seed(seed)

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, len(self.x), (BATCH,), generator=self.generator).to(self.device)
        return self.x[index], self.y[index]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(self.model(x), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def per_sample_gram(self, x: torch.Tensor, y: torch.Tensor) -> None:
        per_sample_gram(self.model, per_sample_losses, x, y, batchnorm="eval")

    def torch_func(self, x: torch.Tensor, y: torch.Tensor) -> None:
        training = self.model.training
        self.model.eval()
        try:
            torch_func_gram(self.model, x, y)
        finally:
            self.model.train(training)

    def variant(self, name: str) -> Callable[[torch.Tensor, torch.Tensor], None]:
        return getattr(self, name)


def block(case: Case, timer: Timer, variant: str, calls: int) -> float:
    """Median seconds of ``calls`` calls of ``variant``, batches prepared before timing."""
    batches = [case.batch() for _ in range(calls)]
    run = case.variant(variant)
    return statistics.median(timer.run(calls, lambda i: run(*batches[i])))


def cuda_peak(case: Case, variant: str) -> float:
    """MiB allocated at the peak of one call above what was allocated before it."""
    x, y = case.batch()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    case.variant(variant)(x, y)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def cpu_peak_child(variant: str, threads: int) -> float:
    """MiB by which three calls of ``variant`` raise a fresh process's peak RSS (model and batch built, random
    MNIST-1D-shaped data so that generating the data set does not set the peak)."""
    torch.set_num_threads(threads)
    case = Case("cnn-cpu", torch.device("cpu"), synthetic=True)
    x, y = case.batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(3):
        case.variant(variant)(x, y)
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024  # Linux: KiB


def cpu_peaks(threads: int) -> dict[str, float]:
    """:func:`cpu_peak_child` of each variant, each in a fresh process."""
    out = {}
    for variant in VARIANTS:
        command = [sys.executable, __file__, "--memory-child", variant, "--threads", str(threads)]
        result = subprocess.run(command, capture_output=True, text=True, check=True, cwd=Path(__file__).parent)
        out[variant] = float(result.stdout.strip().splitlines()[-1])
    return out


def measure(case: Case, rounds: int, calls: int, cpu_peaks_mib: dict[str, float]) -> dict[str, object]:
    timer = Timer(case.device)
    for variant in VARIANTS:  # warmup
        block(case, timer, variant, 2)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS[1:]}
    for r in range(rounds):
        order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]
        seconds = {variant: block(case, timer, variant, calls) for variant in order}
        for variant in VARIANTS:
            times[variant].append(seconds[variant])
        for variant in ratios:
            ratios[variant].append(seconds[variant] / seconds["step"])
    peaks = {v: cuda_peak(case, v) for v in VARIANTS} if case.device.type == "cuda" else cpu_peaks_mib
    return {
        "ms_median": {v: 1e3 * statistics.median(t) for v, t in times.items()},
        "ratio_to_step_median": {v: statistics.median(r) for v, r in ratios.items()},
        "ratios": ratios,
        "peak_memory_mib": peaks,
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="rounds of one block per variant (default 15)")
    parser.add_argument("--calls", type=int, default=10, help="calls per block (default 10)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: the cores available to this process)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="CPU JSON result (default "
        "benchmarks/results/interference-cpu.json; the CUDA case writes interference-cuda.json)",
    )
    parser.add_argument("--memory-child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = args.threads or available_cores()
    if args.memory_child:
        print(cpu_peak_child(args.memory_child, threads))
        return {}
    if args.rounds < 1 or args.calls < 1:
        parser.error("--rounds and --calls must be >= 1")
    torch.set_num_threads(threads)

    # Before this process grows: a child's peak RSS starts at least at its parent's RSS when it was started.
    peaks = cpu_peaks(threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    report: dict[str, object] = {}
    for device in devices:
        name = "cnn-cpu" if device.type == "cpu" else "resnet18-cuda"
        load_before = load_average()
        result = measure(Case(name, device), args.rounds, args.calls, peaks)
        report = {
            "benchmark": "interference",
            "case": name,
            "machine": describe_machine(device, load_before),
            "config": {
                "model": "cnn (width 32, depth 3, relu, kernel 5), mnist1d batches"
                if device.type == "cpu"
                else "resnet18 (width_mult 1) on random 3x32x32 images, 10 classes",
                "batch_size": BATCH,
                "variants": {
                    "step": "forward + backward + SGD(momentum 0.9) step of the mean cross-entropy",
                    "per_sample_gram": "dynamics.probes.per_sample_gram, batchnorm='eval'",
                    "torch_func": "vmap(grad(functional_call)) per-sample gradients, then P P^T per "
                    "parameter and the total (BatchNorm in eval mode)",
                },
                "rounds": args.rounds,
                "calls_per_block": args.calls,
                "order": "one block per variant per round, order rotating (ABC, BCA, CAB)",
                "timing": "CUDA events per call" if device.type == "cuda" else "perf_counter per call (wall)",
                "ratio": "per round: block median of the variant / block median of step; median over rounds",
                "peak_memory": "CUDA: max_memory_allocated during one call minus memory allocated before it"
                if device.type == "cuda"
                else "CPU: growth of peak RSS (ru_maxrss) of a fresh process (model and a random "
                "MNIST-1D-shaped batch built) over 3 calls; includes allocator and page effects",
            },
            **result,
            "target": f"per_sample_gram <= {TARGET}x step on cnn-cpu",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if device.type == "cpu":
            report["meets_target"] = result["ratio_to_step_median"]["per_sample_gram"] <= TARGET
        out = (
            (args.out or RESULTS / "interference-cpu.json")
            if device.type == "cpu"
            else RESULTS / "interference-cuda.json"
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        ms, ratio = result["ms_median"], result["ratio_to_step_median"]
        print(
            f"{name} on {report['machine']['device_name']} ({threads} threads), batch {BATCH}, "
            f"{args.rounds} rounds of {args.calls} calls"
        )
        print(f"  step            {ms['step']:.2f} ms")
        for variant in VARIANTS[1:]:
            print(
                f"  {variant:<15} {ms[variant]:.2f} ms = {ratio[variant]:.2f}x step, "
                f"peak memory {result['peak_memory_mib'][variant]:.1f} MiB"
            )
        print(f"  wrote {out}")
    return report


if __name__ == "__main__":
    main()
