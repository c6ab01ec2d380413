"""Data sets as in-memory uint8 tensors, split into train / validation / test.

Images stay uint8 (N, C, H, W) until a batch reaches the device: 60k Fashion-MNIST images are
47 MB, and converting per batch costs nothing next to DP-SGD's per-example gradients.

Which data sets exist and how each one is read: the registry, trainers/datasets.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from trainers.config import TrainConfig, TrainerError
from trainers.datasets import (  # noqa: F401  (re-exported: the names other modules import)
    DEBIAN_FASHION_MNIST,
    DEFAULT_DATA_ROOT,
    PUBLIC_NORMALIZATION,
    Loaded,
    get_dataset,
    is_multilabel,
)


@dataclass(frozen=True)
class Splits:
    """The three splits of a data set plus what a model needs to know about it."""

    train: TensorDataset
    validation: TensorDataset | None
    test: TensorDataset
    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    """Per-channel normalisation mean in [0, 1]: a public constant (`PUBLIC_NORMALIZATION`)."""
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    """Class names (multi-class) or finding names (multi-label: labels are 0/1 floats, one
    column per finding)."""
    group_names: tuple[str, ...] = ()
    """Names of the values of the examples' `group` attribute (e.g. sex, an age bucket); empty
    when the data set has no groups."""
    validation_groups: torch.Tensor | None = None
    """Group index of every validation example (aligned with `validation`), or None."""
    test_groups: torch.Tensor | None = None
    """Group index of every test example (aligned with `test`), or None."""
    validation_public: bool = False
    """The validation split is a data set the user declared public (validation=public)."""

    @property
    def multilabel(self) -> bool:
        """Labels are a 0/1 matrix, one column per finding (`is_multilabel`)."""
        return is_multilabel(self.train.tensors[1])


def load_splits(config: TrainConfig) -> Splits:
    """Load `config.dataset` and partition its pool into training and validation records by a
    keyed hash of each record (`partition`), so that adding or removing one record moves no
    other record between the parts."""
    loaded = _load(config)
    n_total = len(loaded.train_images)
    public_validation = None
    if config.validation == "public":
        public_validation = _load_public_validation(config)
    fraction = config.held_out_fraction
    ids = loaded.record_ids or record_contents(loaded.train_images, loaded.train_labels)
    in_validation, in_train = partition(
        ids, key=config.split_seed, validation_fraction=fraction,
        train_fraction=config.train_fraction,
    )  # fmt: skip
    train_idx = torch.from_numpy(np.flatnonzero(in_train))
    val_idx = torch.from_numpy(np.flatnonzero(in_validation))
    if len(train_idx) == 0:
        raise TrainerError(
            f"validation_fraction={config.validation_fraction} and train_fraction="
            f"{config.train_fraction} leave no training data ({config.dataset} has {n_total} "
            "examples); lower validation_fraction or raise train_fraction."
        )
    mean, std = normalization(config, loaded.train_images.shape[1])
    validation, validation_groups = None, None
    if public_validation is not None:
        validation = TensorDataset(public_validation.train_images, public_validation.train_labels)
        validation_groups = public_validation.train_groups
    elif len(val_idx):
        validation = TensorDataset(loaded.train_images[val_idx], loaded.train_labels[val_idx])
        if loaded.train_groups is not None:
            validation_groups = loaded.train_groups[val_idx]
    return Splits(
        train=TensorDataset(loaded.train_images[train_idx], loaded.train_labels[train_idx]),
        validation=validation,
        test=TensorDataset(loaded.test_images, loaded.test_labels),
        num_classes=len(loaded.class_names),
        channels=loaded.train_images.shape[1],
        image_size=loaded.train_images.shape[2],
        mean=mean,
        std=std,
        class_names=tuple(loaded.class_names),
        group_names=tuple(loaded.group_names),
        validation_groups=validation_groups,
        test_groups=loaded.test_groups,
        validation_public=public_validation is not None,
    )


def _load(config: TrainConfig) -> Loaded:
    """The pool and test split of `config.dataset`, read by its registered loader."""
    return get_dataset(config.dataset).read(config)


def _load_public_validation(config: TrainConfig) -> Loaded:
    """The validation set a user declared public: the same kind of data set, from its own
    directory (its training files), never the benchmark's test split nor the private pool."""
    where = config.validation_data
    if not where:
        raise TrainerError(
            "validation=public needs --set validation_data=DIR: a directory holding a separate "
            "validation set (same format as the data set) that you declare public."
        )
    if where.strip().lower() in ("test", "test_split"):
        raise TrainerError(
            "selecting on the test split is refused: the test metrics of the release would no "
            "longer be an unbiased estimate; name a separate public validation set with --set "
            "validation_data=DIR, or use validation=dp."
        )
    directory = Path(where).expanduser()
    if config.data_dir and directory.resolve() == Path(config.data_dir).expanduser().resolve():
        raise TrainerError(
            f"validation_data={where} is the private data set's own directory; a public "
            "validation set must be a separate data set (or use validation=dp)."
        )
    if not directory.is_dir():
        raise TrainerError(
            f"validation_data={where} is not a directory; pass the folder of your public "
            "validation set (same format as the data set)."
        )
    values = {**config.to_dict(), "data_dir": str(directory), "validation": "off"}
    return _load(TrainConfig(**values))


