"""Datasets: shapes and dtypes, the MNIST-1D cache, stratified subsets, Gaussian separability, errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from mnist1d.data import get_dataset_args, make_dataset

import dynamics.data
import dynamics.data.mnist1d
from dynamics.data import (
    DATASETS,
    Dataset,
    load_dataset,
    load_mnist1d,
    make_gaussian_mixture,
    stratified_subset,
)
from dynamics.errors import ConfigError


def check_split(data: Dataset, n_train: int, n_test: int, input_shape: tuple[int, ...], num_classes: int) -> None:
    assert data.x_train.shape == (n_train, *input_shape)
    assert data.x_test.shape == (n_test, *input_shape)
    assert data.y_train.shape == (n_train,)
    assert data.y_test.shape == (n_test,)
    assert data.x_train.dtype == data.x_test.dtype == torch.float32
    assert data.y_train.dtype == data.y_test.dtype == torch.int64
    assert data.input_shape == input_shape
    assert data.num_classes == num_classes
    for y in (data.y_train, data.y_test):
        assert int(y.min()) >= 0 and int(y.max()) < num_classes
    assert torch.isfinite(data.x_train).all() and torch.isfinite(data.x_test).all()


def one_line_config_error(excinfo: pytest.ExceptionInfo[ConfigError]) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


# ---------------------------------------------------------------- MNIST-1D


def test_mnist1d_shapes_and_all_classes(tmp_path):
    data = load_mnist1d(num_samples=500, seed=3, cache_dir=tmp_path)
    assert data.name == "mnist1d"
    check_split(data, 400, 100, (1, 40), 10)
    assert set(data.y_train.tolist()) == set(range(10))


def test_mnist1d_matches_direct_generation_exactly(tmp_path):
    args = get_dataset_args()
    args.num_samples, args.seed = 300, 7
    direct = make_dataset(args)
    for _ in range(2):  # freshly generated, then read back from the cache
        data = load_mnist1d(num_samples=300, seed=7, cache_dir=tmp_path)
        assert torch.equal(data.x_train[:, 0], torch.from_numpy(direct["x"]).float())
        assert torch.equal(data.x_test[:, 0], torch.from_numpy(direct["x_test"]).float())
        assert torch.equal(data.y_train, torch.from_numpy(direct["y"]))
        assert torch.equal(data.y_test, torch.from_numpy(direct["y_test"]))


def test_mnist1d_cache_is_written_once_and_reused(tmp_path, monkeypatch):
    first = load_mnist1d(num_samples=200, seed=1, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"
    assert "n200" in files[0].name and "seed1" in files[0].name
    mtime = files[0].stat().st_mtime_ns

    def no_generation(*args, **kwargs):
        raise AssertionError("generation ran although the cache exists")

    monkeypatch.setattr(dynamics.data.mnist1d, "generate_mnist1d", no_generation)
    second = load_mnist1d(num_samples=200, seed=1, cache_dir=tmp_path)
    assert files[0].stat().st_mtime_ns == mtime
    assert list(tmp_path.iterdir()) == files  # no temporary files left behind
    assert torch.equal(first.x_train, second.x_train) and torch.equal(first.y_test, second.y_test)
    with pytest.raises(AssertionError, match="generation ran"):
        load_mnist1d(num_samples=200, seed=2, cache_dir=tmp_path)  # another seed is another file


def test_mnist1d_seeds_differ(tmp_path):
    a = load_mnist1d(num_samples=100, seed=0, cache_dir=tmp_path)
    b = load_mnist1d(num_samples=100, seed=1, cache_dir=tmp_path)
    assert not torch.equal(a.x_train, b.x_train)


def test_mnist1d_default_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("DYNAMICS_CACHE", str(tmp_path / "env-cache"))
    load_mnist1d(num_samples=100, seed=0)
    assert len(list((tmp_path / "env-cache").glob("*.npz"))) == 1


def test_mnist1d_generation_leaves_global_rngs_alone(tmp_path):
    random.seed(123)
    np.random.seed(123)
    expected = (random.random(), np.random.rand())
    random.seed(123)
    np.random.seed(123)
    load_mnist1d(num_samples=100, seed=5, cache_dir=tmp_path)
    assert (random.random(), np.random.rand()) == expected


@pytest.mark.parametrize("num_samples", [0, 5, 105, True, 100.0])
def test_mnist1d_bad_num_samples(tmp_path, num_samples):
    with pytest.raises(ConfigError) as excinfo:
        load_mnist1d(num_samples=num_samples, cache_dir=tmp_path)
    assert "num_samples" in one_line_config_error(excinfo) and excinfo.value.key == "num_samples"


# ---------------------------------------------------------------- Gaussian mixture


def test_gaussian_shapes_and_determinism():
    data = make_gaussian_mixture(num_samples=1000, num_classes=4, dim=8, seed=2)
    assert data.name == "gaussian"
    check_split(data, 800, 200, (1, 8), 4)
    again = make_gaussian_mixture(num_samples=1000, num_classes=4, dim=8, seed=2)
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.y_test, again.y_test)
    other = make_gaussian_mixture(num_samples=1000, num_classes=4, dim=8, seed=3)
    assert not torch.equal(data.x_train, other.x_train)
    counts = torch.cat([data.y_train, data.y_test]).bincount()
    assert counts.tolist() == [250] * 4  # balanced before the split


def nearest_mean_accuracy(data: Dataset) -> float:
    x_train, x_test = data.x_train.flatten(1), data.x_test.flatten(1)
    means = torch.stack([x_train[data.y_train == c].mean(0) for c in range(data.num_classes)])
    return (torch.cdist(x_test, means).argmin(1) == data.y_test).float().mean().item()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gaussian_separability(seed):
    # Ten means on a radius-3 sphere in 40 dims lie about 3*sqrt(2) apart, so with unit noise each wrong
    # class wins a pairwise comparison with probability Phi(-2.1) ~ 1.7%: about 88-91% accuracy overall.
    assert nearest_mean_accuracy(make_gaussian_mixture(separation=3.0, seed=seed)) > 0.85
    assert nearest_mean_accuracy(make_gaussian_mixture(separation=6.0, seed=seed)) > 0.99
    assert nearest_mean_accuracy(make_gaussian_mixture(separation=0.0, seed=seed)) < 0.2  # chance is 0.1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_samples": 4},
        {"num_samples": 100.5},
        {"num_classes": 1},
        {"dim": 0},
        {"separation": -1.0},
        {"separation": float("nan")},
    ],
)
def test_gaussian_bad_arguments(kwargs):
    with pytest.raises(ConfigError) as excinfo:
        make_gaussian_mixture(**kwargs)
    one_line_config_error(excinfo)


# ---------------------------------------------------------------- stratified subsets


def test_stratified_subset_proportional_exact_and_sorted():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 15 + [3] * 5)[torch.randperm(100)]
    for size in (4, 7, 33, 50, 99, 100):
        idx = stratified_subset(y, size, seed=0)
        assert idx.dtype == torch.int64 and idx.numel() == size
        assert torch.equal(idx, idx.unique())  # sorted, no repeats
        counts = torch.bincount(y[idx], minlength=4).double()
        proportional = torch.tensor([50, 30, 15, 5]).double() * size / 100
        assert ((counts - proportional).abs() < 1 + 1e-9).all(), (size, counts, proportional)
        assert (counts >= 1).all()


def test_stratified_subset_keeps_a_rare_class():
    y = torch.tensor([0] * 90 + [1] * 9 + [2])
    idx = stratified_subset(y, 10, seed=0)
    assert torch.bincount(y[idx]).tolist() == [8, 1, 1]


def test_stratified_subset_deterministic_per_seed():
    y = torch.arange(1000) % 10
    a, b, c = (stratified_subset(y, 100, seed=s) for s in (4, 4, 5))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_stratified_subset_errors():
    y = torch.arange(20) % 4
    for size in (3, 21):
        with pytest.raises(ConfigError) as excinfo:
            stratified_subset(y, size, seed=0)
        assert "size" in one_line_config_error(excinfo) and excinfo.value.key == "size"
    with pytest.raises(ConfigError) as excinfo:
        stratified_subset(y.reshape(4, 5), 8, seed=0)
    one_line_config_error(excinfo)


# ---------------------------------------------------------------- load_dataset


def test_datasets_registry():
    assert DATASETS == (
        "mnist1d",
        "gaussian",
        "timeseries",
        "cifar10",
        "cifar100",
        "tinyimagenet",
        "imagefolder",
        "text",
    )


def test_load_dataset_default_sizes(monkeypatch, tmp_path):
    seen = {}

    def fake_load_mnist1d(**kwargs):
        seen.update(kwargs)
        return make_gaussian_mixture(num_samples=50)

    monkeypatch.setattr(dynamics.data, "load_mnist1d", fake_load_mnist1d)
    load_dataset("mnist1d", seed=9, cache_dir=tmp_path)
    assert seen == {"num_samples": 10_000, "seed": 9, "cache_dir": tmp_path}
    check_split(load_dataset("gaussian"), 4000, 1000, (1, 40), 10)


def test_load_dataset_mnist1d_is_the_cached_loader(tmp_path):
    via_name = load_dataset("mnist1d", num_samples=200, seed=4, cache_dir=tmp_path)
    direct = load_mnist1d(num_samples=200, seed=4, cache_dir=tmp_path)
    assert torch.equal(via_name.x_train, direct.x_train) and torch.equal(via_name.y_test, direct.y_test)


@pytest.mark.parametrize("name", ["mnist1d", "gaussian", "timeseries"])
def test_load_dataset_train_size(name, tmp_path):
    full = load_dataset(name, num_samples=1000, seed=1, cache_dir=tmp_path)
    sub = load_dataset(name, num_samples=1000, train_size=123, seed=1, cache_dir=tmp_path)
    again = load_dataset(name, num_samples=1000, train_size=123, seed=1, cache_dir=tmp_path)
    check_split(sub, 123, full.x_test.shape[0], full.input_shape, full.num_classes)
    assert torch.equal(sub.x_test, full.x_test) and torch.equal(sub.y_test, full.y_test)
    assert torch.equal(sub.x_train, again.x_train)
    idx = stratified_subset(full.y_train, 123, seed=1)
    assert torch.equal(sub.x_train, full.x_train[idx]) and torch.equal(sub.y_train, full.y_train[idx])
    proportional = torch.bincount(full.y_train, minlength=10).double() * 123 / full.y_train.numel()
    assert ((torch.bincount(sub.y_train, minlength=10) - proportional).abs() < 1 + 1e-9).all()


def test_load_dataset_errors(tmp_path):
    with pytest.raises(ConfigError) as excinfo:
        load_dataset("foo")
    expected = (
        "unknown dataset 'foo'; choose one of: cifar10, cifar100, gaussian, imagefolder, mnist1d, text, "
        "timeseries, tinyimagenet"
    )
    assert one_line_config_error(excinfo) == expected and excinfo.value.key == "name"
    with pytest.raises(ConfigError) as excinfo:
        load_dataset("gaussian", num_samples=100, train_size=81)
    assert "train_size" in one_line_config_error(excinfo) and excinfo.value.key == "train_size"
