"""Accuracy-versus-ε frontiers: per trial, and adjusted for the search that produced them.

The per-trial frontier answers "which trials are best for their own ε" — but a trial's ε
covers that trial alone, while releasing the *selected* trial costs the whole search (DESIGN.md,
honest-accounting rule 2). The search-adjusted frontier answers the question a privacy review
asks instead: "had the search been given a total budget ε_B, which model would it have released,
and how accurate is it?"

Budgets are declared before the search (`search/run.py --budgets`, default 1, 2, 4, 8 and the
space's own ε levels, saved in the plan) plus the plan's own ε: never placed where the observed
results step up. A budget chosen afterwards still gets a row, labelled analyst-only.

Every budget is enforced as a Rényi filter fixed in advance: the plan's guarantee curve G
(accounting.SearchPrivacyPlan) scaled down by the largest s ≤ 1 with ε(s·G) ≤ ε_B. A search
"stopped at ε_B" keeps its RDP under s·G at every order, so the release costs ε(s·G) ≤ ε_B
whatever the data made it do (Feldman & Zrnic 2021). The rules:

- random search + FIFO (trials never depend on each other's results): trials in launch order,
  each one joining if the running total still lies under s·G (what `--target-epsilon` does: a
  trial that would overspend never starts) — `rule = "skip"`;
- adaptive searches (TPE, ASHA) — `rule = "stop-time"`: the search is stopped at the last
  moment t (a trial's completion) at which C(t) lies under s·G, and releases the best trial
  completed by t. C(t) composes, over every trial that had started by t, the steps and
  validation releases it had claimed by t (the ledger claims each epoch before it runs) plus
  the planned remainder of each trial still running at t.
  Why this covers the release (proof sketch): the real search up to t and a search S_t that
  stops launching at t, lets the running trials finish their reserved plans and then releases
  the best trial completed by t have the same history up to t, so they release the same model
  with the same distribution. Everything S_t executes is in C(t) — steps claimed by t
  (upper-bounding the steps run by t) and the planned remainders — and nothing after t can
  influence a release decided at t. S_t is an adaptive composition whose RDP stays under s·G on
  every run (the stop is checked at every order), so by the filter theorem it is
  (α, s·G(α))-RDP for all α and costs at most ε(s·G) ≤ ε_B. Counting the remainders makes
  every such S_t a search our budget enforcement could really run (reservations are whole
  trials), not only a bound on a hypothetical one;
- random stopping (Papernot & Steinke): one bound for the whole search; a budget below it
  releases nothing — `rule = "random-stopping"`.

With several experiments, a row that picks the best across them charges the choice: every
experiment is stopped at a common per-experiment budget, their stopped guarantees compose, and
the largest per-experiment budget whose composition fits ε_B is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

import accounting
from results.load import EPSILON_DIGITS, Experiment

SKIP_GRID = 48
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
    usable = trials[trials[epsilon].map(_finite) & trials[accuracy].map(_finite)]
    if status in usable:
        usable = usable[usable[status] == "completed"]
    usable = usable.sort_values([epsilon, accuracy], ascending=[True, False], kind="stable")
    keep, best = [], -math.inf
    for index, row in usable.iterrows():
        if row[accuracy] > best:
            keep.append(index)
            best = row[accuracy]
    return usable.loc[keep]


def _finite(value) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


# --- the search-adjusted frontier -----------------------------------------------------------


@dataclass(frozen=True)
class _Trial:
    index: object
    """The trial's label in `Experiment.trials`."""
    trial_id: str
    curve: accounting.ParallelCurve
    start: float
    """When it reserved its steps (from then on it may touch data)."""
    end: float
    completed: bool
    val_score: float
    """The search's (noisy) validation score."""


@dataclass(frozen=True)
class _Release:
    """A stop: the trials it covers, the model it releases (or None), what it spent."""

    cost: float
    """The smallest budget at which the rule releases this (analyst-only: data-dependent)."""
    covered: int
    chosen: object | None
    curve: accounting.ParallelCurve


