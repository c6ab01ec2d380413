"""The search: Ray Tune schedules DP-SGD trials of a registered space, the privacy plan fixes the
released ε before the first trial, and each trial reserves its mechanism in the ledger before
it touches data. Command lines: `python search/run.py` (`dp-search`) runs a search,
`python search/privacy.py` (`dp-search-privacy`) plans or audits one's ε. From Python,
`search.make_plan(...)` validates a request and fixes its plan (`plan.privacy.epsilon()` is the
released ε), `search.build_tuner(plan, ...)` makes the Ray Tune run of it.
"""

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
    # Lazy: the planner loads torch (through trainers) and Ray Tune is slow to import; a
    # command line answers a typo before either loads.
    "SearchError": "search.errors",
    "SearchPlan": "search.plan",
    "make_plan": "search.plan",
    "searched_space": "search.plan",
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
