"""The plan of a search, fixed before any trial runs: mode, K, per-trial σ, worst-case mechanism.

Saved as `search.json` in the experiment directory, so a resumed search uses the very same
plan (and the same drawn K) instead of drawing again.
"""

from __future__ import annotations

import itertools
import json
import secrets
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

import accounting
import spaces
from spaces import Choice, IntUniform
from trainers import check_runnable, load_splits, make_config, plan_mechanism

PLAN_FILENAME = accounting.PLAN_FILENAME


class SearchError(ValueError):
    """A search that cannot run as asked; the message says what to do."""


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
    base = make_config({**space.default_config(), **fixed})
    delta = base.delta
    if base.validation == "off":
        raise SearchError(
            "validation=off leaves the search nothing to select on; use validation=dp (noisy "
            "scores of held-out private records) or validation=public with validation_data."
        )
    splits = load_splits(base)
    n_train = len(splits.train)
    _check_trials_can_run(base.to_dict(), searched, splits)
    if base.private and delta >= 1.0 / n_train:
        raise SearchError(f"--delta {delta} is not below 1/n = {1 / n_train:.2g}; lower it.")
    releases_validation = base.validation == "dp" and splits.validation is not None
    # Multi-label AUC has no data-independent sensitivity: DP validation selects on the noisy
    # mean per-finding accuracy instead (trainers/validation.py).
    metric = space.metric if base.validation == "public" else "val_accuracy"

    distribution = None
    if mode == "random-stopping":
        distribution = accounting.TrialsDistribution(
            kind=trials_distribution,
            mean=float(num_samples),
            eta=eta if trials_distribution == "negative-binomial" else None,
        )
        # Secret randomness: K must stay unknown to whoever sees the release (a known K turns
        # the bound back into best-of-K), and the searcher's --seed must not decide it.
        num_trials = distribution.sample(np.random.default_rng(secrets.randbits(128)))
    else:
        num_trials = num_samples

    def privacy_plan(candidates, noise_multiplier=None) -> accounting.SearchPrivacyPlan:
        return accounting.SearchPrivacyPlan(
            mode=mode,
            delta=delta,
            num_trials=num_trials,
            candidates=tuple(candidates),
            budget_epsilon=budget_epsilon,
            noise_multiplier=noise_multiplier,
            trials_mean=float(num_samples) if distribution else None,
            trials_distribution=trials_distribution if distribution else None,
            eta=distribution.eta if distribution else None,
            validation=base.validation,
            val_noise_multiplier=base.val_noise_multiplier if releases_validation else None,
            adaptive=not (searcher == "random" and scheduler == "fifo"),
            metric=metric,
            budgets=_declared_budgets(budgets, base.to_dict(), searched),
            reproducible=base.reproducible,
            retry_epochs=retry_epochs,
        )

    val_sigma = base.val_noise_multiplier if releases_validation else 0.0
    if budget_epsilon is not None:
        if base.tan_reference_batch is not None or "tan_reference_batch" in searched:
            raise SearchError(
                "TAN trials scale σ down with their batch and spend more than a budget plans "
                "for; run the TAN search without --target-epsilon, then the final run at the "
                "reference batch with it."
            )
        if not base.private:
            raise SearchError(
                "--target-epsilon budgets a private search; drop --set private=false."
            )
        worst_q, worst_t, worst_epoch = _worst_mechanism(base.to_dict(), searched, n_train)
        releases = max(int(e) for e in _values("epochs", base.to_dict(), searched))

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
        fixed.update(noise_multiplier=noise_multiplier, target_epsilon=None)
        for key in ("noise_multiplier", "target_epsilon"):
            searched.pop(key, None)
        privacy = privacy_plan([worst(noise_multiplier)], noise_multiplier)
    else:
        privacy = privacy_plan(
            _candidates(base.to_dict(), searched, n_train, val_sigma, releases_validation)
        )
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


MAX_CANDIDATES = 256
"""Distinct mechanisms a space without a budget may have: each is calibrated at plan time."""
_MECHANISM_KEYS = ("batch_size", "epochs", "tan_reference_batch", "target_epsilon",
                   "noise_multiplier", "accountant", "private")  # fmt: skip


