"""The plan of a search, fixed before any trial runs: mode, K, per-trial σ, worst-case mechanism.

Saved as `search.json` in the experiment directory, so a resumed search uses the very same
plan (and the same drawn K) instead of drawing again.
"""

from __future__ import annotations

import functools
import json
import math
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

import accounting
import spaces
from search.errors import SearchError
from search.worst_case import (
    candidate_mechanisms,
    check_trials_can_run,
    trial_values,
    worst_mechanism,
)
from spaces import Choice
from trainers import load_splits, make_config

PLAN_FILENAME = accounting.PLAN_FILENAME


@dataclass(frozen=True, kw_only=True)
class SearchPlan:
    """Everything decided before the first trial: the search (space, searcher, scheduler, the
    settings every trial shares) and its privacy plan (`accounting.SearchPrivacyPlan`)."""

    space: str
    privacy: accounting.SearchPrivacyPlan
    n_train: int
    """Training records of the private pool (treated as public, as q = 1/⌈n/B⌉ needs it)."""
    searcher: str
    scheduler: str
    seed: int
    """Seeds the searcher (never the number of trials K, never the mechanism's noise)."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Trainer settings shared by every trial (the space's fixed ones, --set, planned σ)."""
    releases_validation: bool = True
    """Trials release noisy validation scores (validation=dp with a validation part)."""

    # What the rest of the search reads most, named once here.
    @property
    def mode(self) -> str:
        return self.privacy.mode

    @property
    def num_trials(self) -> int:
        return self.privacy.num_trials

    @property
    def delta(self) -> float:
        return self.privacy.delta

    @property
    def budget_epsilon(self) -> float | None:
        return self.privacy.budget_epsilon

    @property
    def metric(self) -> str:
        return self.privacy.metric

    @property
    def distribution(self) -> accounting.TrialsDistribution | None:
        return self.privacy.distribution

    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "privacy"}
        return {"search": values, "privacy": self.privacy.to_dict()}

    def save(self, directory: Path) -> None:
        accounting.write_atomically(directory / PLAN_FILENAME, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, directory: Path) -> SearchPlan:
        path = directory / PLAN_FILENAME
        try:
            privacy = accounting.SearchPrivacyPlan.load(directory)
            search = json.loads(path.read_text())["search"]
            return cls(privacy=privacy, **search)
        except accounting.AccountingError as error:
            sentence = str(error).rstrip(".")
            raise SearchError(f"{sentence}; check --storage-path and --name.") from None
        except (KeyError, ValueError, TypeError) as error:
            raise SearchError(
                f"{path} is damaged or from an older version ({error}); it cannot be resumed."
            ) from None


