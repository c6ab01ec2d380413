"""Data loading: the IDX reader, the places Fashion-MNIST may lie, splits, errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from tests.helpers import needs_fashion_mnist, tiny
from trainers import TrainerError, make_config
from trainers.data import PUBLIC_NORMALIZATION, load_splits, partition, record_contents


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
    config = make_config({"data_dir": str(tmp_path), "validation_fraction": 0.2})
    splits = load_splits(config)
    assert len(splits.train) + len(splits.validation) == 120 and len(splits.test) == 40
    assert 10 <= len(splits.validation) <= 40  # Binomial(120, 0.2): a fixed hash of each record
    assert splits.channels == 1 and splits.image_size == 28 and splits.num_classes == 10


def test_validation_split_is_fixed_by_split_seed_not_by_seed(tmp_path):
    _fake_fashion_mnist(tmp_path)
    values = {"data_dir": str(tmp_path), "validation_fraction": 0.2}
    a = load_splits(make_config({**values, "seed": 1}))
    b = load_splits(make_config({**values, "seed": 2}))
    c = load_splits(make_config({**values, "split_seed": 9}))
    assert torch.equal(a.validation.tensors[0], b.validation.tensors[0])
    assert not torch.equal(a.validation.tensors[0][:10], c.validation.tensors[0][:10])


def _parts(images, labels, **kwargs):
    """The set of records (as bytes) in validation and in training."""
    records = record_contents(images, labels)
    in_validation, in_train = partition(records, key=7, **kwargs)
    return (
        {r for r, v in zip(records, in_validation, strict=True) if v},
        {r for r, t in zip(records, in_train, strict=True) if t},
    )


@pytest.mark.parametrize("train_fraction", [1.0, 0.5])
def test_adding_or_removing_one_record_moves_no_other_record(train_fraction):
    """Parallel composition needs a data-independent partition: with the keyed hash, a record's
    part depends on itself alone. Before (randperm over positions) adding one record moved
    thousands between training and validation."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2001, 1, 8, 8), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (2001,), generator=generator)
    kwargs = {"validation_fraction": 0.1, "train_fraction": train_fraction}
    for removed in (0, 1000, 2000):  # the neighbour without one record (first, middle, last)
        keep = torch.tensor([i for i in range(2001) if i != removed])
        val_a, train_a = _parts(images, labels, **kwargs)
        val_b, train_b = _parts(images[keep], labels[keep], **kwargs)
        moved = (val_a ^ val_b) | (train_a ^ train_b)
        the_record = record_contents(images[removed : removed + 1], labels[removed : removed + 1])
        assert moved <= set(the_record)  # at most the record itself, in the part it belongs to
        assert len(val_a) + len(train_a) - len(val_b) - len(train_b) in (0, 1)
    # and the realised sizes follow the fractions
    val_a, train_a = _parts(images, labels, **kwargs)
    assert 150 < len(val_a) < 250 and abs(len(train_a) - 1800 * train_fraction) < 120


def test_a_record_is_assigned_by_its_content_whatever_its_position():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (300, 1, 4, 4), generator=generator, dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,), generator=generator)
    order = torch.randperm(300, generator=generator)
    assert _parts(images, labels, validation_fraction=0.3) == _parts(
        images[order], labels[order], validation_fraction=0.3
    )


def test_train_fraction_subsamples_training_only(tmp_path):
    _fake_fashion_mnist(tmp_path)
    full = load_splits(make_config({"data_dir": str(tmp_path), "validation_fraction": 0.2}))
    half = load_splits(
        make_config({"data_dir": str(tmp_path), "validation_fraction": 0.2, "train_fraction": 0.5})
    )
    assert torch.equal(half.validation.tensors[0], full.validation.tensors[0])
    assert 0 < len(half.train) < len(full.train)
    assert len(half.test) == 40


def test_normalisation_uses_public_constants_not_the_private_images(tmp_path):
    _fake_fashion_mnist(tmp_path)
    splits = load_splits(make_config({"data_dir": str(tmp_path)}))
    assert splits.mean == PUBLIC_NORMALIZATION["fashion_mnist"][0]
    # The same constants whatever the images: change every pixel, nothing moves.
    bright = tmp_path / "bright"
    _fake_fashion_mnist(bright)
    _write_idx(bright / "train-images-idx3-ubyte", np.full((120, 28, 28), 250), False)
    assert load_splits(make_config({"data_dir": str(bright)})).mean == splits.mean
    synthetic = load_splits(make_config(tiny()))
    assert synthetic.mean == (0.5,) and synthetic.std == (0.5,)
    custom = load_splits(make_config(tiny(input_mean="0.25", input_std="0.4")))
    assert custom.mean == (0.25,) and custom.std == (0.4,)


def test_public_validation_set_is_used_and_the_test_split_is_refused(tmp_path):
    _fake_fashion_mnist(tmp_path / "private")
    _fake_fashion_mnist(tmp_path / "public", n_train=30)
    values = {"data_dir": str(tmp_path / "private"), "validation": "public"}
    splits = load_splits(make_config({**values, "validation_data": str(tmp_path / "public")}))
    assert len(splits.train) == 120 and len(splits.validation) == 30 and splits.validation_public
    with pytest.raises(TrainerError, match="test split is refused"):
        load_splits(make_config({**values, "validation_data": "test"}))
    with pytest.raises(TrainerError, match="private data set's own directory"):
        load_splits(make_config({**values, "validation_data": str(tmp_path / "private")}))
    with pytest.raises(TrainerError, match="needs --set validation_data"):
        load_splits(make_config(values))


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    _fake_fashion_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(TrainerError, match="truncated or corrupt"):
        load_splits(make_config({"data_dir": str(tmp_path)}))


def test_missing_fashion_mnist_says_how_to_get_it(tmp_path):
    with pytest.raises(TrainerError, match="apt-get install dataset-fashion-mnist"):
        load_splits(make_config({"data_dir": str(tmp_path)}))


def test_no_training_record_left_is_a_clear_error(tmp_path):
    _fake_fashion_mnist(tmp_path, n_train=3)
    with pytest.raises(TrainerError, match="leave no training data"):
        load_splits(make_config({"data_dir": str(tmp_path), "train_fraction": 1e-9}))


def test_synthetic_data_is_the_same_for_every_trial_seed():
    a = load_splits(make_config(tiny(seed=1)))
    b = load_splits(make_config(tiny(seed=2)))
    assert (a.train.tensors[0] == b.train.tensors[0]).all()
    assert len(a.train) + len(a.validation) == 320 and 40 < len(a.validation) < 90


@needs_fashion_mnist
def test_real_fashion_mnist_from_the_debian_package():
    splits = load_splits(make_config({}))
    assert len(splits.train) + len(splits.validation) == 60_000
    assert abs(len(splits.validation) - 6_000) < 300  # validation_fraction 0.1 by keyed hash
    assert len(splits.test) == 10_000
    assert splits.mean == (0.2860,)
    assert splits.class_names[9] == "Ankle boot"
