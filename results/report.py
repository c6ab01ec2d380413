"""A report of one or more experiments: releases, both frontiers, captions, and their renderings
as Markdown (terminal, docs), LaTeX (papers), CSV and JSON (tools).

Every rendering says which numbers are DP releases (a search's selected model and its search
ε) and which are analyst-only diagnostics (per-trial validation metrics and trial ε).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

import accounting
from results.fairness import non_private_baseline, with_baseline
from results.frontier import (
    all_experiments_epsilon,
    pareto_front,
    search_adjusted_frontier,
    search_epsilon_to_release,
)
from results.load import EPSILON_DIGITS, Experiment, ExperimentError

TABLES = ("search-adjusted", "frontier", "trials")
STANDING = {
    "search-adjusted": "DP release: its ε covers the whole search",
    "frontier": "analyst-only: its ε covers one trial, not the search",
    "trials": "analyst-only: its ε covers one trial, not the search",
}
"""What each table's rows are, written into every row of the CSV and JSON tables (a file that
travels alone still says it)."""


@dataclass
class Report:
    experiments: list[Experiment]
    trials: pd.DataFrame
    """Every trial of every experiment."""
    frontier: pd.DataFrame
    """Per-trial Pareto front (trial ε ↓, validation accuracy ↑), with the search ε that
    releasing each point costs (`search_epsilon_to_release`)."""
    adjusted: pd.DataFrame
    """Search-adjusted frontier: one row per budget."""
    releases: list[dict]
    """Per experiment: what the search as run releases, and its ε."""
    captions: dict[str, str]
    all_experiments: tuple[float, float] | None = None
    """(ε, δ) of choosing among all experiments (only with several)."""
    metric: str = "val_accuracy"
    """The validation metric every frontier ranks by (`val_score` / `test_score` columns)."""
    warnings: list[str] = field(default_factory=list)

    def table(self, name: str) -> pd.DataFrame:
        return {"search-adjusted": self.adjusted, "frontier": self.frontier, "trials": self.trials}[
            name
        ]


def build_report(
    experiments: Experiment | Sequence[Experiment], budgets: Sequence[float] | None = None
) -> Report:
    """Load → frontier: everything a table or plot needs, for one or several experiments."""
    if isinstance(experiments, Experiment):
        experiments = [experiments]
    experiments = list(experiments)
    metrics = {e.metric for e in experiments}
    if len(metrics) > 1:
        raise ExperimentError(
            f"these experiments optimise different metrics ({', '.join(sorted(metrics))}); "
            "export them separately."
        )
    trials = pd.concat([e.trials for e in experiments], ignore_index=True)
    baseline = non_private_baseline(trials)

    frontier = pareto_front(trials, epsilon="reported_epsilon", accuracy="val_score")
    costs = pd.Series(math.inf, index=frontier.index, dtype=float)
    for experiment in experiments:
        mine = frontier[frontier["experiment"] == experiment.name]
        if len(mine):
            costs.loc[mine.index] = search_epsilon_to_release(experiment, mine)
    frontier = frontier.assign(search_epsilon_to_release=costs).reset_index(drop=True)
    frontier = with_baseline(frontier, baseline)

    adjusted = with_baseline(search_adjusted_frontier(experiments, budgets), baseline)
    combined = all_experiments_epsilon(experiments) if len(experiments) > 1 else None
    releases = [_release(e) for e in experiments]
    return Report(
        experiments=experiments,
        trials=trials,
        frontier=frontier,
        adjusted=adjusted,
        releases=releases,
        captions=_captions(experiments, combined),
        all_experiments=combined,
        warnings=[f"{e.name}: {w}" for e in experiments for w in e.warnings],
        metric=metrics.pop() if metrics else "val_accuracy",
    )


def _release(experiment: Experiment) -> dict:
    trials = experiment.trials
    search = experiment.search()
    done = trials[(trials["status"] == "completed")]
    done = done[done["val_score"].notna()]
    chosen = done.loc[done["val_score"].idxmax()] if len(done) else None
    finite = trials["trial_epsilon"][trials["trial_epsilon"].map(math.isfinite)]
    return {
        "experiment": experiment.name,
        "trial_id": None if chosen is None else chosen["trial_id"],
        "metric": experiment.metric,
        "val_score": None if chosen is None else _number(chosen.get("val_score")),
        "test_score": None if chosen is None else _number(chosen.get("test_score")),
        "search_epsilon": search.epsilon,
        "delta": search.delta,
        "mode": search.mode,
        "covers": search.covers,
        "num_trials": len(trials),
        "largest_trial_epsilon": float(finite.max()) if len(finite) else None,
    }


def _captions(experiments: Sequence[Experiment], combined) -> dict[str, str]:
    metric = _METRIC_NAMES[experiments[0].metric] if experiments else "accuracy"
    rules = []
    for e in experiments:
        delta = f"δ = {e.delta:g}"
        if e.mode == "random-stopping":
            dist = accounting.plan_distribution(e.plan)
            rules.append(
                f"`{e.name}` ran random stopping (Papernot & Steinke 2022, K ~ "
                f"{dist.describe()}): its ε ({delta}) bounds the whole search, so a budget "
                "below it releases nothing from this search."
            )
        elif e.adaptive:
            rules.append(
                f"`{e.name}` is adaptive (searcher {e.plan.get('searcher')}, scheduler "
                f"{e.plan.get('scheduler')}): the search stops at the last moment its ε still "
                f"fits the budget; ε composes (RDP, {delta}) every trial that had reported by "
                "then, with all the steps it ever ran — everything the selection could have "
                "seen — and the release is the best trial completed by then."
            )
        else:
            rules.append(
                f"`{e.name}` is a random search with FIFO scheduling (no trial depends on "
                "another's results): trials in launch order join while the composition (RDP, "
                f"{delta}) still fits the budget, as `--target-epsilon` runs them; the release "
                "is the best of those."
            )
        if e.mode == "none":
            rules.append(
                f"`{e.name}` was run with `--search-accounting none`; its trials are composed here."
            )
    adjusted = (
        "**Search-adjusted frontier — these ε are what releasing the model costs.** For each "
        "budget ε_B: the model the search would have released had ε_B covered the whole search, "
        "and the search ε it spent (≤ ε_B, rounded up). " + " ".join(rules)
    )
    if combined is not None:
        adjusted += (
            " Each row's ε covers the one experiment it names; choosing among the experiments "
            f"after seeing their results costs ε = {_eps(combined[0])} at δ = {combined[1]:g} "
            "(all of them composed)."
        )
    per_trial = (
        "**Per-trial frontier — analyst-only diagnostics, not DP releases.** Validation "
        f"{metric} against each trial's own ε, which covers that trial alone, NOT the search. "
        "`search ε to release` is the smallest search ε at which the search-adjusted rule "
        "releases a model at least this good. Failed and early-stopped trials never enter."
    )
    return {"search-adjusted": adjusted, "frontier": per_trial}


# --- renderings -----------------------------------------------------------------------------

_FAIRNESS_DISPLAY = [
    ("test_worst_group_accuracy", "worst group"), ("test_group_gap", "group gap"),
    ("test_worst_group_auc", "worst group AUC"), ("test_group_auc_gap", "group AUC gap"),
    ("baseline_test_score", "non-private test {m}"),
    ("baseline_test_worst_group_accuracy", "non-private worst group"),
    ("baseline_test_group_gap", "non-private group gap"),
    ("baseline_test_worst_group_auc", "non-private worst group AUC"),
    ("baseline_test_group_auc_gap", "non-private group AUC gap"),
]  # fmt: skip
"""Group columns and the non-private baseline's: the same in both tables."""
_DISPLAY = {
    "search-adjusted": [
        ("budget", "budget ε"), ("search_epsilon", "search ε"), ("trials_covered", "trials"),
        ("experiment", "experiment"), ("trial_id", "trial"), ("reported_epsilon", "trial ε"),
        ("val_score", "val {m}"), ("test_score", "test {m}"),
        ("test_worst_class_accuracy", "worst class"), ("test_worst_label_auc", "worst finding"),
        *_FAIRNESS_DISPLAY,
    ],
    "frontier": [
        ("experiment", "experiment"), ("trial_id", "trial"), ("reported_epsilon", "trial ε"),
        ("search_epsilon_to_release", "search ε to release"), ("val_score", "val {m}"),
        ("test_score", "test {m}"), ("test_worst_class_accuracy", "worst class"),
        ("test_class_gap", "class gap"), ("test_worst_label_auc", "worst finding"),
        *_FAIRNESS_DISPLAY,
    ],
}  # fmt: skip
_METRIC_NAMES = {"val_accuracy": "accuracy", "val_auc": "AUC"}
_SHORT = {"val_accuracy": "acc", "val_auc": "AUC"}
_EPSILON_COLUMNS = {"budget", "search_epsilon", "reported_epsilon", "search_epsilon_to_release"}


