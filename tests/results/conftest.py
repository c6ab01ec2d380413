"""The results tests' shared report: one random search of three hand-made trials (two cheap,
one costly and accurate, with per-group accuracy), at budgets 1, 2, 4, 8 and 50."""

from __future__ import annotations

import pytest

import results
from tests.helpers import CHEAP_1, CHEAP_2, COSTLY, make_experiment


@pytest.fixture
def report(tmp_path):
    trials = [
        dict(CHEAP_1, groups={"g0": 0.6, "g1": 0.5}),
        dict(COSTLY, groups={"g0": 0.9, "g1": 0.8}),
        dict(CHEAP_2, groups={"g0": 0.7, "g1": 0.6}),
    ]
    directory = make_experiment(tmp_path / "exp_1", trials, searcher="random")
    return results.build_report(results.load_experiment(directory), budgets=[1, 2, 4, 8, 50])
