"""What every benchmark reports about the machine it ran on (shared by the scripts in this folder)."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    """The processor's model name from /proc/cpuinfo (falls back to the platform's description)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where the platform has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def select_device(parser: argparse.ArgumentParser, choice: str, threads: int | None) -> torch.device:
    """The ``--device`` asked for (``auto``: CUDA when present), with ``threads`` torch threads (None: every core).

    Asking for CUDA without it is a usage error of ``parser``.
    """
    device_type = ("cuda" if torch.cuda.is_available() else "cpu") if choice == "auto" else choice
    if device_type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device; use --device cpu")
    torch.set_num_threads(threads or available_cores())
    return torch.device(device_type)


def describe_machine(device: torch.device, load_before: list[float] | None) -> dict[str, object]:
    """CPU, cores, versions, device name, torch threads, and the load averages before and after the run."""
    return {
        "cpu": cpu_model(),
        "cores": available_cores(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1_5_15min": {"before": load_before, "after": load_average()},
    }


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