def _display(report: Report, name: str) -> tuple[list[str], list[list[str]]]:
    table = report.table(name)
    columns = [
        (c, label)
        for c, label in _DISPLAY[name]
        if c in table and table[c].notna().any()
        and not (c == "experiment" and len(report.experiments) == 1)
    ]  # fmt: skip
    rows = [[_cell(c, row[c]) for c, _ in columns] for _, row in table.iterrows()]
    short = _SHORT[report.metric]
    return [label.format(m=short) for _, label in columns], rows


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if column in _EPSILON_COLUMNS:
        return _eps(float(value))
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _eps(value: float) -> str:
    if not math.isfinite(value):
        return "∞"
    return f"{accounting.round_up(value, EPSILON_DIGITS):g}"


def to_markdown(report: Report) -> str:
    names = ", ".join(f"`{e.name}`" for e in report.experiments)
    title = _METRIC_NAMES[report.metric].capitalize().replace("Auc", "AUC")
    lines = [f"# {title} vs ε: {names}", "", "## DP release", ""]
    for r in report.releases:
        search = (
            f"search ε = **{_eps(r['search_epsilon'])}** at δ = {r['delta']:g} "
            f"({r['mode']}; covers {r['covers']})"
        )
        if r["trial_id"] is None:
            lines.append(
                f"- `{r['experiment']}`: no trial completed, nothing to release; {search}."
            )
            continue
        test = (
            ""
            if r["test_score"] is None
            else f", test {_METRIC_NAMES[r['metric']]} {r['test_score']:.4f}"
        )
        largest = r["largest_trial_epsilon"]
        lines.append(
            f"- `{r['experiment']}`: selected trial `{r['trial_id']}`{test}; {search}. "
            + (
                f"Largest single-trial ε = {_eps(largest)} (NOT what the release costs)."
                if largest is not None
                else ""
            )
        )
    if report.all_experiments is not None:
        eps, delta = report.all_experiments
        lines.append(
            f"- Best model across all {len(report.experiments)} experiments: ε = "
            f"**{_eps(eps)}** at δ = {delta:g} (their searches composed)."
        )
    for name, title in (
        ("search-adjusted", "Search-adjusted frontier"),
        ("frontier", "Per-trial frontier"),
    ):
        header, rows = _display(report, name)
        lines += ["", f"## {title}", "", report.captions[name], ""]
        if not rows:
            lines.append("(no completed trial)")
            continue
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        lines += ["| " + " | ".join(row) + " |" for row in rows]
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"


