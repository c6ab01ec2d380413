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
    "post-hoc": "analyst-only: a budget chosen after the results were seen",
    "frontier": "analyst-only: exact figures and one trial's ε, not the search's",
    "trials": "analyst-only: exact figures and one trial's ε, not the search's",
}
"""What each table's rows are, written into every row of the CSV and JSON tables (a file that
travels alone still says it)."""
RESEARCH = "research run (reproducible noise from a known seed): NOT a DP release"


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

    @property
    def research(self) -> bool:
        """Some experiment ran with reproducible noise: nothing here is a DP release."""
        return any(e.privacy.reproducible for e in self.experiments)

    def table(self, name: str) -> pd.DataFrame:
        if name == "search-adjusted":
            return self.adjusted[self.adjusted["declared"].astype(bool)]
        if name == "post-hoc":
            return self.adjusted[~self.adjusted["declared"].astype(bool)]
        return {"frontier": self.frontier, "trials": self.trials}[name]


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

    # Release rows carry DP values only: no non-private baseline (it is in the frontier).
    adjusted = search_adjusted_frontier(experiments, budgets)
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
    search = experiment.search_epsilon()
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
        # The number of trials of a random-stopping search is K, which must stay secret.
        "num_trials": None if experiment.mode == "random-stopping" else len(trials),
        "largest_trial_epsilon": float(finite.max()) if len(finite) else None,
        "spent_epsilon": search.spent,
        "validation": experiment.privacy.validation,
        "standing": RESEARCH if experiment.privacy.reproducible else STANDING["search-adjusted"],
    }


def _captions(experiments: Sequence[Experiment], combined) -> dict[str, str]:
    metric = _METRIC_NAMES[experiments[0].metric] if experiments else "accuracy"
    rules = []
    for e in experiments:
        delta = f"δ = {e.delta:g}"
        if e.mode == "random-stopping":
            rules.append(
                f"`{e.name}` ran random stopping (Papernot & Steinke 2022, K ~ "
                f"{e.privacy.distribution.describe()}, K secret): its planned ε ({delta}) "
                "bounds the whole search, so a budget below it releases nothing."
            )
        elif e.adaptive:
            rules.append(
                f"`{e.name}` is adaptive: it is stopped at the last moment its spending (every "
                "trial started by then: the steps and validation scores it had claimed, plus "
                "the planned rest of those still running) stays under the plan's curve scaled "
                "to the budget, and releases the best trial completed by then."
            )
        else:
            rules.append(
                f"`{e.name}` is a random search with FIFO scheduling (no trial depends on "
                "another's results): trials in launch order join while they stay under the "
                "plan's curve scaled to the budget, as `--target-epsilon` runs them; the "
                "release is the best of those."
            )
        if e.mode == "none":
            rules.append(
                f"`{e.name}` was run with `--search-accounting none`; its trials are composed here."
            )
    selection = ""
    if combined is not None:
        selection = (
            f"**Choosing among {len(experiments)} experiments is charged:** each row stops "
            "every experiment at one common budget and composes them (RDP), so its ε covers "
            "the choice. "
        )
    adjusted = (
        "**Search-adjusted frontier — DP releases: each ε covers the whole search.** "
        + selection
        + "Budgets were declared before the search; for each budget ε_B, the model the search "
        f"would have released had ε_B covered it, its noisy validation {metric} and its public "
        "test metrics, and the ε that covers it (≤ ε_B, rounded up; RDP, parallel composition "
        "of training and validation records). "
        + " ".join(rules)
    )
    per_trial = (
        "**Per-trial frontier — analyst-only diagnostics, not DP releases.** Validation "
        f"{metric} against each trial's own ε, which covers that trial alone, NOT the search. "
        "`search ε to release` is the smallest budget at which the search-adjusted rule "
        "releases a model at least this good. Failed and early-stopped trials never enter."
    )
    post_hoc = (
        "**Search-adjusted rows at budgets chosen after the results were seen — analyst-only.** "
        "Their ε is computed as above, but a budget picked by looking at the results is itself "
        "a choice the ε does not cover."
    )
    return {"search-adjusted": adjusted, "frontier": per_trial, "post-hoc": post_hoc}


# --- renderings -----------------------------------------------------------------------------

