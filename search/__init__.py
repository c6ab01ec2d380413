"""The search: Ray Tune schedules DP-SGD trials of a registered space, the privacy plan fixes the
released ε before the first trial, and each trial reserves its mechanism in the ledger before
it touches data. Command lines: `python search/run.py` (`dp-search`) runs a search,
`python search/privacy.py` (`dp-search-privacy`) plans or audits one's ε. From Python,
`search.make_plan(...)` validates a request and fixes its plan (`plan.privacy.epsilon()` is the
released ε), `search.build_tuner(plan, ...)` makes the Ray Tune run of it.
"""

from search.plan import SearchError, SearchPlan, make_plan, searched_space

__all__ = [
    "SearchError",
    "SearchPlan",
    "StorageError",
    "build_tuner",
    "make_plan",
    "run_trial",
    "searched_space",
    "storage_problem",
    "summarize",
]

_LAZY = {
    # Ray Tune is slow to import: only what needs it pays for it.
    "StorageError": "search.tuner",
    "build_tuner": "search.tuner",
    "storage_problem": "search.tuner",
    "run_trial": "search.trial",
    "summarize": "search.summary",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'search' has no attribute {name!r}")
