"""The results layer on hand-made experiment directories: loading (also damaged ones), the
search-adjusted and per-trial frontiers against hand-computed accounting, and the fairness
columns. (Export formats, the plot and the export CLI: test_exports.py.)"""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
from dp_accounting import dp_event

import accounting
import results
from accounting.ledger import LedgerRecord, PrivacyLedger
from tests.helpers import CHEAP_1, CHEAP_2, COSTLY, DELTA, make_experiment


def event(t) -> dp_event.DpEvent:
    return accounting.dp_sgd_event(
        sample_rate=t["q"], noise_multiplier=t["sigma"], steps=t["steps"]
    )


def composed(*trials) -> float:
    return accounting.epsilon(dp_event.ComposedDpEvent([event(t) for t in trials]), delta=DELTA)


def cost(experiment, *trials) -> float:
    """What stopping the search after `trials` costs under the plan's scaled filter."""
    curve = sum((accounting.ParallelCurve.of(event(t)) for t in trials),
                accounting.ParallelCurve.zero())  # fmt: skip
    return experiment.privacy.filter_cost(curve)


def covered(experiment, budget) -> float:
    """The ε a release at `budget` is covered by (exact): the plan's guarantee scaled to
    `budget`."""
    return experiment.privacy.budget_curve(budget).epsilon(DELTA)


# Three trials: a cheap one, an expensive accurate one, another cheap one (launch order).


def test_random_search_admits_every_trial_that_still_fits(tmp_path):
    # Random search + FIFO: the skip rule, in launch order, under the plan's scaled filter.
    trials = [CHEAP_1, COSTLY, CHEAP_2]
    experiment = results.load_experiment(
        make_experiment(tmp_path / "e", trials, searcher="random", scheduler="fifo")
    )
    budget_small = cost(experiment, CHEAP_1, CHEAP_2) + 1e-6  # both cheap fit, the costly not
    assert cost(experiment, CHEAP_1, COSTLY) > budget_small
    everything = cost(experiment, CHEAP_1, COSTLY, CHEAP_2)
    assert everything < experiment.privacy.epsilon()  # the plan: 3 trials at the worst case
    table = results.search_adjusted_frontier(experiment, [budget_small, everything + 1e-6])
    small, large = table.iloc[0], table.iloc[1]
    assert small["rule"] == "skip"
    assert small["trial_id"] == "c" and small["search_epsilon"] == covered(experiment, budget_small)
    assert small["search_epsilon"] <= budget_small
    assert large["trial_id"] == "b"
    assert large["search_epsilon"] == covered(experiment, everything + 1e-6) <= everything + 1e-6
    # A budget below any single trial releases nothing.
    empty = results.search_adjusted_frontier(experiment, [0.01]).iloc[0]
    assert pd.isna(empty["trial_id"]) and empty["search_epsilon"] <= 0.01


def _claims(directory, trial_id, q, sigma, planned, claims):
    """Ledger lines of one trial as the trainer writes them: a reservation, then the steps
    claimed ahead of each epoch at the given times."""
    ledger = PrivacyLedger(directory)
    for time, steps, status in claims:
        ledger.append(LedgerRecord(trial_id=trial_id, attempt="a1", sample_rate=q,
                                   noise_multiplier=sigma, steps=steps, status=status,
                                   planned_steps=planned, time=time))  # fmt: skip


