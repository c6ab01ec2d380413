"""The registry of search spaces: each space is one module in this package that registers itself.

A space holds the fixed settings of its trials (data set, model, δ, …: keys of the trainer's
`TrainConfig`) and the distributions of the searched hyperparameters. It knows nothing of Ray,
Optuna or the trainer: those layers read it.
"""

from __future__ import annotations

import difflib
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from spaces.distributions import Distribution

CANONICAL_HYPERPARAMETERS = (
    "learning_rate",
    "batch_size",
    "max_grad_norm",
    "noise_multiplier",
    "epochs",
    "momentum",
    "optimizer",
    "target_epsilon",
    "delta",
)
"""The names every space uses for the hyperparameters DP-SGD searches have in common."""


METRICS = ("val_accuracy", "val_auc")
"""Validation metrics a space may optimise (what the trainer reports)."""


class SpaceError(ValueError):
    """An unknown space or an ill-formed one; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class SearchSpace:
    """A named search space."""

    name: str
    """Registry key, used on the command line (`--space NAME`)."""
    description: str
    """One line shown by `--list-spaces`."""
    fixed: Mapping[str, Any] = field(default_factory=dict)
    """Settings every trial of the space shares (trainer config keys → values)."""
    searched: Mapping[str, Distribution] = field(default_factory=dict)
    """Searched hyperparameters (trainer config keys → distributions)."""
    metric: str = "val_accuracy"
    """What the search maximises and the frontiers plot: val_accuracy, or val_auc (mean
    ROC-AUC over findings) for multi-label data sets."""
    smoke: Mapping[str, Any] = field(default_factory=dict)
    """What a smoke run (`python -m trainers --space NAME --smoke`) changes beyond the generic
    shrinking (tiny synthetic data, random weights, one short epoch): e.g. a small model of the
    same family where the real one takes minutes per step on a CPU. Same code path."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))
        object.__setattr__(self, "searched", MappingProxyType(dict(self.searched)))
        object.__setattr__(self, "smoke", MappingProxyType(dict(self.smoke)))
        both = set(self.fixed) & set(self.searched)
        if both:
            raise SpaceError(f"space {self.name!r} both fixes and searches {sorted(both)}")
        if not self.name.isidentifier():
            raise SpaceError(f"space name {self.name!r} must be a Python identifier")
        if self.metric not in METRICS:
            raise SpaceError(f"space {self.name!r}: metric must be one of {', '.join(METRICS)}")
        if "\n" in self.description or not self.description.strip():
            raise SpaceError(f"space {self.name!r} needs a one-line description")

    def default_config(self) -> dict[str, Any]:
        """The single-trial configuration: fixed settings plus each distribution's default."""
        config = dict(self.fixed)
        config.update({key: dist.default for key, dist in self.searched.items()})
        return config

    def sample_config(self, rng: random.Random) -> dict[str, Any]:
        """One random-search draw: fixed settings plus one sample of each distribution."""
        config = dict(self.fixed)
        config.update({key: dist.sample(rng) for key, dist in sorted(self.searched.items())})
        return config


_REGISTRY: dict[str, SearchSpace] = {}


def register_space(space: SearchSpace) -> SearchSpace:
    """Add `space` to the registry (one call at the bottom of each space module)."""
    if space.name in _REGISTRY and _REGISTRY[space.name] != space:
        raise SpaceError(f"two search spaces are named {space.name!r}; rename one of them")
    _REGISTRY[space.name] = space
    return space


def get_space(name: str) -> SearchSpace:
    """The registered space called `name`, or a `SpaceError` listing the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise SpaceError(
            f"unknown search space {name!r}; {hint}choose one of: "
            f"{', '.join(sorted(_REGISTRY))} (see --list-spaces)."
        ) from None


def list_spaces() -> list[SearchSpace]:
    """Every registered space, sorted by name."""
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]
