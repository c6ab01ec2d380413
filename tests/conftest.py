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
        "synthetic_examples": 320,
        "synthetic_image_size": 16,
        "validation_fraction": 0.2,
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


def microbatch_gradients(model, images, labels, views: int = 1):
    """The reference for every clipping test: each example's gradient from its own backward
    passes (the mean over its `views` rows i·K … i·K+K−1), flattened over the trainable
    parameters."""
    import torch
    import torch.nn.functional as F

    rows = []
    for i in range(len(labels)):
        grads = []
        for k in range(views):
            model.zero_grad()
            row = i * views + k
            F.cross_entropy(model(images[row : row + 1]), labels[i : i + 1]).backward()
            grads.append(
                torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
            )
        rows.append(torch.stack(grads).mean(0))
    return torch.stack(rows)
