"""`audit_trial(config, kind, canaries)`: one trial trained with canaries, and the audit's
lower bound ε̂ beside the trial's accounted ε (`accounting.audit` for the statistics,
`trainers.canaries` for the canaries).

The accounted ε an audit is compared with is the DP-SGD mechanism's alone (q, σ and the steps
that ran, at the trial's δ and accountant): the canaries are training records, and no
validation release sees them.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import accounting
from trainers.canaries import make_canaries
from trainers.config import TrainConfig, TrainerError
from trainers.loop import MetricsCallback, train
from trainers.mechanism import executed_mechanism
from trainers.randomness import CANARIES, mechanism_generator


def audit_trial(
    config: TrainConfig,
    *,
    kind: str,
    canaries: int,
    confidence: float = 0.95,
    report: MetricsCallback | None = None,
) -> dict[str, Any]:
    """Train `config` with `canaries` canaries of `kind` ("gradient" or "input") and audit it.

    Returns the trial's final metrics under "final", and the audit: `epsilon` (accounted, DP-SGD),
    `epsilon_lower` (ε̂ at `confidence`), `guesses`, `correct`, `canaries`, `kind`, `engine`
    and `verdict` ("consistent" when ε̂ ≤ ε, else "VIOLATION").
    """
    if not config.private:
        raise TrainerError("an audit needs a private trial (private=true): ε is ∞ otherwise.")
    if kind == "input" and config.frontend != "none":
        raise TrainerError(
            f"input canaries are images, and frontend={config.frontend} trains on features: "
            "audit this trial with gradient canaries (--kind gradient)."
        )
    if kind == "input" and config.feature_cache:
        # Features cached for the data set would leave the canaries out (and a cache written
        # with them in would serve later trials): the backbone runs on every step instead.
        config = dataclasses.replace(config, feature_cache=False)
    generator = mechanism_generator(config, CANARIES)
    canary_set = make_canaries(kind, canaries, generator, config.max_grad_norm)
    final = train(config, report, canaries=canary_set)
    # The training steps alone (no validation release sees the canaries).
    epsilon = executed_mechanism(
        config, final["sample_rate"], final["noise_multiplier"], final["steps"]
    )["epsilon"]
    result = accounting.audit_scores(
        canary_set.scores(),
        canary_set.included.numpy(),
        delta=config.delta,
        confidence=confidence,
    )
    return {
        "epsilon": epsilon,
        **result.to_dict(),
        "verdict": result.verdict(epsilon),
        "max_epsilon_lower": accounting.max_lower_bound(canaries, config.delta, confidence),
        "kind": kind,
        "engine": final.get("clipping"),
        "steps": final["steps"],
        "sample_rate": final["sample_rate"],
        "noise_multiplier": final["noise_multiplier"],
        "test_accuracy": final.get("test_accuracy"),
        "final": final,
    }
