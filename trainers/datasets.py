"""The registry of data sets: each one is a loader registered here with what the rest of the
trainer needs to know about it (`register_dataset`). Adding a data set means adding one loader
to this module: config validation, `load_splits` and smoke runs read the registry.

A loader takes the trial's `TrainConfig` and returns a `Loaded` (or the tuple form below): the
private pool, from which `trainers.data.load_splits` draws training and validation records by
a keyed hash of each record, and the public test split. Images are uint8 (N, C, H, W); labels
are int64 class indices (N,), or for a multi-label data set a float 0/1 matrix (N, L), one
column per finding (`is_multilabel`). Format readers too large for this module live in their
own (`trainers/chexpert.py`).
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import torch

from trainers.chexpert import load_chexpert, write_synthetic_chexpert
from trainers.config import TrainConfig, TrainerError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's package `dataset-fashion-mnist` puts the IDX files."""
DEFAULT_DATA_ROOT = Path(
    os.environ.get("DP_TUNE_DATA", Path.home() / ".cache" / "dp-tune" / "data")
)
"""Default root for torchvision-format data sets (and their downloads)."""


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


def is_multilabel(labels: torch.Tensor) -> bool:
    """Whether `labels` (a split's or a batch's) are multi-label: a (N, L) 0/1 matrix, one
    column per finding, rather than (N,) class indices. The one test of the label layout."""
    return labels.ndim == 2


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A registered data set. (Not a `torch.utils.data.Dataset`: it loads those.)"""

    name: str
    """Registry key: `TrainConfig.dataset`."""
    load: Callable[[TrainConfig], Any]
    """config → `Loaded`, or (train images, train labels, test images, test labels, class
    names[, (train groups, test groups, group names)[, record ids]])."""
    description: str
    """One line: what it is and where it is read from."""
    num_classes: int | None = None
    """Classes (or findings); None: the config decides (the synthetic data set)."""
    channels: int | None = None
    """Image channels; None: the config decides."""
    image_size: int | None = None
    """Native height and width; None: the config decides, or the loader resizes."""
    multilabel: bool = False
    """Labels are a 0/1 matrix (validation reports per-finding AUC), not class indices."""
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """Published per-channel (mean, std) in [0, 1] (the constants of torchvision's and De et
    al.'s code), or None: 0.5 / 0.5. Never a statistic of the images a trial loads
    (docs/privacy.md)."""
    write_smoke_data: Callable[[Path], Path] | None = None
    """Data sets read from a local directory: writes a tiny one in the same format into the
    given folder and returns the `data_dir` to use (smoke runs read files as real runs do).
    None: a smoke run uses synthetic data of the same shape instead (single-label, so a
    multi-label data set needs a writer)."""

    def __post_init__(self) -> None:
        if not self.name.isidentifier():
            raise TrainerError(f"data set name {self.name!r} must be a Python identifier")
        if "\n" in self.description or not self.description.strip():
            raise TrainerError(f"data set {self.name!r} needs a one-line description")
        if self.multilabel and self.write_smoke_data is None:
            raise TrainerError(
                f"multi-label data set {self.name!r} needs write_smoke_data: smoke runs of "
                "other data sets use single-label synthetic data."
            )

    def read(self, config: TrainConfig) -> Loaded:
        """The loader's output as a `Loaded`, checked against this registration."""
        loaded = _as_loaded(self.load(config))
        found = {
            "num_classes": len(loaded.class_names),
            "channels": loaded.train_images.shape[1],
            "multilabel": is_multilabel(loaded.train_labels),
        }
        declared = {"num_classes": self.num_classes, "channels": self.channels,
                    "multilabel": self.multilabel}  # fmt: skip
        wrong = [f"{k}={v} (registered: {declared[k]})" for k, v in found.items()
                 if declared[k] is not None and declared[k] != v]  # fmt: skip
        if wrong:
            raise TrainerError(
                f"the loader of data set {self.name!r} returned {', '.join(wrong)}; fix its "
                "loader or its register_dataset call in trainers/datasets.py."
            )
        return loaded


def _as_loaded(loaded: Any) -> Loaded:
    if isinstance(loaded, Loaded):
        return loaded
    train_x, train_y, test_x, test_y, class_names = loaded[:5]
    # Loaders of data sets with a group attribute add (train groups, test groups, names) and
    # may add stable record ids.
    train_g, test_g, group_names = loaded[5] if len(loaded) > 5 else (None, None, ())
    ids = loaded[6] if len(loaded) > 6 else None
    return Loaded(train_x, train_y, test_x, test_y, tuple(class_names), train_g, test_g,
                  tuple(group_names), ids)  # fmt: skip


_REGISTRY: dict[str, DatasetSpec] = {}

DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(_REGISTRY)
"""Every registered data set by name, in registration order (a read-only live view)."""


def register_dataset(name: str, **spec: Any) -> Callable[[Callable], Callable]:
    """Decorator: register the decorated loader as data set `name`; `spec` holds the other
    `DatasetSpec` fields (description, num_classes, …). Returns the loader unchanged."""

    def register(load: Callable[[TrainConfig], Any]) -> Callable[[TrainConfig], Any]:
        dataset = DatasetSpec(name=name, load=load, **spec)
        if name in _REGISTRY and _REGISTRY[name] != dataset:
            raise TrainerError(f"two data sets are named {name!r}; rename one of them")
        _REGISTRY[name] = dataset
        return load

    return register


def unregister_dataset(name: str) -> DatasetSpec:
    """Remove data set `name` from the registry (tests) and return its spec."""
    return _REGISTRY.pop(name)


def get_dataset(name: str) -> DatasetSpec:
    """The registered data set `name`, or a TrainerError listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TrainerError(
            f"unknown dataset {name!r}; choose one of: {', '.join(_REGISTRY)}."
        ) from None


class _PublishedNormalization(Mapping):
    """Name → (mean, std) of the registered data sets that publish constants (a live view)."""

    def __getitem__(self, name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        spec = _REGISTRY.get(name)
        if spec is None or spec.normalization is None:
            raise KeyError(name)
        return spec.normalization

    def __iter__(self) -> Iterator[str]:
        return (name for name, spec in _REGISTRY.items() if spec.normalization is not None)

    def __len__(self) -> int:
        return sum(1 for _ in self)


PUBLIC_NORMALIZATION: Mapping[str, tuple[tuple[float, ...], tuple[float, ...]]] = (
    _PublishedNormalization()
)
"""Per-channel mean and std in [0, 1] published for each benchmark data set (each one's
`normalization`). Data sets not listed (a user's private set, CheXpert, synthetic) use 0.5 / 0.5
unless the space sets `input_mean` and `input_std`; pretrained models use their weights' own
constants (trainers/inputs.py)."""


# --- Fashion-MNIST --------------------------------------------------------------------------

_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

_FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


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


@register_dataset(
    "fashion_mnist",
    description="Fashion-MNIST: 28×28 greyscale clothing, 10 classes (IDX files).",
    num_classes=10, channels=1, image_size=28,
    normalization=((0.2860,), (0.3530,)),
)  # fmt: skip
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


@register_dataset(
    "cifar10",
    description="CIFAR-10: 32×32 colour images, 10 classes (torchvision's folder).",
    num_classes=10, channels=3, image_size=32,
    normalization=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
)  # fmt: skip
def _load_cifar10(config: TrainConfig):
    return _load_cifar(config, 10)


@register_dataset(
    "cifar100",
    description="CIFAR-100: 32×32 colour images, 100 classes (torchvision's folder).",
    num_classes=100, channels=3, image_size=32,
    normalization=((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
)  # fmt: skip
def _load_cifar100(config: TrainConfig):
    return _load_cifar(config, 100)


# --- CheXpert (its reader: trainers/chexpert.py) --------------------------------------------

register_dataset(
    "chexpert",
    description="CheXpert: frontal chest X-rays, 5 findings (multi-label), local directory.",
    num_classes=5, channels=1, multilabel=True,
    write_smoke_data=write_synthetic_chexpert,
)(load_chexpert)  # fmt: skip


# --- synthetic ------------------------------------------------------------------------------


@register_dataset(
    "synthetic",
    description="Synthetic: a fixed random pattern per class plus noise (tests, smoke runs).",
)
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
