"""Search-level ε: what it costs to release the model a hyperparameter search selects.

Three modes (../shared/DESIGN.md, "The honest-accounting rules"):

- ``composition``: every trial that ran composes (adaptive searchers, early stopping, or all
  results released). Always valid.
- ``random-stopping``: Papernot & Steinke (ICLR 2022, arXiv 2110.03620). The number of trials K
  is random (Poisson, or truncated negative binomial with shape η: η=1 geometric, η=0
  logarithmic), the candidates are i.i.d. random-search draws, and only the best is released.
  Accounted with RDP (PLD cannot express it).
- ``none``: the largest single trial's ε, for analysis; it does *not* cover the search.

Built on the RDP curves of `accounting.rdp_curves`; fitting a search into a budget before it
runs (its σ, or how many trials fit) is `accounting.search_budget`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dp_accounting import dp_event

from accounting.dp_accounting_internals import (
    repeat_and_select_rdp,
    truncated_negative_binomial_gamma,
)
from accounting.mechanism import AccountingError, check_accountant, check_delta, epsilon
from accounting.names import SEARCH_MODES, TRIAL_DISTRIBUTIONS
from accounting.rdp_curves import ParallelCurve, RdpCurve, pointwise_max_rdp

SEARCH_COVERS = {
    "composition": "the whole search: every trial's executed steps, composed",
    "random-stopping": "the whole search: K random trials (Papernot & Steinke 2022), only the "
    "best one released",
    "none": "ONE trial only, NOT the search: analysis only, not a releasable guarantee",
}
"""What a `SearchEpsilon` of each mode covers, for its `covers` sentence."""


@dataclass(frozen=True, kw_only=True)
class TrialsDistribution:
    """The distribution the system draws the number of random-search trials K from."""

    kind: str
    """poisson, geometric, logarithmic, or negative-binomial (truncated, shape η)."""
    mean: float
    """E[K], ≥ 1."""
    eta: float | None = None
    """Shape η > 0 of the truncated negative binomial (only for negative-binomial)."""

    def __post_init__(self) -> None:
        if self.kind not in TRIAL_DISTRIBUTIONS:
            raise AccountingError(
                f"unknown trials distribution {self.kind!r}; choose one of: "
                f"{', '.join(TRIAL_DISTRIBUTIONS)}."
            )
        if not (math.isfinite(self.mean) and self.mean >= 1):
            raise AccountingError(f"the mean number of trials must be ≥ 1 (got {self.mean}).")
        if self.kind == "negative-binomial":
            if self.eta is None or not (math.isfinite(self.eta) and self.eta > 0):
                raise AccountingError(
                    f"negative-binomial needs --eta > 0 (got {self.eta}); η=1 is the geometric "
                    "and η→0 the logarithmic distribution."
                )
        elif self.eta is not None:
            raise AccountingError(f"--eta applies to negative-binomial only, not {self.kind}.")

    @property
    def shape(self) -> float:
        """dp_accounting's `RepeatAndSelectDpEvent.shape`: ∞ Poisson, 1 geometric, 0 log."""
        return {"poisson": math.inf, "geometric": 1.0, "logarithmic": 0.0}.get(self.kind, self.eta)

    def sample(self, rng: np.random.Generator) -> int:
        """Draw K. Poisson may give 0 (then nothing is released, at no privacy cost)."""
        if self.kind == "poisson":
            return int(rng.poisson(self.mean))
        gamma = truncated_negative_binomial_gamma(shape=self.shape, mean=self.mean)
        if self.kind == "logarithmic":
            return int(rng.logseries(1.0 - gamma)) if gamma < 1 else 1
        # Truncated negative binomial: NB(η, γ) conditioned on K ≥ 1 (rejection is exact).
        while True:
            k = int(rng.negative_binomial(self.shape, gamma))
            if k >= 1:
                return k

    def describe(self) -> str:
        shape = f", η={self.eta:g}" if self.kind == "negative-binomial" else ""
        return f"{self.kind} (mean {self.mean:g}{shape})"


@dataclass(frozen=True)
class SearchEpsilon:
    """The ε of a search, with what it covers."""

    epsilon: float
    delta: float
    mode: str
    accountant: str
    num_trials: int
    max_trial_epsilon: float
    """The largest single trial's ε (what a report that ignored the search would show)."""
    covers: str
    """One sentence on what `epsilon` covers."""
    spent: float | None = None
    """What the ledger shows was spent (analyst-only: it depends on what the data made the
    search do); `epsilon` is the plan's guarantee, fixed before the search."""
    exceeded: bool = False
    """The ledger shows more than the plan allowed (then `epsilon` covers the ledger)."""


