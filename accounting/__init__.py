"""Privacy accounting: DP-SGD mechanisms as dp_accounting events, ε of a trial and of a whole
search, σ calibration and budget planning, and the durable privacy ledger.

This package sits below `trainers`, `search` and `results` (all of them need ε) and depends
only on dp_accounting: trainers record what they executed, this package turns it into ε.
"""

from accounting.ledger import (
    LEDGER_FILENAME,
    LedgerError,
    LedgerRecord,
    PrivacyLedger,
    executed_events,
    read_ledger,
)
from accounting.mechanism import (
    ACCOUNTANTS,
    AccountingError,
    calibrate_noise,
    calibrate_noise_multiplier,
    dp_sgd_event,
    epsilon,
    round_up,
)
from accounting.search import (
    SEARCH_MODES,
    TRIAL_DISTRIBUTIONS,
    RdpCurve,
    SearchEpsilon,
    TrialsDistribution,
    max_trials,
    plan_distribution,
    plan_noise_multiplier,
    plan_search_epsilon,
    plan_worst_case_event,
    repeat_and_select_curve,
    repeat_and_select_epsilon,
    search_epsilon,
    trial_event,
)

__all__ = [
    "ACCOUNTANTS",
    "LEDGER_FILENAME",
    "SEARCH_MODES",
    "TRIAL_DISTRIBUTIONS",
    "AccountingError",
    "LedgerError",
    "LedgerRecord",
    "PrivacyLedger",
    "RdpCurve",
    "SearchEpsilon",
    "TrialsDistribution",
    "calibrate_noise",
    "calibrate_noise_multiplier",
    "dp_sgd_event",
    "epsilon",
    "executed_events",
    "max_trials",
    "plan_distribution",
    "plan_noise_multiplier",
    "plan_search_epsilon",
    "plan_worst_case_event",
    "read_ledger",
    "repeat_and_select_curve",
    "repeat_and_select_epsilon",
    "round_up",
    "search_epsilon",
    "trial_event",
]
