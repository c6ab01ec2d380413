"""The end of a search: the results layer's report and exports, written into the experiment.

Writes `pareto.md`, `pareto.tex`, `pareto.csv`, `search_adjusted.csv`, `results.json`,
`trials.csv` and `frontier.png` (see `results.export.write_exports`); every one says which
numbers are DP releases (the selected model and the search ε) and which are analyst-only.
"""

from __future__ import annotations

from pathlib import Path

from results import Report, build_report, load_experiment, to_markdown, write_exports


def summarize(experiment_dir: Path) -> tuple[Report, str]:
    """Load the finished experiment, write every export into it, return the report and its
    Markdown (what the CLI prints)."""
    report = build_report(load_experiment(experiment_dir))
    write_exports(experiment_dir, report)
    return report, to_markdown(report)
