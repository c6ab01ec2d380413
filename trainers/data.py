"""Data sets as in-memory uint8 tensors, split into train / validation / test.

Images stay uint8 (N, C, H, W) until a batch reaches the device: 60k Fashion-MNIST images are
47 MB, and converting per batch costs nothing next to DP-SGD's per-example gradients.
"""

from __future__ import annotations

import gzip
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
    """Per-channel mean of the training images in [0, 1] (for normalisation)."""
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

    @property
    def multilabel(self) -> bool:
        return self.train.tensors[1].ndim == 2


def load_splits(config: TrainConfig) -> Splits:
    """Load `config.dataset` and split off the validation set (seeded by `split_seed`)."""
    loaders = {
        "fashion_mnist": _load_fashion_mnist,
        "cifar10": lambda c: _load_cifar(c, 10),
        "cifar100": lambda c: _load_cifar(c, 100),
        "chexpert": load_chexpert,
        "synthetic": _load_synthetic,
    }
    loaded = loaders[config.dataset](config)
    train_x, train_y, test_x, test_y, class_names = loaded[:5]
    # Loaders of data sets with a group attribute add (train groups, test groups, names).
    train_g, test_g, group_names = loaded[5] if len(loaded) > 5 else (None, None, ())

    n_total = len(train_x)
    if config.validation_size >= n_total:
        raise TrainerError(
            f"validation_size={config.validation_size} leaves no training data "
            f"({config.dataset} has {n_total} training examples); lower it."
        )
    order = torch.randperm(n_total, generator=torch.Generator().manual_seed(config.split_seed))
    n_val = config.validation_size
    val_idx, train_idx = order[:n_val], order[n_val:]
    if config.max_train_examples is not None:
        train_idx = train_idx[: config.max_train_examples]

    train_images = train_x[train_idx]
    pixels = train_images.float().div_(255).transpose(0, 1).reshape(train_images.shape[1], -1)
    return Splits(
        train=TensorDataset(train_images, train_y[train_idx]),
        validation=TensorDataset(train_x[val_idx], train_y[val_idx]) if n_val else None,
        test=TensorDataset(test_x, test_y),
        num_classes=len(class_names),
        channels=train_x.shape[1],
        image_size=train_x.shape[2],
        mean=tuple(pixels.mean(dim=1).tolist()),
        std=tuple(pixels.std(dim=1).clamp_min(1e-3).tolist()),
        class_names=tuple(class_names),
        group_names=tuple(group_names),
        validation_groups=train_g[val_idx] if train_g is not None and n_val else None,
        test_groups=test_g,
    )


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

    n_train = config.synthetic_examples + config.validation_size
    train_x, train_y, train_g = make(n_train)
    test_x, test_y, test_g = make(max(config.synthetic_examples // 4, k))
    class_names = tuple(f"class_{i}" for i in range(k))
    if not config.synthetic_groups:
        return train_x, train_y, test_x, test_y, class_names
    group_names = tuple(f"group_{g}" for g in range(config.synthetic_groups))
    return train_x, train_y, test_x, test_y, class_names, (train_g, test_g, group_names)
