"""The validation score a trial releases after every epoch: the search's selection signal.

Every score Tune, Optuna, ASHA or the release choice sees is a statistic of private data, so
with `validation=dp` (the default) it goes through a Gaussian mechanism and into the ledger:

- multi-class data: the number of correct predictions on the validation records, plus
  N(0, σ_v²). One record added or removed changes the count by at most 1 (L2 sensitivity 1);
  the released accuracy is the noisy count over the number of validation records, clipped to
  [0, 1] (post-processing);
- multi-label data (CheXpert): each finding's count of correct predictions at p = 0.5, plus
  N(0, σ_v² · L) each. One record changes each of the L counts by at most 1 (L2 sensitivity
  √L); the released `val_accuracy` is their mean over findings and records. AUC is not
  released: its sensitivity depends on the (private) number of positives.

Either way each release is one `GaussianDpEvent(σ_v)` (noise in units of the sensitivity);
nothing else about the validation records is reported (no loss, no per-class or per-group
figure, no raw iterate). The number of validation records is treated as public, as the
number of training records is for q (docs/privacy.md). `validation=public` reports the exact
metrics of a data set the user declared public; `off` reports nothing.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from trainers.config import TrainConfig


def release_validation(evaluate_model, config: TrainConfig, generator: torch.Generator,
                       *, public: bool) -> dict[str, Any]:  # fmt: skip
    """The validation metrics one epoch releases.

    Args:
        evaluate_model: computes the exact aggregates (`evaluate`'s dict) on the validation
            split; called once.
        generator: the secret validation-noise generator (trainers.randomness).
        public: the validation split is a data set the user declared public.
    """
    exact = evaluate_model()
    if public:
        kept = {k: v for k, v in exact.items() if k not in ("correct", "label_correct")}
        return {f"val_{key}": value for key, value in kept.items()} | {"val_public": True}
    sigma = config.val_noise_multiplier
    n = exact["examples"]
    if "label_correct" in exact:
        counts = torch.tensor(exact["label_correct"], dtype=torch.float64)
        scale = sigma * math.sqrt(len(counts))
        noisy = counts + torch.randn(len(counts), generator=generator, dtype=torch.float64) * scale
        total, denominator = float(noisy.sum()), max(n * len(counts), 1)
    else:
        noise = torch.randn((), generator=generator, dtype=torch.float64) * sigma
        total, denominator = exact["correct"] + float(noise), max(n, 1)
    return {
        "val_accuracy": min(max(total / denominator, 0.0), 1.0),
        "val_examples": n,
        "val_dp": True,
    }
