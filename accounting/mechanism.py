"""The DP-SGD mechanism of one trial as a dp_accounting event, and its ε.

Pure functions over immutable `DpEvent` values (see ../shared/STYLE.md §1–2): a trial is
`SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(σ)), T)` with the sampling rate,
noise multiplier and number of steps it actually executed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from dp_accounting import dp_event, mechanism_calibration
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from accounting.errors import AccountingError
from accounting.names import ACCOUNTANTS

# NOTE: 1e-4 is dp_accounting's default discretisation; PLD ε is a valid upper bound at any
# interval (the discretisation is pessimistic), so coarser would only cost tightness.
_PLD_DISCRETIZATION = 1e-4


@contextlib.contextmanager
def quiet_dp_accounting():
    """Silence dp_accounting's per-order convergence warnings.

    NOTE: the RDP accountant drops a Rényi order whose series fails to converge and takes the
    minimum over the remaining orders: ε can only get looser, never smaller, so the warning
    (hundreds of lines per calibration) tells a user nothing they must act on.
    """
    absl_logger = logging.getLogger("absl")
    previous = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl_logger.setLevel(previous)


def check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise AccountingError(
            f"delta must lie strictly between 0 and 1 (got {delta!r}); a common choice is 1e-5, "
            "well below 1 / (number of training examples)."
        )


def check_accountant(accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise AccountingError(
            f"unknown accountant {accountant!r}; choose one of: {', '.join(ACCOUNTANTS)}."
        )


def dp_sgd_event(*, sample_rate: float, noise_multiplier: float, steps: int) -> dp_event.DpEvent:
    """The event of `steps` DP-SGD updates with Poisson sampling and Gaussian noise.

    Args:
        sample_rate: Poisson sampling probability q of each example per step, in (0, 1].
        noise_multiplier: σ, the noise standard deviation in units of the clipping norm, > 0.
        steps: number of noisy updates actually executed, ≥ 0.
    """
    if not (0.0 < sample_rate <= 1.0):
        raise AccountingError(
            f"sample_rate must lie in (0, 1] (got {sample_rate!r}): it is the expected batch size "
            "divided by the number of training examples."
        )
    if not (noise_multiplier > 0.0 and math.isfinite(noise_multiplier)):
        raise AccountingError(
            f"noise_multiplier must be a positive number (got {noise_multiplier!r}); set "
            "target_epsilon instead to have it calibrated."
        )
    if steps < 0 or int(steps) != steps:
        raise AccountingError(f"steps must be a whole number ≥ 0 (got {steps!r}).")
    if steps == 0:
        return dp_event.NoOpDpEvent()
    return dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(sample_rate, dp_event.GaussianDpEvent(noise_multiplier)),
        int(steps),
    )


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


@dataclass(frozen=True)
class DpSgdSchedule:
    """When a DP-SGD trial samples and steps: the one place (q, T) are derived from the data
    set's size and the trial's batch settings (trainer, search planner and ledger all ask here).
    """

    sample_rate: float
    """q = 1 / ⌈n / B⌉: Opacus's Poisson loader samples each example with the inverse of the
    number of batches per epoch (slightly below B / n when B ∤ n); this is the q that runs."""
    steps_per_epoch: int
    """⌈n / B⌉ logical batches per pass over the data."""
    steps: int
    """T = epochs · ⌈n / B⌉, or with TAN epochs · ⌈n / B0⌉ (the reference run's steps)."""
    epochs: int
    """Passes to run: `epochs`, or with TAN ⌈T / steps_per_epoch⌉ (the last may be partial)."""
    reference_sample_rate: float | None = None
    """TAN only: q0 = 1 / ⌈n / B0⌉ of the reference run whose σ0 the simulation scales."""


def dp_sgd_schedule(
    *, n_train: int, batch_size: int, epochs: int, tan_reference_batch: int | None = None
) -> DpSgdSchedule:
    """q and T of a trial with `n_train` examples, expected batch B, `epochs` passes and,
    for a TAN simulation (Sander et al. 2023), the reference batch B0 whose steps it takes."""
    if n_train < 1 or batch_size < 1 or epochs < 1:
        raise AccountingError(
            f"a DP-SGD schedule needs n ≥ 1, B ≥ 1 and epochs ≥ 1 (got {n_train}, {batch_size}, "
            f"{epochs})."
        )
    per_epoch = math.ceil(n_train / batch_size)
    if tan_reference_batch is None:
        return DpSgdSchedule(1.0 / per_epoch, per_epoch, per_epoch * epochs, epochs)
    reference_per_epoch = math.ceil(n_train / tan_reference_batch)
    steps = reference_per_epoch * epochs
    return DpSgdSchedule(
        1.0 / per_epoch, per_epoch, steps, math.ceil(steps / per_epoch), 1.0 / reference_per_epoch
    )


def validation_event(*, noise_multiplier: float, releases: int) -> dp_event.DpEvent:
    """The event of `releases` noisy validation scores, each a Gaussian mechanism with noise
    `noise_multiplier` × its L2 sensitivity (trainers/validation.py says what is released)."""
    if releases < 0 or int(releases) != releases:
        raise AccountingError(f"validation releases must be a whole number ≥ 0 (got {releases}).")
    if releases == 0:
        return dp_event.NoOpDpEvent()
    if not (noise_multiplier > 0.0 and math.isfinite(noise_multiplier)):
        return dp_event.NonPrivateDpEvent()  # an exact score of private data: ε = ∞
    return dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(noise_multiplier), int(releases))