def make_plan(
    *,
    space_name: str,
    overrides: dict[str, Any],
    num_samples: int,
    budget_epsilon: float | None,
    delta: float | None,
    mode: str,
    trials_distribution: str,
    eta: float | None,
    searcher: str,
    scheduler: str,
    seed: int,
    budgets: tuple[float, ...] | None = None,
    reproducible: bool = False,
    retry_epochs: int = 2,
) -> SearchPlan:
    """Validate the request and fix the plan (σ from the budget, K drawn for random stopping,
    the worst case of every trial, the validation noise, the frontier's budgets)."""
    space = spaces.get_space(space_name)
    _check_request(
        num_samples=num_samples, retry_epochs=retry_epochs, budget_epsilon=budget_epsilon,
        mode=mode, searcher=searcher, scheduler=scheduler,
    )  # fmt: skip
    fixed, searched = _shared_settings(space, overrides, delta=delta, reproducible=reproducible)
    _check_privacy_options(
        overrides, budget_epsilon=budget_epsilon, mode=mode,
        trials_distribution=trials_distribution, eta=eta,
    )  # fmt: skip
    base = _base_config(space, fixed)
    delta = base.delta
    splits = _load_runnable_splits(base, searched)
    n_train = len(splits.train)
    releases_validation = base.validation == "dp" and splits.validation is not None
    # Multi-label AUC has no data-independent sensitivity: DP validation selects on the noisy
    # mean per-finding accuracy instead (trainers/validation.py).
    metric = space.metric if base.validation == "public" else "val_accuracy"
    planner = functools.partial(
        _privacy_planner, base, searched, mode=mode, delta=delta, budget_epsilon=budget_epsilon,
        num_samples=num_samples, releases_validation=releases_validation,
        adaptive=not (searcher == "random" and scheduler == "fifo"), metric=metric,
        budgets=budgets, retry_epochs=retry_epochs,
    )  # fmt: skip
    val_sigma = base.val_noise_multiplier if releases_validation else 0.0
    budget = functools.partial(
        _budget_noise, base=base, searched=searched, n_train=n_train,
        budget_epsilon=budget_epsilon, delta=delta, mode=mode, num_samples=num_samples,
        val_sigma=val_sigma, releases_validation=releases_validation,
    )  # fmt: skip
    candidates = functools.partial(
        candidate_mechanisms, base.to_dict(), searched, n_train, val_sigma, releases_validation
    )
    choice = None
    if mode == "random-stopping" and trials_distribution == accounting.AUTO:
        choice = _choose_trials(num_samples, planner, budget, candidates, budget_epsilon)
        trials_distribution, eta = choice.chosen.kind, choice.chosen.eta
    distribution, num_trials = _number_of_trials(mode, trials_distribution, num_samples, eta)
    privacy_plan = planner(distribution=distribution, num_trials=num_trials, choice=choice)
    if budget_epsilon is not None:
        noise_multiplier, worst = budget(privacy_plan)
        fixed.update(noise_multiplier=noise_multiplier, target_epsilon=None)
        for key in ("noise_multiplier", "target_epsilon"):
            searched.pop(key, None)
        privacy = privacy_plan([worst(noise_multiplier)], noise_multiplier)
    else:
        privacy = privacy_plan(candidates())
    return SearchPlan(
        space=space.name,
        privacy=privacy,
        n_train=n_train,
        searcher=searcher,
        scheduler=scheduler,
        seed=seed,
        fixed={**fixed, "delta": delta},
        releases_validation=releases_validation,
    )


def _check_request(
    *,
    num_samples: int,
    retry_epochs: int,
    budget_epsilon: float | None,
    mode: str,
    searcher: str,
    scheduler: str,
) -> None:
    """Refuse the request's impossible numbers, and a random-stopping search whose searcher or
    scheduler breaks the theorem's assumptions."""
    if num_samples < 1:
        raise SearchError(f"--num-samples must be ≥ 1 (got {num_samples}).")
    if retry_epochs < 0:
        raise SearchError(f"--retry-epochs must be ≥ 0 (got {retry_epochs}).")
    if budget_epsilon is not None and not (0 < budget_epsilon < float("inf")):
        raise SearchError(
            f"--target-epsilon must be a positive finite number (got {budget_epsilon}); it is "
            "the ε the whole search may spend, e.g. 8."
        )
    if mode == "random-stopping":
        if searcher != "random":
            raise SearchError(
                "random-stopping needs i.i.d. candidates: use --searcher random (an adaptive "
                "searcher's trials depend on earlier results)."
            )
        if scheduler != "fifo":
            raise SearchError(
                "random-stopping runs every candidate to the end: use --scheduler fifo "
                "(early stopping compares trials, which the theorem does not cover)."
            )


