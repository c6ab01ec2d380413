"""Accuracy-versus-ε frontiers: per trial, and adjusted for the search that produced them.

The per-trial frontier answers "which trials are best for their own ε" — but a trial's ε
covers that trial alone, while releasing the *selected* trial costs the whole search (DESIGN.md,
honest-accounting rule 2). The search-adjusted frontier answers the question a privacy review
asks instead: "had the search been given a total budget ε_B, which model would it have released,
and how accurate is it?" Its ε covers every trial that could have influenced the release:

- random search + FIFO (trials never depend on each other's results): trials in launch order,
  each one joining if the composition still fits ε_B (what `search/run.py --target-epsilon`
  does: a trial that would overspend never starts) — `rule = "skip"`;
- adaptive searches (TPE, ASHA): the search is stopped at the last moment t its ε fits, and the
  ε composes every trial that had *reported* by t with all the steps it ever ran — information
  reaches the searcher and scheduler only through reports, so nothing else can have shaped the
  release, the best trial completed by t — `rule = "stop-time"`;
- random stopping (Papernot & Steinke): one bound for the whole search; a budget below it
  releases nothing — `rule = "random-stopping"`.

Composition uses RDP curves (`accounting.RdpCurve`): a subset's ε is one vector sum, so sweeping
every stopping point of a long search stays cheap.
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
    curve: accounting.RdpCurve
    first_report: float
    end: float
    completed: bool
    val_score: float
    """The search metric on validation data (accuracy, or AUC)."""
    spent: bool
    """Whether it executed any step (counts toward `trials_covered`)."""


@dataclass(frozen=True)
class _Release:
    """What a rule releases: the ε it spent, the trials it covers, the chosen trial (or None)."""

    epsilon: float
    covered: int
    chosen: object | None


class _Sweep:
    """One experiment's release rule, evaluated at any budget."""

    def __init__(self, experiment: Experiment) -> None:
        self.experiment = experiment
        self.delta = experiment.delta
        events = accounting.executed_events(experiment.records)
        table = experiment.trials
        trials = []
        for index, row in table.iterrows():
            event = events.get(row["trial_id"])
            curve = accounting.RdpCurve.of(event) if event is not None else _infinite_curve()
            first = row.get("first_report_time", math.nan)
            trials.append(
                _Trial(
                    index=index,
                    curve=curve,
                    # A spend with no known report time might have been seen at any time.
                    first_report=-math.inf if not _finite(first) else float(first),
                    end=float(row["end_time"]) if _finite(row.get("end_time")) else math.inf,
                    completed=row["status"] == "completed" and _finite(row.get("val_score")),
                    val_score=float(row["val_score"])
                    if _finite(row.get("val_score"))
                    else math.nan,
                    spent=bool(curve.values.any()),
                )
            )
        self.trials = sorted(trials, key=lambda t: (t.first_report, t.end))
        if experiment.mode == "random-stopping":
            self.rule = "random-stopping"
        else:
            self.rule = "stop-time" if experiment.adaptive else "skip"
        self._stops = self._stop_points() if self.rule == "stop-time" else None
        self._candidates: list[_Release] | None = None
        self._whole: float | None = None

    @classmethod
    def of(cls, experiment: Experiment) -> _Sweep:
        """One sweep per experiment, reused by every table of a report."""
        sweep = experiment.__dict__.get("_sweep")
        if sweep is None:
            sweep = experiment.__dict__["_sweep"] = cls(experiment)
        return sweep

    # each rule ------------------------------------------------------------------------------

    def release(self, budget: float) -> _Release:
        if self.rule == "random-stopping":
            if self._whole is None:
                self._whole = self.experiment.search().epsilon
            spent = self._whole
            if spent <= budget:
                return _Release(spent, sum(t.spent for t in self.trials), self._best(self.trials))
            return _Release(0.0, 0, None)
        if self.rule == "skip":
            return self._skip(budget)
        fitting = [stop for stop in self._stops if stop.epsilon <= budget]
        return fitting[-1] if fitting else _Release(0.0, 0, None)

    def _skip(self, budget: float) -> _Release:
        total = accounting.RdpCurve.zero()
        included = []
        for trial in self.trials:
            candidate = total + trial.curve
            if candidate.epsilon(self.delta) <= budget:
                total = candidate
                included.append(trial)
        return _Release(
            total.epsilon(self.delta), sum(t.spent for t in included), self._best(included)
        )

    def _stop_points(self) -> list[_Release]:
        """One release per moment a trial completes, in time order (ε never decreases)."""
        moments = sorted({t.end for t in self.trials if t.completed})
        by_report = iter(self.trials)  # sorted by first report
        by_end = iter(sorted((t for t in self.trials if t.completed), key=lambda t: t.end))
        pending_report, pending_end = next(by_report, None), next(by_end, None)
        total, covered, best = accounting.RdpCurve.zero(), 0, None
        stops = []
        for moment in moments:
            while pending_report is not None and pending_report.first_report <= moment:
                total = total + pending_report.curve
                covered += pending_report.spent
                pending_report = next(by_report, None)
            while pending_end is not None and pending_end.end <= moment:
                if best is None or pending_end.val_score > best.val_score:
                    best = pending_end
                pending_end = next(by_end, None)
            stops.append(_Release(total.epsilon(self.delta), covered, best and best.index))
        return stops

    @staticmethod
    def _best(trials: Sequence[_Trial]):
        done = [t for t in trials if t.completed]
        return max(done, key=lambda t: t.val_score).index if done else None

    # what a frontier point costs ------------------------------------------------------------

    def candidate_releases(self) -> list[_Release]:
        """The releases at the budgets the rule tells apart: every stop (stop-time), the one
        bound (random stopping), or, for the skip rule, each trial's own ε and the ε of every
        launch-order prefix — at most `SKIP_GRID` of them, evenly spread, as each costs a pass
        over the trials (a coarser grid can only overstate what a release costs)."""
        if self._candidates is None:
            if self.rule == "stop-time":
                self._candidates = list(self._stops)
            elif self.rule == "random-stopping":
                self._candidates = [self.release(math.inf)]
            else:
                self._candidates = [self._skip(b) for b in self._skip_grid()]
        return self._candidates

    def _skip_grid(self) -> list[float]:
        own = {t.curve.epsilon(self.delta) for t in self.trials}
        prefixes, total = [], accounting.RdpCurve.zero()
        for trial in self.trials:
            total = total + trial.curve
            prefixes.append(total.epsilon(self.delta))
        grid = sorted({b for b in (*prefixes, *own) if math.isfinite(b)})
        if len(grid) > SKIP_GRID:
            step = (len(grid) - 1) / (SKIP_GRID - 1)
            grid = [grid[round(i * step)] for i in range(SKIP_GRID)]
        return grid


