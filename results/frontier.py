"""Accuracy-versus-ε frontiers: per trial, and adjusted for the search that produced them.

The per-trial frontier answers "which trials are best for their own ε" — but a trial's ε
covers that trial alone, while releasing the *selected* trial costs the whole search (DESIGN.md,
honest-accounting rule 2). The search-adjusted frontier answers the question a privacy review
asks instead: "had the search been given a total budget ε_B, which model would it have released,
and how accurate is it?"

Budgets are declared before the search (`search/run.py --budgets`, default 1, 2, 4, 8 and the
space's own ε levels, saved in the plan) plus the plan's own ε: never placed where the observed
results step up. A budget chosen afterwards still gets a row, labelled analyst-only.

Every budget is enforced by one of the release rules of `results/release_rules.py` (random
search + FIFO: skip; adaptive searches: stop-time; random stopping: one bound), each with why
it covers its release.

With several experiments, a row that picks the best across them charges the choice: every
experiment is stopped at a common per-experiment budget, their stopped guarantees compose, and
the largest per-experiment budget whose composition fits ε_B is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

import accounting
from results.load import EPSILON_DIGITS, Experiment
from results.release_rules import NOTHING, Sweep, finite

MAX_LEVELS = 12


def pareto_front(
    trials: pd.DataFrame,
    *,
    epsilon: str = "epsilon",
    accuracy: str = "val_accuracy",
    status: str = "status",
) -> pd.DataFrame:
    """The trials no other trial beats on both lower ε and higher accuracy.

    Trials without a finite ε or accuracy (non-private, no result) and, when the table has a
    `status` column, trials that did not complete (failed, or stopped early: pruned) never
    enter the frontier. Ties: of trials with equal ε and equal accuracy, the first (by index)
    is kept. Returned sorted by ε.
    """
    usable = trials[trials[epsilon].map(finite) & trials[accuracy].map(finite)]
    if status in usable:
        usable = usable[usable[status] == "completed"]
    usable = usable.sort_values([epsilon, accuracy], ascending=[True, False], kind="stable")
    keep, best = [], -math.inf
    for index, row in usable.iterrows():
        if row[accuracy] > best:
            keep.append(index)
            best = row[accuracy]
    return usable.loc[keep]


# --- the search-adjusted frontier -----------------------------------------------------------


RELEASE_COLUMNS = (
    "trial_id", "val_score", "test_score", "test_accuracy", "test_auc",
    "test_worst_class_accuracy", "test_class_gap", "test_worst_group",
    "test_worst_group_accuracy", "test_group_gap", "test_worst_label_auc", "test_label_auc_gap",
    "test_worst_group_by_auc", "test_worst_group_auc", "test_group_auc_gap",
)  # fmt: skip
"""What a search-adjusted row says about the model it releases: DP values only (its noisy
validation score, its public-test metrics). Exact validation figures, trial ε and the
non-private baseline belong to the analyst-only tables."""


def declared_budgets(experiment: Experiment) -> set[float]:
    """The budgets fixed before the search: the plan's declared ones and its own ε, rounded
    up as `search/run.py` printed it (a budget at or above the plan covers the whole search)."""
    declared = set(experiment.privacy.budgets)
    if not experiment.privacy.legacy and experiment.privacy.candidates:
        whole = experiment.release_plan.epsilon()
        if 0 < whole < math.inf:
            declared.add(accounting.round_up(whole, EPSILON_DIGITS))
    return declared


def default_budgets(experiments: Sequence[Experiment]) -> list[float]:
    """Every budget the experiments declared before they ran (see `declared_budgets`); for
    plans that declared none (legacy), the fixed grid 1, 2, 4, 8."""
    budgets: set[float] = set()
    for experiment in experiments:
        budgets |= declared_budgets(experiment) or set(accounting.DEFAULT_BUDGETS)
    return sorted(b for b in budgets if 0 < b < math.inf)


def search_adjusted_frontier(
    experiments: Experiment | Sequence[Experiment],
    budgets: Sequence[float] | None = None,
    *,
    per_experiment: bool = False,
) -> pd.DataFrame:
    """Per budget ε_B: the model the search would release if ε_B had to cover the search.

    Columns: budget (as declared), declared (fixed before the search: a DP release; False:
    chosen after seeing results, analyst-only), search_epsilon (what the release is covered by,
    exact: tables for people round it up once, `results.report.show_epsilon`),
    rule, experiment, selection_charged (several experiments: choosing among them is paid),
    and the released trial's `RELEASE_COLUMNS`. With several experiments each row is the best
    release across them at the largest common per-experiment budget whose composition fits
    ε_B (`per_experiment=True` gives every experiment's own rows instead).
    """
    if isinstance(experiments, Experiment):
        experiments = [experiments]
    budgets = sorted(set(budgets if budgets is not None else default_budgets(experiments)))
    for budget in budgets:
        if not budget > 0:
            raise ValueError(f"a budget ε must be positive (got {budget}).")
    declared = [declared_budgets(e) for e in experiments]
    rows = []
    if per_experiment or len(experiments) == 1:
        for experiment, mine in zip(experiments, declared, strict=True):
            sweep = Sweep.of(experiment)
            for budget in budgets:
                epsilon, _ = sweep.guaranteed(budget)
                release = sweep.release(budget)
                rows.append(_row(experiment, sweep, budget, epsilon, release.chosen,
                                 declared=budget in mine, charged=False))  # fmt: skip
    else:
        for budget in budgets:
            rows.append(_combined_row(experiments, budget, all(budget in d for d in declared)))
    table = pd.DataFrame(rows, columns=_COLUMNS)
    empty = [c for c in RELEASE_COLUMNS if c != "trial_id" and table[c].isna().all()]
    return table.drop(columns=empty).reset_index(drop=True)


_COLUMNS = ["budget", "declared", "search_epsilon", "rule", "experiment", "selection_charged",
            *RELEASE_COLUMNS]  # fmt: skip


def _combined_row(experiments: Sequence[Experiment], budget: float, declared: bool) -> dict:
    """The best release across `experiments` within `budget` in all: each experiment stopped
    at a common per-experiment budget b ≤ ε_B, their guarantees composed (RDP), b as large as
    the composition allows."""
    sweeps = [Sweep.of(e) for e in experiments]
    delta = max(e.delta for e in experiments)

    def composed(each: float) -> float:
        total = accounting.ParallelCurve.zero()
        for sweep in sweeps:
            total = total + sweep.guaranteed(each)[1]
        return total.epsilon(delta)

    low, high = 0.0, budget  # composed(low) fits; look for the largest fitting b
    if composed(high) <= budget:
        low = high
    else:
        for _ in range(40):
            middle = (low + high) / 2
            low, high = (middle, high) if composed(middle) <= budget else (low, middle)
    best = None
    for experiment, sweep in zip(experiments, sweeps, strict=True):
        release = sweep.release(low) if low > 0 else NOTHING
        if release.chosen is None:
            continue
        score = float(experiment.trials.at[release.chosen, "val_score"])
        if best is None or score > best[0]:
            best = (score, experiment, sweep, release)
    if best is None:
        return _row(experiments[0], sweeps[0], budget, 0.0, None, declared=declared,
                    charged=True, experiment_name="—")  # fmt: skip
    _, experiment, sweep, release = best
    return _row(experiment, sweep, budget, composed(low) if low > 0 else 0.0, release.chosen,
                declared=declared, charged=True)  # fmt: skip


def _row(experiment, sweep, budget, epsilon, chosen, *, declared, charged,
         experiment_name=None) -> dict:  # fmt: skip
    row = {
        "budget": budget,
        "declared": declared,
        "search_epsilon": float(epsilon),
        "rule": sweep.rule,
        "experiment": experiment_name or experiment.name,
        "selection_charged": charged,
    }
    trials = experiment.trials
    for column in RELEASE_COLUMNS:
        value = None
        if chosen is not None and column in trials:
            value = trials.at[chosen, column]
        row[column] = value
    return row


def search_epsilon_to_release(experiment: Experiment, frontier: pd.DataFrame) -> pd.Series:
    """For each frontier row of `experiment`: the smallest budget at which the experiment's
    rule releases a model at least as good (validation score) — what that point really costs
    (analyst-only; exact). ∞ when no budget releases it (e.g. a non-private trial)."""
    releases = Sweep.of(experiment).candidate_releases()
    trials = experiment.trials

    def cost(accuracy: float) -> float:
        spent = [
            r.cost
            for r in releases
            if r.chosen is not None and trials.at[r.chosen, "val_score"] >= accuracy
        ]
        return float(min(spent)) if spent else math.inf

    return frontier["val_score"].map(cost)


def all_experiments_epsilon(experiments: Sequence[Experiment]) -> tuple[float, float]:
    """(ε, δ) of releasing the best model across *all* the experiments: their searches'
    guarantees composed (RDP), at the largest δ among them."""
    total = accounting.ParallelCurve.zero()
    for experiment in experiments:
        total = total + Sweep.of(experiment).guaranteed(math.inf)[1]
    delta = max(e.delta for e in experiments)
    return total.epsilon(delta), delta