def test_adaptive_stop_time_counts_every_started_trial_and_the_rest_of_running_ones(tmp_path):
    """Stopping an adaptive search at t costs, for every trial started by t, the steps it had
    claimed by t plus the planned rest of those still running — not only the trials that had
    reported (a trial that has not reported yet has still read the data)."""
    a = dict(CHEAP_1, start=10, end=20)
    b = dict(COSTLY, start=11, end=40)
    c = dict(CHEAP_2, start=30, end=50)
    directory = make_experiment(tmp_path / "e", [], searcher="optuna")
    privacy = accounting.SearchPrivacyPlan.load(directory)
    candidates = tuple(accounting.Mechanism(sample_rate=t["q"], noise_multiplier=t["sigma"],
                                            steps=t["steps"]) for t in (a, b))  # fmt: skip
    plan = json.loads((directory / "search.json").read_text())
    plan["privacy"] = dataclasses.replace(privacy, candidates=candidates, num_trials=3).to_dict()
    (directory / "search.json").write_text(json.dumps(plan))
    # a: reserved at 10, claims its 100 steps, completes at 20.
    _claims(directory, "a", 0.01, 1.0, 100, [(10, 0, "running"), (10.5, 100, "running"),
                                             (20, 100, "completed")])  # fmt: skip
    # b: reserved at 11, claims 150 of its 300 steps at 11.5 (no report before 25), then all.
    _claims(
        directory,
        "b",
        0.05,
        0.8,
        300,
        [(11, 0, "running"), (11.5, 150, "running"), (25, 300, "running"), (40, 300, "completed")],
    )
    # c: reserved at 30 (after a's completion).
    _claims(directory, "c", 0.01, 1.0, 100, [(30, 0, "running"), (30.5, 100, "running"),
                                             (50, 100, "completed")])  # fmt: skip
    for t in (a, b, c):
        folder = directory / f"dp_trial_{t['id']}"
        folder.mkdir()
        (folder / "result.json").write_text(json.dumps(
            {"trial_id": t["id"], "done": True, "val_accuracy": t["val"], "steps": t["steps"],
             "test_accuracy": t["val"] - 0.01, "config": {}}) + "\n")  # fmt: skip
    experiment = results.load_experiment(directory)
    at_20 = cost(experiment, a, b)  # b counts whole: 150 claimed + its planned rest
    at_40 = cost(experiment, a, b, c)
    assert at_20 < at_40
    table = results.search_adjusted_frontier(experiment, [at_20 - 1e-3, at_20 + 1e-6,
                                                          at_40 + 1e-6])  # fmt: skip
    assert list(table["rule"]) == ["stop-time"] * 3
    assert pd.isna(table.iloc[0]["trial_id"])  # even the first stop costs a and all of b
    assert table.iloc[1]["trial_id"] == "a"
    assert table.iloc[1]["search_epsilon"] == covered(experiment, at_20 + 1e-6)
    assert table.iloc[2]["trial_id"] == "b"
    # The release ε never depends on when trials reported: it is the plan's.
    assert experiment.search_epsilon().epsilon == experiment.privacy.epsilon()


def test_random_stopping_search_is_one_bound(tmp_path):
    trials = [CHEAP_1, dict(CHEAP_2, status="completed")]
    directory = make_experiment(
        tmp_path / "e", trials, mode="random-stopping", searcher="random",
        trials_distribution="geometric", trials_mean=2.0,
    )  # fmt: skip
    experiment = results.load_experiment(directory)
    bound = accounting.search_epsilon(
        [event(CHEAP_1), event(CHEAP_2)], mode="random-stopping", delta=DELTA,
        distribution=accounting.TrialsDistribution(kind="geometric", mean=2.0),
    ).epsilon  # fmt: skip
    table = results.search_adjusted_frontier(experiment, [bound * 0.99, bound + 1e-6])
    assert pd.isna(table.iloc[0]["trial_id"])
    assert table.iloc[1]["trial_id"] == "c"
    assert table.iloc[1]["search_epsilon"] == pytest.approx(bound, rel=1e-12)
    assert table.iloc[1]["rule"] == "random-stopping"


def test_several_experiments_charge_choosing_among_them(tmp_path):
    low = make_experiment(tmp_path / "eps1", [CHEAP_1], searcher="random")
    high = make_experiment(tmp_path / "eps8", [COSTLY], searcher="random")
    experiments = results.load_experiments([low, high])
    both = composed(CHEAP_1, COSTLY)
    budgets = [composed(COSTLY) + 1e-6, both + 1e-6]
    per = results.search_adjusted_frontier(experiments, budgets, per_experiment=True)
    assert len(per) == 4
    # Alone, eps8's costly trial fits the first budget …
    assert per[(per["experiment"] == "eps8")].iloc[0]["trial_id"] == "b"
    table = results.search_adjusted_frontier(experiments, budgets)
    assert table["selection_charged"].all()
    # … but choosing it over eps1 means both searches ran: at that budget the two together
    # do not fit, so the best affordable choice is eps1's cheap trial (or nothing).
    first, second = table.iloc[0], table.iloc[1]
    assert first["trial_id"] != "b" and first["search_epsilon"] <= budgets[0]
    assert second["trial_id"] == "b" and second["experiment"] == "eps8"
    assert second["search_epsilon"] == pytest.approx(both, rel=1e-9)
    assert second["search_epsilon"] <= budgets[1]
    eps, delta = results.all_experiments_epsilon(experiments)
    assert eps == pytest.approx(both, rel=1e-9) and delta == DELTA
    report = results.build_report(experiments, budgets)
    assert set(report.frontier["experiment"]) == {"eps1", "eps8"}
    assert "Choosing among 2 experiments is charged" in report.captions["selection"]


