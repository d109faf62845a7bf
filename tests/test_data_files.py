"""File and generated data sets: CIFAR archives, image trees, text, time series; their errors and subsets."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dynamics.data.imagefolder
from dynamics.data import (
    channel_stats,
    default_corpus,
    load_cifar,
    load_dataset,
    load_imagefolder,
    load_text,
    load_tiny_imagenet,
    make_timeseries,
    random_subset,
    to_device,
    write_cifar,
)
from dynamics.data.cifar import LAYOUTS
from dynamics.errors import ConfigError


def one_line(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


def read_batch(path: Path) -> dict[bytes, object]:
    return pickle.loads(path.read_bytes(), encoding="bytes")


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_archive_and_folder_read_the_exact_format(tmp_path, name):
    layout = LAYOUTS[name]
    archive = write_cifar(tmp_path / "a", name, train_per_class=3, test_per_class=1, seed=1)
    folder = write_cifar(tmp_path / "f", name, train_per_class=3, test_per_class=1, seed=1, extracted=True)
    assert archive.name == layout.archive and folder.name == layout.folder
    # the reference decoding of the format: rows of 3072 bytes = R, G, B planes of 32x32, labels in order
    raw = [read_batch(folder / f) for f in layout.train]
    expected_x = np.concatenate([b[b"data"] for b in raw]).reshape(-1, 3, 32, 32)
    expected_y = np.concatenate([b[layout.label_key] for b in raw])
    test = read_batch(folder / layout.test)
    for source in (tmp_path / "a", archive, tmp_path / "f", folder):  # parent folder, archive, extracted folder
        data = load_cifar(name, source)
        assert data.kind == "image" and data.num_classes == layout.num_classes
        assert data.x_train.dtype == torch.uint8 and data.x_train.shape == (3 * layout.num_classes, 3, 32, 32)
        assert np.array_equal(data.x_train.numpy(), expected_x) and np.array_equal(data.y_train.numpy(), expected_y)
        assert np.array_equal(data.x_test.numpy(), test[b"data"].reshape(-1, 3, 32, 32))
        assert data.y_test.tolist() == list(test[layout.label_key])
        assert data.labels[:2] == ("class_0", "class_1") and len(data.labels) == layout.num_classes
        mean = expected_x.transpose(1, 0, 2, 3).reshape(3, -1).astype(np.float64) / 255
        np.testing.assert_allclose(data.mean, mean.mean(1), rtol=1e-12)
        np.testing.assert_allclose(data.std, mean.std(1), rtol=1e-9)


def test_load_dataset_cifar_with_train_size_is_stratified(tmp_path):
    write_cifar(tmp_path, train_per_class=20, test_per_class=2)
    data = load_dataset("cifar10", data_dir=tmp_path, train_size=50, seed=3)
    assert torch.bincount(data.y_train).tolist() == [5] * 10 and len(data.x_test) == 20
    assert data.kind == "image" and data.mean is not None  # the subset keeps kind and stats
    again = load_dataset("cifar10", data_dir=tmp_path, train_size=50, seed=3)
    assert torch.equal(data.x_train, again.x_train)


def test_cifar_missing_files_name_what_where_and_how(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load_cifar("cifar10", tmp_path)
    message = one_line(excinfo)
    assert "cifar-10-python.tar.gz" in message and str(tmp_path) in message and "https://" in message
    with pytest.raises(ConfigError, match="data_dir") as excinfo:
        load_dataset("cifar100")
    assert "cifar-100-python.tar.gz" in one_line(excinfo)


def test_cifar_damaged_archive_and_batches(tmp_path):
    (tmp_path / "cut").mkdir()
    full = write_cifar(tmp_path / "ok").read_bytes()
    (tmp_path / "cut" / "cifar-10-python.tar.gz").write_bytes(full[: len(full) // 2])
    with pytest.raises(ConfigError) as excinfo:
        load_cifar("cifar10", tmp_path / "cut")
    assert "damaged" in one_line(excinfo) and "again" in one_line(excinfo)

    folder = write_cifar(tmp_path / "f", extracted=True)
    (folder / "data_batch_3").unlink()
    with pytest.raises(ConfigError, match="lacks data_batch_3"):
        load_cifar("cifar10", tmp_path / "f")
    (folder / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="damaged"):
        load_cifar("cifar10", folder)
    batch = read_batch(folder / "data_batch_2")
    batch[b"labels"] = batch[b"labels"][:-1]
    (folder / "data_batch_3").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(ConfigError, match="labels"):
        load_cifar("cifar10", folder)


class _Exploit:
    def __reduce__(self):
        return (print, ("executed",))


def test_cifar_unpickler_refuses_code(tmp_path, capsys):
    folder = write_cifar(tmp_path, extracted=True)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Exploit()}, protocol=2))
    with pytest.raises(ConfigError, match=r"unexpected global (__builtin__|builtins)\.print"):
        load_cifar("cifar10", tmp_path)
    assert "executed" not in capsys.readouterr().out


def test_cifar_tar_members_may_sit_anywhere(tmp_path):
    """The archive is matched by file name, so a re-packed archive (other top folder) still reads."""
    folder = write_cifar(tmp_path / "f", extracted=True)
    path = tmp_path / "r" / "cifar-10-python.tar.gz"
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as archive:
        for file in sorted(folder.iterdir()):
            archive.add(file, arcname=f"other/{file.name}")
    assert torch.equal(load_cifar("cifar10", path.parent).x_train, load_cifar("cifar10", folder).x_train)


# ---------------------------------------------------------------- image trees


def write_png(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (16, 16), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, colour)
    image.putpixel((0, 0), (255 - colour[0], 0, 0))  # one odd pixel, so orientation errors show
    image.convert(mode).save(path)


def test_imagefolder_decodes_caches_and_resizes(tmp_path, monkeypatch):
    root = tmp_path / "tree"
    colours = {"cat": (200, 10, 10), "dog": (10, 200, 10)}
    for split, count in (("train", 3), ("val", 1)):
        for name, colour in colours.items():
            for i in range(count):
                write_png(root / split / name / f"{i}.png", colour)
    (root / "train" / "cat" / "notes.txt").write_text("not an image, ignored")
    data = load_imagefolder(root, image_size=16, cache_dir=tmp_path / "cache")
    assert data.labels == ("cat", "dog") and data.kind == "image" and data.num_classes == 2
    assert data.x_train.shape == (6, 3, 16, 16) and data.x_train.dtype == torch.uint8
    assert data.y_train.tolist() == [0, 0, 0, 1, 1, 1] and data.y_test.tolist() == [0, 1]
    expected = np.asarray(Image.open(root / "train" / "dog" / "0.png")).transpose(2, 0, 1)
    assert np.array_equal(data.x_train[3].numpy(), expected)  # lossless PNG at its own size: exact
    assert (data.mean, data.std) == channel_stats(data.x_train.numpy())

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(dynamics.data.imagefolder, "decode_images", no_decoding)
    again = load_imagefolder(root, image_size=16, cache_dir=tmp_path / "cache")
    assert torch.equal(again.x_train, data.x_train) and again.labels == data.labels
    with pytest.raises(AssertionError, match="decoded although cached"):
        load_imagefolder(root, image_size=8, cache_dir=tmp_path / "cache")  # another size is another entry
    monkeypatch.undo()
    small = load_imagefolder(root, image_size=8, cache_dir=tmp_path / "cache")
    assert small.x_train.shape == (6, 3, 8, 8)
    assert (small.x_train[3, 1].float().mean() - 200).abs() < 8  # resized, colour kept
    assert not list((tmp_path / "cache" / "images").glob(".*"))  # no temporary directories left


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ConfigError, match="train/<class>") as excinfo:
        load_imagefolder(tmp_path, cache_dir=tmp_path / "c")
    one_line(excinfo)
    write_png(tmp_path / "train" / "a" / "0.png", (1, 2, 3))
    write_png(tmp_path / "val" / "b" / "0.png", (1, 2, 3))
    with pytest.raises(ConfigError, match="class 'b'"):
        load_imagefolder(tmp_path, cache_dir=tmp_path / "c")
    (tmp_path / "val" / "b" / "0.png").unlink()
    (tmp_path / "val" / "b").rmdir()
    (tmp_path / "val" / "a").mkdir()
    (tmp_path / "val" / "a" / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ConfigError, match="broken.jpg is not a readable image") as excinfo:
        load_imagefolder(tmp_path, cache_dir=tmp_path / "c")
    one_line(excinfo)


def write_tiny(root: Path, classes: int = 3, per_class: int = 2, val: int = 4) -> tuple[list[str], list[int]]:
    """A miniature Tiny-ImageNet tree (grayscale and RGB JPEGs); returns the val labels by file."""
    wnids = [f"n{1000 + c:08d}" for c in range(classes)]
    (root / "wnids.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tthing {i}, other name\n" for i, w in enumerate(wnids)))
    for c, wnid in enumerate(wnids):
        for i in range(per_class):
            write_png(
                root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG",
                (60 * c, 20, 20),
                (64, 64),
                mode="L" if i == 0 else "RGB",
            )
    lines, labels = [], []
    for i in range(val):
        write_png(root / "val" / "images" / f"val_{i}.JPEG", (60 * (i % classes), 20, 20), (64, 64))
        lines.append(f"val_{i}.JPEG\t{wnids[i % classes]}\t0\t0\t63\t63")
        labels.append(i % classes)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return wnids, labels


def test_tiny_imagenet_from_folder_and_zip(tmp_path):
    root = tmp_path / "data" / "tiny-imagenet-200"
    _, labels = write_tiny(root)
    folder = load_tiny_imagenet(tmp_path / "data", cache_dir=tmp_path / "c1")
    assert folder.x_train.shape == (6, 3, 64, 64) and folder.y_train.tolist() == [0, 0, 1, 1, 2, 2]
    assert folder.y_test.tolist() == labels and folder.num_classes == 3
    assert folder.labels[0] == "thing 0, other name"
    assert torch.equal(folder.x_train[0, 0], folder.x_train[0, 1])  # grayscale made RGB
    archive = tmp_path / "zip" / "tiny-imagenet-200.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as z:
        for file in sorted(root.rglob("*")):
            z.write(file, file.relative_to(root.parent).as_posix())
    zipped = load_tiny_imagenet(archive.parent, cache_dir=tmp_path / "c2")
    for a, b in ((folder.x_train, zipped.x_train), (folder.x_test, zipped.x_test), (folder.y_test, zipped.y_test)):
        assert torch.equal(a, b)
    via_name = load_dataset("tinyimagenet", data_dir=archive, image_size=32, cache_dir=tmp_path / "c2")
    assert via_name.x_train.shape == (6, 3, 32, 32)


def test_tiny_imagenet_errors(tmp_path):
    with pytest.raises(ConfigError, match="tiny-imagenet-200.zip") as excinfo:
        load_tiny_imagenet(tmp_path)
    assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in one_line(excinfo)
    (tmp_path / "tiny-imagenet-200.zip").write_bytes(b"PK not a zip")
    with pytest.raises(ConfigError, match="damaged"):
        load_tiny_imagenet(tmp_path)
    root = tmp_path / "x" / "tiny-imagenet-200"
    write_tiny(root)
    (root / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99999999\t0\t0\t1\t1\n")
    with pytest.raises(ConfigError, match="incomplete"):
        load_tiny_imagenet(root, cache_dir=tmp_path / "c")


# ---------------------------------------------------------------- text and time series


def test_default_text_corpus_windows_and_vocabulary():
    data = load_text(seq_len=64)
    text = default_corpus()
    assert len(text) > 200_000 and data.kind == "sequence"
    vocabulary = "".join(data.labels)
    assert list(vocabulary) == sorted(set(text)) and data.num_classes == len(vocabulary)
    assert data.x_train.shape[1] == 64 and data.x_train.dtype == torch.int64
    decoded = "".join(vocabulary[i] for i in data.x_train[:3].flatten().tolist())
    assert decoded == text[: 3 * 64]
    assert torch.equal(data.y_train[:, :-1], data.x_train[:, 1:])  # targets are the next characters
    assert torch.equal(data.y_train[:-1, -1], data.x_train[1:, 0])  # windows are contiguous
    split = int(len(text) * 0.9)
    assert "".join(vocabulary[i] for i in data.x_test[0].tolist()) == text[split : split + 64]
    assert len(data.x_train) == (split - 1) // 64


def test_text_file_by_path_and_errors(tmp_path):
    path = tmp_path / "poem.txt"
    path.write_text("über " * 200, encoding="utf-8")
    data = load_dataset("text", data_dir=path, seq_len=16, train_size=10, seed=2)
    assert data.labels == (" ", "b", "e", "r", "ü") and data.x_train.shape == (10, 16)
    full = load_text(path, seq_len=16)
    assert torch.equal(data.x_train, full.x_train[random_subset(len(full.x_train), 10, 2)])
    with pytest.raises(ConfigError, match="no file at path=.*point it to a UTF-8 text file") as excinfo:
        load_text(tmp_path / "missing.txt")
    assert excinfo.value.key == "path"
    with pytest.raises(ConfigError, match="no file at data_dir=") as excinfo:
        load_dataset("text", data_dir=tmp_path / "missing.txt")
    assert excinfo.value.key == "data_dir"
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1") * 100)
    with pytest.raises(ConfigError, match="not a readable UTF-8"):
        load_text(tmp_path / "latin1.txt")
    (tmp_path / "short.txt").write_text("tiny")
    with pytest.raises(ConfigError, match="too few"):
        load_text(tmp_path / "short.txt", seq_len=8)


def test_timeseries_is_seeded_balanced_and_needs_shape_features():
    data = make_timeseries(num_samples=800, length=64, seed=4)
    again = make_timeseries(num_samples=800, length=64, seed=4)
    assert torch.equal(data.x_train, again.x_train) and data.x_train.shape == (640, 1, 64)
    assert not torch.equal(data.x_train, make_timeseries(num_samples=800, length=64, seed=5).x_train)
    assert torch.cat([data.y_train, data.y_test]).bincount().tolist() == [100] * 8
    # a linear least-squares classifier on raw values stays near chance: the label is not in the positions
    x = torch.cat([data.x_train.flatten(1), torch.ones(640, 1)], 1).double()
    weights = torch.linalg.lstsq(x, torch.nn.functional.one_hot(data.y_train, 8).double()).solution
    x_test = torch.cat([data.x_test.flatten(1), torch.ones(160, 1)], 1).double()
    assert ((x_test @ weights).argmax(1) == data.y_test).double().mean() < 0.4
    # while its power spectrum separates the frequency bands almost perfectly
    power = torch.fft.rfft(data.x_train[:, 0]).abs()
    high = power[:, 6:10].sum(1) > power[:, 2:5].sum(1)
    assert (high == (data.y_train >= 4)).double().mean() > 0.95


def test_load_dataset_refuses_settings_that_do_not_apply(tmp_path):
    cases = [
        ({"name": "cifar10", "num_samples": 10}, "num_samples"),
        ({"name": "mnist1d", "data_dir": tmp_path}, "data_dir"),
        ({"name": "text", "image_size": 32}, "image_size"),
        ({"name": "gaussian", "seq_len": 32}, "seq_len"),
    ]
    for kwargs, key in cases:
        name = kwargs.pop("name")
        with pytest.raises(ConfigError, match=key) as excinfo:
            load_dataset(name, **kwargs)
        assert "does not apply" in one_line(excinfo) and excinfo.value.key == key


def test_random_subset_is_seeded_sorted_and_checked():
    a, b = random_subset(100, 10, 1), random_subset(100, 10, 1)
    assert torch.equal(a, b) and torch.equal(a, a.unique()) and len(a) == 10
    with pytest.raises(ConfigError, match="size"):
        random_subset(5, 6, 0)


def test_channel_stats_match_float_reference():
    images = np.random.default_rng(0).integers(0, 256, size=(7, 3, 5, 5), dtype=np.uint8)
    mean, std = channel_stats(images)
    values = images.transpose(1, 0, 2, 3).reshape(3, -1) / 255.0
    np.testing.assert_allclose(mean, values.mean(1), rtol=1e-12)
    np.testing.assert_allclose(std, values.std(1), rtol=1e-10)


def test_image_pickles_written_by_python2_layout_are_read(tmp_path):
    """Real CIFAR batches come from Python 2: str keys read as bytes, labels as a plain list."""
    folder = write_cifar(tmp_path, extracted=True)
    batch = read_batch(folder / "test_batch")
    as_str_keys = {key.decode(): value for key, value in batch.items()}
    buffer = io.BytesIO()
    pickle.dump(as_str_keys, buffer, protocol=0)
    (folder / "test_batch").write_bytes(buffer.getvalue())
    assert load_cifar("cifar10", folder).y_test.tolist() == list(batch[b"labels"])


def test_data_that_would_not_fit_on_the_gpu_is_refused(monkeypatch):
    data = make_timeseries(num_samples=80, length=16)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    with pytest.raises(ConfigError, match="train_size") as excinfo:
        to_device(data, torch.device("cuda"))
    assert "timeseries takes" in one_line(excinfo)
    assert to_device(data, torch.device("cpu")).x_train is data.x_train