def _infinite_curve() -> accounting.RdpCurve:
    zero = accounting.RdpCurve.zero()
    return accounting.RdpCurve(zero.orders, zero.values + math.inf)


RELEASE_COLUMNS = (
    "trial_id", "reported_epsilon", "val_score", "test_score", "val_accuracy", "test_accuracy",
    "val_auc", "test_auc", "test_worst_class_accuracy", "test_class_gap", "test_worst_group",
    "test_worst_group_accuracy", "test_group_gap", "test_worst_label_auc", "test_label_auc_gap",
    "test_worst_group_by_auc", "test_worst_group_auc", "test_group_auc_gap",
)  # fmt: skip
"""What a search-adjusted row says about the model it releases."""


def default_budgets(experiments: Sequence[Experiment]) -> list[float]:
    """The trial-ε levels present (completed private trials; when there are at most
    `MAX_LEVELS`), each search's whole ε, and every search ε at which the released model gets
    better (the steps of the frontier)."""
    budgets = set()
    for experiment in experiments:
        trials = experiment.trials
        done = trials[(trials["status"] == "completed") & trials["private"].astype(bool)]
        levels = {float(e) for e in done["reported_epsilon"] if _finite(e)}
        if len(levels) <= MAX_LEVELS:  # a few targets (1, 2, 4, 8), not a σ searched freely
            budgets.update(levels)
        sweep = _Sweep.of(experiment)
        whole = sweep.release(math.inf).epsilon
        if 0 < whole < math.inf:
            budgets.add(accounting.round_up(whole, EPSILON_DIGITS))
        best = -math.inf
        for release in sorted(sweep.candidate_releases(), key=lambda r: r.epsilon):
            accuracy = _released_accuracy(experiment, release)
            if accuracy > best:  # a step of the frontier: a better model for more ε
                budgets.add(accounting.round_up(release.epsilon, EPSILON_DIGITS))
                best = accuracy
    return sorted(b for b in budgets if 0 < b < math.inf)


