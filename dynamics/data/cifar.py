"""CIFAR-10 and CIFAR-100 from the python-version archives, read without unpacking and without torchvision.

Files are found under ``data_dir``: the archive as downloaded (``cifar-10-python.tar.gz`` /
``cifar-100-python.tar.gz``), its extracted folder (``cifar-10-batches-py/`` / ``cifar-100-python/``),
that folder itself, or the archive's own path. Batches are unpickled with an unpickler that admits only
the numpy globals these files use, so a damaged or foreign file is a one-line ConfigError, never code
execution. Images stay uint8 ``(N, 3, 32, 32)``.
"""

from __future__ import annotations

import codecs
import io
import os
import pickle
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynamics.data.base import Dataset, channel_stats
from dynamics.errors import ConfigError


@dataclass(frozen=True)
class CifarLayout:
    """Where one CIFAR variant keeps its batches and labels."""

    archive: str
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: bytes
    names_key: bytes
    num_classes: int
    url: str


LAYOUTS: dict[str, CifarLayout] = {
    "cifar10": CifarLayout(
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        "batches.meta",
        b"labels",
        b"label_names",
        10,
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    "cifar100": CifarLayout(
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        ("train",),
        "test",
        "meta",
        b"fine_labels",
        b"fine_label_names",
        100,
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

_ALLOWED: dict[tuple[str, str], Callable[..., Any]] = {}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_module, "_reconstruct")] = np.zeros(0).__reduce__()[0]
    _ALLOWED[(_module, "scalar")] = np.uint8(0).__reduce__()[0]
_ALLOWED.update({("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode})


class _BatchUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: numpy arrays, lists, dicts and strings, nothing executable."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise pickle.UnpicklingError(f"unexpected global {module}.{name}")
        return _ALLOWED[(module, name)]


class _Damaged(Exception):
    """A batch file that exists but cannot be read as a CIFAR batch."""


def _unpickle(raw: bytes) -> dict[bytes, Any]:
    try:
        batch = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any unpickling failure (many exception types) means a damaged file
        raise _Damaged(f"not a CIFAR batch ({type(err).__name__}: {err})") from None
    if not isinstance(batch, dict):
        raise _Damaged("not a CIFAR batch (no dictionary inside)")
    return {key.encode() if isinstance(key, str) else key: value for key, value in batch.items()}


def find_cifar(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    """The archive or extracted folder of CIFAR variant ``name`` under ``data_dir`` (one-line error if absent)."""
    layout = LAYOUTS[name]
    hint = f"download {layout.url} into data_dir (the archive or its extracted {layout.folder}/)"
    if data_dir is None:
        raise ConfigError(f"{name} needs data_dir: a folder holding {layout.archive}; {hint}", key="data_dir")
    root = Path(data_dir).expanduser()
    for candidate in (root / layout.folder, root):
        if (candidate / layout.test).is_file():
            return candidate
    for candidate in (root / layout.archive, root):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"{name}: expected {layout.archive} or {layout.folder}/ in {root}, found neither; {hint}", key="data_dir"
    )


def _read_members(source: Path, layout: CifarLayout) -> dict[str, bytes]:
    """Raw bytes of every batch file, from an extracted folder or straight from the .tar.gz."""
    wanted = (*layout.train, layout.test, layout.meta)
    if source.is_dir():
        missing = [f for f in wanted if not (source / f).is_file()]
        if missing:
            raise _Damaged(f"lacks {', '.join(missing)}")
        return {f: (source / f).read_bytes() for f in wanted}
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(source, "r:*") as archive:
            for member in archive:
                base = member.name.rsplit("/", 1)[-1]
                if member.isfile() and base in wanted and base not in found:
                    found[base] = archive.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise _Damaged(f"not a readable .tar.gz ({err})") from None
    missing = [f for f in wanted if f not in found]
    if missing:
        raise _Damaged(f"lacks {', '.join(missing)}")
    return found


def _images_and_labels(batch: dict[bytes, Any], layout: CifarLayout, file: str) -> tuple[np.ndarray, np.ndarray]:
    data, labels = batch.get(b"data"), batch.get(layout.label_key)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise _Damaged(f"{file} holds no uint8 image array of shape (N, 3072)")
    labels = np.asarray(labels if labels is not None else [], dtype=np.int64)
    if labels.shape != (len(data),) or (len(labels) and not 0 <= labels.min() <= labels.max() < layout.num_classes):
        raise _Damaged(
            f"{file} has {len(labels)} labels for {len(data)} images or labels outside 0..{layout.num_classes - 1}"
        )
    return data.reshape(-1, 3, 32, 32), labels


def load_cifar(name: str, data_dir: str | os.PathLike[str] | None) -> Dataset:
    """CIFAR-10 (``name="cifar10"``) or CIFAR-100 (fine labels) as uint8 images with their channel stats."""
    layout = LAYOUTS[name]
    source = find_cifar(name, data_dir)
    try:
        raw = _read_members(source, layout)
        splits = {}
        for split, files in (("train", layout.train), ("test", (layout.test,))):
            parts = [_images_and_labels(_unpickle(raw[f]), layout, f) for f in files]
            splits[split] = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
        names = _unpickle(raw[layout.meta]).get(layout.names_key, [])
    except _Damaged as err:
        raise ConfigError(
            f"{name}: {source} is damaged ({err}); download {layout.url} again into data_dir", key="data_dir"
        ) from None
    x_train, y_train = splits["train"]
    x_test, y_test = splits["test"]
    mean, std = channel_stats(x_train)
    return Dataset(
        name=name,
        x_train=torch.from_numpy(x_train),
        y_train=torch.from_numpy(y_train),
        x_test=torch.from_numpy(x_test),
        y_test=torch.from_numpy(y_test),
        num_classes=layout.num_classes,
        kind="image",
        mean=mean,
        std=std,
        labels=tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names),
    )


def write_cifar(
    directory: str | os.PathLike[str],
    name: str = "cifar10",
    *,
    train_per_class: int = 10,
    test_per_class: int = 2,
    extracted: bool = False,
    seed: int = 0,
) -> Path:
    """Write a small synthetic CIFAR-10/100 in the exact python-version format; returns the archive/folder.

    For tests and benchmarks that must not download anything: the same file names, pickled dictionaries
    with bytes keys, ``data`` uint8 ``(N, 3072)`` and label lists. Each class has its own mean colour plus
    noise, so a model can learn it. ``extracted`` writes the folder instead of the ``.tar.gz``.
    """
    layout = LAYOUTS[name]
    rng = np.random.default_rng(seed)
    colours = rng.integers(40, 216, size=(layout.num_classes, 3, 1), dtype=np.int16)

    def batch(labels: np.ndarray, label: str) -> dict[bytes, Any]:
        noise = rng.integers(-40, 41, size=(len(labels), 3, 1024), dtype=np.int16)
        data = np.clip(colours[labels] + noise, 0, 255).astype(np.uint8).reshape(len(labels), 3072)
        entry = {
            b"batch_label": label.encode(),
            layout.label_key: labels.tolist(),
            b"data": data,
            b"filenames": [f"fake_{i}.png".encode() for i in range(len(labels))],
        }
        if name == "cifar100":
            entry[b"coarse_labels"] = (labels // 5).tolist()
        return entry

    def shuffled_labels(per_class: int) -> np.ndarray:
        return rng.permutation(np.repeat(np.arange(layout.num_classes), per_class))

    shards = np.array_split(shuffled_labels(train_per_class), len(layout.train))
    files = {
        file: batch(labels, f"training batch {i + 1} of {len(shards)}")
        for i, (file, labels) in enumerate(zip(layout.train, shards, strict=True))
    }
    files[layout.test] = batch(shuffled_labels(test_per_class), "testing batch 1 of 1")
    names = [f"class_{c}".encode() for c in range(layout.num_classes)]
    if name == "cifar100":
        coarse = [f"super_{c}".encode() for c in range(20)]
        files[layout.meta] = {layout.names_key: names, b"coarse_label_names": coarse}
    else:
        files[layout.meta] = {b"num_cases_per_batch": len(shards[0]), layout.names_key: names, b"num_vis": 3072}
    directory = Path(directory)
    if extracted:
        folder = directory / layout.folder
        folder.mkdir(parents=True, exist_ok=True)
        for file, content in files.items():
            (folder / file).write_bytes(pickle.dumps(content, protocol=2))
        return folder
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / layout.archive
    with tarfile.open(path, "w:gz") as archive:
        for file, content in files.items():
            raw = pickle.dumps(content, protocol=2)
            info = tarfile.TarInfo(f"{layout.folder}/{file}")
            info.size = len(raw)
            archive.addfile(info, io.BytesIO(raw))
    return path
