"""What the trials of a space can do, bounded before any of them runs: every mechanism they
can run (`candidate_mechanisms`), the worst (q, T) among them (`worst_mechanism`), and the
check that every trial the space can draw runs on the data (`check_trials_can_run`).
"""

from __future__ import annotations

import itertools

import accounting
from search.errors import SearchError
from spaces import Choice, IntUniform
from trainers import check_runnable, make_config, plan_mechanism

MAX_CANDIDATES = 256
"""Distinct mechanisms a space without a budget may have: each is calibrated at plan time."""
_MECHANISM_KEYS = ("batch_size", "epochs", "tan_reference_batch", "target_epsilon",
                   "noise_multiplier", "accountant", "private")  # fmt: skip


def candidate_mechanisms(
    base: dict, searched: dict, n_train: int, val_sigma: float, releases_validation: bool
) -> list[accounting.Mechanism]:
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


def trial_values(key: str, base: dict, searched: dict) -> list:
    """The values of `key` a trial can have: the fixed one, a choice's values, a range's ends."""
    dist = searched.get(key)
    if dist is None:
        return [base[key]]
    if isinstance(dist, Choice):
        return list(dist.values)
    return [dist.low, dist.high]


def check_trials_can_run(base: dict, searched: dict, splits) -> None:
    """Refuse here, once, what every trial would refuse on the cluster: the largest batch (and
    TAN reference batch) against the data, and each model, resolution and layer selection the
    space can draw (see `trainers.check_runnable`)."""
    largest = {"batch_size": max(int(b) for b in trial_values("batch_size", base, searched))}
    references = [int(b) for b in trial_values("tan_reference_batch", base, searched) if b]
    if references:
        largest["tan_reference_batch"] = max(references)
    keys = ("model", "image_size", "trainable_layers", "clipping")
    configs = [
        make_config({**base, **largest, **dict(zip(keys, values, strict=True))})
        for values in itertools.product(*(trial_values(k, base, searched) for k in keys))
    ]
    check_runnable(configs, splits)
    targets = [t for t in trial_values("target_epsilon", base, searched) if t is not None]
    if base.get("noise_multiplier") is not None and "noise_multiplier" not in searched and targets:
        # A fixed σ against per-trial targets: the costliest trial must meet the smallest.
        costliest = {
            **base, **largest, "target_epsilon": min(targets),
            "epochs": max(int(e) for e in trial_values("epochs", base, searched)),
        }  # fmt: skip
        plan_mechanism(make_config(costliest), len(splits.train))


def worst_mechanism(base: dict, searched: dict, n_train: int) -> tuple[float, int, int]:
    """The largest q, the largest T and the most steps in one epoch over every configuration
    the space can draw (for one σ, (largest q, largest T) dominates every trial, and (largest
    q, most steps per epoch) every re-run epoch)."""
    epochs = max(int(e) for e in trial_values("epochs", base, searched))
    tan_batches = trial_values("tan_reference_batch", base, searched)
    references = [int(b) for b in tan_batches if b] or [None]
    schedules = [
        accounting.dp_sgd_schedule(
            n_train=n_train, batch_size=int(batch), epochs=epochs, tan_reference_batch=reference
        )
        for batch in trial_values("batch_size", base, searched)
        for reference in references
    ]
    return (
        max(s.sample_rate for s in schedules),
        max(s.steps for s in schedules),
        max(s.steps_per_epoch for s in schedules),
    )
