"""Distributions of searched hyperparameters: small frozen values, no Ray or Optuna inside.

The search layer converts them to Ray Tune / Optuna objects at the edge; a single trial uses
each distribution's `default`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Uniform:
    """A real number drawn uniformly from [low, high]."""

    low: float
    high: float
    default: float
    """The value a single trial uses when nothing is searched."""

    def __post_init__(self) -> None:
        _check_range(self, self.low, self.high)

    def sample(self, rng: random.Random) -> float:
        return rng.uniform(self.low, self.high)

    def contains(self, value: Any) -> bool:
        return _is_number(value) and self.low <= value <= self.high


@dataclass(frozen=True, kw_only=True)
class LogUniform:
    """A positive real number whose logarithm is uniform on [log low, log high]."""

    low: float
    high: float
    default: float
    """The value a single trial uses when nothing is searched."""

    def __post_init__(self) -> None:
        if not self.low > 0:
            raise ValueError(f"LogUniform needs low > 0, got {self.low}")
        _check_range(self, self.low, self.high)

    def sample(self, rng: random.Random) -> float:
        value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        return min(max(value, self.low), self.high)  # exp(log(x)) may miss x by an ulp

    def contains(self, value: Any) -> bool:
        return _is_number(value) and self.low <= value <= self.high


@dataclass(frozen=True, kw_only=True)
class IntUniform:
    """An integer drawn uniformly from {low, …, high} (both ends included)."""

    low: int
    high: int
    default: int
    """The value a single trial uses when nothing is searched."""
    log: bool = False
    """Sample uniformly in log space (e.g. batch sizes)."""

    def __post_init__(self) -> None:
        _check_range(self, self.low, self.high)
        if self.log and self.low < 1:
            raise ValueError(f"IntUniform(log=True) needs low ≥ 1, got {self.low}")

    def sample(self, rng: random.Random) -> int:
        if self.log:
            # floor of a log-uniform real on [low, high + 1): every integer stays reachable.
            value = int(math.exp(rng.uniform(math.log(self.low), math.log(self.high + 1))))
            return min(max(value, self.low), self.high)
        return rng.randint(self.low, self.high)

    def contains(self, value: Any) -> bool:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        return is_int and self.low <= value <= self.high


@dataclass(frozen=True, kw_only=True)
class Choice:
    """One of a fixed list of values (numbers or strings), each equally likely."""

    values: Sequence[Any]
    default: Any
    """The value a single trial uses when nothing is searched."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise ValueError("Choice needs at least one value")
        if self.default not in self.values:
            raise ValueError(f"Choice default {self.default!r} is not one of {self.values}")

    def sample(self, rng: random.Random) -> Any:
        return rng.choice(self.values)

    def contains(self, value: Any) -> bool:
        return value in self.values


Distribution = Uniform | LogUniform | IntUniform | Choice


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_range(dist: Any, low: float, high: float) -> None:
    if not low <= high:
        raise ValueError(f"{type(dist).__name__} needs low ≤ high, got [{low}, {high}]")
    if not dist.contains(dist.default):
        name = type(dist).__name__
        raise ValueError(f"{name} default {dist.default!r} is outside [{low}, {high}]")
