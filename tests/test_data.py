"""Data loading: the IDX reader, the places Fashion-MNIST may lie, splits, errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from trainers import TrainerError, make_config
from trainers.data import load_splits

from .conftest import needs_fashion_mnist, tiny


def _write_idx(path, array, compress):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(str(path) + ".gz", "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def _fake_fashion_mnist(folder, n_train=120, n_test=40, compress=False):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    _write_idx(
        folder / "train-images-idx3-ubyte", rng.integers(0, 256, (n_train, 28, 28)), compress
    )
    _write_idx(folder / "train-labels-idx1-ubyte", np.arange(n_train) % 10, compress)
    _write_idx(folder / "t10k-images-idx3-ubyte", rng.integers(0, 256, (n_test, 28, 28)), compress)
    _write_idx(folder / "t10k-labels-idx1-ubyte", np.arange(n_test) % 10, compress)


@pytest.mark.parametrize("layout", ["flat", "torchvision"])
@pytest.mark.parametrize("compress", [False, True])
def test_fashion_mnist_from_data_dir(tmp_path, layout, compress):
    folder = tmp_path if layout == "flat" else tmp_path / "FashionMNIST" / "raw"
    _fake_fashion_mnist(folder, compress=compress)
    config = make_config({"data_dir": str(tmp_path), "validation_size": 20})
    splits = load_splits(config)
    assert len(splits.train) == 100 and len(splits.validation) == 20 and len(splits.test) == 40
    assert splits.channels == 1 and splits.image_size == 28 and splits.num_classes == 10


def test_validation_split_is_fixed_by_split_seed_not_by_seed(tmp_path):
    _fake_fashion_mnist(tmp_path)
    a = load_splits(make_config({"data_dir": str(tmp_path), "validation_size": 20, "seed": 1}))
    b = load_splits(make_config({"data_dir": str(tmp_path), "validation_size": 20, "seed": 2}))
    c = load_splits(
        make_config({"data_dir": str(tmp_path), "validation_size": 20, "split_seed": 9})
    )
    assert (a.validation.tensors[0] == b.validation.tensors[0]).all()
    assert not (a.validation.tensors[0] == c.validation.tensors[0]).all()


def test_max_train_examples_subsamples_training_only(tmp_path):
    _fake_fashion_mnist(tmp_path)
    config = make_config(
        {"data_dir": str(tmp_path), "validation_size": 20, "max_train_examples": 50}
    )
    splits = load_splits(config)
    assert len(splits.train) == 50 and len(splits.validation) == 20 and len(splits.test) == 40


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    _fake_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TrainerError, match="truncated or corrupt"):
        load_splits(make_config({"data_dir": str(tmp_path)}))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(TrainerError, match="apt-get install dataset-fashion-mnist"):
        load_splits(make_config({"data_dir": str(tmp_path)}))


def test_validation_larger_than_data_is_a_clear_error(tmp_path):
    _fake_fashion_mnist(tmp_path)
    with pytest.raises(TrainerError, match="leaves no training data"):
        load_splits(make_config({"data_dir": str(tmp_path), "validation_size": 120}))


def test_synthetic_data_is_the_same_for_every_trial_seed():
    a = load_splits(make_config(tiny(seed=1)))
    b = load_splits(make_config(tiny(seed=2)))
    assert (a.train.tensors[0] == b.train.tensors[0]).all()
    assert len(a.train) == 256 and len(a.validation) == 64


@needs_fashion_mnist
def test_real_fashion_mnist_from_the_debian_package():
    splits = load_splits(make_config({}))
    assert len(splits.train) == 55_000 and len(splits.validation) == 5_000
    assert len(splits.test) == 10_000
    assert splits.mean[0] == pytest.approx(0.286, abs=0.01)
    assert splits.class_names[9] == "Ankle boot"
