"""Per-class and per-group accuracy as columns: the worst one and the largest gap.

DP-SGD's accuracy loss is not spread evenly: under-represented classes and groups lose most
(Bagdasaryan et al. 2019; Berrada et al. 2023 compare the private model's worst-group accuracy
and gap with a non-private baseline's). Each trial reports per-class accuracy always and
per-group accuracy when its data set gives every example a `group` (multi-label data sets:
ROC-AUC per finding and per group); this module turns them into the worst entry and the largest
gap (`{split}_worst_class_accuracy`, `{split}_class_gap`, `{split}_worst_group`,
`{split}_worst_group_accuracy`, `{split}_group_gap`, and the `_auc` counterparts), and puts
the non-private baseline's figures beside the private ones (`baseline_*`).
"""

from __future__ import annotations

import math

import pandas as pd

SPLITS = ("val", "test")
SUMMARIES = (
    # per-entry column suffix, worst column, gap column, column naming the worst entry
    ("class_accuracy", "worst_class_accuracy", "class_gap", None),
    ("group_accuracy", "worst_group_accuracy", "group_gap", "worst_group"),
    ("label_auc", "worst_label_auc", "label_auc_gap", None),
    ("group_auc", "worst_group_auc", "group_auc_gap", "worst_group_by_auc"),
)
BASELINE_COLUMNS = (
    "test_score",
    "test_worst_class_accuracy",
    "test_class_gap",
    "test_worst_group_accuracy",
    "test_group_gap",
    "test_worst_group_auc",
    "test_group_auc_gap",
)
"""What the non-private baseline contributes to a table."""


def add_fairness_columns(trials: pd.DataFrame) -> pd.DataFrame:
    """A copy of `trials` with the worst entry and the largest gap of every per-class,
    per-group and per-finding metric, for every split."""
    trials = trials.copy()
    for split in SPLITS:
        for source, worst, gap, worst_name in SUMMARIES:
            column = f"{split}_{source}"
            if (
                column not in trials
                or not trials[column].map(lambda v: isinstance(v, (dict, list, tuple))).any()
            ):
                continue
            summary = trials[column].map(_worst_and_gap)
            if worst_name:
                trials[f"{split}_{worst_name}"] = summary.map(lambda s: s[0])
            trials[f"{split}_{worst}"] = summary.map(lambda s: s[1])
            trials[f"{split}_{gap}"] = summary.map(lambda s: s[2])
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
    """The completed non-private trial with the best validation score, if any."""
    if "private" not in trials or "val_score" not in trials:
        return None
    candidates = trials[
        (~trials["private"].astype(bool))
        & (trials["status"] == "completed")
        & trials["val_score"].notna()
    ]
    if candidates.empty:
        return None
    return candidates.loc[candidates["val_score"].idxmax()]


def with_baseline(table: pd.DataFrame, baseline: pd.Series | None) -> pd.DataFrame:
    """`table` with the baseline's figures as `baseline_*` columns (same value on every row)."""
    if baseline is None:
        return table
    table = table.copy()
    for column in BASELINE_COLUMNS:
        if column in baseline.index and pd.notna(baseline[column]):
            table[f"baseline_{column}"] = float(baseline[column])
    return table
