"""Privacy accounting: DP-SGD mechanisms as dp_accounting events, ε of a trial and of a whole
search, σ calibration and budget planning, the statistics of an empirical audit (ε̂), the
durable privacy ledger, and the one way the project writes a file (`durable.atomic_file`:
whole or not at all).

This package sits below `trainers`, `search` and `results` (all of them need ε) and depends
only on dp_accounting: trainers record what they executed, this package turns it into ε.
"""

# Lazy: `import accounting` is instant; a name's module (and what it needs:
# dp_accounting, NumPy) loads on first use, so a command line answers a typo in well under a second.
_SOURCES = {
    "AuditResult": "accounting.audit",
    "audit_scores": "accounting.audit",
    "epsilon_lower_bound": "accounting.audit",
    "max_lower_bound": "accounting.audit",
    "atomic_file": "accounting.durable",
    "write_atomically": "accounting.durable",
    "LEDGER_FILENAME": "accounting.names",
    "LedgerError": "accounting.ledger",
    "LedgerRecord": "accounting.ledger",
    "PrivacyLedger": "accounting.ledger",
    "TrialAccount": "accounting.ledger",
    "executed_events": "accounting.ledger",
    "latest_status": "accounting.ledger",
    "read_ledger": "accounting.ledger",
    "reduce_ledger": "accounting.ledger",
    "ACCOUNTANTS": "accounting.names",
    "AccountingError": "accounting.errors",
    "DpSgdSchedule": "accounting.mechanism",
    "calibrate_noise": "accounting.mechanism",
    "calibrate_noise_multiplier": "accounting.mechanism",
    "dp_sgd_event": "accounting.mechanism",
    "dp_sgd_schedule": "accounting.mechanism",
    "epsilon": "accounting.mechanism",
    "round_up": "accounting.mechanism",
    "trial_event": "accounting.mechanism",
    "validation_event": "accounting.mechanism",
    "DEFAULT_BUDGETS": "accounting.names",
    "PLAN_FILENAME": "accounting.names",
    "VALIDATION_MODES": "accounting.names",
    "Mechanism": "accounting.plan",
    "SearchPrivacyPlan": "accounting.plan",
    "show_epsilon": "accounting.plan",
    "ParallelCurve": "accounting.rdp_curves",
    "RdpCurve": "accounting.rdp_curves",
    "calibrate_curve": "accounting.rdp_curves",
    "AUTO": "accounting.names",
    "TrialsChoice": "accounting.search_budget",
    "auto_candidates": "accounting.search_budget",
    "choose_trials": "accounting.search_budget",
    "max_trials": "accounting.search_budget",
    "plan_noise_multiplier": "accounting.search_budget",
    "SEARCH_MODES": "accounting.names",
    "TRIAL_DISTRIBUTIONS": "accounting.names",
    "SearchEpsilon": "accounting.selection",
    "TrialsDistribution": "accounting.selection",
    "parallel_search_curve": "accounting.selection",
    "repeat_and_select_curve": "accounting.selection",
    "repeat_and_select_epsilon": "accounting.selection",
    "search_epsilon": "accounting.selection",
}

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


def __getattr__(name: str):
    if name not in _SOURCES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value  # once loaded, a plain attribute
    return value
