"""Training throughput: the built-in engine (probes on and off) against a minimal hand-written loop.

All three train the same model on the same CIFAR-10 data (a real archive with ``--data-dir``, else a
synthetic one in the exact format: ``--train-images`` training and 100 test images per class) with the
same batch size, SGD, random crop + flip and per-channel normalisation on the device, precision, memory
layout and compilation, and evaluate the test split after every epoch:

- ``loop``: a hand-written airbench-style loop (whole data set on the device, one gather for crop and
  flip, autocast, ``F.cross_entropy``), no Recorder;
- ``engine_probes_off``: ``dynamics.engine.train`` with the ``loss`` preset (the Recorder's minimum: loss,
  accuracy, lr, epoch; the engine always records those);
- ``engine_probes_default``: ``dynamics.engine.train`` with the default probes, ``every=1``.

A run trains ``--epochs`` epochs; its throughput is the training images of epochs 2..E over the time
between the end of the first and of the last epoch's evaluation (so start-up, data loading and
compilation stay out, evaluation and the Recorder's flushes stay in), read after a device synchronisation.
The engine is timed without changing it: its Recorder is replaced by a subclass that notes the time at
each ``record_eval``. Runs are interleaved in one process, the order rotating every round (ABC, BCA, CAB,
...), and each variant's result is the median over rounds; ratios are engine/loop per round.

    python benchmarks/throughput.py [--model resnet18] [--batch-size 512] [--precision bf16]
        [--channels-last] [--compile] [--device cuda] [--data-dir DIR] [--out PATH]

Writes ``benchmarks/results/throughput-<device>.json``. Targets: engine without probes within 5% of the
loop; ResNet-18 on CIFAR-10 at batch 512 with bf16 and channels_last on an H100 at >= 20,000 images/s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F
from common import RESULTS, describe_machine, load_average, select_device

import dynamics.engine
from dynamics.augment import crop_flip
from dynamics.config import RunConfig, make_config
from dynamics.data import load_dataset, write_cifar
from dynamics.models import build_model
from dynamics.recorder import Recorder

WITHIN = 0.05
GPU_TARGET = 20_000
VARIANTS = ("loop", "engine_probes_off", "engine_probes_default")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def hand_written(config: RunConfig, device: torch.device, mark: Callable[[], None]) -> None:
    """The loop a careful researcher would write by hand for the same work; ``mark()`` after each epoch."""
    data = load_dataset("cifar10", data_dir=config.data_dir)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)
    torch.manual_seed(config.seed)
    model = build_model(
        config.model,
        input_shape=(3, 32, 32),
        num_classes=10,
        width=config.width,
        depth=config.depth,
        activation=config.activation,
        width_mult=config.width_mult,
    ).to(device)
    layout = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(memory_format=layout)
    if config.compile:
        model.compile()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    mean = 255 * torch.tensor(data.mean, device=device).view(1, 3, 1, 1)
    std = 255 * torch.tensor(data.std, device=device).view(1, 3, 1, 1)
    generator = torch.Generator(device=device).manual_seed(config.seed)
    batch, steps = config.batch_size, len(x_train) // config.batch_size
    bf16 = config.precision == "bf16"
    for _ in range(config.epochs):
        order = torch.randperm(len(x_train), device=device, generator=generator)
        for step in range(steps):
            index = order[step * batch : (step + 1) * batch]
            offsets = torch.randint(0, 9, (2, batch), device=device, generator=generator)
            flip = torch.randint(0, 2, (batch,), device=device, generator=generator).bool()
            x = crop_flip(x_train[index], offsets[0], offsets[1], flip, 4).contiguous(memory_format=layout)
            x = (x.float() - mean) / std
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = F.cross_entropy(model(x), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = torch.zeros((), dtype=torch.long, device=device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, len(x_test), config.eval_batch_size):
                x = x_test[start : start + config.eval_batch_size].contiguous(memory_format=layout)
                correct += (model((x.float() - mean) / std).argmax(1) == y_test[start : start + len(x)]).sum()
        model.train()
        mark()


def engine(config: RunConfig, device: torch.device, mark: Callable[[], None], workdir: Path) -> None:
    """``dynamics.engine.train`` as it is, with a Recorder that calls ``mark()`` at each evaluation."""

    class TimedRecorder(Recorder):
        def record_eval(self, **values: float | torch.Tensor) -> None:
            mark()
            super().record_eval(**values)

    with mock.patch.object(dynamics.engine, "Recorder", TimedRecorder):
        dynamics.engine.train(config, workdir / f"run-{time.monotonic_ns()}", progress=False)


def run_once(
    variant: str, config: RunConfig, device: torch.device, workdir: Path, train_images: int
) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second of this process (all threads), over epochs 2..E."""
    marks: list[tuple[float, float]] = []

    def mark() -> None:
        synchronize(device)
        marks.append((time.perf_counter(), time.process_time()))

    if variant == "loop":
        hand_written(config, device, mark)
    else:
        probes = "loss" if variant == "engine_probes_off" else "default"
        engine(make_config({**config.to_dict(), "probes": probes}), device, mark, workdir)
    images = (config.epochs - 1) * (train_images // config.batch_size) * config.batch_size
    return images / (marks[-1][0] - marks[0][0]), images / (marks[-1][1] - marks[0][1])


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=4, help="epochs per run, >= 2 (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three variants (default 3)")
    parser.add_argument(
        "--train-images",
        type=int,
        default=50_000,
        help="size of the synthetic training split (a multiple of 10; default 50,000)",
    )
    parser.add_argument("--data-dir", default=None, help="a real CIFAR-10 archive/folder instead of synthetic data")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.epochs < 2 or args.rounds < 1 or args.train_images % 10:
        parser.error("--epochs must be >= 2, --rounds >= 1 and --train-images a multiple of 10")
    device = select_device(parser, args.device, args.threads)
    device_type = device.type
    load_before = load_average()
    out = args.out or RESULTS / f"throughput-{device_type}.json"

    with tempfile.TemporaryDirectory(prefix="dynamics-throughput-") as tmp:
        workdir = Path(tmp)
        data_dir = args.data_dir or str(
            write_cifar(workdir, train_per_class=args.train_images // 10, test_per_class=100, extracted=True)
        )
        config = make_config(
            {
                "dataset": "cifar10",
                "data_dir": data_dir,
                "model": args.model,
                "width_mult": args.width_mult,
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "lr": 0.05,
                "momentum": 0.9,
                "eval_batch_size": 1000,
                "device": device_type,
                "precision": args.precision,
                "channels_last": args.channels_last,
                "compile": args.compile,
            }
        )
        data = load_dataset("cifar10", data_dir=data_dir)
        rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        cpu_rates: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
        for round_index in range(args.rounds):
            shift = round_index % len(VARIANTS)
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                wall, cpu = run_once(variant, config, device, workdir, len(data.y_train))
                rates[variant].append(wall)
                cpu_rates[variant].append(cpu)
                print(
                    f"round {round_index + 1} {variant:<22} {wall:,.0f} images/s ({cpu:,.0f} per CPU second)",
                    flush=True,
                )

    ratios = {
        variant: [r / base for r, base in zip(rates[variant], rates["loop"], strict=True)] for variant in VARIANTS[1:]
    }
    cpu_ratios = {
        variant: [r / base for r, base in zip(cpu_rates[variant], cpu_rates["loop"], strict=True)]
        for variant in VARIANTS[1:]
    }
    medians = {variant: statistics.median(values) for variant, values in rates.items()}
    off_ratio = statistics.median(ratios["engine_probes_off"])
    reference_setting = (
        args.model == "resnet18"
        and args.width_mult == 1.0
        and args.batch_size == 512
        and args.precision == "bf16"
        and args.channels_last
        and device_type == "cuda"
    )
    report = {
        "benchmark": "throughput",
        "machine": describe_machine(device, load_before),
        "config": {
            "model": args.model,
            "width_mult": args.width_mult,
            "batch_size": args.batch_size,
            "precision": args.precision,
            "channels_last": args.channels_last,
            "compile": args.compile,
            "data": "CIFAR-10 at " + args.data_dir if args.data_dir else "synthetic CIFAR-10 archive (exact format)",
            "train_images": len(data.y_train),
            "test_images_evaluated_per_epoch": len(data.y_test),
            "epochs_per_run": args.epochs,
            "timed_epochs_per_run": args.epochs - 1,
            "rounds": args.rounds,
            "optimizer": "SGD lr 0.05 momentum 0.9",
            "augmentation": "random crop (pad 4) + flip, on the device",
            "engine_probes_off": "probes='loss' preset (loss, accuracy, lr, epoch)",
            "engine_probes_default": "probes='default', every=1",
            "timing": "training images of epochs 2..E / time from the end of epoch 1's evaluation to the end of "
            "epoch E's, after a device synchronisation; ABC order rotating per round",
        },
        "images_per_s": rates,
        "images_per_s_median": medians,
        "ratio_to_loop": ratios,
        "ratio_to_loop_median": {variant: statistics.median(values) for variant, values in ratios.items()},
        "images_per_cpu_s": cpu_rates,
        "cpu_ratio_to_loop_median": {variant: statistics.median(values) for variant, values in cpu_ratios.items()},
        "cpu_time_note": "CPU seconds of this process, all threads: on a shared machine other processes' load "
        "inflates wall time but hardly the process's own CPU time (meaningful on CPU runs only)",
        "targets": {
            "engine_probes_off_within_loop": WITHIN,
            "gpu_images_per_s": f"{GPU_TARGET} (H100, resnet18, batch 512, bf16, channels_last)",
        },
        "meets_within_target": off_ratio >= 1 - WITHIN,
        "meets_gpu_target": (medians["engine_probes_off"] >= GPU_TARGET) if reference_setting else None,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        f"throughput on {report['machine']['device_name']}: "
        + ", ".join(f"{variant} {rate:,.0f}/s" for variant, rate in medians.items())
    )
    print(
        f"engine/loop: probes off {off_ratio:.3f} (target >= {1 - WITHIN:.2f}), default probes "
        f"{report['ratio_to_loop_median']['engine_probes_default']:.3f}; wrote {out}"
    )
    return report


if __name__ == "__main__":
    main()
