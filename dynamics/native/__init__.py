"""Fused CPU kernels for the per-step statistics, compiled on first use; torch operations where they are missing.

On a CPU, what recording costs is the number of small operations per step (each costs 15-20 us inside a
training loop, whose caches backward has just cooled), not their arithmetic. ``kernels.c`` does each probe's
work in one pass: the activation statistics of a layer, the norms or distances of all parameter tensors, the
sketch projections, loss and accuracy, and they write straight into the recorder's host row. The first
process that needs them compiles the file with the system C compiler (``$CC``, else ``cc``; ``-O3
-march=native``, and ``-fopenmp`` where it builds: the activation pass then splits its rows over torch's
OpenMP threads, and the norms and sketches share out the tensors; a portable ``-O3`` build where neither is
known) into ``<cache>/native/``
(``$DYNAMICS_CACHE``, else ``~/.cache/dynamics``), keyed by the source, the flags and the processor, and
every later process loads it.

Probes use the kernels for float32, contiguous CPU tensors when :func:`kernels` returns a library, and their
torch operations otherwise (other devices and dtypes; no compiler; ``DYNAMICS_NATIVE=0``). Both give the
same values to float rounding; :func:`status` says which one a run used (recorded in ``meta.json``).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from dynamics.cache import default_cache_dir

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ("-O3", "-fPIC", "-shared", "-std=c11")
EXTRA_FLAGS = (("-march=native", "-fopenmp"), ("-march=native", "-fopenmp-simd"), ())
"""Tried in turn: this processor's instructions with OpenMP threads (the runtime torch has loaded, so its
thread team), without threads, and a portable build for compilers that know neither option."""
RULE_LOW, RULE_HIGH = 1, 2

_P = ctypes.c_void_p
_I = ctypes.c_int64
_SIGNATURES = {
    "activation_stats_f32": [_P, _I, _I, ctypes.c_int, ctypes.c_float, ctypes.c_float, ctypes.c_int, ctypes.c_int,
                             _P, _P, ctypes.c_int, _P],
    "norms_f32": [_I, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int, ctypes.c_int],
    "copy_tensors_f32": [_I, _P, _P, _P],
    "sign_sketch_f32": [_I, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int],
    "dense_sketch_f32": [_I, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int],
    "hashed_sketch_f32": [_I, _P, _P, _P, _I, _P, _P, _P, _P, _P, _P, _P, ctypes.c_int],
    "activation_finish_f32": [_I, _P, _P, _P, _P],
    "loss_accuracy_f32": [_P, _P, _I, _I, _P, _P],
}

_failure: str | None = None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "flags")):
                return line
    except OSError:
        pass
    return platform.processor()


def _build(target: Path, variants: tuple[tuple[str, ...], ...] = EXTRA_FLAGS) -> None:
    """Compile ``kernels.c`` into ``target`` with the first flag variant that builds (through a temporary file
    and a rename, so racing processes agree)."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise OSError(f"no C compiler ({compiler!r} not found)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        built = Path(tmp) / target.name
        for extra in variants:
            result = subprocess.run([compiler, *FLAGS, *extra, str(SOURCE), "-o", str(built)], capture_output=True,
                                    text=True)
            if result.returncode == 0:
                os.replace(built, target)
                return
        raise OSError(f"{compiler} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")


@functools.cache
def _load() -> ctypes.CDLL | None:
    global _failure
    try:
        key = hashlib.sha256(SOURCE.read_bytes() + repr((FLAGS, EXTRA_FLAGS, platform.machine(),
                                                         _cpu_model())).encode())
        target = default_cache_dir() / "native" / f"kernels-{key.hexdigest()[:16]}.so"
        if not target.exists():
            _build(target)
        return open_library(target)
    except OSError as err:
        _failure = str(err)
        return None