def _make_accountant(accountant: str, *, calibrating: bool = False):
    if accountant == "pld":
        # A coarser grid while calibrating is ~30x faster and only pessimistic: the σ it finds
        # is re-checked at the fine grid below, so the result still meets the target.
        interval = _PLD_DISCRETIZATION * (10 if calibrating else 1)
        return PLDAccountant(value_discretization_interval=interval)
    return RdpAccountant()


def epsilon(event: dp_event.DpEvent, *, delta: float, accountant: str = "rdp") -> float:
    """ε of `event` at `delta` with the chosen accountant (an upper bound, never rounded down)."""
    check_delta(delta)
    check_accountant(accountant)
    # Events are immutable values and their repr spells out every parameter: a search's
    # report asks for the same trials' ε many times.
    key = (repr(event), float(delta), accountant)
    if key in _EPSILON_CACHE:
        return _EPSILON_CACHE[key]
    acc = _make_accountant(accountant)
    if not acc.supports(event):
        raise AccountingError(
            f"the {accountant} accountant cannot express this mechanism; use accountant=rdp."
        )
    with quiet_dp_accounting():
        value = float(acc.compose(event).get_epsilon(delta))
    if len(_EPSILON_CACHE) > _CACHE_SIZE:
        _EPSILON_CACHE.clear()
    _EPSILON_CACHE[key] = value
    return value


_EPSILON_CACHE: dict[tuple, float] = {}
_CACHE_SIZE = 20_000


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """The smallest σ (within 1e-5) whose `steps` DP-SGD updates meet `target_epsilon`."""
    if steps < 1:
        raise AccountingError(f"a trial needs at least one step to calibrate σ (got {steps}).")
    dp_sgd_event(sample_rate=sample_rate, noise_multiplier=1.0, steps=steps)  # validates q
    return _calibrated(float(target_epsilon), float(delta), float(sample_rate), int(steps),
                       accountant)  # fmt: skip


@functools.lru_cache(maxsize=512)
def _calibrated(target_epsilon, delta, sample_rate, steps, accountant) -> float:
    # A pure function of its arguments: trials sharing a recipe in one process (a sweep, the
    # head-only trials on cached features) calibrate once.
    return calibrate_noise(
        lambda sigma: dp_sgd_event(sample_rate=sample_rate, noise_multiplier=sigma, steps=steps),
        target_epsilon=target_epsilon,
        delta=delta,
        accountant=accountant,
        what=f"q={sample_rate} and {steps} steps",
    )


def calibrate_noise(
    make_event: Callable[[float], dp_event.DpEvent],
    *,
    target_epsilon: float,
    delta: float,
    accountant: str = "rdp",
    what: str = "this mechanism",
) -> float:
    """The smallest noise multiplier σ for which `make_event(σ)` meets `target_epsilon` at δ.

    The one root finder behind every calibration (a trial, a whole search): dp_accounting's
    `calibrate_dp_mechanism`, with the result re-checked so that ε(σ) ≤ target_epsilon always.
    `make_event` must give an ε that falls as σ grows.
    """
    check_delta(delta)
    check_accountant(accountant)
    if not (target_epsilon > 0.0 and math.isfinite(target_epsilon)):
        raise AccountingError(
            f"target_epsilon must be a positive finite number (got {target_epsilon!r})."
        )

    def spent(sigma: float, kind: str = accountant) -> float:
        return epsilon(make_event(sigma), delta=delta, accountant=kind)

    # σ below 0.1 gives almost no privacy; when even that meets the target, any σ ≥ 0.1 does
    # and we return 0.1 (extra noise costs accuracy, never privacy).
    lowest_sigma = 0.1
    if accountant == "pld":
        # PLD at small σ is slow (tens of seconds for a blind bracket search). RDP's ε is the
        # looser bound, so RDP's σ meets the target under PLD too: search just below it.
        upper = calibrate_noise(
            make_event, target_epsilon=target_epsilon, delta=delta, accountant="rdp", what=what
        )
        if upper <= lowest_sigma:
            return lowest_sigma
        lower = upper
        while lower > lowest_sigma:
            lower = max(lowest_sigma, lower * 0.8)
            if spent(lower) > target_epsilon:
                break
        else:
            return lowest_sigma
        bracket = mechanism_calibration.ExplicitBracketInterval(lower, upper)
    else:
        if spent(lowest_sigma) <= target_epsilon:
            return lowest_sigma
        bracket = mechanism_calibration.LowerEndpointAndGuess(lowest_sigma, 1.0)
    try:
        with quiet_dp_accounting():
            sigma = mechanism_calibration.calibrate_dp_mechanism(
                lambda: _make_accountant(accountant, calibrating=True),
                make_event,
                target_epsilon,
                delta,
                bracket_interval=bracket,
                tol=1e-5,
            )
    except mechanism_calibration.NoBracketIntervalFoundError:
        raise AccountingError(
            f"no noise multiplier reaches ε={target_epsilon} at δ={delta} with {what}; "
            "raise the ε target, or lower the batch size, steps or number of trials."
        ) from None
    # dp_accounting guarantees ε(σ) ≤ target on the grid it searched; PLD searched a coarser
    # grid, so re-check at the reporting grid and nudge σ up until it holds.
    while spent(sigma) > target_epsilon:
        sigma *= 1.0001
    return float(sigma)


def round_up(value: float, digits: int = 2) -> float:
    """Round ε *up* for display: a reported ε must never be smaller than the true bound."""
    if not math.isfinite(value):
        return value
    # Decimal(value) is the float's exact binary value, so the ceiling is exact too; the final
    # float() may land a hair below the decimal, which we then step up to the next float.
    step = Decimal(1).scaleb(-digits)
    shown = float(Decimal(value).quantize(step, rounding=ROUND_CEILING))
    return shown if shown >= value else math.nextafter(shown, math.inf)
