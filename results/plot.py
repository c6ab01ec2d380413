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
_EXPERIMENT_STYLES = list(zip(
    ("tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:cyan", "tab:olive", "tab:pink",
     "tab:gray"),
    ("o", "s", "^", "D", "v", "P", "X", "*"),
    strict=True,
))  # fmt: skip
"""One (colour, marker) per experiment when several share a plot: both change from one
experiment to the next (colour-blind readers keep the marker); red and blue are the
frontiers'."""


def plot_frontier(report: Report, path: str | Path, *, accuracy: str = "val_score") -> Path:
    """Write a PNG of accuracy vs ε (log scale) and return its path (see `frontier_figure`)."""
    path = Path(path)
    fig = frontier_figure(report, accuracy=accuracy)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path


def frontier_figure(report: Report, *, accuracy: str = "val_score"):
    """The figure `plot_frontier` saves (the caller closes it: `plt.close(fig)`).

    Points: every private trial at its own ε — by status for one experiment; with several,
    each experiment in its own colour and marker, filled when completed. Solid step line: the
    per-trial frontier (analyst-only). Dashed step line: the search-adjusted frontier, at the
    search ε each release really costs. A frontier of one point is a marker alone. A dotted
    horizontal line: the non-private baseline, if any.
    """
    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=130)
    _plot_trials(ax, report, accuracy)
    _plot_frontiers(ax, report, accuracy)
    _plot_baseline(ax, report, accuracy)
    _label(ax, report, accuracy)
    fig.tight_layout()
    return fig


def _plot_trials(ax, report: Report, accuracy: str) -> None:
    """Every private trial at its own ε: one marker per status, or, with several
    experiments, one colour and marker per experiment (hollow: not completed)."""
    trials = report.trials
    finite = trials[trials["trial_epsilon"].map(math.isfinite)]
    if accuracy not in finite:
        return
    finite = finite[finite[accuracy].notna()]
    if len(report.experiments) == 1:
        for status, style in _STATUS_STYLE.items():
            mine = finite[finite["status"] == status]
            if len(mine):
                ax.scatter(mine["trial_epsilon"], mine[accuracy], s=22, color="tab:gray",
                           label=f"trials ({status})", **style)  # fmt: skip
        return
    hollow = False
    for index, experiment in enumerate(report.experiments):
        colour, marker = _EXPERIMENT_STYLES[index % len(_EXPERIMENT_STYLES)]
        mine = finite[finite["experiment"] == experiment.name]
        done = mine["status"] == "completed"
        label = f"trials of {experiment.name}"  # once per experiment
        if done.any():
            ax.scatter(mine.loc[done, "trial_epsilon"], mine.loc[done, accuracy], s=26,
                       color=colour, marker=marker, alpha=0.7, label=label)  # fmt: skip
        if (~done).any():
            hollow = True
            ax.scatter(mine.loc[~done, "trial_epsilon"], mine.loc[~done, accuracy], s=26,
                       facecolors="none", edgecolors=colour, marker=marker, alpha=0.7,
                       label=None if done.any() else label)  # fmt: skip
    if hollow:
        ax.scatter([], [], s=26, facecolors="none", edgecolors="tab:gray", marker="o",
                   label="hollow: stopped, failed or running")  # fmt: skip


def _plot_frontiers(ax, report: Report, accuracy: str) -> None:
    """The per-trial frontier (solid) and the search-adjusted one (dashed), as step lines at
    the exact ε (trial ε, search ε: the same scale as each other)."""
    frontier = report.frontier
    if len(frontier):
        _step(ax, frontier["trial_epsilon"], frontier[accuracy], color="tab:blue",
              linestyle="-", marker="o", label="per-trial frontier (ε of one trial)")  # fmt: skip
    adjusted = report.adjusted
    if accuracy in adjusted and adjusted[accuracy].notna().any():
        adjusted = adjusted[adjusted[accuracy].notna()].sort_values("search_epsilon")
        _step(ax, adjusted["search_epsilon"], adjusted[accuracy], color="tab:red",
              linestyle="--", marker="s",
              label="search-adjusted frontier (ε of the whole search)")  # fmt: skip


def _step(ax, x, y, *, linestyle: str, **style) -> None:
    """A step line through (x, y); a single point (however many rows repeat it) is a marker
    alone, in the plot and in the legend: there is no line to draw."""
    x, y = x.astype(float), y.astype(float)
    one = len(set(zip(x, y, strict=True))) == 1
    ax.step(x, y, where="post", linewidth=1.8, linestyle="none" if one else linestyle,
            markersize=6 if one else 4, **style)  # fmt: skip


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
