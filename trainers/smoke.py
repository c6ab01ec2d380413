"""Smoke runs: any space's trial, shrunk to seconds on a CPU, through the same code path.

Tiny synthetic data shaped like the space's data set (channels, classes), its native small
resolution, random weights, one short epoch — plus what the space itself says (`smoke`: e.g.
a small model of the same family). The space contract tests run every space this way, and
`python -m trainers --space NAME --smoke --out DIR` does it from the command line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import spaces
from trainers.chexpert import write_synthetic_chexpert

DIRECTORY_DATASETS = {"chexpert": write_synthetic_chexpert}
"""Data sets read from a local directory → a writer of a tiny synthetic one."""

_CLASSES = {"fashion_mnist": 10, "cifar10": 10, "cifar100": 100, "synthetic": 10}

SMOKE = {
    "synthetic_examples": 48,
    "validation_fraction": 0.2,
    "batch_size": 16,
    "max_physical_batch_size": 8,
    "epochs": 1,
    "pretrained": False,
    "pretrained_file": None,
    "image_size": None,
    "target_epsilon": 8.0,
    "noise_multiplier": None,
    "eval_batch_size": 64,
}
"""What every smoke run changes (40 examples, about 32 of them training: δ must stay below 1/n)."""


def smoke_config(space_name: str, workdir: str | Path | None = None) -> dict[str, Any]:
    """The trainer settings of a smoke run of `space_name` (its defaults, shrunk).

    `workdir`: where a smoke run may write what it needs (a tiny data directory, cached
    features); a temporary folder when None.
    """
    space = spaces.get_space(space_name)
    values = space.default_config()
    dataset = values.get("dataset", "synthetic")
    grey = dataset == "fashion_mnist" or (
        dataset == "synthetic" and values.get("synthetic_channels", 1) == 1
    )
    values.update(SMOKE)
    values["delta"] = min(float(values.get("delta", 1e-5)), 1e-5)
    if dataset in DIRECTORY_DATASETS:
        # Data sets read from a local directory: a tiny one in the same format, so the smoke
        # run reads files, parses CSVs and computes AUCs as a real run does.
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp())
        values["data_dir"] = str(DIRECTORY_DATASETS[dataset](workdir / f"smoke_{dataset}"))
    else:
        values.update(
            dataset="synthetic",
            synthetic_channels=1 if grey else 3,
            synthetic_image_size=28 if grey else 32,
            synthetic_classes=_CLASSES.get(dataset, 10),
        )
    if values.get("tan_reference_batch"):
        values["tan_reference_batch"] = 32
    if workdir is not None:
        values["feature_cache_dir"] = str(Path(workdir) / "feature_cache")
    values.update(space.smoke)
    return values