def _shared_settings(
    space, overrides: dict[str, Any], *, delta: float | None, reproducible: bool
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The settings every trial shares (the space's fixed ones, --set, --delta, reproducible)
    and the space's distributions they leave searched; refuses searching a setting the whole
    search needs one value of."""
    fixed = {**space.fixed, **overrides}
    if delta is not None:
        fixed["delta"] = delta
    if reproducible:
        fixed["reproducible"] = True
    searched = {k: v for k, v in space.searched.items() if k not in fixed}
    for key in ("delta", "validation", "val_noise_multiplier", "validation_fraction",
                "split_seed", "reproducible"):  # fmt: skip
        if key in searched:
            raise SearchError(
                f"a search needs one {key} for all its trials: fix it with --set {key}=…."
            )
    return fixed, searched


def _check_privacy_options(
    overrides: dict[str, Any],
    *,
    budget_epsilon: float | None,
    mode: str,
    trials_distribution: str,
    eta: float | None,
) -> None:
    """Refuse privacy options that contradict each other."""
    if budget_epsilon is not None and "noise_multiplier" in overrides:
        raise SearchError(
            "--target-epsilon plans σ for every trial; drop --set noise_multiplier (or drop "
            "the budget to run that σ)."
        )
    negative_binomial = mode == "random-stopping" and trials_distribution == "negative-binomial"
    if eta is not None and not negative_binomial:
        raise SearchError(
            "--eta applies to --search-accounting random-stopping with --trials-distribution "
            "negative-binomial; drop it."
        )


def _base_config(space, fixed: dict[str, Any]):
    """The trainer configuration every trial starts from; refuses a search with nothing to
    select on."""
    base = make_config({**space.default_config(), **fixed})
    if base.validation == "off":
        raise SearchError(
            "validation=off leaves the search nothing to select on; use validation=dp (noisy "
            "scores of held-out private records) or validation=public with validation_data."
        )
    return base


def _load_runnable_splits(base, searched: dict[str, Any]):
    """The data splits, once every trial the space can draw is known to run on them and δ is
    below 1/n."""
    splits = load_splits(base)
    n_train = len(splits.train)
    if base.validation == "dp" and not len(splits.validation or ()):
        raise SearchError(
            f"validation_fraction={base.validation_fraction:g} holds no records out for "
            "validation=dp, which leaves the search nothing to select on; hold out a share "
            "of the pool (0.1 is usual) or use validation=public with validation_data."
        )
    check_trials_can_run(base.to_dict(), searched, splits)
    if base.private and base.delta >= 1.0 / n_train:
        raise SearchError(f"--delta {base.delta} is not below 1/n = {1 / n_train:.2g}; lower it.")
    return splits


def _number_of_trials(
    mode: str, trials_distribution: str, num_samples: int, eta: float | None
) -> tuple[accounting.TrialsDistribution | None, int]:
    """The distribution of K and K drawn from it (random stopping), or (None, num_samples)."""
    if mode != "random-stopping":
        return None, num_samples
    distribution = accounting.TrialsDistribution(
        kind=trials_distribution,
        mean=float(num_samples),
        eta=eta if trials_distribution == "negative-binomial" else None,
    )
    # Secret randomness: K must stay unknown to whoever sees the release (a known K turns
    # the bound back into best-of-K), and the searcher's --seed must not decide it.
    return distribution, distribution.sample(np.random.default_rng(secrets.randbits(128)))


def _privacy_planner(
    base,
    searched: dict[str, Any],
    *,
    mode: str,
    delta: float,
    num_trials: int,
    budget_epsilon: float | None,
    num_samples: int,
    distribution: accounting.TrialsDistribution | None,
    choice: accounting.TrialsChoice | None,
    releases_validation: bool,
    adaptive: bool,
    metric: str,
    budgets: tuple[float, ...] | None,
    retry_epochs: int,
):
    """The search's privacy plan as a function of its candidate mechanisms (and planned σ).

    The frontier's budgets are read from `searched` at each call: what the budget's
    calibration takes out of it (its σ and per-trial ε) no longer counts."""

    def privacy_plan(candidates, noise_multiplier=None) -> accounting.SearchPrivacyPlan:
        return accounting.SearchPrivacyPlan(
            mode=mode,
            delta=delta,
            num_trials=num_trials,
            candidates=tuple(candidates),
            budget_epsilon=budget_epsilon,
            noise_multiplier=noise_multiplier,
            trials_mean=float(num_samples) if distribution else None,
            trials_distribution=distribution.kind if distribution else None,
            eta=distribution.eta if distribution else None,
            trials_choice=choice.describe() if choice else None,
            validation=base.validation,
            val_noise_multiplier=base.val_noise_multiplier if releases_validation else None,
            adaptive=adaptive,
            metric=metric,
            budgets=_declared_budgets(budgets, base.to_dict(), searched),
            reproducible=base.reproducible,
            retry_epochs=retry_epochs,
        )

    return privacy_plan


def _choose_trials(num_samples, planner, budget, candidates, budget_epsilon):
    """`--trials-distribution auto`: the distribution of K whose plan needs the smallest
    per-trial σ for the budget, or, without a budget, gives the smallest search ε. Decided
    from the plan alone (mechanisms, budget, mean), before K is drawn."""

    def plan(distribution):
        return planner(distribution=distribution, num_trials=1, choice=None)

    def sigma(distribution) -> float:
        try:
            return budget(plan(distribution))[0]
        except (SearchError, accounting.AccountingError):
            return math.inf  # cannot meet the budget (the chosen one says why, if none can)

    if budget_epsilon is not None:
        return accounting.choose_trials(float(num_samples), sigma, measure="σ")
    mechanisms = candidates()
    return accounting.choose_trials(
        float(num_samples), lambda d: plan(d)(mechanisms).epsilon(), measure="ε"
    )


def _budget_noise(
    privacy_plan,
    *,
    base,
    searched: dict[str, Any],
    n_train: int,
    budget_epsilon: float,
    delta: float,
    mode: str,
    num_samples: int,
    val_sigma: float,
    releases_validation: bool,
):
    """(σ, worst): the one σ with which the worst case of every trial meets the budget, and
    the worst trial's mechanism as a function of σ."""
    if base.tan_reference_batch is not None or "tan_reference_batch" in searched:
        raise SearchError(
            "TAN trials scale σ down with their batch and spend more than a budget plans "
            "for; run the TAN search without --target-epsilon, then the final run at the "
            "reference batch with it."
        )
    if not base.private:
        raise SearchError("--target-epsilon budgets a private search; drop --set private=false.")
    worst_q, worst_t, worst_epoch = worst_mechanism(base.to_dict(), searched, n_train)
    releases = max(int(e) for e in trial_values("epochs", base.to_dict(), searched))

    def worst(sigma: float) -> accounting.Mechanism:
        return accounting.Mechanism(
            sample_rate=worst_q, noise_multiplier=sigma, steps=worst_t,
            val_noise_multiplier=val_sigma,
            val_releases=releases if releases_validation else 0,
            steps_per_epoch=worst_epoch,
        )  # fmt: skip

    validation_alone = privacy_plan([worst(1e9)]).epsilon()
    if validation_alone > budget_epsilon:
        raise SearchError(
            f"the validation scores alone would spend ε = {validation_alone:.3f} > the "
            f"budget {budget_epsilon:g}; raise --set val_noise_multiplier (now "
            f"{base.val_noise_multiplier:g}) or the budget."
        )
    noise_multiplier = accounting.calibrate_curve(
        lambda sigma: privacy_plan([worst(sigma)]).guarantee(),
        target_epsilon=budget_epsilon,
        delta=delta,
        what=f"{num_samples} trials of q={worst_q:.4g} and {worst_t} steps ({mode})",
    )
    return noise_multiplier, worst


def _declared_budgets(budgets, base: dict, searched: dict) -> tuple[float, ...]:
    """The frontier's budgets, fixed before the search: the user's, or a fixed grid plus the
    space's own per-trial ε levels."""
    if budgets:
        return tuple(sorted(set(float(b) for b in budgets)))
    levels = [t for t in trial_values("target_epsilon", base, searched) if t is not None]
    dist = searched.get("target_epsilon")
    if dist is not None and not isinstance(dist, Choice):
        levels = []  # a continuous range has no levels
    return tuple(sorted({*accounting.DEFAULT_BUDGETS, *(float(t) for t in levels)}))


def searched_space(plan: SearchPlan) -> dict[str, Any]:
    """The space's distributions that the plan leaves searched."""
    space = spaces.get_space(plan.space)
    return {k: v for k, v in space.searched.items() if k not in plan.fixed}