def _released_accuracy(experiment: Experiment, release: _Release) -> float:
    if release.chosen is None:
        return -math.inf
    return float(experiment.trials.at[release.chosen, "val_score"])


def search_adjusted_frontier(
    experiments: Experiment | Sequence[Experiment],
    budgets: Sequence[float] | None = None,
    *,
    per_experiment: bool = False,
) -> pd.DataFrame:
    """Per budget ε_B: the model the search would release if ε_B had to cover the search.

    With several experiments, each row is the best (by validation score) release among the
    experiments at that budget, and its ε covers the experiment it names (`per_experiment=True`
    gives every experiment's row instead). Columns: budget, search_epsilon (spent, rounded up),
    trials_covered, rule, experiment, and the released trial's `RELEASE_COLUMNS`.
    """
    if isinstance(experiments, Experiment):
        experiments = [experiments]
    budgets = sorted(set(budgets if budgets is not None else default_budgets(experiments)))
    for budget in budgets:
        if not budget > 0:
            raise ValueError(f"a budget ε must be positive (got {budget}).")
    rows = []
    for experiment in experiments:
        sweep = _Sweep.of(experiment)
        for budget in budgets:
            rows.append(_row(experiment, sweep, budget, sweep.release(budget)))
    table = pd.DataFrame(rows, columns=_COLUMNS)
    table = table.drop(columns=[c for c in RELEASE_COLUMNS if c != "trial_id"
                                and table[c].isna().all()])  # fmt: skip
    if per_experiment or len(experiments) == 1 or table.empty:
        return table.reset_index(drop=True)
    best = (
        table.assign(_acc=table["val_score"].fillna(-1.0))
        .sort_values(["budget", "_acc", "search_epsilon"], ascending=[True, False, True])
        .groupby("budget", sort=True)
        .head(1)
        .drop(columns="_acc")
    )
    return best.reset_index(drop=True)


_COLUMNS = ["budget", "search_epsilon", "trials_covered", "rule", "experiment", *RELEASE_COLUMNS]


def _row(experiment: Experiment, sweep: _Sweep, budget: float, release: _Release) -> dict:
    row = {
        "budget": budget,
        "search_epsilon": accounting.round_up(release.epsilon, EPSILON_DIGITS),
        "trials_covered": release.covered,
        "rule": sweep.rule,
        "experiment": experiment.name,
    }
    trials = experiment.trials
    for column in RELEASE_COLUMNS:
        value = None
        if release.chosen is not None and column in trials:
            value = trials.at[release.chosen, column]
        row[column] = value
    return row


def search_epsilon_to_release(experiment: Experiment, frontier: pd.DataFrame) -> pd.Series:
    """For each frontier row of `experiment`: the smallest search ε at which the experiment's
    rule releases a model at least as good (validation score) — what that point really costs.
    ∞ when no budget releases it (e.g. a non-private trial)."""
    releases = _Sweep.of(experiment).candidate_releases()
    trials = experiment.trials

    def cost(accuracy: float) -> float:
        spent = [
            r.epsilon
            for r in releases
            if r.chosen is not None and trials.at[r.chosen, "val_score"] >= accuracy
        ]
        return accounting.round_up(min(spent), EPSILON_DIGITS) if spent else math.inf

    return frontier["val_score"].map(cost)


def all_experiments_epsilon(experiments: Sequence[Experiment]) -> tuple[float, float]:
    """(ε, δ) of releasing the best model across *all* the experiments: their searches
    composed (RDP), at the largest δ among them."""
    total = accounting.RdpCurve.zero()
    for experiment in experiments:
        events = list(accounting.executed_events(experiment.records).values())
        if experiment.mode == "random-stopping":
            if experiment.plan.get("noise_multiplier") is not None:
                events.append(accounting.plan_worst_case_event(experiment.plan))
            total = total + accounting.repeat_and_select_curve(
                events, distribution=accounting.plan_distribution(experiment.plan)
            )
        else:
            total = sum((accounting.RdpCurve.of(e) for e in events), total)
    delta = max(e.delta for e in experiments)
    return total.epsilon(delta), delta
