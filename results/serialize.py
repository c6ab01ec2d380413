"""A report serialised for tools: CSV and JSON, every row carrying its `table` and its
`standing` (DP release or analyst-only, see `results.report.STANDING`), so that a file that
travels alone still says what it is.

Numbers are for machines: every ε is the exact float computed (never rounded; `budget` is as
declared, `reported_epsilon` the trial's ε rounded UP — see NUMBERS), and accuracies, AUCs,
losses and gaps keep 12 significant digits, which drops the binary noise of arithmetic
(0.8190000000000001 → 0.819) and nothing else: a fraction of up to 10⁶ examples survives.
"""

from __future__ import annotations

import io
import json
import math
import re

import pandas as pd

from results.report import RESEARCH, STANDING, Report

NUMBERS = (
    "Every ε here is the exact float computed, never rounded: search_epsilon, trial_epsilon, "
    "search_epsilon_to_release, spent_epsilon, largest_trial_epsilon, all_experiments.epsilon. "
    "Exceptions, both rounded UP, never down: reported_epsilon is trial_epsilon rounded up to "
    "3 decimals (the per-trial frontier's ties), and the plan's own ε enters `budget` rounded "
    "up to 3 decimals, as search/run.py prints it (other budgets are as declared). "
    "Accuracies, AUCs, losses and gaps keep 12 significant digits (binary noise dropped). "
    "pareto.md and pareto.tex show ε rounded up to 3 decimals, once."
)
"""What the numbers of CSV and JSON exports are (JSON says it in `numbers`; docs/results.md)."""
_METRIC = re.compile(r"accuracy|score|auc|gap|loss")
METRIC_DIGITS = 12


def to_csv(report: Report, table: str | None = None) -> str:
    """One table as CSV, or (None) the two frontiers stacked with a `table` column."""
    if table is not None:
        frame = _standing(_for_export(_full(report, table)), table, report)
    else:
        frame = pd.concat(
            [
                _standing(_for_export(report.adjusted), "search-adjusted", report),
                _standing(_for_export(report.frontier), "frontier", report),
            ],
            ignore_index=True,
        )
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def to_json(report: Report, table: str | None = None) -> str:
    """Everything (or one table) as JSON; non-finite numbers: ∞ → "inf", NaN → null."""
    if table is not None:
        frame = _standing(_full(report, table), table, report)
        return json.dumps(_records(frame), indent=2) + "\n"
    payload = {
        "experiments": [
            {
                "name": e.name,
                "path": str(e.path),
                "plan": e.privacy.public_dict(),
                "release": _clean(release),
                "warnings": e.warnings,
            }
            for e, release in zip(report.experiments, report.releases, strict=True)
        ],
        "dp_releases": "experiments[].release and the search_adjusted rows whose standing "
        "says DP release: the selected model, its noisy validation score, its test metrics "
        "and its search ε",
        "analyst_only": "per_trial_frontier, trials and post-hoc search_adjusted rows: exact "
        "figures and trial ε (not for publication)",
        "numbers": NUMBERS,
        "research_run": report.research,
        "captions": report.captions,
        "search_adjusted": _records(_standing(report.adjusted, "search-adjusted", report)),
        "per_trial_frontier": _records(report.frontier),
        "trials": _records(report.trials),
    }
    if report.all_experiments is not None:
        payload["all_experiments"] = {
            "epsilon": _clean(report.all_experiments[0]),
            "delta": report.all_experiments[1],
        }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def _full(report: Report, table: str) -> pd.DataFrame:
    """A table with every row (the search-adjusted one with its post-hoc rows too)."""
    return report.adjusted if table == "search-adjusted" else report.table(table)


def _standing(frame: pd.DataFrame, table: str, report: Report) -> pd.DataFrame:
    """`frame` with leading `table` and `standing` columns (see STANDING); a search-adjusted
    row is a DP release only at a declared budget, and never in a research run."""
    rest = [c for c in frame.columns if c not in ("table", "standing")]
    if table == "search-adjusted" and "declared" in frame:
        release = RESEARCH if report.research else STANDING["search-adjusted"]
        standing = [release if d else STANDING["post-hoc"] for d in frame["declared"]]
    else:
        standing = STANDING[table]
    return frame.assign(table=table, standing=standing)[["table", "standing", *rest]]


def _for_export(frame: pd.DataFrame) -> pd.DataFrame:
    """For CSV: lists and dicts as JSON strings (one cell each), metrics without binary noise
    (`_tidy`); ε and everything else exact."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(
                lambda v, c=column: json.dumps(_clean(v, c)) if isinstance(v, (list, dict)) else v
            )
        elif _is_metric(column):
            frame[column] = frame[column].map(lambda v: _tidy(v) if isinstance(v, float) else v)
    return frame


def _is_metric(name) -> bool:
    """An accuracy, AUC, loss or gap (never an ε): what `_tidy` may touch."""
    return "epsilon" not in str(name) and bool(_METRIC.search(str(name)))


def _tidy(value: float) -> float:
    """`METRIC_DIGITS` significant digits: 0.8190000000000001 → 0.819."""
    return float(f"{value:.{METRIC_DIGITS}g}") if math.isfinite(value) else value


def _records(frame: pd.DataFrame) -> list[dict]:
    return [_clean(row) for row in frame.to_dict(orient="records")]


def _clean(value, key=None):
    """JSON-ready: NumPy scalars as Python's, NaN → None, ±∞ → "inf"; a metric (by its key or
    its container's) `_tidy`."""
    if isinstance(value, dict):
        return {str(k): _clean(v, k) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v, key) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            pass
    if value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        if key is not None and _is_metric(key):
            return _tidy(value)
    return value
