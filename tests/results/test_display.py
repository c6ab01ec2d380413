"""What a reader sees in the exports (issue 17): one ε reads the same in the run summary, the
Markdown and the LaTeX (rounded up once) while CSV and JSON carry it exact; budgets that release
nothing are a sentence, not a row; unusual columns are explained; choosing among experiments is
charged in plain sight; the LaTeX is valid; CSV has no binary noise; the plot tells experiments
apart and draws a one-point frontier as a point. (The `report` fixture: conftest.py.)"""

from __future__ import annotations

import io
import json
import re

import matplotlib.pyplot as plt
import pandas as pd
import pytest

import accounting
import results
from results.plot import frontier_figure
from tests.helpers import CHEAP_1, CHEAP_2, COSTLY, make_experiment


def markdown_tables(markdown: str) -> list[list[dict[str, str]]]:
    """Every Markdown table as rows of {header: cell}."""
    tables, lines = [], markdown.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|---") and i > 0:
            header = [c.strip() for c in lines[i - 1].strip("|").split("|")]
            rows = []
            for row in lines[i + 1 :]:
                if not row.startswith("| "):
                    break
                rows.append(dict(zip(header, (c.strip() for c in row.strip("|").split("|")),
                                     strict=True)))  # fmt: skip
            tables.append(rows)
    return tables


def csv_table(report, table: str) -> pd.DataFrame:
    return pd.read_csv(io.StringIO(results.to_csv(report, table)))


def two_experiments(tmp_path):
    low = make_experiment(tmp_path / "eps1", [CHEAP_1, dict(CHEAP_2, status="stopped")],
                          searcher="random")  # fmt: skip
    high = make_experiment(tmp_path / "eps8", [COSTLY], searcher="random")
    return results.build_report(results.load_experiments([low, high]), budgets=[4, 20, 50])


# --- item 7: one number, one rounding -----------------------------------------------------


def test_one_epsilon_reads_the_same_in_summary_markdown_latex_and_exactly_in_csv_json(report):
    value = 4.82301
    report.releases[0]["search_epsilon"] = value
    report.adjusted.loc[report.adjusted["budget"] == 8, "search_epsilon"] = value
    shown = accounting.show_epsilon(value)  # what search/run.py prints for this ε
    assert shown == "4.824"  # up, never down
    markdown = results.to_markdown(report)
    assert f"search ε = **{shown}**" in markdown
    assert f"| 8 | {shown} |" in markdown
    assert f"8 & {shown} & " in results.to_latex(report)
    adjusted = csv_table(report, "search-adjusted")
    assert adjusted.loc[adjusted["budget"] == 8, "search_epsilon"].item() == value
    assert f",{value!r}," in results.to_csv(report)
    payload = json.loads(results.to_json(report))
    assert payload["experiments"][0]["release"]["search_epsilon"] == value
    rows = [r for r in payload["search_adjusted"] if r["budget"] == 8]
    assert rows[0]["search_epsilon"] == value
    assert "exact" in payload["numbers"]  # and the file says so


def test_every_epsilon_shown_is_the_exact_one_rounded_up_once(report):
    """Each ε cell of the Markdown is `show_epsilon` of the exact value the CSV carries (a
    value rounded up twice — 1.2141 → 1.215 → 1.216 — would differ)."""
    tables = markdown_tables(results.to_markdown(report))
    adjusted = csv_table(report, "search-adjusted").set_index("budget")
    for row in tables[0]:
        exact = adjusted.loc[float(row["budget ε"]), "search_epsilon"]
        assert row["search ε"] == accounting.show_epsilon(exact)
    frontier = csv_table(report, "frontier").set_index("trial_id")
    assert [row["trial"] for row in tables[-1]] == list(frontier.index)
    for row in tables[-1]:
        exact = frontier.loc[row["trial"]]
        assert row["trial ε"] == accounting.show_epsilon(exact["trial_epsilon"])
        assert row["search ε to release"] == accounting.show_epsilon(
            exact["search_epsilon_to_release"]
        )
        assert exact["search_epsilon_to_release"] != round(exact["search_epsilon_to_release"], 3)


def test_the_plan_epsilon_row_agrees_with_the_run_summary(tmp_path):
    directory = make_experiment(tmp_path / "e", [CHEAP_1, COSTLY, CHEAP_2], searcher="random")
    experiment = results.load_experiment(directory)
    planned = experiment.privacy.epsilon()
    summary = accounting.show_epsilon(planned)  # search/run.py's line
    report = results.build_report(experiment)  # default budgets: declared + the plan's ε
    markdown = results.to_markdown(report)
    assert f"search ε = **{summary}**" in markdown
    row = [r for r in markdown_tables(markdown)[0] if r["budget ε"] == summary]
    assert row and row[0]["search ε"] == summary
    exact = csv_table(report, "search-adjusted")["search_epsilon"].max()
    assert exact == pytest.approx(planned, rel=1e-12) and exact != float(summary)


# --- item 9: what a reader sees --------------------------------------------------------------


