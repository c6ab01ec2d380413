"""The per-trial Pareto front, by property against a brute-force O(n²) reference."""

from __future__ import annotations

import math

import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from results import pareto_front

values = st.one_of(st.floats(0, 10, allow_nan=False), st.just(math.inf), st.just(math.nan))
points = st.lists(st.tuples(values, st.one_of(st.floats(0, 1), st.just(math.nan))), max_size=25)


def brute_force(rows):
    usable = [(i, e, a) for i, (e, a) in enumerate(rows) if math.isfinite(e) and math.isfinite(a)]
    keep = set()
    for i, e, a in usable:
        dominated = any((e2 <= e and a2 >= a) and (e2 < e or a2 > a) for _, e2, a2 in usable)
        # of identical points only the first one stays
        duplicate = any(e2 == e and a2 == a and j < i for j, e2, a2 in usable)
        if not dominated and not duplicate:
            keep.add(i)
    return keep


@given(points)
def test_front_matches_brute_force(rows):
    frame = pd.DataFrame(rows, columns=["epsilon", "val_accuracy"])
    front = pareto_front(frame)
    assert set(front.index) == brute_force(rows)
    assert list(front["epsilon"]) == sorted(front["epsilon"])
    assert list(front["val_accuracy"]) == sorted(front["val_accuracy"])  # strictly better


def test_failed_and_non_private_trials_never_dominate():
    frame = pd.DataFrame(
        {"epsilon": [1.0, math.inf, math.nan, 2.0], "val_accuracy": [0.5, 0.99, 0.99, math.nan]}
    )
    assert list(pareto_front(frame).index) == [0]


statuses = st.sampled_from(["completed", "stopped", "failed", "running"])


@given(st.lists(st.tuples(values, st.one_of(st.floats(0, 1), st.just(math.nan)), statuses),
                max_size=25))  # fmt: skip
def test_only_completed_trials_enter_and_nothing_else_dominates(rows):
    frame = pd.DataFrame(rows, columns=["epsilon", "val_accuracy", "status"])
    front = pareto_front(frame)
    completed = [(e, a) if s == "completed" else (math.nan, math.nan) for e, a, s in rows]
    assert set(front.index) == brute_force(completed)
    assert set(front["status"]) <= {"completed"}
