"""The release rules of the search-adjusted frontier: what one experiment's search would
release, and what covers it, had it been stopped at a budget ε_B (`Sweep`).

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import accounting
from results.load import Experiment

SKIP_GRID = 48


def finite(value) -> bool:
    """A number, neither NaN nor ±∞ (None and non-numbers are not)."""
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


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
class Release:
    """A stop: the trials it covers, the model it releases (or None), what it spent."""

    cost: float
    """The smallest budget at which the rule releases this (analyst-only: data-dependent)."""
    covered: int
    chosen: object | None
    curve: accounting.ParallelCurve


NOTHING = Release(0.0, 0, None, accounting.ParallelCurve.zero())


class Sweep:
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
                    end=float(row["end_time"]) if finite(row.get("end_time")) else math.inf,
                    completed=row["status"] == "completed" and finite(row.get("val_score")),
                    val_score=float(row["val_score"]) if finite(row.get("val_score")) else math.nan,
                )
            )
        self.trials = sorted(trials, key=lambda t: (t.start, t.end))
        if experiment.mode == "random-stopping":
            self.rule = "random-stopping"
        else:
            self.rule = "stop-time" if experiment.adaptive else "skip"
        self._stops = self._stop_points() if self.rule == "stop-time" else None
        self._candidates: list[Release] | None = None
        self._whole: accounting.SearchEpsilon | None = None

    @classmethod
    def of(cls, experiment: Experiment) -> Sweep:
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

    def release(self, budget: float) -> Release:
        """What the rule releases when the search must fit `budget`."""
        if self.rule == "random-stopping":
            whole = self.whole
            if whole.epsilon <= budget:
                curve = self.plan.spent(self.experiment.accounts)
                return Release(whole.epsilon, len(self.trials), self._best(self.trials), curve)
            return NOTHING
        if self.rule == "skip":
            return self._skip(budget)
        fitting = [stop for stop in self._stops if stop.cost <= budget]
        return fitting[-1] if fitting else NOTHING

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

    def _skip(self, budget: float) -> Release:
        total = accounting.ParallelCurve.zero()
        included = []
        for trial in self.trials:
            candidate = total + trial.curve
            if self.plan.filter_cost(candidate) <= budget:
                total = candidate
                included.append(trial)
        return Release(
            self.plan.filter_cost(total),
            sum(t.curve.any() for t in included),
            self._best(included),
            total,
        )

    def _stop_points(self) -> list[Release]:
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
                Release(
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

    def candidate_releases(self) -> list[Release]:
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