def test_budgets_that_release_nothing_are_a_sentence_not_a_row(report):
    declared = report.table("search-adjusted")
    nothing = list(declared.loc[declared["trial_id"].isna(), "budget"])
    assert nothing == [1, 2, 4]  # the fixture's three cheapest budgets release nothing
    markdown = results.to_markdown(report)
    section = markdown.split("## Search-adjusted frontier")[1].split("## Analyst-only")[0]
    assert [r["budget ε"] for r in markdown_tables(section)[0]] == ["8"]
    assert "| 1 |" not in section and "No model fits within ε_B = 1, 2, 4:" in section
    assert r"No model fits within $\varepsilon_B$ = 1, 2, 4:" in results.to_latex(report)
    assert len(csv_table(report, "search-adjusted")) == 5  # machine formats keep every row
    # Nothing released at any budget: the sentence alone, no table and no "no trial" claim.
    alone = results.build_report(report.experiments, budgets=[1, 2])
    text = results.to_markdown(alone).split("## Search-adjusted frontier")[1]
    text = text.split("## Analyst-only")[0]
    assert "No model fits within ε_B = 1, 2:" in text
    assert "| budget ε |" not in text and "(no completed trial)" not in text
    # Only budgets chosen after the search: the declared table says so, not "no trial".
    late = results.to_markdown(results.build_report(report.experiments, budgets=[50]))
    assert "(no completed trial)" not in late
    assert "none of the budgets asked for was declared before the search" in late


def test_fairness_columns_are_explained_under_each_table(report):
    markdown = results.to_markdown(report)
    legend = "Worst class: the lowest per-class test accuracy"
    for section in markdown.split("## Search-adjusted frontier")[1].split("###"):
        if "| worst class" in section:
            after = section.split("| worst class", 1)[1]
            assert legend in after, section
    frontier = markdown.split("### Per-trial frontier")[1]
    assert "class gap: best − worst per-class test accuracy" in frontier
    assert "class gap: best $-$ worst per-class test accuracy" in results.to_latex(report)


def test_choosing_among_experiments_is_its_own_line_before_the_table(tmp_path):
    report = two_experiments(tmp_path)
    line = report.captions["selection"]
    eps, _ = report.all_experiments
    assert line.startswith("**Choosing among 2 experiments is charged.**")
    assert f"ε = {accounting.show_epsilon(eps)}" in line
    assert "Choosing among" not in report.captions["search-adjusted"]
    markdown = results.to_markdown(report)
    section = markdown.split("## Search-adjusted frontier")[1]
    paragraphs = [p for p in section.split("\n\n") if p.strip()]
    assert paragraphs[0] == line  # first thing under the heading, before caption and table
    assert paragraphs[1].startswith("**Search-adjusted frontier")
    latex = results.to_latex(report).split(r"\label{tab:search-adjusted}")[1]
    assert latex.index(r"\textbf{Choosing among 2 experiments is charged.}") < latex.index(
        r"\begin{tabular}"
    )


def test_latex_is_valid_subscripts_in_math_and_nothing_left_unescaped(report):
    latex = results.to_latex(report)
    assert r"$\varepsilon_B$" in latex and r"$\varepsilon$\_B" not in latex
    assert latex.isascii()  # every symbol (ε, −, …, ≤) turned into a LaTeX command
    assert latex.count("$") % 2 == 0
    caption = re.search(r"\\caption\{(.*)\}\n", latex)[1]
    assert caption.count("{") == caption.count("}")


def test_csv_and_json_have_no_binary_noise_but_exact_epsilon(tmp_path):
    noisy = dict(CHEAP_1, test=0.8190000000000001, classes=[0.9, 0.081])
    directory = make_experiment(tmp_path / "e", [noisy, COSTLY], searcher="random")
    experiment = results.load_experiment(directory)
    assert experiment.trials.iloc[0]["test_class_gap"] == 0.8190000000000001  # 0.9 − 0.081
    report = results.build_report(experiment, budgets=[50])
    text = results.to_csv(report, "trials") + results.to_csv(report) + results.to_json(report)
    assert "0.8190000000000001" not in text and "0.819" in text
    trials = csv_table(report, "trials").set_index("trial_id")
    assert trials.loc["a", "test_class_gap"] == 0.819
    exact = experiment.trials.set_index("trial_id")["trial_epsilon"]
    assert (trials["trial_epsilon"] == exact.loc[trials.index]).all()  # ε untouched
    assert json.loads(trials.loc["a", "test_class_accuracy"]) == [0.9, 0.081]


# --- the plot's legend --------------------------------------------------------------------


def legend_of(report) -> dict[str, object]:
    fig = frontier_figure(report)
    try:
        legend = fig.axes[0].get_legend()
        return {t.get_text(): h for t, h in zip(legend.get_texts(), legend.legend_handles,
                                                strict=True)}  # fmt: skip
    finally:
        plt.close(fig)


def test_several_experiments_each_have_a_colour_a_marker_and_a_legend_entry(tmp_path):
    report = two_experiments(tmp_path)
    entries = legend_of(report)
    first, second = entries["trials of eps1"], entries["trials of eps8"]
    assert tuple(first.get_facecolor()[0]) != tuple(second.get_facecolor()[0])
    assert (first.get_paths()[0].vertices.tolist()
            != second.get_paths()[0].vertices.tolist())  # fmt: skip  # another marker
    assert "hollow: stopped, failed or running" in entries  # eps1's stopped trial
    path = results.plot_frontier(report, tmp_path / "several.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_one_point_frontier_is_a_marker_not_a_line(tmp_path, report):
    one = make_experiment(tmp_path / "one", [CHEAP_1], searcher="random")
    single = results.build_report(results.load_experiment(one))
    assert len(single.frontier) == 1
    entries = legend_of(single)
    handle = entries["per-trial frontier (ε of one trial)"]
    assert handle.get_linestyle() == "None" and handle.get_marker() == "o"
    # Several budgets release the one trial at one search ε: still a single point.
    assert single.adjusted["trial_id"].notna().sum() > 1
    adjusted = entries["search-adjusted frontier (ε of the whole search)"]
    assert adjusted.get_linestyle() == "None" and adjusted.get_marker() == "s"
    assert len(report.frontier) == 2  # two points: a step line
    assert legend_of(report)["per-trial frontier (ε of one trial)"].get_linestyle() == "-"
