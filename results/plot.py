"""The accuracy-versus-ε plot: every trial, the per-trial frontier, the search-adjusted one."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on cluster nodes or CI
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import ticker  # noqa: E402

from results.report import Report  # noqa: E402

_STATUS_STYLE = {
    "completed": {"marker": "o", "alpha": 0.55},
    "stopped": {"marker": "x", "alpha": 0.55},
    "failed": {"marker": "v", "alpha": 0.55},
    "running": {"marker": ".", "alpha": 0.55},
}


def plot_frontier(report: Report, path: str | Path, *, accuracy: str = "val_score") -> Path:
    """Write a PNG of accuracy vs ε (log scale) and return its path.

    Points: every private trial at its own ε, by status. Solid step line: the per-trial
    frontier (analyst-only). Dashed step line: the search-adjusted frontier, at the search ε
    each release really costs. A dotted horizontal line: the non-private baseline, if any.
    """
    path = Path(path)
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130)
    _plot_trials(ax, report, accuracy)
    _plot_frontiers(ax, report, accuracy)
    _plot_baseline(ax, report, accuracy)
    _label(ax, report, accuracy)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_trials(ax, report: Report, accuracy: str) -> None:
    """Every private trial at its own ε, one marker per status."""
    trials = report.trials
    finite = trials[trials["trial_epsilon"].map(math.isfinite)]
    if accuracy in finite:
        finite = finite[finite[accuracy].notna()]
        for status, style in _STATUS_STYLE.items():
            mine = finite[finite["status"] == status]
            if len(mine):
                ax.scatter(
                    mine["reported_epsilon"],
                    mine[accuracy],
                    s=22,
                    color="tab:gray",
                    label=f"trials ({status})",
                    **style,
                )


def _plot_frontiers(ax, report: Report, accuracy: str) -> None:
    """The per-trial frontier (solid) and the search-adjusted one (dashed), as step lines."""
    frontier = report.frontier
    if len(frontier):
        ax.step(
            frontier["reported_epsilon"],
            frontier[accuracy],
            where="post",
            color="tab:blue",
            linewidth=1.8,
            marker="o",
            markersize=4,
            label="per-trial frontier (ε of one trial)",
        )
    adjusted = report.adjusted
    if accuracy in adjusted and adjusted[accuracy].notna().any():
        adjusted = adjusted[adjusted[accuracy].notna()]
        adjusted = adjusted.sort_values("search_epsilon")
        ax.step(
            adjusted["search_epsilon"].astype(float),
            adjusted[accuracy].astype(float),
            where="post",
            color="tab:red",
            linestyle="--",
            linewidth=1.8,
            marker="s",
            markersize=4,
            label="search-adjusted frontier (ε of the whole search)",
        )


def _plot_baseline(ax, report: Report, accuracy: str) -> None:
    """The non-private baseline's test figure as a dotted horizontal line, if there is one."""
    baseline = f"baseline_{accuracy.replace('val_', 'test_', 1)}"
    if baseline in report.frontier and report.frontier[baseline].notna().any():
        ax.axhline(
            float(report.frontier[baseline].dropna().iloc[0]),
            color="black",
            linestyle=":",
            linewidth=1.2,
            label="non-private baseline (test)",
        )


def _label(ax, report: Report, accuracy: str) -> None:
    """Log ε axis, axis labels, title, grid, and a legend (or a note that nothing was drawn)."""
    if ax.has_data():
        ax.set_xscale("log")
        # ε values people read (1, 2, 5, 10…) instead of powers of ten only.
        ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("ε (log scale)")
    name = {"val_accuracy": "accuracy", "val_auc": "mean ROC-AUC"}[report.metric]
    ax.set_ylabel(f"{'validation' if accuracy.startswith('val_') else 'test'} {name}")
    names = ", ".join(e.name for e in report.experiments)
    deltas = sorted({f"{e.delta:g}" for e in report.experiments})
    ax.set_title(
        f"{name[0].upper() + name[1:]} vs ε — {names} (δ = {', '.join(deltas)})", fontsize=10
    )
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no completed private trial", ha="center", transform=ax.transAxes)
