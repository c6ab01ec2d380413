"""The plan of a search, fixed before any trial runs: mode, K, per-trial σ, worst-case mechanism.

Saved as `search.json` in the experiment directory, so a resumed search uses the very same
plan (and the same drawn K) instead of drawing again.
"""

from __future__ import annotations

import itertools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import accounting
import spaces
from spaces import Choice
from trainers import check_runnable, make_config, plan_mechanism
from trainers.data import load_splits

PLAN_FILENAME = "search.json"


class SearchError(ValueError):
    """A search that cannot run as asked; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class SearchPlan:
    """Everything decided before the first trial."""

    space: str
    mode: str
    """composition, random-stopping, or none."""
    num_trials: int
    """Trials to run (in random-stopping: the K the system drew)."""
    trials_mean: float | None
    trials_distribution: str | None
    eta: float | None
    budget_epsilon: float | None
    """The ε the whole search may spend (None: each trial spends its own target_epsilon)."""
    delta: float
    noise_multiplier: float | None
    """σ of every trial, planned to meet the budget (None: each trial calibrates its own)."""
    worst_sample_rate: float
    worst_steps: int
    """The largest q and T any trial of the space can have (what the planner budgets for)."""
    n_train: int
    searcher: str
    scheduler: str
    seed: int
    fixed: dict[str, Any] = field(default_factory=dict)
    """Trainer settings shared by every trial (the space's fixed ones, --set, planned σ)."""
    metric: str = "val_accuracy"
    """What the search maximises (the space's metric): val_accuracy or val_auc."""

    @property
    def distribution(self) -> accounting.TrialsDistribution | None:
        return accounting.plan_distribution(asdict(self))

    def search_epsilon(self, trial_events: list) -> accounting.SearchEpsilon:
        """The search ε of this plan given each trial's executed event (from the ledger);
        see `accounting.plan_search_epsilon`."""
        return accounting.plan_search_epsilon(asdict(self), trial_events)

    def save(self, directory: Path) -> None:
        path = directory / PLAN_FILENAME
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, path)

    @classmethod
    def load(cls, directory: Path) -> SearchPlan:
        path = directory / PLAN_FILENAME
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            raise SearchError(
                f"{directory} is not an experiment directory (no {PLAN_FILENAME}); "
                "check --storage-path and --name."
            ) from None
        except (ValueError, TypeError) as error:
            raise SearchError(f"{path} is damaged ({error}); it cannot be resumed.") from None


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
) -> SearchPlan:
    """Validate the request and fix the plan (σ from the budget, K drawn for random stopping)."""
    space = spaces.get_space(space_name)
    if num_samples < 1:
        raise SearchError(f"--num-samples must be ≥ 1 (got {num_samples}).")
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
    searched = {k: v for k, v in space.searched.items() if k not in fixed}
    if "delta" in searched:
        raise SearchError("a search needs one δ for all its trials: fix it with --delta.")
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
    splits = load_splits(base)
    n_train = len(splits.train)
    _check_trials_can_run(base.to_dict(), searched, splits)
    worst_q, worst_t = _worst_mechanism(base.to_dict(), searched, n_train)
    if base.private and delta >= 1.0 / n_train:
        raise SearchError(f"--delta {delta} is not below 1/n = {1 / n_train:.2g}; lower it.")

    distribution = None
    if mode == "random-stopping":
        distribution = accounting.TrialsDistribution(
            kind=trials_distribution,
            mean=float(num_samples),
            eta=eta if trials_distribution == "negative-binomial" else None,
        )
        num_trials = distribution.sample(np.random.default_rng(seed))
    else:
        num_trials = num_samples

    noise_multiplier = None
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
        noise_multiplier = accounting.plan_noise_multiplier(
            budget_epsilon=budget_epsilon,
            delta=delta,
            sample_rate=worst_q,
            steps=worst_t,
            mode=mode,
            num_trials=num_samples if mode == "composition" else None,
            distribution=distribution,
        )
        fixed.update(noise_multiplier=noise_multiplier, target_epsilon=None)
        for key in ("noise_multiplier", "target_epsilon"):
            searched.pop(key, None)
    return SearchPlan(
        space=space.name,
        mode=mode,
        num_trials=num_trials,
        trials_mean=float(num_samples) if distribution else None,
        trials_distribution=trials_distribution if distribution else None,
        eta=distribution.eta if distribution else None,
        budget_epsilon=budget_epsilon,
        delta=delta,
        noise_multiplier=noise_multiplier,
        worst_sample_rate=worst_q,
        worst_steps=worst_t,
        n_train=n_train,
        searcher=searcher,
        scheduler=scheduler,
        seed=seed,
        fixed={**fixed, "delta": delta},
        metric=space.metric,
    )


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


def _worst_mechanism(base: dict, searched: dict, n_train: int) -> tuple[float, int]:
    """The largest q and the largest T over every configuration the space can draw."""
    batches = [int(b) for b in _values("batch_size", base, searched)]
    epochs = max(int(e) for e in _values("epochs", base, searched))
    worst_q = max(1.0 / math.ceil(n_train / b) for b in batches)
    # TAN trials take the steps of their reference batch (see trainers.planned_steps).
    step_batches = [int(b) for b in _values("tan_reference_batch", base, searched) if b] or batches
    worst_t = epochs * max(math.ceil(n_train / b) for b in step_batches)
    return worst_q, worst_t