def test_per_trial_frontier_shows_what_releasing_each_point_costs(tmp_path):
    experiment = results.load_experiment(
        make_experiment(tmp_path / "e", [CHEAP_1, COSTLY, CHEAP_2], searcher="random")
    )
    report = results.build_report(experiment)
    front = report.frontier.set_index("trial_id")
    assert list(front.index) == ["c", "b"]  # a is dominated by c (same ε, lower accuracy)
    # c (0.70) is released once both cheap trials fit; b (0.90) once a and b fit (c, after
    # them in launch order, then no longer does).
    to_release = front["search_epsilon_to_release"]  # exact: tables round it up when shown
    assert to_release["c"] == pytest.approx(cost(experiment, CHEAP_1, CHEAP_2), rel=1e-12)
    assert to_release["b"] == pytest.approx(cost(experiment, CHEAP_1, COSTLY), rel=1e-12)
    assert (to_release >= front["trial_epsilon"]).all()


def test_failed_and_stopped_trials_never_enter_the_frontier(tmp_path):
    stopped = dict(COSTLY, id="s", status="stopped", val=0.99)
    failed = dict(CHEAP_2, id="f", status="failed", val=0.99)
    experiment = results.load_experiment(
        make_experiment(tmp_path / "e", [CHEAP_1, stopped, failed], searcher="random")
    )
    report = results.build_report(experiment)
    assert list(report.frontier["trial_id"]) == ["a"]
    assert set(report.adjusted["trial_id"].dropna()) == {"a"}
    # ... but their steps count: what the ledger shows spent composes all three.
    whole = composed(CHEAP_1, stopped, failed)
    assert experiment.search_epsilon().spent == pytest.approx(whole, rel=1e-9)


def test_fairness_columns_and_the_non_private_baseline(tmp_path):
    private = dict(CHEAP_1, classes=[0.9, 0.4, 0.7], groups={"female": 0.55, "male": 0.75})
    directory = make_experiment(tmp_path / "e", [private], searcher="random")
    baseline_dir = make_experiment(
        tmp_path / "base",
        [dict(CHEAP_2, id="np", sigma=0.0, val=0.95, test=0.94,
              groups={"female": 0.9, "male": 0.95})],
        searcher="random",
    )  # fmt: skip
    experiments = results.load_experiments([directory, baseline_dir])
    row = experiments[0].trials.iloc[0]
    assert row["test_worst_class_accuracy"] == 0.4
    assert row["test_class_gap"] == pytest.approx(0.5)
    assert row["test_worst_group"] == "female" and row["test_worst_group_accuracy"] == 0.55
    assert row["test_group_gap"] == pytest.approx(0.2)
    base = experiments[1].trials.iloc[0]
    assert not base["private"] and math.isinf(base["trial_epsilon"])
    report = results.build_report(experiments)
    assert list(report.frontier["trial_id"]) == ["a"]  # a non-private trial has no ε to plot
    assert report.frontier.iloc[0]["baseline_test_score"] == 0.94
    assert report.frontier.iloc[0]["baseline_test_group_gap"] == pytest.approx(0.05)
    assert "non-private worst group" in results.to_markdown(report)


