"""Privacy accounting: DP-SGD mechanisms as dp_accounting events, ε of a trial and of a whole
search, σ calibration and budget planning, the statistics of an empirical audit (ε̂), the
durable privacy ledger, and the one way the project writes a file (`durable.atomic_file`:
whole or not at all).

This package sits below `trainers`, `search` and `results` (all of them need ε) and depends
only on dp_accounting: trainers record what they executed, this package turns it into ε.
"""

from accounting.audit import AuditResult, audit_scores, epsilon_lower_bound, max_lower_bound
from accounting.durable import atomic_file, write_atomically
from accounting.ledger import (
    LEDGER_FILENAME,
    LedgerError,
    LedgerRecord,
    PrivacyLedger,
    TrialAccount,
    executed_events,
    latest_status,
    read_ledger,
    reduce_ledger,
)
from accounting.mechanism import (
    ACCOUNTANTS,
    AccountingError,
    DpSgdSchedule,
    calibrate_noise,
    calibrate_noise_multiplier,
    dp_sgd_event,
    dp_sgd_schedule,
    epsilon,
    round_up,
    trial_event,
    validation_event,
)
from accounting.plan import (
    DEFAULT_BUDGETS,
    PLAN_FILENAME,
    VALIDATION_MODES,
    Mechanism,
    SearchPrivacyPlan,
    show_epsilon,
)
from accounting.rdp_curves import ParallelCurve, RdpCurve, calibrate_curve
from accounting.search_budget import (
    AUTO,
    TrialsChoice,
    auto_candidates,
    choose_trials,
    max_trials,
    plan_noise_multiplier,
)
from accounting.selection import (
    SEARCH_MODES,
    TRIAL_DISTRIBUTIONS,
    SearchEpsilon,
    TrialsDistribution,
    parallel_search_curve,
    repeat_and_select_curve,
    repeat_and_select_epsilon,
    search_epsilon,
)

__all__ = [
    "ACCOUNTANTS",
    "AUTO",
    "DEFAULT_BUDGETS",
    "LEDGER_FILENAME",
    "PLAN_FILENAME",
    "SEARCH_MODES",
    "TRIAL_DISTRIBUTIONS",
    "VALIDATION_MODES",
    "AccountingError",
    "AuditResult",
    "DpSgdSchedule",
    "LedgerError",
    "LedgerRecord",
    "Mechanism",
    "ParallelCurve",
    "PrivacyLedger",
    "RdpCurve",
    "SearchEpsilon",
    "SearchPrivacyPlan",
    "TrialAccount",
    "TrialsChoice",
    "TrialsDistribution",
    "atomic_file",
    "audit_scores",
    "auto_candidates",
    "calibrate_curve",
    "calibrate_noise",
    "calibrate_noise_multiplier",
    "choose_trials",
    "dp_sgd_event",
    "dp_sgd_schedule",
    "epsilon",
    "epsilon_lower_bound",
    "executed_events",
    "latest_status",
    "max_lower_bound",
    "max_trials",
    "parallel_search_curve",
    "plan_noise_multiplier",
    "read_ledger",
    "reduce_ledger",
    "repeat_and_select_curve",
    "repeat_and_select_epsilon",
    "round_up",
    "search_epsilon",
    "show_epsilon",
    "trial_event",
    "validation_event",
    "write_atomically",
]
