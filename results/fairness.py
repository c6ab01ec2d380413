"""Per-class and per-group accuracy as columns: the worst one and the largest gap.

DP-SGD's accuracy loss is not spread evenly: under-represented classes and groups lose most
(Bagdasaryan et al. 2019; Berrada et al. 2023 compare the private model's worst-group accuracy
and gap with a non-private baseline's). Each trial reports per-class accuracy always and
per-group accuracy when its data set gives every example a `group`; this module turns them into
`{split}_worst_class_accuracy`, `{split}_class_gap`, `{split}_worst_group`,
`{split}_worst_group_accuracy` and `{split}_group_gap`, and puts the non-private baseline's
figures beside the private ones (`baseline_*`).
"""

from __future__ import annotations

import math

import pandas as pd

SPLITS = ("val", "test")
BASELINE_COLUMNS = (
    "test_accuracy",
    "test_worst_class_accuracy",
    "test_class_gap",
    "test_worst_group_accuracy",
    "test_group_gap",
)
"""What the non-private baseline contributes to a table."""


def add_fairness_columns(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy of `trials` with the worst-class/-group accuracy and gap of every split."""
    trials = trials.copy()
    for split in SPLITS:
        classes = f"{split}_class_accuracy"
        if classes in trials:
            summary = trials[classes].map(_worst_and_gap)
            trials[f"{split}_worst_class_accuracy"] = summary.map(lambda s: s[1])
            trials[f"{split}_class_gap"] = summary.map(lambda s: s[2])
        groups = f"{split}_group_accuracy"
        if groups in trials and trials[groups].map(lambda v: isinstance(v, dict)).any():
            summary = trials[groups].map(_worst_and_gap)
            trials[f"{split}_worst_group"] = summary.map(lambda s: s[0])
            trials[f"{split}_worst_group_accuracy"] = summary.map(lambda s: s[1])
            trials[f"{split}_group_gap"] = summary.map(lambda s: s[2])
    return trials


def _worst_and_gap(values) -> tuple[str | None, float, float]:
    """(name of the worst entry, its accuracy, best − worst) over entries with examples."""
    if isinstance(values, dict):
        items = [(str(k), v) for k, v in values.items()]
    elif isinstance(values, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(values)]
    else:
        return None, math.nan, math.nan
    items = [(k, float(v)) for k, v in items if v is not None and math.isfinite(float(v))]
    if not items:
        return None, math.nan, math.nan
    worst = min(items, key=lambda kv: kv[1])
    best = max(v for _, v in items)
    return worst[0], worst[1], best - worst[1]


def non_private_baseline(trials: pd.DataFrame) -> pd.Series | None:
    """The completed non-private trial with the best validation accuracy, if any."""
    if "private" not in trials or "val_accuracy" not in trials:
        return None
    candidates = trials[
        (~trials["private"].astype(bool))
        & (trials["status"] == "completed")
        & trials["val_accuracy"].notna()
    ]
    if candidates.empty:
        return None
    return candidates.loc[candidates["val_accuracy"].idxmax()]


def with_baseline(table: pd.DataFrame, baseline: pd.Series | None) -> pd.DataFrame:
    """`table` with the baseline's figures as `baseline_*` columns (same value on every row)."""
    if baseline is None:
        return table
    table = table.copy()
    for column in BASELINE_COLUMNS:
        if column in baseline.index and pd.notna(baseline[column]):
            table[f"baseline_{column}"] = float(baseline[column])
    return table
