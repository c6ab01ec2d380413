"""Privacy accounting: DP-SGD mechanisms as dp_accounting events, ε at δ, σ calibration.

This package sits below `trainers`, `search` and `results` (all of them need ε) and depends
only on dp_accounting: trainers record what they executed, this package turns it into ε.
"""

from accounting.mechanism import (
    ACCOUNTANTS,
    AccountingError,
    calibrate_noise_multiplier,
    dp_sgd_event,
    epsilon,
    round_up,
)

__all__ = [
    "ACCOUNTANTS",
    "AccountingError",
    "calibrate_noise_multiplier",
    "dp_sgd_event",
    "epsilon",
    "round_up",
]