_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "ε": r"$\varepsilon$", "∞": r"$\infty$", "—": "--", "≤": r"$\leq$", "δ": r"$\delta$",
    "σ": r"$\sigma$", "↓": r"$\downarrow$", "↑": r"$\uparrow$", "≥": r"$\geq$",
    "*": "", "`": "",  # Markdown emphasis and code marks
}  # fmt: skip


def _latex(text: str) -> str:
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in str(text))


def to_latex(report: Report) -> str:
    """One booktabs `table` (caption + `tabular`) per frontier."""
    parts = ["% Generated by results/export.py; needs \\usepackage{booktabs}."]
    for name, label in (("search-adjusted", "search-adjusted"), ("frontier", "per-trial")):
        header, rows = _display(report, name)
        if not rows:
            parts += [f"% {label} frontier: no completed trial, no table.", ""]
            continue
        spec = "l" + "r" * (len(header) - 1)
        parts += [
            r"\begin{table}[t]",
            r"\centering",
            r"\caption{" + _latex(report.captions[name]) + "}",
            r"\label{tab:" + label + "}",
            r"\begin{tabular}{" + spec + "}",
            r"\toprule",
            " & ".join(_latex(h) for h in header) + r" \\",
            r"\midrule",
            *[" & ".join(_latex(c) for c in row) + r" \\" for row in rows],
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    return "\n".join(parts)


def to_csv(report: Report, table: str | None = None) -> str:
    """One table as CSV, or (None) the two frontiers stacked with a `table` column."""
    if table is not None:
        frame = _standing(_for_export(report.table(table)), table)
    else:
        frame = pd.concat(
            [
                _standing(_for_export(report.adjusted), "search-adjusted"),
                _standing(_for_export(report.frontier), "frontier"),
            ],
            ignore_index=True,
        )
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False)
    return buffer.getvalue()


def to_json(report: Report, table: str | None = None) -> str:
    """Everything (or one table) as JSON; non-finite numbers: ∞ → "inf", NaN → null."""
    if table is not None:
        return json.dumps(_records(_standing(report.table(table), table)), indent=2) + "\n"
    payload = {
        "experiments": [
            {
                "name": e.name,
                "path": str(e.path),
                "plan": e.plan,
                "release": _clean(release),
                "warnings": e.warnings,
            }
            for e, release in zip(report.experiments, report.releases, strict=True)
        ],
        "dp_releases": "experiments[].release: the selected model and its search ε",
        "analyst_only": "per_trial_frontier and trials: validation metrics and trial ε",
        "captions": report.captions,
        "search_adjusted": _records(report.adjusted),
        "per_trial_frontier": _records(report.frontier),
        "trials": _records(report.trials),
    }
    if report.all_experiments is not None:
        payload["all_experiments"] = {
            "epsilon": _clean(report.all_experiments[0]),
            "delta": report.all_experiments[1],
        }
    return json.dumps(payload, indent=2, ensure_ascii=False) + "\n"


def _standing(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """`frame` with leading `table` and `standing` columns (see STANDING)."""
    rest = [c for c in frame.columns if c not in ("table", "standing")]
    return frame.assign(table=table, standing=STANDING[table])[["table", "standing", *rest]]


def _for_export(frame: pd.DataFrame) -> pd.DataFrame:
    """Lists and dicts as JSON strings (one cell each) for CSV."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].map(lambda v: isinstance(v, (list, dict))).any():
            frame[column] = frame[column].map(
                lambda v: json.dumps(v) if isinstance(v, (list, dict)) else v
            )
    return frame


def _records(frame: pd.DataFrame) -> list[dict]:
    return [_clean(row) for row in frame.to_dict(orient="records")]


def _clean(value):
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
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
    return value


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value
