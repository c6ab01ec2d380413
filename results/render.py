"""A report rendered for people: Markdown (terminal, docs) and LaTeX (papers) tables, with
a caption that says which rows are DP releases and which are analyst-only."""

from __future__ import annotations

import math

import accounting
from results.load import EPSILON_DIGITS
from results.report import METRIC_NAMES, RESEARCH, Report

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
        short += (
            " (public set)"
            if all(e.privacy.validation == "public" for e in report.experiments)
            else ""
        )
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
    title = METRIC_NAMES[report.metric].capitalize().replace("Auc", "AUC")
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
            else f", test {METRIC_NAMES[r['metric']]} {r['test_score']:.4f}"
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
