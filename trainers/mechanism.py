"""The DP-SGD mechanism a trial executes: q, T and σ planned before it starts, and its ε so far.

This module records *what* runs; `accounting` does every piece of privacy math (schedule,
calibration, ε). The search reserves exactly what `plan_mechanism` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import accounting
from trainers.config import TrainConfig, TrainerError


@dataclass(frozen=True)
class MechanismPlan:
    """The DP-SGD mechanism a trial will run, decided before it starts."""

    sample_rate: float
    steps_per_epoch: int
    steps: int
    """Total steps planned (T)."""
    epochs: int
    """Epochs to run (the last may stop early when `steps` is reached)."""
    noise_multiplier: float
    """σ (0 for a non-private trial)."""
    simulated: bool = False
    """A TAN simulation (its σ is scaled from the reference run's σ0)."""
    tan_reference_noise: float | None = None


def planned_steps(config: TrainConfig, n_train: int) -> int:
    """T: the steps the trial will take (what a search reserves before it starts)."""
    return _schedule(config, n_train).steps


def plan_mechanism(config: TrainConfig, n_train: int) -> MechanismPlan:
    """q, T and σ of the trial: also what a search reserves in its ledger before it starts."""
    schedule = _schedule(config, n_train)
    q, steps = schedule.sample_rate, schedule.steps
    if config.tan_reference_batch is None:
        sigma = _noise_multiplier(config, q, steps) if config.private else 0.0
        return MechanismPlan(q, schedule.steps_per_epoch, steps, schedule.epochs, sigma)
    # TAN (Sander et al. 2023): at a fixed number of steps S, what matters is σ/B. The
    # reference run (batch B0, `epochs` epochs) has S steps and the σ0 meeting the target;
    # the simulation runs S steps at batch B with σ = σ0·B/B0.
    sigma0 = _noise_multiplier(config, schedule.reference_sample_rate, steps)
    sigma = sigma0 * config.batch_size / config.tan_reference_batch
    return MechanismPlan(q, schedule.steps_per_epoch, steps, schedule.epochs, sigma, True, sigma0)


def executed_mechanism(
    config: TrainConfig, sample_rate: float, noise_multiplier: float, steps: int,
    val_releases: int = 0, val_noise_multiplier: float = 0.0,
) -> dict[str, Any]:  # fmt: skip
    """The executed mechanism and its ε so far (∞ for a non-private run): the training steps
    and, in parallel, the noisy validation scores (accounting.ParallelCurve says why the
    larger of the two ε covers both)."""
    if config.private:
        event = accounting.dp_sgd_event(
            sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps
        )
        epsilon = accounting.epsilon(event, delta=config.delta, accountant=config.accountant)
        if val_releases:
            releases = accounting.validation_event(
                noise_multiplier=val_noise_multiplier, releases=val_releases
            )
            validation = accounting.epsilon(releases, delta=config.delta,
                                            accountant=config.accountant)  # fmt: skip
            epsilon = max(epsilon, validation)
    else:
        epsilon = math.inf
    return {
        "private": config.private,
        "sample_rate": sample_rate,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": config.max_grad_norm,
        "epsilon": epsilon,
        "delta": config.delta,
        "accountant": config.accountant,
    }


def _schedule(config: TrainConfig, n_train: int) -> accounting.DpSgdSchedule:
    return accounting.dp_sgd_schedule(
        n_train=n_train, batch_size=config.batch_size, epochs=config.epochs,
        tan_reference_batch=config.tan_reference_batch,
    )  # fmt: skip


def _noise_multiplier(config: TrainConfig, sample_rate: float, steps: int) -> float:
    """σ: calibrated to `target_epsilon`, or the one given, refused if it overspends."""
    if config.noise_multiplier is None:
        return accounting.calibrate_noise_multiplier(
            target_epsilon=config.target_epsilon,
            delta=config.delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=config.accountant,
        )
    if config.target_epsilon is not None:
        event = accounting.dp_sgd_event(
            sample_rate=sample_rate, noise_multiplier=config.noise_multiplier, steps=steps
        )
        planned = accounting.epsilon(event, delta=config.delta, accountant=config.accountant)
        if planned > config.target_epsilon:
            raise TrainerError(
                f"noise_multiplier={config.noise_multiplier} would spend ε={planned:.3f} > "
                f"target_epsilon={config.target_epsilon}; raise noise_multiplier, or unset it "
                "(--set noise_multiplier=none) to calibrate it."
            )
    return config.noise_multiplier
