"""Phase analysis of a long run: a synthetic 1,000,000-step store with 50 layers, analysed end to end.

The store is written with the toolkit's own ``RunWriter`` (the format a Recorder writes): per-step
``loss``, ``accuracy`` (a logistic rise from chance, with the binomial noise of a 128-sample batch),
``lr``, the per-layer variables ``grad_norm(step, param)`` and ``act_zero_frac(step, layer)`` for 50
layers (the bulk of a real store, which the analysis must not read), and the representation and Fisher
variables at the geometric cadence of the probes (NaN elsewhere, as recorded). The benchmark then times
``analyse_phase(open_run(store))`` (one run, 200 bootstrap resamples), repeated ``--repeats`` times, and
records which arrays the reads touched (by instrumenting the store's lazy array reader) and the peak of
Python-traced memory (numpy buffers included) during one analysis.

    python benchmarks/phase_analysis.py [--steps N] [--layers L] [--repeats R] [--keep DIR] [--out PATH]

Writes ``benchmarks/results/phase_analysis.json``; the target is under 5 s with no per-layer array read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import tracemalloc
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from analyses.phase import analyse_phase
from dynamics import store
from dynamics.probes import GeometricCadence
from dynamics.store import RunWriter, open_run

TARGET_SECONDS = 5.0
RESULTS = Path(__file__).resolve().parent / "results"
NEEDED = {"step", "accuracy", "rep_linear_acc", "rep_knn_acc", "rep_nc1", "rep_cka", "fisher_trace"}


def write_store(run_dir: Path, steps: int, layers: int, chunk: int = 50_000) -> None:
    """A synthetic run of ``steps`` recorded steps and ``layers`` layers, written in appends of ``chunk`` rows."""
    rng = np.random.default_rng(0)
    layer_names = [f"blocks.{i}.act" for i in range(layers)]
    params = [f"blocks.{i}.conv.weight" for i in range(layers)]
    writer = RunWriter(
        run_dir,
        {"param": params, "layer": layer_names, "split": ["train", "test"]},
        {"every": 1, "probes": ["synthetic"], "config": {"dataset": "synthetic", "seed": 0}},
    )
    for name in ("rep_linear_acc", "rep_knn_acc", "rep_nc1", "rep_cka", "fisher_trace"):
        writer.describe(name, {"num_classes": 10, "cadence": "geometric growth=0.1 max_interval=None every=1"})
    measured = np.zeros(steps, dtype=bool)
    measured[GeometricCadence(0.1).steps(steps)] = True
    t_c, width = 0.04 * steps, 0.01 * steps
    for start in tqdm(range(0, steps, chunk), desc="writing store", unit="chunk"):
        step = np.arange(start, min(start + chunk, steps))
        n = len(step)
        p = 0.1 + 0.85 / (1 + np.exp(-(step - t_c) / width))
        sparse = np.where(measured[step], 1.0, np.nan)
        columns = {
            "step": (("step",), step.astype(np.int64)),
            "epoch": (("step",), (step // 1000).astype(np.int64)),
            "lr": (("step",), np.full(n, 0.05)),
            "loss": (("step",), (2.3 * (1 - p)).astype(np.float32)),
            "accuracy": (("step",), (rng.binomial(128, p) / 128).astype(np.float32)),
            "grad_norm": (("step", "param"), rng.random((n, layers), dtype=np.float32)),
            "act_zero_frac": (("step", "layer"), rng.random((n, layers), dtype=np.float32)),
            "fisher_trace": (("step",), (sparse * 10).astype(np.float32)),
        }
        for name in ("rep_linear_acc", "rep_knn_acc", "rep_cka"):
            columns[name] = (("step", "split"), np.repeat((sparse * p)[:, None], 2, 1).astype(np.float32))
        columns["rep_nc1"] = (("step", "split"), np.repeat((sparse / p)[:, None], 2, 1).astype(np.float32))
        writer.append("step", columns)


class ReadLog:
    """Records the step-indexed arrays the store's lazy reader reads, and how many bytes, while installed."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self._original = store._CommittedArray._read

    def __enter__(self) -> ReadLog:
        log, original = self, self._original

        def read(array: store._CommittedArray, key: tuple) -> np.ndarray:
            values = original(array, key)
            if (array.array.metadata.dimension_names or ("",))[0] in store.APPEND_DIMS:  # not coordinate labels
                name = str(array.array.path).rsplit("/", 1)[-1]
                log.bytes[name] = log.bytes.get(name, 0) + values.nbytes
            return values

        store._CommittedArray._read = read
        return self

    def __exit__(self, *exc: object) -> None:
        store._CommittedArray._read = self._original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--layers", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="write (or reuse) the store here instead of a temp dir")
    parser.add_argument("--out", type=Path, default=RESULTS / "phase_analysis.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.keep or Path(tmp) / "run"
        if not (run_dir / "data.zarr").exists():
            start = time.perf_counter()
            write_store(run_dir, args.steps, args.layers)
            print(f"store written in {time.perf_counter() - start:.1f} s")
        store_bytes = sum(f.stat().st_size for f in (run_dir / "data.zarr").rglob("*") if f.is_file())
        times = []
        with ReadLog() as log:
            for _ in range(args.repeats):
                start = time.perf_counter()
                result = analyse_phase(open_run(run_dir))
                times.append(time.perf_counter() - start)
        tracemalloc.start()
        analyse_phase(open_run(run_dir))
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()

    unneeded = sorted(set(log.bytes) - NEEDED)
    payload = {
        "benchmark": "phase_analysis",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        "steps": args.steps,
        "layers": args.layers,
        "n_boot": int(result.attrs["n_boot"]),
        "store_mib": round(store_bytes / 2**20, 1),
        "seconds": [round(t, 3) for t in times],
        "median_seconds": round(statistics.median(times), 3),
        "target_seconds": TARGET_SECONDS,
        "peak_traced_mib": round(peak / 2**20, 1),
        "read_mib_per_analysis": {
            name: round(size / args.repeats / 2**20, 2) for name, size in sorted(log.bytes.items())
        },
        "unneeded_arrays_read": unneeded,
        "t_c": round(float(result["t_c"].sel(order_parameter="accuracy")), 1),
        "t_c_true": 0.04 * args.steps,
        "passed": statistics.median(times) < TARGET_SECONDS and not unneeded,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
