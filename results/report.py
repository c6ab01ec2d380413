"""A report of one or more experiments: releases, both frontiers and their captions — what
every rendering (`results.render`: Markdown, LaTeX; `results.serialize`: CSV, JSON) draws on.

Every rendering says which numbers are DP releases (a search's selected model and its search
ε) and which are analyst-only diagnostics (per-trial validation metrics and trial ε).

Numbers for people follow one rule per kind, defined here and nowhere else (`show_epsilon`,
`show_budget`, `show_score`): the report's frames, CSV and JSON carry exact ε, and a privacy
bound is rounded up once, when shown, by the very function `search/run.py` prints the plan's
ε with — so one ε reads the same in the run summary, `pareto.md` and `pareto.tex`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

import accounting
from results.fairness import non_private_baseline, with_baseline
from results.frontier import (
    all_experiments_epsilon,
    pareto_front,
    search_adjusted_frontier,
    search_epsilon_to_release,
)
from results.load import EPSILON_DIGITS, Experiment, ExperimentError

TABLES = ("search-adjusted", "frontier", "trials")
STANDING = {
    "search-adjusted": "DP release: its ε covers the whole search",
    "post-hoc": "analyst-only: a budget chosen after the results were seen",
    "frontier": "analyst-only: exact figures and one trial's ε, not the search's",
    "trials": "analyst-only: exact figures and one trial's ε, not the search's",
}
"""What each table's rows are, written into every row of the CSV and JSON tables (a file that
travels alone still says it)."""
RESEARCH = "research run (reproducible noise from a known seed): NOT a DP release"

METRIC_NAMES = {"val_accuracy": "accuracy", "val_auc": "AUC"}
"""How captions and tables name each validation metric."""


def show_epsilon(value) -> str:
    """A privacy bound for people: rounded UP (never down) to `EPSILON_DIGITS` decimals, once
    (`accounting.show_epsilon`, as `search/run.py` prints it); ∞ for an unbounded one. Pass it
    the exact value: rounding an already rounded one could add another step."""
    return accounting.show_epsilon(float(value), EPSILON_DIGITS)


def show_budget(value) -> str:
    """A budget ε_B as declared (not a bound: the ε that covers its release is `show_epsilon`);
    12 significant digits hide binary noise such as 4.823000000000001."""
    value = float(value)
    return f"{value:.12g}" if math.isfinite(value) else "∞"


def show_score(value) -> str:
    """An accuracy, AUC or gap for people: 4 decimals."""
    return f"{float(value):.4f}"


@dataclass
class Report:
    experiments: list[Experiment]
    trials: pd.DataFrame
    """Every trial of every experiment."""
    frontier: pd.DataFrame
    """Per-trial Pareto front (trial ε ↓, validation accuracy ↑), with the search ε that
    releasing each point costs (`search_epsilon_to_release`)."""
    adjusted: pd.DataFrame
    """Search-adjusted frontier: one row per budget."""
    releases: list[dict]
    """Per experiment: what the search as run releases, and its ε."""
    captions: dict[str, str]
    """Per table; with several experiments also `selection`: what choosing among them costs,
    shown on its own line before the search-adjusted table."""
    all_experiments: tuple[float, float] | None = None
    """(ε, δ) of choosing among all experiments (only with several)."""
    metric: str = "val_accuracy"
    """The validation metric every frontier ranks by (`val_score` / `test_score` columns)."""
    warnings: list[str] = field(default_factory=list)

    @property
    def research(self) -> bool:
        """Some experiment ran with reproducible noise: nothing here is a DP release."""
        return any(e.privacy.reproducible for e in self.experiments)

    def table(self, name: str) -> pd.DataFrame:
        if name == "search-adjusted":
            return self.adjusted[self.adjusted["declared"].astype(bool)]
        if name == "post-hoc":
            return self.adjusted[~self.adjusted["declared"].astype(bool)]
        return {"frontier": self.frontier, "trials": self.trials}[name]


def build_report(
    experiments: Experiment | Sequence[Experiment], budgets: Sequence[float] | None = None
) -> Report:
    """Load → frontier: everything a table or plot needs, for one or several experiments."""
    if isinstance(experiments, Experiment):
        experiments = [experiments]
    experiments = list(experiments)
    metrics = {e.metric for e in experiments}
    if len(metrics) > 1:
        raise ExperimentError(
            f"these experiments optimise different metrics ({', '.join(sorted(metrics))}); "
            "export them separately."
        )
    trials = pd.concat([e.trials for e in experiments], ignore_index=True)
    baseline = non_private_baseline(trials)

    frontier = pareto_front(trials, epsilon="reported_epsilon", accuracy="val_score")
    costs = pd.Series(math.inf, index=frontier.index, dtype=float)
    for experiment in experiments:
        mine = frontier[frontier["experiment"] == experiment.name]
        if len(mine):
            costs.loc[mine.index] = search_epsilon_to_release(experiment, mine)
    frontier = frontier.assign(search_epsilon_to_release=costs).reset_index(drop=True)
    frontier = with_baseline(frontier, baseline)

    # Release rows carry DP values only: no non-private baseline (it is in the frontier).
    adjusted = search_adjusted_frontier(experiments, budgets)
    combined = all_experiments_epsilon(experiments) if len(experiments) > 1 else None
    releases = [_release(e) for e in experiments]
    return Report(
        experiments=experiments,
        trials=trials,
        frontier=frontier,
        adjusted=adjusted,
        releases=releases,
        captions=_captions(experiments, combined),
        all_experiments=combined,
        warnings=[f"{e.name}: {w}" for e in experiments for w in e.warnings],
        metric=metrics.pop() if metrics else "val_accuracy",
    )


def _release(experiment: Experiment) -> dict:
    trials = experiment.trials
    search = experiment.search_epsilon()
    done = trials[(trials["status"] == "completed")]
    done = done[done["val_score"].notna()]
    chosen = done.loc[done["val_score"].idxmax()] if len(done) else None
    finite = trials["trial_epsilon"][trials["trial_epsilon"].map(math.isfinite)]
    return {
        "experiment": experiment.name,
        "trial_id": None if chosen is None else chosen["trial_id"],
        "metric": experiment.metric,
        "val_score": None if chosen is None else _number(chosen.get("val_score")),
        "test_score": None if chosen is None else _number(chosen.get("test_score")),
        "search_epsilon": search.epsilon,
        "delta": search.delta,
        "mode": search.mode,
        "covers": search.covers,
        # The number of trials of a random-stopping search is K, which must stay secret.
        "num_trials": None if experiment.mode == "random-stopping" else len(trials),
        "largest_trial_epsilon": float(finite.max()) if len(finite) else None,
        "spent_epsilon": search.spent,
        "validation": experiment.privacy.validation,
        "standing": RESEARCH if experiment.privacy.reproducible else STANDING["search-adjusted"],
    }


def _captions(experiments: Sequence[Experiment], combined) -> dict[str, str]:
    metric = METRIC_NAMES[experiments[0].metric] if experiments else "accuracy"
    rules = []
    for e in experiments:
        delta = f"δ = {e.delta:g}"
        if e.mode == "random-stopping":
            rules.append(
                f"`{e.name}` ran random stopping (Papernot & Steinke 2022, K ~ "
                f"{e.privacy.distribution.describe()}, K secret): its planned ε ({delta}) "
                "bounds the whole search, so a budget below it releases nothing."
            )
        elif e.adaptive:
            rules.append(
                f"`{e.name}` is adaptive: it is stopped at the last moment its spending (every "
                "trial started by then: the steps and validation scores it had claimed, plus "
                "the planned rest of those still running) stays under the plan's curve scaled "
                "to the budget, and releases the best trial completed by then."
            )
        else:
            rules.append(
                f"`{e.name}` is a random search with FIFO scheduling (no trial depends on "
                "another's results): trials in launch order join while they stay under the "
                "plan's curve scaled to the budget, as `--target-epsilon` runs them; the "
                "release is the best of those."
            )
        if e.mode == "none":
            rules.append(
                f"`{e.name}` was run with `--search-accounting none`; its trials are composed here."
            )
    adjusted = (
        "**Search-adjusted frontier — DP releases: each ε covers the whole search.** "
        "Budgets were declared before the search; for each budget ε_B, the model the search "
        f"would have released had ε_B covered it, its noisy validation {metric} and its public "
        "test metrics, and the ε that covers it (≤ ε_B, rounded up; RDP, parallel composition "
        "of training and validation records). " + " ".join(rules)
    )
    per_trial = (
        "**Per-trial frontier — analyst-only diagnostics, not DP releases.** Validation "
        f"{metric} against each trial's own ε, which covers that trial alone, NOT the search. "
        "`search ε to release` is the smallest budget at which the search-adjusted rule "
        "releases a model at least this good. Failed and early-stopped trials never enter."
    )
    post_hoc = (
        "**Search-adjusted rows at budgets chosen after the results were seen — analyst-only.** "
        "Their ε is computed as above, but a budget picked by looking at the results is itself "
        "a choice the ε does not cover."
    )
    captions = {"search-adjusted": adjusted, "frontier": per_trial, "post-hoc": post_hoc}
    if combined is not None:
        captions["selection"] = (
            f"**Choosing among {len(experiments)} experiments is charged.** Releasing the best "
            f"model across all of them costs ε = {show_epsilon(combined[0])} at δ = "
            f"{combined[1]:g} (their searches composed); each row below stops every experiment "
            "at one common budget and composes them (RDP), so its ε covers the choice."
        )
    return captions


def _number(value) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value
