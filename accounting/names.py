"""The privacy choices a user can name on a command line or in a config, and the project's
file names: plain constants, importable without dp_accounting or NumPy so a command line
checks what was typed before it loads any mathematics."""

ACCOUNTANTS = ("rdp", "pld")
"""Accountants a user can choose: Rényi DP (default, exact for every event we build) or PLD
(privacy loss distributions: tighter ε for the same mechanism, slower)."""

SEARCH_MODES = ("composition", "random-stopping", "none")
TRIAL_DISTRIBUTIONS = ("poisson", "geometric", "logarithmic", "negative-binomial")

AUTO = "auto"
"""`--trials-distribution auto`: the planner picks the distribution of K (`choose_trials`)."""

VALIDATION_MODES = ("dp", "public", "off")
"""dp: noisy scores of a hash-held-out part of the private data (accounted); public: scores of
a validation set the user declares public (free); off: no validation score at all."""

DEFAULT_BUDGETS = (1.0, 2.0, 4.0, 8.0)
"""The search-adjusted frontier's budgets when the user declares none (plus the space's own
per-trial ε levels): fixed before any result exists, so they cannot leak one."""

PLAN_FILENAME = "search.json"
LEDGER_FILENAME = "privacy_ledger.jsonl"
