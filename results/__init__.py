"""Results: experiment directory → pandas → accuracy-versus-ε frontiers → tables and plots.

A notebook session:

    import results
    experiments = results.load_experiments(["runs/a", "runs/b"])
    report = results.build_report(experiments, budgets=[1, 2, 4, 8])
    report.adjusted            # search-adjusted frontier (ε covers the search)
    report.frontier            # per-trial frontier (analyst-only)
    print(results.to_markdown(report))
    results.plot_frontier(report, "frontier.png")
"""

from results.export import write_exports
from results.fairness import add_fairness_columns, non_private_baseline
from results.frontier import (
    all_experiments_epsilon,
    default_budgets,
    pareto_front,
    search_adjusted_frontier,
    search_epsilon_to_release,
)
from results.load import Experiment, ExperimentError, load_experiment, load_experiments
from results.render import to_latex, to_markdown
from results.report import Report, build_report
from results.serialize import to_csv, to_json


def plot_frontier(report, path, **kwargs):
    """See `results.plot.plot_frontier` (imported lazily: matplotlib is slow to import)."""
    from results.plot import plot_frontier as plot

    return plot(report, path, **kwargs)


__all__ = [
    "Experiment",
    "ExperimentError",
    "Report",
    "add_fairness_columns",
    "all_experiments_epsilon",
    "build_report",
    "default_budgets",
    "load_experiment",
    "load_experiments",
    "non_private_baseline",
    "pareto_front",
    "plot_frontier",
    "search_adjusted_frontier",
    "search_epsilon_to_release",
    "to_csv",
    "to_json",
    "to_latex",
    "to_markdown",
    "write_exports",
]