def record_contents(images: torch.Tensor, labels: torch.Tensor) -> list[bytes]:
    """Each record's content (image bytes and label bytes): its identity for `partition`."""
    flat_images = images.reshape(len(images), -1).numpy()
    flat_labels = labels.reshape(len(labels), -1).numpy()
    return [flat_images[i].tobytes() + b"|" + flat_labels[i].tobytes() for i in range(len(images))]


def record_position(record: bytes, key: int) -> float:
    """u ∈ [0, 1): a keyed hash (BLAKE2b, key `key`) of one record alone."""
    digest = hashlib.blake2b(record, digest_size=8, key=_hash_key(key)).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def partition(
    records: list[bytes], *, key: int, validation_fraction: float, train_fraction: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(in_validation, in_train) masks: record i is in validation iff u_i < f_v, and in
    training iff u_i ≥ f_v and (u_i − f_v) / (1 − f_v) < f_t, where u_i = `record_position`.

    Each record's part depends on that record and the fixed key and fractions alone, never on
    the other records or their number: adding or removing one record moves no other one
    (what parallel composition needs; tests check it). The realised sizes are random
    (binomial); records in neither part (train_fraction < 1) are never read by a trial.
    """
    positions = np.array([record_position(r, key) for r in records], dtype=np.float64)
    in_validation = positions < validation_fraction
    rest = (positions - validation_fraction) / max(1.0 - validation_fraction, 1e-12)
    in_train = ~in_validation & (rest < train_fraction)
    return in_validation, in_train


def _hash_key(key: int) -> bytes:
    return int(key).to_bytes(16, "big", signed=True)


def normalization(config: TrainConfig, channels: int) -> tuple[tuple[float, ...], ...]:
    """(mean, std) per channel: the space's `input_mean`/`input_std`, else the data set's
    published constants, else 0.5 / 0.5. Never computed from the images."""
    default_mean, default_std = get_dataset(config.dataset).normalization or (
        (0.5,) * channels,
        (0.5,) * channels,
    )
    mean = _channels(config.input_mean, "input_mean", channels) or default_mean
    std = _channels(config.input_std, "input_std", channels) or default_std
    if len(mean) != channels or len(std) != channels:
        raise TrainerError(
            f"input_mean/input_std need {channels} value(s) for {config.dataset} (got "
            f"{len(mean)} and {len(std)}); give one comma-separated number per channel."
        )
    return tuple(mean), tuple(std)


def _channels(text: str | None, name: str, channels: int) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in str(text).split(","))
    except ValueError:
        raise TrainerError(
            f"{name}={text!r} is not a comma-separated list of numbers (e.g. 0.5 or "
            "0.49,0.48,0.45)."
        ) from None
    if len(values) == 1 and channels > 1:
        values = values * channels
    if name == "input_std" and any(v <= 0 for v in values):
        raise TrainerError(f"{name} must be positive (got {text!r}).")
    return values
