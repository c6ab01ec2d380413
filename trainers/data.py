"""Data sets as in-memory uint8 tensors, split into train / validation / test.

Images stay uint8 (N, C, H, W) until a batch reaches the device: 60k Fashion-MNIST images are
47 MB, and converting per batch costs nothing next to DP-SGD's per-example gradients.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

from trainers.chexpert import load_chexpert
from trainers.config import TrainConfig, TrainerError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's package `dataset-fashion-mnist` puts the IDX files."""
DEFAULT_DATA_ROOT = Path(
    os.environ.get("DP_TUNE_DATA", Path.home() / ".cache" / "dp-tune" / "data")
)
"""Default root for torchvision-format data sets (and their downloads)."""

_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


PUBLIC_NORMALIZATION = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
"""Per-channel mean and std in [0, 1] published for each benchmark data set (the constants of
torchvision's and De et al.'s code). Constants, not statistics of the images a trial loads: no
raw statistic of private data may enter a model (docs/privacy.md). Data sets not listed (a
user's private set, CheXpert, synthetic) use 0.5 / 0.5 unless the space sets `input_mean` and
`input_std`; pretrained models use their weights' own constants (trainers/loop.py)."""


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
        return self.train.tensors[1].ndim == 2


@dataclass(frozen=True)
class Loaded:
    """What a data set's loader returns: its private pool and its public test split."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: tuple[str, ...]
    train_groups: torch.Tensor | None = None
    test_groups: torch.Tensor | None = None
    group_names: tuple[str, ...] = ()
    record_ids: list[bytes] | None = None
    """A stable id per pool record (e.g. CheXpert's image path); None: its content is its id."""


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
    loaders = {
        "fashion_mnist": _load_fashion_mnist,
        "cifar10": lambda c: _load_cifar(c, 10),
        "cifar100": lambda c: _load_cifar(c, 100),
        "chexpert": load_chexpert,
        "synthetic": _load_synthetic,
    }
    loaded = loaders[config.dataset](config)
    if isinstance(loaded, Loaded):
        return loaded
    train_x, train_y, test_x, test_y, class_names = loaded[:5]
    # Loaders of data sets with a group attribute add (train groups, test groups, names) and
    # may add stable record ids.
    train_g, test_g, group_names = loaded[5] if len(loaded) > 5 else (None, None, ())
    ids = loaded[6] if len(loaded) > 6 else None
    return Loaded(train_x, train_y, test_x, test_y, tuple(class_names), train_g, test_g,
                  tuple(group_names), ids)  # fmt: skip


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
    return [
        flat_images[i].tobytes() + b"|" + flat_labels[i].tobytes() for i in range(len(images))
    ]


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
    default_mean, default_std = PUBLIC_NORMALIZATION.get(
        config.dataset, ((0.5,) * channels, (0.5,) * channels)
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


# --- Fashion-MNIST --------------------------------------------------------------------------

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _fashion_mnist_candidates(config: TrainConfig) -> list[Path]:
    """Folders that may hold the four IDX files (plain or .gz), most specific first."""
    roots = [Path(config.data_dir).expanduser()] if config.data_dir else []
    roots += [DEFAULT_DATA_ROOT]
    folders = []
    for root in roots:  # a flat folder of IDX files, or torchvision's layout under it
        folders += [root, root / "FashionMNIST" / "raw", root / "fashion-mnist"]
    if not config.data_dir:
        folders.append(DEBIAN_FASHION_MNIST)
    return folders


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST format): big-endian header, then uint8 data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise TrainerError(
            f"{path} is not an IDX file of unsigned bytes; replace it with a good copy."
        )
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(shape)):
        raise TrainerError(f"{path} is truncated or corrupt; replace it with a good copy.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(shape)


def _load_fashion_mnist(config: TrainConfig):
    folders = _fashion_mnist_candidates(config)
    for folder in folders:
        paths = {key: _find_idx(folder, stem) for key, stem in _IDX_FILES.items()}
        if all(paths.values()):
            arrays = {key: _read_idx(path) for key, path in paths.items()}
            return (
                torch.from_numpy(arrays["train_images"].copy()).unsqueeze(1),
                torch.from_numpy(arrays["train_labels"].astype(np.int64)),
                torch.from_numpy(arrays["test_images"].copy()).unsqueeze(1),
                torch.from_numpy(arrays["test_labels"].astype(np.int64)),
                _FASHION_MNIST_CLASSES,
            )
    if config.download:
        from torchvision.datasets import FashionMNIST

        root = Path(config.data_dir).expanduser() if config.data_dir else DEFAULT_DATA_ROOT
        try:
            FashionMNIST(str(root), train=True, download=True)
            FashionMNIST(str(root), train=False, download=True)
        except Exception as error:  # network errors come in many types
            raise TrainerError(
                f"could not download Fashion-MNIST into {root} ({error}); install it with "
                "`apt-get install dataset-fashion-mnist` or pass --set data_dir=DIR holding "
                "its IDX files."
            ) from None
        return _load_fashion_mnist(TrainConfig(**{**config.to_dict(), "download": False}))
    raise TrainerError(
        "Fashion-MNIST not found (looked in "
        + ", ".join(str(f) for f in folders)
        + "); install it with `apt-get install dataset-fashion-mnist`, pass --set data_dir=DIR "
        "holding train-images-idx3-ubyte(.gz) and the other IDX files, or --set download=true."
    )


# --- CIFAR-10 / CIFAR-100 -------------------------------------------------------------------


def _load_cifar(config: TrainConfig, num_classes: int):
    from torchvision.datasets import CIFAR10, CIFAR100

    kind = CIFAR10 if num_classes == 10 else CIFAR100
    root = Path(config.data_dir).expanduser() if config.data_dir else DEFAULT_DATA_ROOT
    try:
        train = kind(str(root), train=True, download=config.download)
        test = kind(str(root), train=False, download=config.download)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        raise TrainerError(
            f"CIFAR-{num_classes} not found in {root}; put torchvision's extracted "
            f"'{kind.base_folder}' folder there (or --set data_dir=DIR), or --set download=true "
            "where there is internet."
        ) from None
    except Exception as error:
        raise TrainerError(
            f"could not download CIFAR-{num_classes} into {root} ({error}); download "
            f"{kind.url} where there is internet and extract it under --set data_dir=DIR."
        ) from None

    def to_tensors(ds):
        images = torch.from_numpy(np.asarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return images, torch.as_tensor(ds.targets, dtype=torch.int64)

    return (*to_tensors(train), *to_tensors(test), tuple(train.classes))


# --- synthetic ------------------------------------------------------------------------------


def _load_synthetic(config: TrainConfig):
    """A learnable data set for tests: each class is a fixed random pattern plus noise.

    Generated deterministically from a constant seed (not `seed`), so every trial of a search
    sees the same data, like a real data set.
    """
    gen = torch.Generator().manual_seed(1234)
    k, c, s = config.synthetic_classes, config.synthetic_channels, config.synthetic_image_size
    prototypes = (torch.rand(k, c, s, s, generator=gen) > 0.5).float()  # high-contrast patterns

    # Groups come from their own generator, so data sets without groups stay unchanged.
    group_gen = torch.Generator().manual_seed(4321)

    def make(n: int):
        labels = torch.randint(0, k, (n,), generator=gen)
        noise = torch.randn(n, c, s, s, generator=gen) * 0.35
        groups = None
        if config.synthetic_groups:
            groups = torch.randint(0, config.synthetic_groups, (n,), generator=group_gen)
            noise = noise * (1.0 + 0.75 * groups.float()).view(n, 1, 1, 1)
        images = (prototypes[labels] + noise).clamp(0, 1).mul(255).round().to(torch.uint8)
        return images, labels, groups

    train_x, train_y, train_g = make(config.synthetic_examples)
    test_x, test_y, test_g = make(max(config.synthetic_examples // 4, k))
    class_names = tuple(f"class_{i}" for i in range(k))
    if not config.synthetic_groups:
        return train_x, train_y, test_x, test_y, class_names
    group_names = tuple(f"group_{g}" for g in range(config.synthetic_groups))
    return train_x, train_y, test_x, test_y, class_names, (train_g, test_g, group_names)
