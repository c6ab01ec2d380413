"""Search-level ε: what it costs to release the model a hyperparameter search selects.

Three modes (../shared/DESIGN.md, "The honest-accounting rules"):

- ``composition``: every trial that ran composes (adaptive searchers, early stopping, or all
  results released). Always valid.
- ``random-stopping``: Papernot & Steinke (ICLR 2022, arXiv 2110.03620). The number of trials K
  is random (Poisson, or truncated negative binomial with shape η: η=1 geometric, η=0
  logarithmic), the candidates are i.i.d. random-search draws, and only the best is released.
  Accounted with RDP (PLD cannot express it).
- ``none``: the largest single trial's ε, for analysis; it does *not* cover the search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant, compute_epsilon
from scipy import optimize

from accounting.dp_accounting_internals import (
    repeat_and_select_rdp,
    truncated_negative_binomial_gamma,
)
from accounting.mechanism import (
    AccountingError,
    _check_accountant,
    _check_delta,
    _quiet_dp_accounting,
    calibrate_noise,
    dp_sgd_event,
    epsilon,
)

SEARCH_MODES = ("composition", "random-stopping", "none")
TRIAL_DISTRIBUTIONS = ("poisson", "geometric", "logarithmic", "negative-binomial")

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


def trial_event(parts: Sequence[tuple[float, float, int]]) -> dp_event.DpEvent:
    """One trial's executed mechanism from its (sample_rate, noise_multiplier, steps) parts.

    A trial normally has one part; retries with changed settings add more. σ = 0 means the
    trial ran without privacy: its ε is ∞, and so is that of any search containing it.
    """
    events = []
    for sample_rate, noise_multiplier, steps in parts:
        if steps == 0:
            continue
        if noise_multiplier == 0:
            events.append(dp_event.NonPrivateDpEvent())
        else:
            events.append(
                dp_sgd_event(
                    sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps
                )
            )
    if not events:
        return dp_event.NoOpDpEvent()
    return events[0] if len(events) == 1 else dp_event.ComposedDpEvent(events)


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
    _check_delta(delta)
    _check_accountant(accountant)
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


def _pointwise_max_rdp(events: Sequence[dp_event.DpEvent]) -> tuple[np.ndarray, np.ndarray]:
    """The RDP curve max_i RDP_i(α) over the accountant's default orders α."""
    curves = [RdpCurve.of(event) for event in events]
    return curves[0].orders, np.max(np.stack([c.values for c in curves]), axis=0)


@dataclass(frozen=True, eq=False)
class RdpCurve:
    """A mechanism's RDP curve ε_α over dp_accounting's default orders α.

    Composition adds curves (what `RdpAccountant.compose` does internally), so the ε of any
    subset of trials costs one vector sum and one conversion instead of re-running the
    accountant: the results layer sweeps many subsets of a search this way.
    """

    orders: np.ndarray
    values: np.ndarray

    def __post_init__(self) -> None:
        for array in (self.orders, self.values):
            array.setflags(write=False)  # shared through the cache below: never mutate

    @classmethod
    def of(cls, event: dp_event.DpEvent) -> RdpCurve:
        # Composition adds curves and self-composition multiplies them, exactly as
        # RdpAccountant does internally (`_rdp += count * rdp`): computing the inner event once
        # lets every step count of one (q, σ) share it (a search's partial trials, candidates).
        if isinstance(event, dp_event.NoOpDpEvent):
            return cls.zero()
        if isinstance(event, dp_event.SelfComposedDpEvent):
            inner = cls.of(event.event)
            return cls(inner.orders, event.count * inner.values)
        if isinstance(event, dp_event.ComposedDpEvent):
            total = cls.zero()
            for part in event.events:
                total = total + cls.of(part)
            return total
        key = repr(event)  # events are immutable; their repr spells out every parameter
        if key not in _CURVE_CACHE:
            accountant = RdpAccountant()
            with _quiet_dp_accounting():
                accountant.compose(event)
            if len(_CURVE_CACHE) > 20_000:
                _CURVE_CACHE.clear()
            _CURVE_CACHE[key] = cls(
                np.array(accountant.orders, dtype=np.float64),
                np.array(accountant.rdp, dtype=np.float64),
            )
        return _CURVE_CACHE[key]

    @classmethod
    def zero(cls) -> RdpCurve:
        orders = np.asarray(RdpAccountant().orders, dtype=np.float64)
        return cls(orders, np.zeros_like(orders))

    def __add__(self, other: RdpCurve) -> RdpCurve:
        """The curve of running both mechanisms (composition)."""
        if not np.array_equal(self.orders, other.orders):
            raise AccountingError("RDP curves over different orders cannot be composed.")
        return RdpCurve(self.orders, self.values + other.values)

    def epsilon(self, delta: float) -> float:
        """ε at `delta`, by the same conversion `RdpAccountant.get_epsilon` uses."""
        _check_delta(delta)
        if not np.any(self.values):
            return 0.0
        with _quiet_dp_accounting():
            value, _ = compute_epsilon(self.orders, self.values, delta)
        return float(value)


