"""A report rendered for people: Markdown (terminal, docs) and LaTeX (papers) tables, with
a caption that says which rows are DP releases and which are analyst-only."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from results.report import (
    METRIC_NAMES,
    RESEARCH,
    Report,
    show_budget,
    show_epsilon,
    show_score,
)

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
        ("experiment", "experiment"), ("trial_id", "trial"), ("trial_epsilon", "trial ε"),
        ("search_epsilon_to_release", "search ε to release"), ("val_score", "val {m}"),
        ("test_score", "test {m}"), ("test_worst_class_accuracy", "worst class"),
        ("test_class_gap", "class gap"), ("test_worst_label_auc", "worst finding"),
        *_FAIRNESS_DISPLAY,
    ],
}  # fmt: skip
_SHORT = {"val_accuracy": "acc", "val_auc": "AUC"}
_EPSILON_COLUMNS = {"search_epsilon", "trial_epsilon", "search_epsilon_to_release"}
"""Privacy bounds, shown by `show_epsilon` (exact in the frames: rounded up once, here)."""
_LEGEND = {
    "test_worst_class_accuracy": "worst class: the lowest per-class test accuracy",
    "test_class_gap": "class gap: best − worst per-class test accuracy",
    "test_worst_label_auc": "worst finding: the lowest per-finding test ROC-AUC",
    "test_worst_group_accuracy": "worst group: the lowest per-group test accuracy",
    "test_group_gap": "group gap: best − worst per-group test accuracy",
    "test_worst_group_auc": "worst group AUC: the lowest per-group test ROC-AUC",
    "test_group_auc_gap": "group AUC gap: best − worst per-group test ROC-AUC",
}  # fmt: skip
"""What a column a reader may not know means: a line under each table that shows it."""
_BASELINE_LEGEND = (
    "non-private …: the same figure of the best completed non-private trial (ε = ∞; a "
    "reference, not a release)"
)
ROUNDING_NOTE = (
    "ε is shown rounded up to 3 decimals (never down); the CSV and JSON exports carry the "
    "exact values."
)


@dataclass
class _Table:
    header: list[str]
    rows: list[list[str]]
    nothing: list[float]
    """Budgets whose row releases no model: left out of the table, named in `notes`."""
    legend: list[str]
    empty: str = "(no completed trial)"
    """What stands for a table without rows."""

    @property
    def notes(self) -> list[str]:
        """Sentences under the table: the budgets left out, what unusual columns mean."""
        notes = []
        if self.nothing:
            budgets = ", ".join(show_budget(b) for b in self.nothing)
            notes.append(
                f"No model fits within ε_B = {budgets}: held to these budgets the search "
                "completes no trial, so they release nothing (their rows stay in the CSV and "
                "JSON exports)."
            )
        if self.legend:
            legend = "; ".join(self.legend)
            notes.append(legend[0].upper() + legend[1:] + ".")
        return notes


def _display(report: Report, name: str) -> _Table:
    table = report.table(name)
    nothing: list[float] = []
    if name in ("search-adjusted", "post-hoc"):
        empty = table["trial_id"].isna()
        nothing = [float(b) for b in table.loc[empty, "budget"]]
        table = table[~empty]  # a budget that releases no model: a sentence, not a row
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
    legend = [_LEGEND[c] for c, _ in columns if c in _LEGEND]
    if any(c.startswith("baseline_") for c, _ in columns):
        legend.append(_BASELINE_LEGEND)
    shown = _Table([label.format(m=short) for _, label in columns], rows, nothing, legend)
    if name == "search-adjusted" and not len(report.table(name)):
        shown.empty = "(none of the budgets asked for was declared before the search)"
    return shown


def _cell(column: str, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if column in _EPSILON_COLUMNS:
        return show_epsilon(value)
    if column == "budget":
        return show_budget(value)
    if isinstance(value, float):
        return show_score(value)
    return str(value)


def to_markdown(report: Report) -> str:
    names = ", ".join(f"`{e.name}`" for e in report.experiments)
    title = METRIC_NAMES[report.metric].capitalize().replace("Auc", "AUC")
    lines = [f"# {title} vs ε: {names}", "", ROUNDING_NOTE, ""]
    if report.research:
        lines += [f"**{RESEARCH[0].upper() + RESEARCH[1:]}.** Its sampling and noise can be "
                  "replayed from known seeds, so no ε below holds against anyone who knows "
                  "them.", ""]  # fmt: skip
    lines += ["## DP release", "", *_release_lines(report), "", "## Search-adjusted frontier", ""]
    if "selection" in report.captions:
        lines += [report.captions["selection"], ""]
    lines += [report.captions["search-adjusted"], ""]
    lines += _markdown_table(_display(report, "search-adjusted"))
    lines += ["", "## Analyst-only diagnostics (not DP releases; do not publish)", ""]
    lines.append(
        "Exact figures of private data and single-trial ε: they reveal what the DP release "
        "hides (e.g. the number of trials a random-stopping search ran)."
    )
    for r in report.releases:
        if r["spent_epsilon"] is not None:
            largest = r["largest_trial_epsilon"]
            lines.append(
                f"- `{r['experiment']}`: the ledger shows ε = {show_epsilon(r['spent_epsilon'])} "
                "spent (≤ the planned search ε; it depends on what the search did)"
                + (f"; largest single-trial ε = {show_epsilon(largest)}" if largest is not None
                   else "")
                + "."
            )  # fmt: skip
    for name, title in (("post-hoc", "Budgets chosen after the search"),
                        ("frontier", "Per-trial frontier")):  # fmt: skip
        table = _display(report, name)
        if name == "post-hoc" and not (table.rows or table.nothing):
            continue
        lines += ["", f"### {title}", "", report.captions[name], ""]
        lines += _markdown_table(table)
    if report.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in report.warnings]
    return "\n".join(lines) + "\n"


def _release_lines(report: Report) -> list[str]:
    """One line per experiment: the model its search releases and the ε that covers it."""
    lines = []
    for r in report.releases:
        search = (
            f"search ε = **{show_epsilon(r['search_epsilon'])}** at δ = {r['delta']:g} "
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
            else f", test {METRIC_NAMES[r['metric']]} {show_score(r['test_score'])}"
        )
        val = (
            ""
            if r["val_score"] is None
            else f", noisy validation score {show_score(r['val_score'])}"
        )
        lines.append(
            f"- `{r['experiment']}`: selected trial `{r['trial_id']}`{val}{test}; {search}."
        )
    if report.all_experiments is not None:
        eps, delta = report.all_experiments
        lines.append(
            f"- Best model across all {len(report.experiments)} experiments: ε = "
            f"**{show_epsilon(eps)}** at δ = {delta:g} (their searches composed)."
        )
    return lines


def _markdown_table(table: _Table) -> list[str]:
    if not table.rows and not table.nothing:
        return [table.empty]
    lines = []
    if table.rows:
        lines += [
            "| " + " | ".join(table.header) + " |",
            "|" + "---|" * len(table.header),
            *["| " + " | ".join(row) + " |" for row in table.rows],
        ]
    for note in table.notes:  # each its own paragraph, under the table
        lines += ["", note] if lines else [note]
    return lines


_LATEX_TEXT = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
    "—": "--", "…": r"\dots{}", "*": "", "`": "",  # Markdown emphasis and code marks
}  # fmt: skip
_LATEX_MATH = {
    "ε": r"\varepsilon", "δ": r"\delta", "σ": r"\sigma", "η": r"\eta", "∞": r"\infty",
    "≤": r"\leq", "≥": r"\geq", "↓": r"\downarrow", "↑": r"\uparrow", "−": "-",
    "×": r"\times", "·": r"\cdot", "≈": r"\approx", "→": r"\rightarrow",
}  # fmt: skip
_MATH = re.compile("([" + "".join(_LATEX_MATH) + "])(?:_([A-Za-z0-9]+))?")
r"""A symbol for math mode, with its subscript if any: ε_B → $\varepsilon_B$."""


def _latex(text: str) -> str:
    r"""Markdown-ish text as LaTeX: **bold** → \textbf{bold}, symbols (with their subscripts)
    in math mode, every special character escaped."""
    parts = str(text).split("**")
    return "".join(
        r"\textbf{" + _latex_plain(part) + "}" if i % 2 else _latex_plain(part)
        for i, part in enumerate(parts)
    )


def _latex_plain(text: str) -> str:
    out, at = [], 0
    for match in _MATH.finditer(text):
        out += [_LATEX_TEXT.get(ch, ch) for ch in text[at : match.start()]]
        symbol, sub = _LATEX_MATH[match[1]], match[2]
        if sub:
            symbol += f"_{sub}" if len(sub) == 1 else f"_{{{sub}}}"
        out.append(f"${symbol}$")
        at = match.end()
    out += [_LATEX_TEXT.get(ch, ch) for ch in text[at:]]
    return "".join(out)


def to_latex(report: Report) -> str:
    """One booktabs `table` (caption + `tabular` + notes) per frontier."""
    parts = [
        "% Generated by results/export.py; needs \\usepackage{booktabs}.",
        "% " + _latex(ROUNDING_NOTE),
    ]
    for name, label in (("search-adjusted", "search-adjusted"), ("frontier", "per-trial")):
        table = _display(report, name)
        if not table.rows and not table.nothing:
            parts += [f"% {label} frontier, no table: {table.empty.strip('()')}.", ""]
            continue
        parts += [r"\begin{table}[t]", r"\centering",
                  r"\caption{" + _latex(report.captions[name]) + "}",
                  r"\label{tab:" + label + "}"]  # fmt: skip
        if name == "search-adjusted" and "selection" in report.captions:
            parts += [_latex(report.captions["selection"]) + r"\par\smallskip"]
        if table.rows:
            parts += [
                r"\begin{tabular}{" + "l" + "r" * (len(table.header) - 1) + "}",
                r"\toprule",
                " & ".join(_latex(h) for h in table.header) + r" \\",
                r"\midrule",
                *[" & ".join(_latex(c) for c in row) + r" \\" for row in table.rows],
                r"\bottomrule",
                r"\end{tabular}",
            ]
        if table.notes:
            parts += [r"\par\smallskip{\footnotesize"]
            parts += [_latex(note) + r"\par" for note in table.notes] + ["}"]
        parts += [r"\end{table}", ""]
    return "\n".join(parts)
