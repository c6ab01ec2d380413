"""The privacy plan of a search: fixed before any trial runs, saved in `search.json`, and the
one source of every search ε that is shown as a DP release.

A plan holds the mechanisms a trial may run at their worst (`candidates`), how trials combine
(`mode`), how many run (or, for random stopping, the secretly drawn K), and the noise of the
validation scores. From these alone — never from what the data made the search do — it
derives the curve the search's RDP must stay under (`guarantee`). Trials reserve their steps
against it through a Rényi filter (`admits`): a trial or retry that would leave the curve never
starts. So the released ε is the plan's, a number fixed before the results were seen, and the
ledger's ε (what the search really spent) is an analyst-only diagnostic that can only be lower.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from accounting.ledger import TrialAccount
from accounting.mechanism import AccountingError, round_up, trial_event, validation_event
from accounting.names import DEFAULT_BUDGETS, PLAN_FILENAME, VALIDATION_MODES
from accounting.rdp_curves import ParallelCurve
from accounting.selection import (
    SEARCH_COVERS,
    SEARCH_MODES,
    SearchEpsilon,
    TrialsDistribution,
    parallel_search_curve,
)

# What a plan's ε covers: as accounting.selection says, except that composition covers every
# trial the plan allows (not only those that ran).
_COVERS = {**SEARCH_COVERS, "composition": "the whole search: every trial it may run, composed"}


@dataclass(frozen=True, kw_only=True)
class Mechanism:
    """One trial's mechanism at its worst: DP-SGD (q, σ, T) and its noisy validation scores."""

    sample_rate: float
    noise_multiplier: float
    steps: int
    val_noise_multiplier: float = 0.0
    """σ_v of each validation release (units of its sensitivity); 0 when none is private."""
    val_releases: int = 0
    """Noisy validation scores the trial releases (one per epoch)."""
    steps_per_epoch: int = 0
    """Steps of one epoch: what a retry re-runs at most (the epoch its attempt died in)."""

    def curve(self, extra_epochs: int = 0) -> ParallelCurve:
        """Its curve, with `extra_epochs` epochs re-run after crashes."""
        releases = self.val_releases + (extra_epochs if self.val_releases else 0)
        return ParallelCurve.of(
            trial_event([(self.sample_rate, self.noise_multiplier,
                          self.steps + extra_epochs * self.steps_per_epoch)]),
            validation_event(noise_multiplier=self.val_noise_multiplier, releases=releases),
        )  # fmt: skip

    def epoch_curve(self) -> ParallelCurve:
        """The curve of one epoch of it (one re-run epoch after a crash)."""
        return ParallelCurve.of(
            trial_event([(self.sample_rate, self.noise_multiplier, self.steps_per_epoch)]),
            validation_event(noise_multiplier=self.val_noise_multiplier,
                             releases=1 if self.val_releases else 0),
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class SearchPrivacyPlan:
    """Everything the search's privacy depends on, decided before the first trial."""

    mode: str
    """composition, random-stopping, or none (see accounting.selection)."""
    delta: float
    num_trials: int
    """Trials to run; for random stopping the K the system drew secretly (never released)."""
    candidates: tuple[Mechanism, ...] = ()
    """Every mechanism a trial of the space may run, at its worst (largest q and T, smallest
    σ, most validation releases); their pointwise maximum bounds any one trial."""
    budget_epsilon: float | None = None
    """The ε the user gave the whole search (None: the plan's worst case is the budget)."""
    noise_multiplier: float | None = None
    """σ of every trial, planned to meet the budget (None: each trial calibrates its own)."""
    trials_mean: float | None = None
    trials_distribution: str | None = None
    eta: float | None = None
    trials_choice: str | None = None
    """How `--trials-distribution auto` chose the distribution (None: the user chose it)."""
    validation: str = "dp"
    """One of VALIDATION_MODES."""
    val_noise_multiplier: float | None = None
    """σ_v of every noisy validation score (validation=dp)."""
    adaptive: bool = True
    """Whether a trial's configuration or fate may depend on other trials' scores (Optuna,
    ASHA); decides how the results layer stops a search at a smaller budget."""
    metric: str = "val_accuracy"
    """The validation score the search selects on."""
    budgets: tuple[float, ...] = DEFAULT_BUDGETS
    """The search-adjusted frontier's budgets, declared before the search."""
    reproducible: bool = False
    """Sampling and noise came from a known seed: a research run, NOT a DP release."""
    retry_epochs: int = 0
    """Room for epochs re-run after crashes (a retry resumes from its last checkpoint and
    re-runs at most the epoch it died in): in all (composition) or per trial (random
    stopping). 0: a crashed trial is retried only where other trials left room."""
    legacy: bool = field(default=False, compare=False)
    """Loaded from a search.json written before plans had candidates: ε comes from the ledger."""

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise AccountingError(
                f"unknown search accounting {self.mode!r}; choose one of: "
                f"{', '.join(SEARCH_MODES)}."
            )
        if self.validation not in VALIDATION_MODES:
            raise AccountingError(
                f"unknown validation {self.validation!r}; choose one of: "
                f"{', '.join(VALIDATION_MODES)}."
            )
        object.__setattr__(self, "candidates", tuple(self.candidates))
        object.__setattr__(self, "budgets", tuple(float(b) for b in self.budgets))

    @property
    def distribution(self) -> TrialsDistribution | None:
        """The distribution K was drawn from (random stopping only)."""
        if self.mode != "random-stopping":
            return None
        return TrialsDistribution(
            kind=self.trials_distribution, mean=self.trials_mean, eta=self.eta
        )

    def trial_bound(self) -> ParallelCurve:
        """A curve above every trial the plan allows: the candidates' pointwise maximum (in
        random stopping, each with its retry room: the filter is per trial there)."""
        extra = 0 if self.mode == "composition" else self.retry_epochs
        return parallel_search_curve([c.curve(extra) for c in self.candidates], mode="none")

    def guarantee(self) -> ParallelCurve:
        """The curve the whole search stays under (data-independent)."""
        bound = self.trial_bound()
        if self.mode == "composition":
            epoch = parallel_search_curve([c.epoch_curve() for c in self.candidates],
                                          mode="none")  # fmt: skip
            total = bound * self.num_trials
            return total + epoch * self.retry_epochs if self.retry_epochs else total
        return parallel_search_curve([bound], mode=self.mode, distribution=self.distribution)

    def epsilon(self) -> float:
        """The ε of releasing the search's selected model, as planned."""
        return self.guarantee().epsilon(self.delta)

    def admits(self, accounts: Mapping[str, TrialAccount]) -> bool:
        """The Rényi filter: whether trials with these (reserved) accounts stay under the plan.

        Composition: their sum stays under `guarantee()` at every order, in both parts
        (Feldman & Zrnic 2021: an adaptive composition whose summed RDP stays under a curve
        fixed in advance on every run is RDP with that curve). Random stopping and none: each
        trial stays under `trial_bound()`, the per-candidate bound the theorem was applied to.
        """
        if self.legacy or not self.candidates:
            return True
        if self.mode == "composition":
            total = sum((a.curve for a in accounts.values()), ParallelCurve.zero())
            return total.within(self.guarantee())
        bound = self.trial_bound()
        return all(a.curve.within(bound) for a in accounts.values())

    def spent(self, accounts: Mapping[str, TrialAccount]) -> ParallelCurve:
        """What the trials in the ledger really spent, by the plan's mode (analyst-only: it
        depends on what the data made the search do)."""
        curves = [a.curve for a in accounts.values()]
        if self.mode == "random-stopping" and self.candidates:
            # The theorem bounds every candidate the random search could have drawn.
            curves.append(self.trial_bound())
        return parallel_search_curve(curves, mode=self.mode, distribution=self.distribution)

    def search_epsilon(self, accounts: Mapping[str, TrialAccount]) -> SearchEpsilon:
        """The ε shown as the DP release: the plan's, unless the ledger shows more was spent
        (a search run before the filter, or a damaged directory), then the larger."""
        spent = self.spent(accounts)
        trial_epsilons = [a.curve.epsilon(self.delta) for a in accounts.values()]
        spent_epsilon = spent.epsilon(self.delta)
        exceeded = False
        if self.legacy or not self.candidates:
            value = spent_epsilon
        else:
            planned = self.guarantee()
            exceeded = not spent.within(planned)
            value = planned.maximum(spent).epsilon(self.delta) if exceeded else self.epsilon()
        covers = _COVERS[self.mode]
        if self.mode == "random-stopping":
            covers += f"; K ~ {self.distribution.describe()}"
        if self.validation == "dp":
            covers += (
                "; noisy validation scores included (parallel composition: training and "
                "validation records are disjoint)"
            )
        elif self.validation == "public":
            covers += "; validation on a data set the user declared public"
        return SearchEpsilon(
            epsilon=value,
            delta=self.delta,
            mode=self.mode,
            accountant="rdp",
            num_trials=len(accounts),
            max_trial_epsilon=max(trial_epsilons, default=0.0),
            covers=covers,
            spent=spent_epsilon,
            exceeded=exceeded,
        )

    def budget_curve(self, budget: float) -> ParallelCurve | None:
        """The curve a search stopped at ε = `budget` must stay under: the plan's guarantee
        scaled down until its ε is at most `budget` (a data-independent filter for every
        declared budget), or the whole guarantee when it already fits. None: nothing fits."""
        planned = self.guarantee()
        if planned.epsilon(self.delta) <= budget:
            return planned
        low, high = 0.0, 1.0  # planned * low fits, planned * high does not
        for _ in range(50):
            middle = (low + high) / 2
            if _scaled(planned, middle).epsilon(self.delta) <= budget:
                low = middle
            else:
                high = middle
        return _scaled(planned, low) if low > 0 else None

    def filter_cost(self, curve: ParallelCurve) -> float:
        """The ε of the smallest scaled-down guarantee s·`guarantee()` that `curve` lies under:
        what a search stopped at `curve` costs when budgets are enforced by scaled filters
        (`budget_curve`): `curve` fits budget b iff its filter_cost ≤ b. Plans without a worst
        case (legacy) fall back to the curve's own ε."""
        if self.legacy or not self.candidates:
            return curve.epsilon(self.delta)
        planned = self.guarantee()
        ratio = 0.0
        for mine, theirs in ((curve.train, planned.train), (curve.validation, planned.validation)):
            # Orders where the plan allows ∞ bound nothing; where it allows 0, any spend is ∞.
            spends = (mine.values > 0) & np.isfinite(theirs.values)
            if np.any(spends & ~(theirs.values > 0)):
                return math.inf
            if spends.any():
                ratio = max(ratio, float(np.max(mine.values[spends] / theirs.values[spends])))
        if not math.isfinite(ratio):
            return math.inf
        return _scaled(planned, ratio).epsilon(self.delta) if ratio > 0 else 0.0

    def public_dict(self) -> dict[str, Any]:
        """What may be published beside the release: everything but the drawn K."""
        values = self.to_dict()
        if self.mode == "random-stopping":
            values.pop("num_trials")
        values.pop("legacy", None)
        return values

    def describe_validation(self) -> str:
        if self.validation == "dp":
            return (
                f"noisy validation scores (Gaussian, σ_v = {self.val_noise_multiplier:g} × "
                "sensitivity), accounted by parallel composition"
            )
        if self.validation == "public":
            return "validation on a data set declared public by the user (no privacy cost)"
        return "no validation score (nothing to select on but the configuration)"

    # --- search.json --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["candidates"] = [asdict(c) for c in self.candidates]
        values["budgets"] = list(self.budgets)
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> SearchPrivacyPlan:
        if "candidates" not in values:
            return _from_legacy(values)
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in values.items() if k in known}
        kwargs["candidates"] = tuple(Mechanism(**c) for c in values["candidates"])
        return cls(**kwargs)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SearchPrivacyPlan:
        """The plan in `directory`/search.json (an AccountingError says what is wrong)."""
        path = Path(directory) / PLAN_FILENAME
        try:
            document = json.loads(path.read_text())
        except FileNotFoundError:
            raise AccountingError(
                f"{Path(directory)} is not an experiment directory (no {PLAN_FILENAME}); pass "
                "the folder search/run.py printed as 'Experiment directory'."
            ) from None
        except (OSError, ValueError) as error:
            raise AccountingError(
                f"{path} is damaged ({error}); restore it from a backup: without it the "
                "search's privacy plan is unknown."
            ) from None
        try:
            return cls.from_dict(document.get("privacy", document))
        except (AttributeError, KeyError, TypeError, ValueError) as error:
            raise AccountingError(
                f"{path} is not a search plan ({error}); restore it from a backup."
            ) from None


