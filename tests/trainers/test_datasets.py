"""The data set and model registries: one registration makes a data set usable by config
validation, `load_splits` and smoke runs; one decorator makes a model buildable (issue 14)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import spaces
from spaces.registry import _REGISTRY as SPACES
from trainers import TrainerError, make_config
from trainers.data import PUBLIC_NORMALIZATION, load_splits
from trainers.datasets import DATASETS, Loaded, get_dataset, register_dataset, unregister_dataset
from trainers.models import _MODELS, BUILTIN_MODELS, build_model, register_model
from trainers.smoke import smoke_config

FINDINGS = ("spot", "stripe", "ring")


def _write_toy(directory: Path) -> Path:
    """A tiny directory data set: greyscale 12×12 images, three findings per image."""
    rng = np.random.default_rng(0)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", 40), ("test", 12)):
        labels = (rng.random((n, len(FINDINGS))) < 0.4).astype(np.float32)
        images = rng.integers(0, 256, (n, 1, 12, 12), dtype=np.uint8)
        np.savez(directory / f"{split}.npz", images=images, labels=labels)
    return directory


def _load_toy(config) -> Loaded:
    if not config.data_dir:
        raise TrainerError("toy_findings needs --set data_dir=DIR.")
    train = np.load(Path(config.data_dir) / "train.npz")
    test = np.load(Path(config.data_dir) / "test.npz")
    return Loaded(
        train_images=torch.from_numpy(train["images"]),
        train_labels=torch.from_numpy(train["labels"]),
        test_images=torch.from_numpy(test["images"]),
        test_labels=torch.from_numpy(test["labels"]),
        class_names=FINDINGS,
    )


def _load_toy_colour(config):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 3, 16, 16), generator=gen, dtype=torch.uint8)
    labels = torch.arange(30) % 4
    return images[:24], labels[:24], images[24:], labels[24:], ("a", "b", "c", "d")


@pytest.fixture
def toy_datasets():
    """Two data sets registered the one way a new one is (and removed afterwards)."""
    register_dataset(
        "toy_findings",
        description="A toy multi-label directory data set (tests).",
        num_classes=3, channels=1, image_size=12, multilabel=True,
        write_smoke_data=_write_toy,
    )(_load_toy)  # fmt: skip
    register_dataset(
        "toy_colour",
        description="A toy in-memory colour data set (tests).",
        num_classes=4, channels=3, image_size=16,
        normalization=((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)),
    )(_load_toy_colour)  # fmt: skip
    try:
        yield
    finally:
        unregister_dataset("toy_findings")
        unregister_dataset("toy_colour")


def _space(monkeypatch, dataset: str) -> spaces.SearchSpace:
    name = f"toy_space_{dataset}"
    space = spaces.SearchSpace(
        name=name, description="A toy space (tests).",
        fixed={"dataset": dataset, "model": "tramer_boneh_cnn", "delta": 1e-5},
    )  # fmt: skip
    monkeypatch.setitem(SPACES, name, space)
    return space


def test_a_data_set_is_unknown_until_registered():
    assert "toy_findings" not in DATASETS
    with pytest.raises(TrainerError, match="unknown dataset 'toy_findings'"):
        make_config({"dataset": "toy_findings"})
    with pytest.raises(TrainerError, match="unknown dataset"):
        get_dataset("toy_findings")


def test_one_registration_serves_config_load_splits_and_smoke(toy_datasets, tmp_path, monkeypatch):
    # Config validation and load_splits.
    data_dir = _write_toy(tmp_path / "toy")
    splits = load_splits(make_config({"dataset": "toy_findings", "data_dir": str(data_dir)}))
    assert splits.multilabel and splits.class_names == FINDINGS and splits.num_classes == 3
    assert splits.channels == 1 and splits.image_size == 12
    assert len(splits.train) + len(splits.validation) == 40 and len(splits.test) == 12
    assert splits.mean == (0.5,) and splits.std == (0.5,)  # no published constants
    # Smoke: a directory data set is written in its own format and read as in a real run.
    values = smoke_config(_space(monkeypatch, "toy_findings"), tmp_path)
    assert values["dataset"] == "toy_findings"
    assert Path(values["data_dir"]) == tmp_path / "smoke_toy_findings"
    assert load_splits(make_config(values)).multilabel


def test_an_in_memory_data_set_smokes_on_synthetic_data_of_its_shape(
    toy_datasets, tmp_path, monkeypatch
):
    splits = load_splits(make_config({"dataset": "toy_colour", "validation_fraction": 0.2}))
    assert not splits.multilabel and splits.num_classes == 4 and splits.channels == 3
    assert PUBLIC_NORMALIZATION["toy_colour"] == ((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
    assert splits.mean == (0.4, 0.5, 0.6) and splits.std == (0.2, 0.25, 0.3)
    values = smoke_config(_space(monkeypatch, "toy_colour"), tmp_path)
    assert values["dataset"] == "synthetic"
    assert (values["synthetic_channels"], values["synthetic_image_size"]) == (3, 16)
    assert values["synthetic_classes"] == 4
    make_config(values)


def test_unregistering_removes_the_data_set_everywhere(toy_datasets):
    unregister_dataset("toy_colour")
    try:
        assert "toy_colour" not in DATASETS and "toy_colour" not in PUBLIC_NORMALIZATION
        with pytest.raises(TrainerError, match="unknown dataset"):
            make_config({"dataset": "toy_colour"})
    finally:  # the fixture removes it again
        register_dataset(
            "toy_colour", description="A toy in-memory colour data set (tests).",
            num_classes=4, channels=3, image_size=16,
            normalization=((0.4, 0.5, 0.6), (0.2, 0.25, 0.3)),
        )(_load_toy_colour)  # fmt: skip


def test_a_loader_that_contradicts_its_registration_is_refused():
    register_dataset("toy_wrong", description="Claims 7 classes, loads 4.", num_classes=7)(
        _load_toy_colour
    )
    try:
        with pytest.raises(TrainerError, match="num_classes=4 \\(registered: 7\\)"):
            load_splits(make_config({"dataset": "toy_wrong"}))
    finally:
        unregister_dataset("toy_wrong")


def test_registrations_are_checked():
    with pytest.raises(TrainerError, match="needs write_smoke_data"):
        register_dataset("toy_bad", description="Multi-label.", multilabel=True)(_load_toy)
    with pytest.raises(TrainerError, match="two data sets are named 'synthetic'"):
        register_dataset("synthetic", description="Another.")(_load_toy)
    assert "toy_bad" not in DATASETS and get_dataset("synthetic").load is not _load_toy


def test_every_built_in_data_set_is_registered_once():
    assert list(DATASETS) == ["fashion_mnist", "cifar10", "cifar100", "chexpert", "synthetic"]
    assert [name for name, spec in DATASETS.items() if spec.multilabel] == ["chexpert"]
    assert set(PUBLIC_NORMALIZATION) == {"fashion_mnist", "cifar10", "cifar100"}


def test_a_registered_model_is_built_by_name():
    def toy_net(in_channels: int, num_classes: int, image_size: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(in_channels * image_size**2, num_classes)
        )

    register_model(toy_net)
    try:
        assert "toy_net" in BUILTIN_MODELS
        model = build_model(
            make_config({"dataset": "synthetic", "model": "toy_net"}),
            in_channels=1, num_classes=3, image_size=8,
        )  # fmt: skip
        assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
        impostor = lambda c, k, s: toy_net(c, k, s)  # noqa: E731
        impostor.__name__ = "toy_net"
        with pytest.raises(TrainerError, match="two models are named 'toy_net'"):
            register_model(impostor)
    finally:
        _MODELS.pop("toy_net")
    assert set(BUILTIN_MODELS) >= {"tramer_boneh_cnn", "tramer_boneh_cifar_cnn", "wrn_16_4"}
