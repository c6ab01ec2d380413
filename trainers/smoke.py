"""Smoke runs: any space's trial, shrunk to seconds on a CPU, through the same code path.

Tiny synthetic data shaped like the space's data set (channels, classes), its native small
resolution, random weights, one short epoch — plus what the space itself says (`smoke`: e.g.
a small model of the same family). The space contract tests run every space this way, and
`python -m trainers --space NAME --smoke --out DIR` does it from the command line.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Protocol

from trainers.datasets import DatasetSpec, get_dataset

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


class Space(Protocol):
    """What a smoke run needs of a search space (`spaces.SearchSpace` has it). The trainer
    takes the space from its caller, so it never depends on the `spaces` package."""

    smoke: dict[str, Any]

    def default_config(self) -> dict[str, Any]: ...


def smoke_config(space: Space, workdir: str | Path | None = None) -> dict[str, Any]:
    """The trainer settings of a smoke run of `space` (its defaults, shrunk).

    `workdir`: where a smoke run may write what it needs (a tiny data directory, cached
    features); a temporary folder when None.
    """
    values = space.default_config()
    dataset = get_dataset(values.get("dataset", "synthetic"))
    values.update(SMOKE)
    values["delta"] = min(float(values.get("delta", 1e-5)), 1e-5)
    if dataset.write_smoke_data is not None:
        # Data sets read from a local directory: a tiny one in the same format, so the smoke
        # run reads files, parses CSVs and computes AUCs as a real run does.
        workdir = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp())
        values["data_dir"] = str(dataset.write_smoke_data(workdir / f"smoke_{dataset.name}"))
    else:
        values.update(_synthetic_stand_in(dataset, values))
    if values.get("tan_reference_batch"):
        values["tan_reference_batch"] = 32
    if workdir is not None:
        values["feature_cache_dir"] = str(Path(workdir) / "feature_cache")
    values.update(space.smoke)
    return values


def _synthetic_stand_in(dataset: DatasetSpec, values: dict[str, Any]) -> dict[str, Any]:
    """Synthetic data shaped like `dataset` (channels, classes) at its native small resolution
    (28 for greyscale, 32 for colour where the data set leaves it to the config)."""
    grey = (dataset.channels or values.get("synthetic_channels", 1)) == 1
    return {
        "dataset": "synthetic",
        "synthetic_channels": 1 if grey else 3,
        "synthetic_image_size": dataset.image_size or (28 if grey else 32),
        "synthetic_classes": dataset.num_classes or 10,
    }