def test_trainer_reports_group_accuracy_consistent_with_accuracy():
    import torch

    from tests.helpers import tiny
    from trainers import make_config, train
    from trainers.data import load_splits

    config = make_config(tiny(synthetic_groups=3, epochs=1))
    metrics = train(config)
    groups = load_splits(config).test_groups
    sizes = torch.bincount(groups, minlength=3).tolist()
    per_group = metrics["test_group_accuracy"]
    assert list(per_group) == ["group_0", "group_1", "group_2"]
    weighted = sum(per_group[f"group_{g}"] * sizes[g] for g in range(3)) / sum(sizes)
    assert weighted == pytest.approx(metrics["test_accuracy"])
    # DP validation releases one noisy score: no per-group figure of the validation records.
    assert "val_group_accuracy" not in metrics


# --- damaged directories ------------------------------------------------------------------


def test_damaged_directory_loads_with_warnings_that_name_what_is_missing(tmp_path):
    directory = make_experiment(tmp_path / "e", [CHEAP_1, COSTLY, CHEAP_2], searcher="random")
    with open(directory / accounting.LEDGER_FILENAME, "ab") as ledger:
        ledger.write(b'{"trial_id": "c", "attempt": "a1", "sample_')  # torn last line
    (next(directory.glob("dp_trial_b_*")) / "result.json").write_text("")  # never reported
    with open(next(directory.glob("dp_trial_c_*")) / "result.json", "a") as f:
        f.write("{not json\n")
    (directory / "dp_trial_z_orphan").mkdir()
    (directory / "dp_trial_z_orphan" / "params.json").write_text("{}")
    experiment = results.load_experiment(directory)
    text = "\n".join(experiment.warnings)
    assert "incomplete" in text  # the torn ledger line
    assert "dp_trial_z_orphan has no results" in text
    assert "dp_trial_b_lr=0.1 has no results" in text
    assert "trial b is in the ledger but has no results" in text
    assert "dp_trial_c_lr=0.1/result.json: 1 unreadable line" in text
    trials = experiment.trials.set_index("trial_id")
    assert trials.loc["c", "val_accuracy"] == 0.70  # the last good line
    # b's ε still counts toward the search though its results are gone.
    assert experiment.search_epsilon().spent == pytest.approx(composed(CHEAP_1, COSTLY, CHEAP_2))
    results.build_report(experiment)  # and it still reports


def test_trial_that_never_reported_keeps_its_configuration_and_ledger_status(tmp_path):
    # A driver killed after a trial's ledger said "completed" but before Tune saved its
    # results: the resumed search does not re-run it, and its folder has only params.json.
    trial = {**CHEAP_1, "id": "e399d_00002", "config": {"learning_rate": 0.25}}
    directory = make_experiment(tmp_path / "e", [CHEAP_2, trial], searcher="random")
    next(directory.glob("dp_trial_e399d_00002_*")).rename(
        directory / "dp_trial_e399d_00002_2_learning_rate=0.25_2026-12-02_16-10-27"
    )
    (next(directory.glob("dp_trial_e399d_00002_*")) / "result.json").write_text("")
    experiment = results.load_experiment(directory)
    row = experiment.trials.set_index("trial_id").loc["e399d_00002"]
    assert row["config/learning_rate"] == 0.25 and row["status"] == "completed"
    assert math.isnan(row["val_accuracy"])  # no score is made up
    assert any("e399d_00002 is in the ledger but has no results" in w for w in experiment.warnings)


def test_trial_without_ledger_records_counts_as_infinite(tmp_path):
    directory = make_experiment(tmp_path / "e", [CHEAP_1], searcher="random")
    ghost = directory / "dp_trial_ghost"
    ghost.mkdir()
    (ghost / "result.json").write_text(json.dumps({"trial_id": "ghost", "done": True,
                                                   "val_accuracy": 0.99}) + "\n")  # fmt: skip
    experiment = results.load_experiment(directory)
    assert any("ghost has results but no privacy-ledger records" in w for w in experiment.warnings)
    assert math.isinf(experiment.trials.set_index("trial_id").loc["ghost", "trial_epsilon"])
    assert list(results.build_report(experiment).frontier["trial_id"]) == ["a"]


def test_missing_plan_is_an_error_that_says_what_to_pass(tmp_path):
    with pytest.raises(results.ExperimentError, match="not an experiment directory"):
        results.load_experiment(tmp_path)
    (tmp_path / "search.json").write_text("{broken")
    with pytest.raises(results.ExperimentError, match="damaged"):
        results.load_experiment(tmp_path)
