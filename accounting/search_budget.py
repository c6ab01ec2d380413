"""Fitting a search into an ε budget before it runs: the per-trial σ with which the whole
search meets the budget (`plan_noise_multiplier`), how many trials of a fixed σ fit in it
(`max_trials`), and, for random stopping, the distribution of K that costs least
(`choose_trials`: `--trials-distribution auto`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from dp_accounting import dp_event

from accounting.mechanism import (
    AccountingError,
    calibrate_noise,
    dp_sgd_event,
    epsilon,
    round_up,
)
from accounting.selection import SEARCH_MODES, TrialsDistribution


def plan_noise_multiplier(
    *,
    budget_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    mode: str,
    num_trials: int | None = None,
    distribution: TrialsDistribution | None = None,
    accountant: str = "rdp",
) -> float:
    """The per-trial σ with which the whole search meets `budget_epsilon` at `delta`.

    composition: `num_trials` trials of (q, T) compose; random-stopping: K ~ `distribution`
    trials, only the best released; none: one trial meets the budget (not the search).
    For spaces whose trials differ in q or T, pass the largest of each (the worst case).
    """
    if steps < 1 or int(steps) != steps:
        raise AccountingError(f"steps must be a whole number ≥ 1 (got {steps}).")
    dp_sgd_event(sample_rate=sample_rate, noise_multiplier=1.0, steps=steps)  # validates q

    def trial(sigma: float) -> dp_event.DpEvent:
        return dp_sgd_event(sample_rate=sample_rate, noise_multiplier=sigma, steps=steps)

    if mode == "composition":
        if num_trials is None or num_trials < 1 or int(num_trials) != num_trials:
            raise AccountingError(f"composition needs a number of trials ≥ 1 (got {num_trials}).")
        make_event = lambda sigma: dp_event.SelfComposedDpEvent(trial(sigma), int(num_trials))  # noqa: E731
        what = f"{num_trials} trials of q={sample_rate} and {steps} steps"
    elif mode == "random-stopping":
        if distribution is None:
            raise AccountingError("random-stopping needs the distribution of the number of trials.")
        accountant = "rdp"  # PLD cannot express RepeatAndSelect (see search_epsilon)
        make_event = lambda sigma: dp_event.RepeatAndSelectDpEvent(  # noqa: E731
            trial(sigma), distribution.mean, distribution.shape
        )
        what = f"K ~ {distribution.describe()} trials of q={sample_rate} and {steps} steps"
    elif mode == "none":
        make_event, what = trial, f"one trial of q={sample_rate} and {steps} steps"
    else:
        raise AccountingError(
            f"unknown search accounting {mode!r}; choose one of: {', '.join(SEARCH_MODES)}."
        )
    return calibrate_noise(
        make_event, target_epsilon=budget_epsilon, delta=delta, accountant=accountant, what=what
    )


def max_trials(
    *,
    budget_epsilon: float,
    delta: float,
    sample_rate: float,
    noise_multiplier: float,
    steps: int,
    accountant: str = "rdp",
) -> int:
    """How many trials of (q, σ, T) compose within `budget_epsilon` (0: not even one)."""
    trial = dp_sgd_event(sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps)
    if not (budget_epsilon > 0 and math.isfinite(budget_epsilon)):
        raise AccountingError(f"the ε budget must be a positive number (got {budget_epsilon}).")

    def fits(k: int) -> bool:
        event = dp_event.SelfComposedDpEvent(trial, k)
        return epsilon(event, delta=delta, accountant=accountant) <= budget_epsilon

    if not fits(1):
        return 0
    low, high = 1, 2  # fits(low), and we look for the first high that does not fit
    while fits(high):
        low, high = high, high * 2
        if high > 1_000_000:
            return low  # more trials than anyone runs; avoids an endless search at tiny q
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return low


AUTO_ETAS = (1.0, 0.5, 0.25, 0.1, 0.05)
"""Shapes η of the truncated negative binomial that `auto` compares (η = 1 is the geometric)."""


@dataclass(frozen=True)
class TrialsChoice:
    """What `--trials-distribution auto` chose, and what every alternative would have cost."""

    chosen: TrialsDistribution
    costs: tuple[tuple[TrialsDistribution, float], ...]
    """Each compared distribution with its cost (lower is better)."""
    measure: str
    """What the cost is: "σ" (the per-trial noise that meets a budget) or "ε" (the search's)."""

    def describe(self) -> str:
        """One sentence: what was chosen and why, with the alternatives' costs."""
        best = dict(self.costs)[self.chosen]
        others = ", ".join(
            f"{d.describe()} {self.measure} = {_shown(c)}"
            for d, c in self.costs
            if d != self.chosen
        )
        what = "per-trial σ that meets the budget" if self.measure == "σ" else "search ε"
        empty = ""
        if self.chosen.kind == "poisson":  # the one distribution that can release nothing
            chance = math.exp(-self.chosen.mean)
            empty = f"; it draws K = 0, releasing nothing, with probability {chance:.2g}"
        return (
            f"auto chose K ~ {self.chosen.describe()}: the smallest {what}, "
            f"{self.measure} = {_shown(best)} (vs {others}){empty}"
        )


def _shown(value: float) -> str:
    # Rounded up: an ε shown must never be below the bound, and a σ shown, if copied, must not
    # spend more than planned.
    return f"{round_up(value, 4):g}"


def auto_candidates(mean: float) -> tuple[TrialsDistribution, ...]:
    """The distributions of K with mean `mean` that `auto` compares: Poisson, the truncated
    negative binomial at `AUTO_ETAS` (η = 1 as the geometric), and the logarithmic (η → 0).
    Ordered from the lightest tail to the heaviest: ties go to the lighter tail."""
    negative_binomials = [
        TrialsDistribution(kind="negative-binomial", mean=mean, eta=eta) for eta in AUTO_ETAS[1:]
    ]
    return (
        TrialsDistribution(kind="poisson", mean=mean),
        TrialsDistribution(kind="geometric", mean=mean),
        *negative_binomials,
        TrialsDistribution(kind="logarithmic", mean=mean),
    )


def choose_trials(
    mean: float, cost: Callable[[TrialsDistribution], float], *, measure: str
) -> TrialsChoice:
    """The distribution of K (mean `mean`) with the lowest `cost`: the per-trial σ that meets
    a budget (measure "σ"), or the search's ε for given trials (measure "ε").

    The choice depends only on the planned mechanisms, the budget and the mean, never on the
    data or on K (drawn after it), so making it costs no privacy.
    """
    costs = tuple((d, float(cost(d))) for d in auto_candidates(mean))
    chosen = min(costs, key=lambda dc: dc[1])[0]  # min keeps the first of equal costs
    return TrialsChoice(chosen=chosen, costs=costs, measure=measure)
