"""The end of a search: trials.csv, pareto.csv, pareto.md, and what may be released.

Which numbers are DP releases and which are analyst-only diagnostics is stated in every output:
the selected model and the search ε are the release; per-trial validation metrics are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

import accounting
from accounting.ledger import PrivacyLedger, latest_status
from results import pareto_front
from search.plan import SearchPlan


@dataclass(frozen=True)
class SearchSummary:
    trials: pd.DataFrame
    frontier: pd.DataFrame
    search: accounting.SearchEpsilon
    released: pd.Series | None
    markdown: str


def summarize(plan: SearchPlan, experiment_dir: Path, results: pd.DataFrame) -> SearchSummary:
    """Join Tune's last result per trial with the ledger, write the files, return the summary."""
    records = PrivacyLedger(experiment_dir / accounting.LEDGER_FILENAME).records()
    events = accounting.executed_events(records)
    statuses = latest_status(records)
    trial_eps = {
        trial_id: accounting.epsilon(event, delta=plan.delta) for trial_id, event in events.items()
    }
    search = plan.search_epsilon(list(events.values()))

    trials = pd.DataFrame({"trial_id": sorted(events)})
    trials["status"] = trials["trial_id"].map(statuses)
    trials["trial_epsilon"] = trials["trial_id"].map(trial_eps)
    # ε as reported (rounded up to 3 decimals): trials calibrated to the same target differ
    # only in the last digits and should tie on the frontier, not all appear on it.
    trials["reported_epsilon"] = trials["trial_epsilon"].map(lambda e: accounting.round_up(e, 3))
    if len(results):
        keep = [c for c in results.columns if c.startswith("config/")] + [
            c for c in ("val_accuracy", "val_loss", "test_accuracy", "steps", "sample_rate",
                        "noise_multiplier", "epoch", "node_id") if c in results.columns
        ]  # fmt: skip
        table = results[["trial_id", *keep]].rename(columns=lambda c: c.removeprefix("config/"))
        trials = trials.merge(table, on="trial_id", how="left")
    trials.to_csv(experiment_dir / "trials.csv", index=False)

    completed = trials[trials["status"] == "completed"]
    released = None
    if "val_accuracy" in completed and completed["val_accuracy"].notna().any():
        released = completed.loc[completed["val_accuracy"].idxmax()]
    # Stopped (pruned) and failed trials never enter the frontier: they did not finish.
    frontier = (
        pareto_front(completed, epsilon="reported_epsilon", accuracy="val_accuracy")
        if "val_accuracy" in completed
        else completed
    )
    frontier.to_csv(experiment_dir / "pareto.csv", index=False)
    largest = max(trial_eps.values(), default=0.0)
    markdown = _markdown(plan, trials, frontier, search, released, largest)
    (experiment_dir / "pareto.md").write_text(markdown)
    return SearchSummary(trials, frontier, search, released, markdown)


def _eps(value: float) -> str:
    return "∞" if not math.isfinite(value) else f"{accounting.round_up(value, 3):g}"


def _markdown(plan, trials, frontier, search, released, largest_trial_epsilon) -> str:
    lines = [
        f"# Search `{plan.space}`: {len(trials)} trials, {search.mode} accounting",
        "",
        "## DP release",
        "",
    ]
    if released is not None:
        test = released.get("test_accuracy")
        lines += [
            f"- Selected model: trial `{released['trial_id']}` "
            f"(test accuracy {test:.4f})" if isinstance(test, float) and math.isfinite(test)
            else f"- Selected model: trial `{released['trial_id']}`",
        ]  # fmt: skip
    else:
        lines.append("- No trial completed: nothing to release.")
    budget = f" (budget {plan.budget_epsilon:g})" if plan.budget_epsilon is not None else ""
    lines += [
        f"- Search ε = **{_eps(search.epsilon)}** at δ = {plan.delta:g}{budget}: covers "
        f"{search.covers}.",
        f"- Largest single-trial ε = {_eps(largest_trial_epsilon)} (NOT what releasing the "
        "selected model costs).",
        "",
        "## Frontier of validation accuracy vs trial ε (analyst-only diagnostics)",
        "",
        "Validation accuracies are computed on private data and are not DP releases; each "
        "trial ε covers that trial alone.",
        "",
    ]
    columns = ["trial_id", "trial_epsilon", "val_accuracy", "test_accuracy", "status"]
    columns = [c for c in columns if c in frontier.columns]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for _, row in frontier.iterrows():
        cells = []
        for column in columns:
            value = row[column]
            if column == "trial_epsilon":
                cells.append(_eps(value))
            elif isinstance(value, float):
                cells.append("" if math.isnan(value) else f"{value:.4f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
