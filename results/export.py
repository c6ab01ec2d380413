"""`python results/export.py EXPERIMENT_DIR [MORE_DIRS…] --format csv|markdown|latex|json`:
accuracy-versus-ε tables (and a plot) from experiment directories.

Examples:
  python results/export.py runs/fmnist_quick-20261122-101500
  python results/export.py runs/a runs/b --format latex --out frontier.tex --plot frontier.png
  python results/export.py runs/a --format csv --table search-adjusted --budgets 1,2,4,8
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import accounting
from results.load import ExperimentError, load_experiments
from results.render import to_latex, to_markdown
from results.report import TABLES, Report, build_report
from results.serialize import to_csv, to_json

FORMATS = ("markdown", "latex", "csv", "json")
EXPORT_FILES = {
    "markdown": "pareto.md",
    "latex": "pareto.tex",
    "json": "results.json",
    "csv": "pareto.csv",
}
"""What the end of a search writes into its experiment directory (with `frontier.png`)."""
PLOT_FILE = "frontier.png"


def render(report: Report, fmt: str, table: str | None = None) -> str:
    if fmt == "markdown":
        return to_markdown(report)
    if fmt == "latex":
        return to_latex(report)
    if fmt == "csv":
        return to_csv(report, table)
    return to_json(report, table)


def write_exports(experiment_dir: Path, report: Report) -> dict[str, Path]:
    """Every format and the plot into `experiment_dir` (the end of a search calls this)."""
    from results.plot import plot_frontier

    written = {}
    for fmt, name in EXPORT_FILES.items():
        accounting.write_atomically(experiment_dir / name, render(report, fmt, None))
        written[fmt] = experiment_dir / name
    adjusted = to_csv(report, "search-adjusted")
    accounting.write_atomically(experiment_dir / "search_adjusted.csv", adjusted)
    accounting.write_atomically(experiment_dir / "trials.csv", to_csv(report, "trials"))
    written["plot"] = plot_frontier(report, experiment_dir / PLOT_FILE)
    return written


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python results/export.py",
        description="Accuracy-vs-ε frontiers of one or more experiment directories: the "
        "search-adjusted frontier (ε covers the search) and the per-trial one (analyst-only).",
        epilog=__doc__.split("Examples:", 1)[1].join(["Examples:", ""]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiments", nargs="+", metavar="EXPERIMENT_DIR")
    parser.add_argument("--format", choices=FORMATS, default="markdown")
    parser.add_argument(
        "--table",
        choices=TABLES,
        default=None,
        help="csv/json: one table only (default: markdown/latex/json everything, csv both "
        "frontiers with a `table` column)",
    )
    parser.add_argument("--out", type=Path, help="write here instead of printing")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also write the plot")
    parser.add_argument(
        "--budgets",
        help="comma-separated ε budgets for the search-adjusted frontier (default: those each "
        "search declared before it ran, and its whole ε); budgets not declared are shown as "
        "analyst-only rows: choosing them after seeing the results is not covered",
    )
    return parser


def _budgets(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ExperimentError(
            f"--budgets {text!r} is not a comma-separated list of numbers."
        ) from None
    if not values or any(not (v > 0) or v == float("inf") for v in values):
        raise ExperimentError(f"--budgets {text!r}: every budget ε must be a positive number.")
    return values


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="warning: %(message)s")
    if args.table and args.format in ("markdown", "latex"):
        print(f"error: --table applies to csv and json only (got --format {args.format}).",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        budgets = _budgets(args.budgets)
        report = build_report(load_experiments(args.experiments), budgets)
        text = render(report, args.format, args.table)
        if args.out:
            accounting.write_atomically(args.out, text)
        else:
            sys.stdout.write(text)
        if args.plot:
            from results.plot import plot_frontier

            plot_frontier(report, args.plot)
    except ExperimentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        where = error.filename or "the output"
        print(f"error: cannot write {where} ({error.strerror}); choose another path.",
              file=sys.stderr)  # fmt: skip
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