def search_epsilon(
    trials: Sequence[dp_event.DpEvent],
    *,
    mode: str,
    delta: float,
    accountant: str = "rdp",
    distribution: TrialsDistribution | None = None,
) -> SearchEpsilon:
    """ε at `delta` of releasing the selected model of a search whose trials ran `trials`.

    Args:
        trials: each trial's executed event (see `trial_event`); stopped and failed trials
            with the steps they really took.
        mode: composition, random-stopping, or none.
        distribution: random-stopping only: the distribution K was drawn from. Pass as
            `trials` every mechanism a random-search draw could run (the realised trials plus
            the space's planned worst case), since the theorem needs a bound on all of them.
    """
    check_delta(delta)
    check_accountant(accountant)
    if mode not in SEARCH_MODES:
        raise AccountingError(
            f"unknown search accounting {mode!r}; choose one of: {', '.join(SEARCH_MODES)}."
        )
    if mode == "random-stopping":
        # NOTE: Papernot & Steinke's theorem is stated in RDP and PLD cannot express the event,
        # so random stopping is accounted with RDP whatever was asked; `accountant` in the
        # result says which was used.
        accountant = "rdp"
    if accountant == "rdp":
        # RDP composes by adding curves (what RdpAccountant does for a ComposedDpEvent); the
        # per-event curves are cached, so a long search costs one curve per distinct trial.
        curves = [RdpCurve.of(event) for event in trials]
        trial_epsilons = [curve.epsilon(delta) for curve in curves]
    else:
        trial_epsilons = [epsilon(event, delta=delta, accountant=accountant) for event in trials]
    max_trial = max(trial_epsilons, default=0.0)
    if mode == "none":
        value = max_trial
    elif mode == "composition" and accountant == "rdp":
        value = sum(curves, RdpCurve.zero()).epsilon(delta)
    elif mode == "composition":
        value = epsilon(dp_event.ComposedDpEvent(list(trials)), delta=delta, accountant=accountant)
    else:
        if distribution is None:
            raise AccountingError(
                "random-stopping needs the distribution the number of trials was drawn from."
            )
        value = repeat_and_select_epsilon(trials, distribution=distribution, delta=delta)
    return SearchEpsilon(
        epsilon=value,
        delta=delta,
        mode=mode,
        accountant=accountant,
        num_trials=len(trials),
        max_trial_epsilon=max_trial,
        covers=SEARCH_COVERS[mode]
        + (f"; K ~ {distribution.describe()}" if mode == "random-stopping" else ""),
    )


def repeat_and_select_epsilon(
    candidates: Sequence[dp_event.DpEvent], *, distribution: TrialsDistribution, delta: float
) -> float:
    """ε of running a random number K of candidates and releasing only the best (RDP).

    One candidate mechanism: dp_accounting's `RepeatAndSelectDpEvent`. Several (random search
    over q, σ or T): the pointwise maximum of their RDP curves bounds the RDP of one random
    draw — a data-independent mixture of them — and the theorem is applied to that bound.
    """
    distinct: list[dp_event.DpEvent] = []
    for event in candidates:  # equality, not hashing: composed events hold lists
        if event not in distinct:
            distinct.append(event)
    if not distinct or all(isinstance(e, dp_event.NoOpDpEvent) for e in distinct):
        return 0.0
    if len(distinct) == 1:
        event = dp_event.RepeatAndSelectDpEvent(distinct[0], distribution.mean, distribution.shape)
        return epsilon(event, delta=delta, accountant="rdp")
    return repeat_and_select_curve(distinct, distribution=distribution).epsilon(delta)


def repeat_and_select_curve(
    candidates: Sequence[dp_event.DpEvent], *, distribution: TrialsDistribution
) -> RdpCurve:
    """The RDP curve of a random-stopping search over `candidates` (see
    `repeat_and_select_epsilon`): it composes with other searches by `+`."""
    live = [e for e in candidates if not isinstance(e, dp_event.NoOpDpEvent)]
    if not live:
        return RdpCurve.zero()
    orders, rdp = pointwise_max_rdp(live)
    selected = repeat_and_select_rdp(orders, rdp, mean=distribution.mean, shape=distribution.shape)
    return RdpCurve(orders, selected)


def parallel_search_curve(
    trials: Sequence[ParallelCurve],
    *,
    mode: str,
    distribution: TrialsDistribution | None = None,
) -> ParallelCurve:
    """The curve of a search over `trials` (each trial's, or each candidate's bound).

    composition: the sum; random-stopping: Papernot & Steinke's bound applied to each part's
    pointwise maximum over the candidates (a neighbouring pair differs in one part, and for
    that pair every candidate's divergence is bounded by that part's maximum, so the theorem
    applies part by part); none: the largest single trial (analysis only).
    """
    if mode not in SEARCH_MODES:
        raise AccountingError(
            f"unknown search accounting {mode!r}; choose one of: {', '.join(SEARCH_MODES)}."
        )
    if mode == "composition":
        return sum(trials, ParallelCurve.zero())
    bound = ParallelCurve.zero()
    for trial in trials:
        bound = bound.maximum(trial)
    if mode == "none":
        return bound
    if distribution is None:
        raise AccountingError("random-stopping needs the distribution of the number of trials.")
    return ParallelCurve(
        _repeat_and_select(bound.train, distribution),
        _repeat_and_select(bound.validation, distribution),
    )


def _repeat_and_select(curve: RdpCurve, distribution: TrialsDistribution) -> RdpCurve:
    if not curve.values.any():
        return curve
    selected = repeat_and_select_rdp(
        curve.orders, curve.values, mean=distribution.mean, shape=distribution.shape
    )
    return RdpCurve(curve.orders, selected)