def _candidates(base: dict, searched: dict, n_train: int, val_sigma: float,
                releases_validation: bool) -> list[accounting.Mechanism]:  # fmt: skip
    """Every mechanism a trial of the space can run (each calibrates its own σ): the worst
    case the plan's ε covers, whatever the searcher or the data make the search draw."""
    options = []
    for key in _MECHANISM_KEYS:
        dist = searched.get(key)
        if dist is None:
            options.append([base[key]])
        elif isinstance(dist, Choice):
            values = list(dist.values)
            if key == "noise_multiplier" and None not in values:
                values = [min(values)]  # for fixed q and T, the smallest σ dominates
            options.append(values)
        elif key == "noise_multiplier":
            options.append([dist.low])
        elif isinstance(dist, IntUniform) and dist.high - dist.low < MAX_CANDIDATES:
            options.append(list(range(dist.low, dist.high + 1)))
        else:
            raise SearchError(
                f"the space searches {key} over a continuous range, so no finite worst case "
                "bounds its trials; give the search a budget with --target-epsilon, or fix "
                f"{key} (or search it over a Choice)."
            )
    combos = list(itertools.product(*options))
    if len(combos) > MAX_CANDIDATES:
        raise SearchError(
            f"the space's trials can run {len(combos)} different mechanisms (more than "
            f"{MAX_CANDIDATES} to bound one by one); give the search a budget with "
            "--target-epsilon, or fix some of batch_size, epochs, target_epsilon."
        )
    candidates = set()
    for combo in combos:
        config = make_config({**base, **dict(zip(_MECHANISM_KEYS, combo, strict=True))})
        mechanism = plan_mechanism(config, n_train)
        candidates.add(
            accounting.Mechanism(
                sample_rate=mechanism.sample_rate,
                noise_multiplier=mechanism.noise_multiplier,
                steps=mechanism.steps,
                val_noise_multiplier=val_sigma,
                val_releases=mechanism.epochs if releases_validation else 0,
                steps_per_epoch=mechanism.steps_per_epoch,
            )
        )
    return sorted(candidates, key=lambda m: (m.sample_rate, m.noise_multiplier, m.steps))


def _declared_budgets(budgets, base: dict, searched: dict) -> tuple[float, ...]:
    """The frontier's budgets, fixed before the search: the user's, or a fixed grid plus the
    space's own per-trial ε levels."""
    if budgets:
        return tuple(sorted(set(float(b) for b in budgets)))
    levels = [t for t in _values("target_epsilon", base, searched) if t is not None]
    dist = searched.get("target_epsilon")
    if dist is not None and not isinstance(dist, Choice):
        levels = []  # a continuous range has no levels
    return tuple(sorted({*accounting.DEFAULT_BUDGETS, *(float(t) for t in levels)}))


def searched_space(plan: SearchPlan) -> dict[str, Any]:
    """The space's distributions that the plan leaves searched."""
    space = spaces.get_space(plan.space)
    return {k: v for k, v in space.searched.items() if k not in plan.fixed}


def _values(key: str, base: dict, searched: dict) -> list:
    """The values of `key` a trial can have: the fixed one, a choice's values, a range's ends."""
    dist = searched.get(key)
    if dist is None:
        return [base[key]]
    if isinstance(dist, Choice):
        return list(dist.values)
    return [dist.low, dist.high]


def _check_trials_can_run(base: dict, searched: dict, splits) -> None:
    """Refuse here, once, what every trial would refuse on the cluster: the largest batch (and
    TAN reference batch) against the data, and each model, resolution and layer selection the
    space can draw (see `trainers.check_runnable`)."""
    largest = {"batch_size": max(int(b) for b in _values("batch_size", base, searched))}
    references = [int(b) for b in _values("tan_reference_batch", base, searched) if b]
    if references:
        largest["tan_reference_batch"] = max(references)
    keys = ("model", "image_size", "trainable_layers", "clipping")
    configs = [
        make_config({**base, **largest, **dict(zip(keys, values, strict=True))})
        for values in itertools.product(*(_values(k, base, searched) for k in keys))
    ]
    check_runnable(configs, splits)
    targets = [t for t in _values("target_epsilon", base, searched) if t is not None]
    if base.get("noise_multiplier") is not None and "noise_multiplier" not in searched and targets:
        # A fixed σ against per-trial targets: the costliest trial must meet the smallest.
        costliest = {
            **base, **largest, "target_epsilon": min(targets),
            "epochs": max(int(e) for e in _values("epochs", base, searched)),
        }  # fmt: skip
        plan_mechanism(make_config(costliest), len(splits.train))


def _worst_mechanism(base: dict, searched: dict, n_train: int) -> tuple[float, int, int]:
    """The largest q, the largest T and the most steps in one epoch over every configuration
    the space can draw (for one σ, (largest q, largest T) dominates every trial, and (largest
    q, most steps per epoch) every re-run epoch)."""
    epochs = max(int(e) for e in _values("epochs", base, searched))
    references = [int(b) for b in _values("tan_reference_batch", base, searched) if b] or [None]
    schedules = [
        accounting.dp_sgd_schedule(
            n_train=n_train, batch_size=int(batch), epochs=epochs, tan_reference_batch=reference
        )
        for batch in _values("batch_size", base, searched)
        for reference in references
    ]
    return (
        max(s.sample_rate for s in schedules),
        max(s.steps for s in schedules),
        max(s.steps_per_epoch for s in schedules),
    )