_CURVE_CACHE: dict[str, RdpCurve] = {}


@dataclass(frozen=True, eq=False)
class ParallelCurve:
    """The RDP of a search whose trials read two disjoint parts of the private data set: the
    training part (DP-SGD steps) and the validation part (noisy validation scores).

    ε of the whole search = max(ε(train), ε(validation)) at the same δ, not the ε of their
    sum. Proof sketch (parallel composition, add/remove neighbours): each record goes to
    one part by a keyed hash of its own content (trainers/data.py), so adding or removing one
    record changes exactly one part and leaves the other identical. Treat the search as an
    adaptive sequence of mechanisms whose outputs are every noisy gradient (hence every
    intermediate model: DP-SGD's analysis releases them all) and every noisy validation score;
    each mechanism reads one part and the earlier outputs. If the neighbours differ in the
    training part, every validation mechanism has the same output distribution on both given
    the earlier outputs (same validation records, same model), so its Rényi divergence is 0 and
    adaptive composition gives Σ train(α) (the privacy loss of the whole transcript is the
    sum of the training mechanisms' losses alone); symmetrically Σ validation(α) if they
    differ in the validation part. Every neighbouring pair is therefore (ε, δ)-indistinguishable
    with ε = ε(Σ train) or ε(Σ validation), each converted from its own curve at δ, so
    max(ε(train), ε(validation)) holds for all pairs. (The pointwise maximum of the two curves,
    max(train(α), validation(α)), bounds every pair's RDP at every order too; converting it
    gives a looser ε.)
    With no validation releases the result equals plain composition (tests compare it with
    dp_accounting's ComposedDpEvent); it is never larger than the ε of both parts composed.
    """

    train: RdpCurve
    validation: RdpCurve

    @classmethod
    def zero(cls) -> ParallelCurve:
        return cls(RdpCurve.zero(), RdpCurve.zero())

    @classmethod
    def of(
        cls, train: dp_event.DpEvent, validation: dp_event.DpEvent | None = None
    ) -> ParallelCurve:
        """A trial's curve from its training event and its validation releases' event."""
        return cls(
            RdpCurve.of(train),
            RdpCurve.zero() if validation is None else RdpCurve.of(validation),
        )

    def __add__(self, other: ParallelCurve) -> ParallelCurve:
        """Both trials run (composition within each part)."""
        return ParallelCurve(self.train + other.train, self.validation + other.validation)

    def __mul__(self, times: int) -> ParallelCurve:
        """`times` such trials composed."""
        return ParallelCurve(
            RdpCurve(self.train.orders, self.train.values * times),
            RdpCurve(self.validation.orders, self.validation.values * times),
        )

    def maximum(self, other: ParallelCurve) -> ParallelCurve:
        """Pointwise maximum in each part: a curve that bounds either mechanism."""
        return ParallelCurve(
            RdpCurve(self.train.orders, np.maximum(self.train.values, other.train.values)),
            RdpCurve(
                self.validation.orders,
                np.maximum(self.validation.values, other.validation.values),
            ),
        )

    def epsilon(self, delta: float) -> float:
        """max(ε(train), ε(validation)) at `delta` (see the class docstring)."""
        return max(self.train.epsilon(delta), self.validation.epsilon(delta))

    def within(self, bound: ParallelCurve) -> bool:
        """Whether this curve lies below `bound` at every order in both parts: the test of a
        Rényi filter (Feldman & Zrnic 2021), which keeps a search's RDP under a curve fixed in
        advance whatever the data made the search do."""
        return all(
            bool(np.all(mine.values <= theirs.values * (1 + _RTOL) + _ATOL))
            for mine, theirs in ((self.train, bound.train), (self.validation, bound.validation))
        )

    def any(self) -> bool:
        """Whether this curve spends anything."""
        return bool(self.train.values.any() or self.validation.values.any())