def _scaled(curve: ParallelCurve, factor: float) -> ParallelCurve:
    train, validation = curve.train, curve.validation
    return ParallelCurve(
        type(train)(train.orders, train.values * factor),
        type(validation)(validation.orders, validation.values * factor),
    )


def _from_legacy(values: Mapping[str, Any]) -> SearchPrivacyPlan:
    """A flat search.json of an earlier version (no candidates, exact validation scores)."""
    missing = {"mode", "delta"} - set(values)
    if missing:
        raise KeyError(", ".join(sorted(missing)))
    candidates = ()
    if values.get("noise_multiplier") is not None and values.get("worst_steps"):
        candidates = (
            Mechanism(
                sample_rate=values["worst_sample_rate"],
                noise_multiplier=values["noise_multiplier"],
                steps=values["worst_steps"],
            ),
        )
    return SearchPrivacyPlan(
        mode=values["mode"],
        delta=values["delta"],
        num_trials=int(values.get("num_trials") or 0),
        candidates=candidates,
        budget_epsilon=values.get("budget_epsilon"),
        noise_multiplier=values.get("noise_multiplier"),
        trials_mean=values.get("trials_mean"),
        trials_distribution=values.get("trials_distribution"),
        eta=values.get("eta"),
        validation="off",
        adaptive=not (values.get("searcher") == "random" and values.get("scheduler") == "fifo"),
        metric=values.get("metric", "val_accuracy"),
        budgets=(),
        legacy=not candidates or values.get("mode") == "composition",
    )


def show_epsilon(value: float, digits: int = 3) -> str:
    """ε for people: rounded up (never down), ∞ for an unbounded one."""
    if not math.isfinite(value):
        return "∞"
    return f"{round_up(value, digits):g}"
