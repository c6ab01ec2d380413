"""RDP curves: a mechanism's Rényi-DP ε_α over dp_accounting's default orders α, their algebra
(composition by `+`, pointwise maximum, parallel composition over the two disjoint parts of the
data set) and σ calibration on a curve.

Accounting a search on curves costs one vector sum per trial and one conversion to ε, where
re-running dp_accounting's accountant would cost one accountant per subset of trials.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant, compute_epsilon
from scipy import optimize

from accounting.mechanism import AccountingError, check_delta, quiet_dp_accounting


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
            with quiet_dp_accounting():
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
        check_delta(delta)
        if not np.any(self.values):
            return 0.0
        with quiet_dp_accounting():
            value, _ = compute_epsilon(self.orders, self.values, delta)
        return float(value)


_CURVE_CACHE: dict[str, RdpCurve] = {}


def pointwise_max_rdp(events: Sequence[dp_event.DpEvent]) -> tuple[np.ndarray, np.ndarray]:
    """The RDP curve max_i RDP_i(α) over the accountant's default orders α."""
    curves = [RdpCurve.of(event) for event in events]
    return curves[0].orders, np.max(np.stack([c.values for c in curves]), axis=0)


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


def calibrate_curve(
    make_curve, *, target_epsilon: float, delta: float, what: str = "this search"
) -> float:
    """The smallest σ (relative precision 1e-6) whose `make_curve(σ)` (an `RdpCurve` or
    `ParallelCurve`, ε falling as σ grows) meets `target_epsilon` at δ; ε(σ) ≤ target always.

    Bisection on curves, for what dp_accounting's calibration cannot express (the maximum of
    two parts); tests check it against `calibrate_noise` where both apply.
    """
    check_delta(delta)
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
