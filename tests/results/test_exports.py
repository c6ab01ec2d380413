"""The results layer's outputs on hand-made experiment directories: every export format
parsed back, the plot, the files written at the end of a search, and the export CLI.
(Loading and frontier accounting: test_loading_and_frontiers.py; what a reader sees in them —
rounding, notes, legends, the plot's legend: test_display.py; the `report` fixture:
conftest.py.)"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pandas as pd

import results
from results.export import write_exports
from tests.helpers import CHEAP_1, CHEAP_2, COSTLY, ROOT, make_experiment

# --- exports ------------------------------------------------------------------------------


def releasing(table: pd.DataFrame) -> int:
    """Rows of a search-adjusted table that release a model (the others are a note)."""
    return int(table["trial_id"].notna().sum())


def test_csv_export_parses_back(report):
    table = pd.read_csv(io.StringIO(results.to_csv(report, "search-adjusted")))
    assert list(table["budget"]) == [1, 2, 4, 8, 50]
    assert {"search_epsilon", "trial_id", "test_worst_group_accuracy"} <= set(table.columns)
    both = pd.read_csv(io.StringIO(results.to_csv(report)))
    assert set(both["table"]) == {"search-adjusted", "frontier"}
    assert (both["table"] == "frontier").sum() == len(report.frontier)
    trials = pd.read_csv(io.StringIO(results.to_csv(report, "trials")))
    assert len(trials) == 3
    assert json.loads(trials["test_group_accuracy"][0]) == {"g0": 0.6, "g1": 0.5}


def test_json_export_parses_back(report):
    payload = json.loads(results.to_json(report))
    assert len(payload["search_adjusted"]) == 5 and len(payload["per_trial_frontier"]) == 2
    release = payload["experiments"][0]["release"]
    assert release["trial_id"] == "b" and release["search_epsilon"] > 0
    assert "analyst_only" in payload and "dp_releases" in payload
    only = json.loads(results.to_json(report, "frontier"))
    assert [row["trial_id"] for row in only] == ["c", "b"]


def test_latex_export_is_booktabs_tabulars_with_one_row_per_entry(report):
    latex = results.to_latex(report)
    tabulars = re.findall(r"\\begin\{tabular\}.*?\\end\{tabular\}", latex, flags=re.S)
    assert len(tabulars) == 2
    declared = releasing(report.table("search-adjusted"))
    for body, expected in zip(tabulars, (declared, len(report.frontier)), strict=True):
        assert "\\toprule" in body and "\\midrule" in body and "\\bottomrule" in body
        rows = body.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
        assert rows.count("\\\\") == expected
        assert "_" not in rows.replace("\\_", "")  # underscores escaped
    assert latex.count("\\caption{") == 2


def test_markdown_export_has_both_tables_and_says_what_is_released(report):
    markdown = results.to_markdown(report)
    assert "## DP release" in markdown and "analyst-only" in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    # Three tables (each + its header): declared budgets that release a model (DP releases),
    # the budget 50 chosen after the search (analyst-only), the per-trial frontier.
    assert len(table_rows) == 3 + releasing(report.adjusted) + len(report.frontier)
    release_section = markdown.split("## Analyst-only")[0]
    assert "| 50 |" not in release_section and "| 8 |" in release_section
    assert "| 50 |" in markdown.split("### Budgets chosen after the search")[1]


def test_plot_is_a_real_png(report, tmp_path):
    import matplotlib.image

    path = results.plot_frontier(report, tmp_path / "frontier.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600
    colours = {tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3).round(1).tolist()}
    assert len(colours) > 10  # points, two coloured lines, text: not a blank canvas


def test_write_exports_leaves_every_format_in_the_directory(report, tmp_path):
    directory = report.experiments[0].path
    written = write_exports(directory, report)
    for name in ("pareto.md", "pareto.tex", "pareto.csv", "results.json", "frontier.png",
                 "search_adjusted.csv", "trials.csv"):  # fmt: skip
        assert (directory / name).stat().st_size > 0, name
    assert written["plot"] == directory / "frontier.png"
    # Re-loading reads trials.csv as a fallback only: the trial folders stay the source.
    again = results.load_experiment(directory)
    assert len(again.trials) == 3 and not again.warnings


# --- the CLI ------------------------------------------------------------------------------


def export(*args):
    return subprocess.run(
        [sys.executable, "results/export.py", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_export_cli_writes_each_format_and_the_plot(tmp_path, capsys):
    from results.export import main

    directory = make_experiment(tmp_path / "e", [CHEAP_1, COSTLY, CHEAP_2], searcher="random")
    other = make_experiment(tmp_path / "f", [dict(CHEAP_1, id="x")], searcher="random")
    for fmt in ("csv", "json", "latex", "markdown"):
        out = tmp_path / f"out.{fmt}"
        args = [str(directory), str(other), "--format", fmt, "--out", str(out)]
        assert main([*args, "--budgets", "1,4,50"]) == 0
        assert out.stat().st_size > 0
    assert len(json.loads((tmp_path / "out.json").read_text())["experiments"]) == 2
    assert "\\begin{tabular}" in (tmp_path / "out.latex").read_text()
    # As a script, printing Markdown and writing the plot.
    result = export(directory, "--plot", tmp_path / "p.png")
    assert result.returncode == 0 and "Search-adjusted frontier" in result.stdout
    assert (tmp_path / "p.png").stat().st_size > 20_000


def test_an_experiment_without_trials_still_reports(tmp_path):
    directory = make_experiment(tmp_path / "e", [], searcher="random")
    experiment = results.load_experiment(directory)
    assert "no trials: the search has not run any" in experiment.warnings
    report = results.build_report(experiment)
    assert report.frontier.empty and report.releases[0]["trial_id"] is None
    assert "no completed trial" in results.to_markdown(report)
    assert "\\begin{tabular}" not in results.to_latex(report)  # no empty, invalid tabular
    assert json.loads(results.to_json(report))["per_trial_frontier"] == []
    assert results.plot_frontier(report, tmp_path / "p.png").stat().st_size > 0