_NOTHING = _Release(0.0, 0, None, accounting.ParallelCurve.zero())


class _Sweep:
    """One experiment's release rule, evaluated at any budget."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.plan = experiment.release_plan
        self.delta = experiment.delta
        accounts = experiment.accounts
        trials = []
        for index, row in experiment.trials.iterrows():
            account = accounts.get(row["trial_id"])
            curve = account.curve if account is not None else _infinite_curve()
            trials.append(
                _Trial(
                    index=index,
                    trial_id=row["trial_id"],
                    curve=curve,
                    # A spend with no known start might have begun at any time.
                    start=account.first_time if account is not None else -math.inf,
                    end=float(row["end_time"]) if _finite(row.get("end_time")) else math.inf,
                    completed=row["status"] == "completed" and _finite(row.get("val_score")),
                    val_score=float(row["val_score"])
                    if _finite(row.get("val_score"))
                    else math.nan,
                )
            )
        self.trials = sorted(trials, key=lambda t: (t.start, t.end))
        if experiment.mode == "random-stopping":
            self.rule = "random-stopping"
        else:
            self.rule = "stop-time" if experiment.adaptive else "skip"
        self._stops = self._stop_points() if self.rule == "stop-time" else None
        self._candidates: list[_Release] | None = None
        self._whole: accounting.SearchEpsilon | None = None

    @classmethod
    def of(cls, experiment: Experiment) -> _Sweep:
        """One sweep per experiment, reused by every table of a report."""
        sweep = experiment.__dict__.get("_sweep")
        if sweep is None:
            sweep = experiment.__dict__["_sweep"] = cls(experiment)
        return sweep

    @property
    def whole(self) -> accounting.SearchEpsilon:
        if self._whole is None:
            self._whole = self.experiment.search_epsilon()
        return self._whole

    # each rule ------------------------------------------------------------------------------

    def release(self, budget: float) -> _Release:
        """What the rule releases when the search must fit `budget`."""
        if self.rule == "random-stopping":
            whole = self.whole
            if whole.epsilon <= budget:
                curve = self.plan.spent(self.experiment.accounts)
                return _Release(whole.epsilon, len(self.trials), self._best(self.trials), curve)
            return _NOTHING
        if self.rule == "skip":
            return self._skip(budget)
        fitting = [stop for stop in self._stops if stop.cost <= budget]
        return fitting[-1] if fitting else _NOTHING

    def guaranteed(self, budget: float) -> tuple[float, accounting.ParallelCurve]:
        """(ε, curve) the search stopped at `budget` is covered by, whatever it released
        (releasing nothing is an output too): the scaled filter s·G, fixed before the search;
        for plans without a worst case (legacy), what the release spent."""
        release = self.release(budget)
        if self.plan.legacy or not self.plan.candidates:
            return release.curve.epsilon(self.delta), release.curve
        if self.rule == "random-stopping":
            whole = self.whole
            if whole.epsilon > budget:
                return 0.0, accounting.ParallelCurve.zero()  # a search that never runs
            planned = self.plan.guarantee()
            if whole.exceeded:
                return whole.epsilon, planned.maximum(release.curve)
            return whole.epsilon, planned
        curve = self.plan.budget_curve(budget)
        if curve is None:
            return 0.0, accounting.ParallelCurve.zero()
        if not release.curve.within(curve):  # the ledger exceeds the plan: cover the ledger
            curve = curve.maximum(release.curve)
        return curve.epsilon(self.delta), curve

    def _skip(self, budget: float) -> _Release:
        total = accounting.ParallelCurve.zero()
        included = []
        for trial in self.trials:
            candidate = total + trial.curve
            if self.plan.filter_cost(candidate) <= budget:
                total = candidate
                included.append(trial)
        return _Release(
            self.plan.filter_cost(total),
            sum(t.curve.any() for t in included),
            self._best(included),
            total,
        )

    def _stop_points(self) -> list[_Release]:
        """One stop per moment a trial completes, in time order (see the module docstring)."""
        records = self.experiment.records
        by_id = {t.trial_id: t for t in self.trials}
        stops = []
        for moment in sorted({t.end for t in self.trials if t.completed}):
            accounts = accounting.reduce_ledger(records, until=moment, reserve=True)
            curve = sum((a.curve for a in accounts.values()), accounting.ParallelCurve.zero())
            unknown = [t for t in self.trials if t.trial_id not in accounts and t.start <= moment]
            for trial in unknown:  # results without ledger records: unbounded
                curve = curve + trial.curve
            done = [
                by_id[i] for i in accounts if i in by_id and by_id[i].completed
                and by_id[i].end <= moment
            ]  # fmt: skip
            stops.append(
                _Release(
                    self.plan.filter_cost(curve),
                    sum(a.curve.any() for a in accounts.values()) + len(unknown),
                    self._best(done),
                    curve,
                )
            )
        return stops

    @staticmethod
    def _best(trials: Sequence[_Trial]):
        done = [t for t in trials if t.completed]
        return max(done, key=lambda t: t.val_score).index if done else None

    # what a frontier point costs ------------------------------------------------------------

    def candidate_releases(self) -> list[_Release]:
        """The releases at the budgets the rule tells apart: every stop (stop-time), the one
        bound (random stopping), or, for the skip rule, each launch-order prefix's cost and
        each trial's own — at most `SKIP_GRID` of them, evenly spread (a coarser grid can
        only overstate what a release costs)."""
        if self._candidates is None:
            if self.rule == "stop-time":
                self._candidates = list(self._stops)
            elif self.rule == "random-stopping":
                self._candidates = [self.release(math.inf)]
            else:
                self._candidates = [self._skip(b) for b in self._skip_grid()]
        return self._candidates

    def _skip_grid(self) -> list[float]:
        own = {self.plan.filter_cost(t.curve) for t in self.trials}
        prefixes, total = [], accounting.ParallelCurve.zero()
        for trial in self.trials:
            total = total + trial.curve
            prefixes.append(self.plan.filter_cost(total))
        grid = sorted({b for b in (*prefixes, *own) if math.isfinite(b)})
        if len(grid) > SKIP_GRID:
            step = (len(grid) - 1) / (SKIP_GRID - 1)
            grid = [grid[round(i * step)] for i in range(SKIP_GRID)]
        return grid


def _infinite_curve() -> accounting.ParallelCurve:
    zero = accounting.RdpCurve.zero()
    infinite = accounting.RdpCurve(zero.orders, zero.values + math.inf)
    return accounting.ParallelCurve(infinite, zero)


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
    """The budgets fixed before the search: the plan's declared ones and its own ε."""
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

    Columns: budget, declared (fixed before the search: a DP release; False: chosen after
    seeing results, analyst-only), search_epsilon (what the release is covered by, rounded up),
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
            sweep = _Sweep.of(experiment)
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
    sweeps = [_Sweep.of(e) for e in experiments]
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
        release = sweep.release(low) if low > 0 else _NOTHING
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
        "search_epsilon": accounting.round_up(epsilon, EPSILON_DIGITS),
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
    (analyst-only). ∞ when no budget releases it (e.g. a non-private trial)."""
    releases = _Sweep.of(experiment).candidate_releases()
    trials = experiment.trials

    def cost(accuracy: float) -> float:
        spent = [
            r.cost
            for r in releases
            if r.chosen is not None and trials.at[r.chosen, "val_score"] >= accuracy
        ]
        return accounting.round_up(min(spent), EPSILON_DIGITS) if spent else math.inf

    return frontier["val_score"].map(cost)


def all_experiments_epsilon(experiments: Sequence[Experiment]) -> tuple[float, float]:
    """(ε, δ) of releasing the best model across *all* the experiments: their searches'
    guarantees composed (RDP), at the largest δ among them."""
    total = accounting.ParallelCurve.zero()
    for experiment in experiments:
        total = total + _Sweep.of(experiment).guaranteed(math.inf)[1]
    delta = max(e.delta for e in experiments)
    return total.epsilon(delta), delta
