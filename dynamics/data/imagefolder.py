"""Image trees (any ImageFolder layout, Tiny-ImageNet): decoded and resized once, cached as uint8 ``.npy``.

An ImageFolder tree has ``train/<class>/<image>`` and ``val/<class>/<image>`` (or ``test/``); classes are
the sorted folder names of ``train/``. Tiny-ImageNet is read in its own layout (``wnids.txt``,
``train/<wnid>/images/``, ``val/images/`` with ``val/val_annotations.txt``), from the extracted
``tiny-imagenet-200/`` folder or straight from ``tiny-imagenet-200.zip``; its labelled ``val`` split is the
test split. Every image is converted to RGB, centre-cropped to a square and resized (bicubic) to
``image_size``; decoding runs on a thread pool (Pillow releases the GIL). The arrays are cached under
``<cache dir>/images/`` keyed by the tree's path, modification times and the size, and written atomically,
so the second run loads in seconds and concurrent runs never read a partial cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from tqdm.auto import tqdm

from dynamics.cache import default_cache_dir
from dynamics.data.base import Dataset, channel_stats
from dynamics.errors import ConfigError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"})
TINY_FOLDER = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
CACHE_VERSION = 1
_CHUNK = 4096


class _Tree:
    """Files of an image tree, by relative POSIX name: a folder on disk or a zip archive."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._zip = zipfile.ZipFile(path) if path.is_file() else None
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        """Every file, relative to the tree's root."""
        if self._zip is not None:
            return [n for n in self._zip.namelist() if not n.endswith("/")]
        return sorted(p.relative_to(self.path).as_posix() for p in self.path.rglob("*") if p.is_file())

    def read(self, name: str) -> bytes:
        """Raw bytes of one file (zip reads are serialised; decoding is not)."""
        if self._zip is None:
            return (self.path / name).read_bytes()
        with self._lock:
            return self._zip.read(name)

    def fingerprint(self, depth: int) -> str:
        """Cheap change detector: the archive's size and mtime, or the mtimes of folders up to ``depth``."""
        if self._zip is not None:
            stat = self.path.stat()
            return f"zip:{self.path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        parts, level = [str(self.path.resolve())], [self.path]
        for remaining in range(depth, -1, -1):
            parts += [f"{d.relative_to(self.path)}:{d.stat().st_mtime_ns}" for d in level]
            if remaining:
                level = sorted(child for d in level for child in d.iterdir() if child.is_dir())
        return "\n".join(parts)


def _decode(raw: bytes, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(raw)) as image:
        square = ImageOps.fit(image.convert("RGB"), (size, size), method=Image.Resampling.BICUBIC)
        return np.asarray(square).transpose(2, 0, 1)


def decode_images(tree: _Tree, names: Sequence[str], size: int, what: str) -> np.ndarray:
    """uint8 ``(len(names), 3, size, size)``, decoded on a thread pool; a bad file is a one-line error."""
    out = np.empty((len(names), 3, size, size), dtype=np.uint8)

    def work(name: str) -> np.ndarray:
        try:
            return _decode(tree.read(name), size)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ConfigError(
                f"{what}: {tree.path / name} is not a readable image ({err}); replace or remove it"
            ) from None

    workers = min(32, os.cpu_count() or 1)
    with (
        ThreadPoolExecutor(workers) as pool,
        tqdm(total=len(names), desc=f"decoding {what} (once)", unit="img", disable=None) as bar,
    ):
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            out[start : start + len(chunk)] = np.stack(list(pool.map(work, chunk)))
            bar.update(len(chunk))
    return out


def _cached(
    name: str,
    tree: _Tree,
    depth: int,
    size: int,
    cache_dir: str | os.PathLike[str] | None,
    build: Callable[[], dict[str, np.ndarray | list[str]]],
) -> Dataset:
    """Load the arrays of ``tree`` at ``size`` from the cache, or ``build`` and cache them atomically."""
    key = hashlib.sha1(f"v{CACHE_VERSION}\n{size}\n{tree.fingerprint(depth)}".encode()).hexdigest()[:16]
    root = Path(cache_dir if cache_dir is not None else default_cache_dir()) / "images"
    entry = root / f"{name}-{size}px-{key}"
    arrays = ("x_train", "y_train", "x_test", "y_test")
    if not (entry / "meta.json").is_file():
        built = build()
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{entry.name}.", suffix=".tmp"))
        try:
            for array in arrays:
                np.save(tmp / f"{array}.npy", built[array])
            (tmp / "meta.json").write_text(json.dumps({"labels": built["labels"], "source": str(tree.path)}))
            os.replace(tmp, entry)
        except OSError:
            if not (entry / "meta.json").is_file():  # unless a concurrent run's rename won
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    loaded = {array: np.load(entry / f"{array}.npy") for array in arrays}
    labels = json.loads((entry / "meta.json").read_text())["labels"]
    mean, std = channel_stats(loaded["x_train"])
    return Dataset(
        name,
        *(torch.from_numpy(loaded[a]) for a in arrays),
        num_classes=len(labels),
        kind="image",
        mean=mean,
        std=std,
        labels=tuple(labels),
    )


def _check_size(image_size: int) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ConfigError(f"image_size must be an int >= 8, got {image_size!r}; fix it", key="image_size")


