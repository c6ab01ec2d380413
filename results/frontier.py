"""Pareto frontiers of accuracy versus ε: small pure functions (see STYLE.md §9)."""

from __future__ import annotations

import math

import pandas as pd


def pareto_front(
    trials: pd.DataFrame, *, epsilon: str = "epsilon", accuracy: str = "val_accuracy"
) -> pd.DataFrame:
    """The trials no other trial beats on both lower ε and higher accuracy.

    Trials without a finite ε or accuracy (failed, non-private) never enter the frontier.
    Ties: of trials with equal ε and equal accuracy, the first (by index) is kept.
    Returned sorted by ε.
    """
    usable = trials[trials[epsilon].map(_finite) & trials[accuracy].map(_finite)].sort_values(
        [epsilon, accuracy], ascending=[True, False], kind="stable"
    )
    keep, best = [], -math.inf
    for index, row in usable.iterrows():
        if row[accuracy] > best:
            keep.append(index)
            best = row[accuracy]
    return usable.loc[keep]


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
