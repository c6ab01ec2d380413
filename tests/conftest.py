"""Shared fixtures: tiny synthetic configurations that keep the suite fast on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

ROOT = Path(__file__).resolve().parents[1]
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def tiny(**overrides):
    """Keyword arguments of a `TrainConfig` for a seconds-long synthetic trial."""
    values = {
        "dataset": "synthetic",
        "synthetic_examples": 256,
        "synthetic_image_size": 16,
        "validation_size": 64,
        "model": "tramer_boneh_cnn",
        "batch_size": 64,
        "max_physical_batch_size": 32,
        "epochs": 2,
        "learning_rate": 0.5,
        "momentum": 0.9,
        "max_grad_norm": 1.0,
        "target_epsilon": 8.0,
        "delta": 1e-4,
    }
    values.update(overrides)
    return values


needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST IDX files missing: apt-get install -y dataset-fashion-mnist "
    "(.ci/run installs them, so CI never skips this)",
)