def load_imagefolder(
    root: str | os.PathLike[str] | None, *, image_size: int = 64, cache_dir: str | os.PathLike[str] | None = None
) -> Dataset:
    """An ImageFolder tree (``train/<class>/...``, ``val/`` or ``test/``) as uint8 images of ``image_size``."""
    _check_size(image_size)
    layout = "train/<class>/<image> and val/<class>/<image> (or test/)"
    if root is None:
        raise ConfigError(f"imagefolder needs root: a folder with {layout}", key="root")
    path = Path(root).expanduser()
    test_dir = next((path / d for d in ("val", "test") if (path / d).is_dir()), None)
    if not (path / "train").is_dir() or test_dir is None:
        raise ConfigError(f"imagefolder: expected {layout} in {path}; arrange the images so", key="root")
    tree = _Tree(path)

    def build() -> dict[str, np.ndarray | list[str]]:
        classes = sorted(d.name for d in (path / "train").iterdir() if d.is_dir())
        index = {c: i for i, c in enumerate(classes)}
        out: dict[str, np.ndarray | list[str]] = {"labels": classes}
        for split, folder in (("train", path / "train"), ("test", test_dir)):
            names, labels = [], []
            for class_dir in sorted(d for d in folder.iterdir() if d.is_dir()):
                if class_dir.name not in index:
                    raise ConfigError(
                        f"imagefolder: class {class_dir.name!r} of {folder} is not in {path / 'train'}; "
                        "give both splits the same class folders"
                    )
                files = sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                names += [f.relative_to(path).as_posix() for f in files]
                labels += [index[class_dir.name]] * len(files)
            if not names:
                raise ConfigError(
                    f"imagefolder: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {folder}/<class>/; add some",
                    key="root",
                )
            out[f"x_{split}"] = decode_images(tree, names, image_size, "imagefolder")
            out[f"y_{split}"] = np.asarray(labels, dtype=np.int64)
        return out

    return _cached("imagefolder", tree, 2, image_size, cache_dir, build)


def find_tiny_imagenet(data_dir: str | os.PathLike[str] | None) -> Path:
    """The extracted ``tiny-imagenet-200`` folder or its zip under ``data_dir`` (one-line error if absent)."""
    hint = f"download {TINY_URL} into data_dir (zip or extracted)"
    if data_dir is None:
        raise ConfigError(f"tinyimagenet needs data_dir: a folder holding {TINY_FOLDER}.zip; {hint}", key="data_dir")
    root = Path(data_dir).expanduser()
    for candidate in (root / TINY_FOLDER, root):
        if (candidate / "wnids.txt").is_file():
            return candidate
    for candidate in (root / f"{TINY_FOLDER}.zip", root):
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"tinyimagenet: expected {TINY_FOLDER}.zip or {TINY_FOLDER}/ in {root}, found neither; {hint}", key="data_dir"
    )


def load_tiny_imagenet(
    data_dir: str | os.PathLike[str] | None, *, image_size: int = 64, cache_dir: str | os.PathLike[str] | None = None
) -> Dataset:
    """Tiny-ImageNet (200 classes, 500 train and 50 val images each, 64x64) as uint8 images."""
    _check_size(image_size)
    source = find_tiny_imagenet(data_dir)
    try:
        tree = _Tree(source)
    except (zipfile.BadZipFile, OSError) as err:
        raise ConfigError(f"tinyimagenet: {source} is damaged ({err}); download {TINY_URL} again") from None

    def build() -> dict[str, np.ndarray | list[str]]:
        files = tree.names()
        prefix = next((n[: -len("wnids.txt")] for n in files if n.rsplit("/", 1)[-1] == "wnids.txt"), None)
        annotations = f"{prefix}val/val_annotations.txt"
        if prefix is None or annotations not in files:
            raise ConfigError(
                f"tinyimagenet: {source} lacks wnids.txt or val/val_annotations.txt; download {TINY_URL} again"
            )
        wnids = tree.read(f"{prefix}wnids.txt").decode().split()
        index = {w: i for i, w in enumerate(wnids)}
        words = f"{prefix}words.txt"
        described = (
            dict(line.split("\t", 1) for line in tree.read(words).decode().splitlines() if "\t" in line)
            if words in files
            else {}
        )
        train = sorted(n for n in files if n.startswith(f"{prefix}train/") and n.lower().endswith(".jpeg"))
        train_labels = [index.get(n[len(prefix) + 6 :].split("/", 1)[0], -1) for n in train]
        rows = [line.split("\t") for line in tree.read(annotations).decode().splitlines() if line.strip()]
        test = [f"{prefix}val/images/{row[0]}" for row in rows]
        test_labels = [index.get(row[1], -1) if len(row) > 1 else -1 for row in rows]
        if not train or -1 in train_labels or -1 in test_labels or not set(test) <= set(files):
            raise ConfigError(
                f"tinyimagenet: {source} is incomplete (images or labels missing); download {TINY_URL} again"
            )
        return {
            "x_train": decode_images(tree, train, image_size, "tinyimagenet"),
            "y_train": np.asarray(train_labels, dtype=np.int64),
            "x_test": decode_images(tree, test, image_size, "tinyimagenet"),
            "y_test": np.asarray(test_labels, dtype=np.int64),
            "labels": [described.get(w, w).strip() for w in wnids],
        }

    return _cached("tinyimagenet", tree, 1, image_size, cache_dir, build)