_GROUP_DISPLAY = [
    ("test_worst_group_accuracy", "worst group"), ("test_group_gap", "group gap"),
    ("test_worst_group_auc", "worst group AUC"), ("test_group_auc_gap", "group AUC gap"),
]  # fmt: skip
_FAIRNESS_DISPLAY = [
    *_GROUP_DISPLAY,
    ("baseline_test_score", "non-private test {m}"),
    ("baseline_test_worst_group_accuracy", "non-private worst group"),
    ("baseline_test_group_gap", "non-private group gap"),
    ("baseline_test_worst_group_auc", "non-private worst group AUC"),
    ("baseline_test_group_auc_gap", "non-private group AUC gap"),
]  # fmt: skip
"""Group columns and the non-private baseline's (analyst-only tables)."""
_RELEASE_DISPLAY = [
    ("budget", "budget ε"), ("search_epsilon", "search ε"), ("experiment", "experiment"),
    ("trial_id", "trial"), ("val_score", "noisy val {m}"), ("test_score", "test {m}"),
    ("test_auc", "test AUC"), ("test_worst_class_accuracy", "worst class"),
    ("test_worst_label_auc", "worst finding"), *_GROUP_DISPLAY,
]  # fmt: skip
_DISPLAY = {
    "search-adjusted": _RELEASE_DISPLAY,
    "post-hoc": _RELEASE_DISPLAY,
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
    if name in ("search-adjusted", "post-hoc") and (
        "trial_id" not in table or table["trial_id"].isna().all()
    ):
        table = table.iloc[0:0]  # no budget releases a model: no table, a sentence instead
    columns = [
        (c, label)
        for c, label in _DISPLAY[name]
        if c in table and table[c].notna().any()
        and not (c == "experiment" and len(report.experiments) == 1)
    ]  # fmt: skip
    if report.metric == "val_auc":  # test AUC is already the test score
        columns = [(c, label) for c, label in columns if c != "test_auc"]
    rows = [[_cell(c, row[c]) for c, _ in columns] for _, row in table.iterrows()]
    short = _SHORT[report.metric]
    if not all(e.privacy.validation == "dp" for e in report.experiments):
        short += " (public set)" if all(e.privacy.validation == "public"
                                         for e in report.experiments) else ""
        columns = [(c, label.replace("noisy ", "")) for c, label in columns]
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
    lines = [f"# {title} vs ε: {names}", ""]
    if report.research:
        lines += [f"**{RESEARCH[0].upper() + RESEARCH[1:]}.** Its sampling and noise can be "
                  "replayed from known seeds, so no ε below holds against anyone who knows "
                  "them.", ""]  # fmt: skip
    lines += ["## DP release", ""]
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
        val = "" if r["val_score"] is None else f", noisy validation score {r['val_score']:.4f}"
        lines.append(
            f"- `{r['experiment']}`: selected trial `{r['trial_id']}`{val}{test}; {search}."
        )
    if report.all_experiments is not None:
        eps, delta = report.all_experiments
        lines.append(
            f"- Best model across all {len(report.experiments)} experiments: ε = "
            f"**{_eps(eps)}** at δ = {delta:g} (their searches composed)."
        )
    header, rows = _display(report, "search-adjusted")
    lines += ["", "## Search-adjusted frontier", "", report.captions["search-adjusted"], ""]
    lines += _markdown_table(header, rows)
    lines += ["", "## Analyst-only diagnostics (not DP releases; do not publish)", ""]
    lines.append(
        "Exact figures of private data and single-trial ε: they reveal what the DP release "
        "hides (e.g. the number of trials a random-stopping search ran)."
    )
    for r in report.releases:
        if r["spent_epsilon"] is not None:
            largest = r["largest_trial_epsilon"]
            lines.append(
                f"- `{r['experiment']}`: the ledger shows ε = {_eps(r['spent_epsilon'])} spent "
                "(≤ the planned search ε; it depends on what the search did)"
                + (f"; largest single-trial ε = {_eps(largest)}" if largest is not None else "")
                + "."
            )
    for name, title in (("post-hoc", "Budgets chosen after the search"),
                        ("frontier", "Per-trial frontier")):  # fmt: skip
        header, rows = _display(report, name)
        if name == "post-hoc" and not rows:
            continue
        lines += ["", f"### {title}", "", report.captions[name], ""]
        lines += _markdown_table(header, rows)
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["(no completed trial)"]
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *["| " + " | ".join(row) + " |" for row in rows],
    ]


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