def open_library(path: Path) -> ctypes.CDLL:
    """A compiled ``kernels.c`` with its functions' argument types declared."""
    library = ctypes.CDLL(str(path))
    for name, argtypes in _SIGNATURES.items():
        function = getattr(library, name)
        function.argtypes = argtypes
        function.restype = None
    return library


def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or None where they are switched off (``DYNAMICS_NATIVE=0``) or cannot be built."""
    if os.environ.get("DYNAMICS_NATIVE", "1") == "0":
        return None
    return _load()


def status() -> str:
    """``"native"``, or why the torch operations are used instead (for ``meta.json``)."""
    if os.environ.get("DYNAMICS_NATIVE", "1") == "0":
        return "torch (DYNAMICS_NATIVE=0)"
    return "native" if _load() is not None else f"torch ({_failure})"


def readable_pointers(tensors: Sequence[torch.Tensor]) -> list[int] | None:
    """The data pointers of ``tensors`` where the kernels can read every one in place (dense, float32,
    contiguous, on the CPU), else None."""
    # is_cpu and identity tests: this runs several times a recorded step, and ``t.device.type`` alone costs more
    pointers = [t.data_ptr() for t in tensors
                if t.is_cpu and t.dtype is torch.float32 and t.layout is torch.strided and t.is_contiguous()]
    return pointers if len(pointers) == len(tensors) else None


def supports(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the kernels can read these tensors in place: dense, float32, contiguous, on the CPU."""
    return readable_pointers(tensors) is not None


class PointerArray:
    """A C array of ``count`` data pointers, refilled from a list of tensors at each call."""

    def __init__(self, count: int) -> None:
        self._pointers = (ctypes.c_uint64 * count)()  # a ctypes array takes a list of ints fastest
        self._address = ctypes.addressof(self._pointers)
        self._checked: list[int] | None = None
        """The pointers in the array when ``fill_supported`` last checked their tensors, else None."""

    def fill(self, tensors: Sequence[torch.Tensor]) -> int:
        """Address of the array after writing the tensors' current data pointers into it."""
        return self.set([t.data_ptr() for t in tensors])

    def set(self, addresses: list[int]) -> int:
        """Address of the array after writing ``addresses`` into it."""
        self._pointers[:] = addresses
        self._checked = None
        return self._address

    def fill_supported(self, tensors: Sequence[torch.Tensor]) -> int:
        """``fill`` where the kernels can read every tensor (:func:`readable_pointers`), else 0.

        The recorder does this for the parameters at every recorded step, so tensors at the addresses checked
        last time are not checked again: storage that stays in place keeps its dtype, device and layout (a
        tensor made a differently strided view of the same storage, such as ``p.data = p.data.t()``, is the one
        change this does not see).
        """
        try:
            pointers = [t.data_ptr() for t in tensors]
        except RuntimeError:  # no strided storage (sparse)
            return 0
        if pointers != self._checked:
            if readable_pointers(tensors) is None:
                return 0
            self._pointers[:] = pointers
            self._checked = pointers
        return self._address


class TensorList:
    """The data pointers and sizes of a fixed list of tensors, as the C arrays the kernels take.

    ``pointers()`` re-reads the addresses at every call (a training loop may swap a parameter's storage);
    ``address`` holds them as they were at construction, for tensors whose storage never moves (a probe's
    own copies).
    """

    def __init__(self, tensors: Sequence[torch.Tensor]) -> None:
        self.tensors = list(tensors)
        self.count = len(self.tensors)
        self.numel = np.array([t.numel() for t in self.tensors], dtype=np.int64)
        self.numel_address = self.numel.ctypes.data
        self._pointers = PointerArray(self.count)
        self.address = self._pointers.fill(self.tensors)

    def pointers(self) -> int:
        """Address of the array of the tensors' current data pointers."""
        return self._pointers.fill(self.tensors)

    def supported_pointers(self) -> int:
        """``pointers`` where the kernels can read every tensor, else 0."""
        return self._pointers.fill_supported(self.tensors)