# Curves summed in another order differ in the last bits; a filter must not refuse for that.
_RTOL, _ATOL = 1e-9, 1e-12


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


def calibrate_curve(
    make_curve, *, target_epsilon: float, delta: float, what: str = "this search"
) -> float:
    """The smallest σ (relative precision 1e-6) whose `make_curve(σ)` (an `RdpCurve` or
    `ParallelCurve`, ε falling as σ grows) meets `target_epsilon` at δ; ε(σ) ≤ target always.

    Bisection on curves, for what dp_accounting's calibration cannot express (the maximum of
    two parts); tests check it against `calibrate_noise` where both apply.
    """
    _check_delta(delta)
    if not (target_epsilon > 0.0 and math.isfinite(target_epsilon)):
        raise AccountingError(
            f"target_epsilon must be a positive finite number (got {target_epsilon!r})."
        )

    def excess(sigma: float) -> float:
        return make_curve(sigma).epsilon(delta) - target_epsilon

    lowest = 0.1  # as calibrate_noise: below 0.1 there is no privacy worth the name
    if excess(lowest) <= 0:
        return lowest
    upper = 1.0
    while excess(upper) > 0:
        upper *= 2.0
        if upper > 1e6:
            raise AccountingError(
                f"no noise multiplier reaches ε={target_epsilon} at δ={delta} with {what}; "
                "raise the ε budget, or lower the batch size, steps or number of trials."
            )
    lower = max(lowest, upper / 2.0)
    if excess(lower) > 0:
        # ε falls as σ grows: the root lies in (lower, upper]; Brent's method on log σ needs
        # ~10 evaluations where bisection to the same precision needs ~25.
        root = optimize.brentq(lambda log_s: excess(math.exp(log_s)), math.log(lower),
                               math.log(upper), xtol=1e-7, rtol=1e-9)  # fmt: skip
        upper = math.exp(root)
    else:
        upper = lower
    while excess(upper) > 0:  # the root's float may sit a hair on the wrong side
        upper *= 1.0 + 1e-7
    return upper


def repeat_and_select_curve(
    candidates: Sequence[dp_event.DpEvent], *, distribution: TrialsDistribution
) -> RdpCurve:
    """The RDP curve of a random-stopping search over `candidates` (see
    `repeat_and_select_epsilon`): it composes with other searches by `+`."""
    live = [e for e in candidates if not isinstance(e, dp_event.NoOpDpEvent)]
    if not live:
        return RdpCurve.zero()
    orders, rdp = _pointwise_max_rdp(live)
    selected = repeat_and_select_rdp(orders, rdp, mean=distribution.mean, shape=distribution.shape)
    return RdpCurve(orders, selected)


# --- planning -------------------------------------------------------------------------------


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
