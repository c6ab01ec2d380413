"""The results layer on hand-made experiment directories: loading (also damaged ones), the
search-adjusted frontier against hand-computed accounting, fairness columns, every export
format parsed back, the plot, and the export CLI."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from dp_accounting import dp_event

import accounting
import results
from accounting.ledger import LedgerRecord, PrivacyLedger
from results.export import write_exports

from .conftest import ROOT

DELTA = 1e-5
N = 1000


def make_experiment(
    directory: Path,
    trials: list[dict],
    *,
    mode: str = "composition",
    searcher: str = "optuna",
    scheduler: str = "fifo",
    **plan_extra,
) -> Path:
    """An experiment directory as `search/run.py` leaves it, from trial descriptions:
    {id, q, sigma, steps, status, start (first report time), end, val, test, config…}."""
    directory.mkdir(parents=True)
    # The plan search/run.py writes: every mechanism a trial may run (here: the trials' own),
    # as many trials as ran, the declared budgets.
    candidates = sorted({(t["q"], t["sigma"], t["steps"]) for t in trials if t["sigma"] > 0})
    plan = accounting.SearchPrivacyPlan(**{
        "mode": mode, "delta": DELTA, "num_trials": max(len(trials), 1),
        "candidates": tuple(accounting.Mechanism(sample_rate=q, noise_multiplier=s, steps=n)
                            for q, s, n in candidates),
        "adaptive": not (searcher == "random" and scheduler == "fifo"),
        "validation": "dp", "val_noise_multiplier": 20.0, **plan_extra,
    })  # fmt: skip
    search = {"space": "hand_made", "n_train": N, "searcher": searcher, "scheduler": scheduler,
              "seed": 0, "fixed": {}}  # fmt: skip
    (directory / "search.json").write_text(json.dumps({"search": search,
                                                       "privacy": plan.to_dict()}))
    ledger = PrivacyLedger(directory)
    for t in trials:
        common = dict(
            trial_id=t["id"], attempt="a1", sample_rate=t["q"], noise_multiplier=t["sigma"]
        )
        half = t["steps"] // 2
        ledger.append(LedgerRecord(**common, steps=half, status="running", time=t["start"]))
        ledger.append(LedgerRecord(**common, steps=t["steps"], status=t["status"], time=t["end"]))
        folder = directory / f"dp_trial_{t['id']}_lr=0.1"
        folder.mkdir()
        config = t.get("config", {"learning_rate": 0.1})
        (folder / "params.json").write_text(json.dumps(config))
        last = {
            "trial_id": t["id"], "done": t["status"] == "completed", "steps": t["steps"],
            "val_accuracy": t["val"], "test_accuracy": t.get("test", t["val"] - 0.01),
            "test_class_accuracy": json.dumps(t.get("classes", [0.9, 0.5])),
            "config": config,
        }  # fmt: skip
        if "groups" in t:
            last["test_group_accuracy"] = json.dumps(t["groups"])
        (folder / "result.json").write_text(json.dumps({"trial_id": t["id"]}) + "\n" +
                                            json.dumps(last) + "\n")  # fmt: skip
    return directory


def event(t) -> dp_event.DpEvent:
    return accounting.dp_sgd_event(
        sample_rate=t["q"], noise_multiplier=t["sigma"], steps=t["steps"]
    )


def composed(*trials) -> float:
    return accounting.epsilon(dp_event.ComposedDpEvent([event(t) for t in trials]), delta=DELTA)


def up(value: float) -> float:
    return accounting.round_up(value, 3)


def cost(experiment, *trials) -> float:
    """What stopping the search after `trials` costs under the plan's scaled filter."""
    curve = sum((accounting.ParallelCurve.of(event(t)) for t in trials),
                accounting.ParallelCurve.zero())  # fmt: skip
    return experiment.privacy.filter_cost(curve)


def covered(experiment, budget) -> float:
    """The ε a release at `budget` is covered by: the plan's guarantee scaled to `budget`."""
    return up(experiment.privacy.budget_curve(budget).epsilon(DELTA))


# Three trials: a cheap one, an expensive accurate one, another cheap one (launch order).
CHEAP_1 = dict(id="a", q=0.01, sigma=1.0, steps=100, status="completed", start=10, end=20, val=0.60)
COSTLY = dict(id="b", q=0.05, sigma=0.8, steps=300, status="completed", start=11, end=40, val=0.90)
CHEAP_2 = dict(id="c", q=0.01, sigma=1.0, steps=100, status="completed", start=30, end=50, val=0.70)


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
    assert small["search_epsilon"] <= up(budget_small)
    assert large["trial_id"] == "b"
    assert large["search_epsilon"] == covered(experiment, everything + 1e-6) <= up(everything)
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
    _claims(directory, "b", 0.05, 0.8, 300, [(11, 0, "running"), (11.5, 150, "running"),
                                             (25, 300, "running"), (40, 300, "completed")])
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
    assert table.iloc[1]["trial_id"] == "c" and table.iloc[1]["search_epsilon"] == up(bound)
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
    assert first["trial_id"] != "b" and first["search_epsilon"] <= up(budgets[0])
    assert second["trial_id"] == "b" and second["experiment"] == "eps8"
    assert second["search_epsilon"] == up(both) and second["search_epsilon"] <= up(budgets[1])
    eps, delta = results.all_experiments_epsilon(experiments)
    assert eps == pytest.approx(both, rel=1e-9) and delta == DELTA
    report = results.build_report(experiments, budgets)
    assert set(report.frontier["experiment"]) == {"eps1", "eps8"}
    assert "Choosing among 2 experiments is charged" in report.captions["search-adjusted"]


def test_per_trial_frontier_shows_what_releasing_each_point_costs(tmp_path):
    experiment = results.load_experiment(
        make_experiment(tmp_path / "e", [CHEAP_1, COSTLY, CHEAP_2], searcher="random")
    )
    report = results.build_report(experiment)
    front = report.frontier.set_index("trial_id")
    assert list(front.index) == ["c", "b"]  # a is dominated by c (same ε, lower accuracy)
    # c (0.70) is released once both cheap trials fit; b (0.90) once a and b fit (c, after
    # them in launch order, then no longer does).
    assert front.loc["c", "search_epsilon_to_release"] == up(cost(experiment, CHEAP_1, CHEAP_2))
    assert front.loc["b", "search_epsilon_to_release"] == up(cost(experiment, CHEAP_1, COSTLY))
    assert (front["search_epsilon_to_release"] >= front["reported_epsilon"]).all()


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

    from trainers import make_config, train
    from trainers.data import load_splits

    from .conftest import tiny

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


# --- exports ------------------------------------------------------------------------------


@pytest.fixture
def report(tmp_path):
    trials = [
        dict(CHEAP_1, groups={"g0": 0.6, "g1": 0.5}),
        dict(COSTLY, groups={"g0": 0.9, "g1": 0.8}),
        dict(CHEAP_2, groups={"g0": 0.7, "g1": 0.6}),
    ]
    directory = make_experiment(tmp_path / "exp_1", trials, searcher="random")
    return results.build_report(results.load_experiment(directory), budgets=[1, 2, 4, 8, 50])


def test_csv_export_parses_back(report):
    table = pd.read_csv(io.StringIO(results.to_csv(report, "search-adjusted")))
    assert list(table["budget"]) == [1, 2, 4, 8, 50]
    assert {"search_epsilon", "trial_id", "test_worst_group_accuracy"} <= set(table.columns)
    both = pd.read_csv(io.StringIO(results.to_csv(report)))
    assert set(both["table"]) == {"search-adjusted", "frontier"}
    assert (both["table"] == "frontier").sum() == len(report.frontier)
    trials = pd.read_csv(io.StringIO(results.to_csv(report, "trials")))
    assert len(trials) == 3
    assert json.loads(trials["test_group_accuracy"][0]) == {"g0": 0.6, "g1": 0.5}


def test_json_export_parses_back(report):
    payload = json.loads(results.to_json(report))
    assert len(payload["search_adjusted"]) == 5 and len(payload["per_trial_frontier"]) == 2
    release = payload["experiments"][0]["release"]
    assert release["trial_id"] == "b" and release["search_epsilon"] > 0
    assert "analyst_only" in payload and "dp_releases" in payload
    only = json.loads(results.to_json(report, "frontier"))
    assert [row["trial_id"] for row in only] == ["c", "b"]


def test_latex_export_is_booktabs_tabulars_with_one_row_per_entry(report):
    latex = results.to_latex(report)
    tabulars = re.findall(r"\\begin\{tabular\}.*?\\end\{tabular\}", latex, flags=re.S)
    assert len(tabulars) == 2
    declared = len(report.table("search-adjusted"))
    for body, expected in zip(tabulars, (declared, len(report.frontier)), strict=True):
        assert "\\toprule" in body and "\\midrule" in body and "\\bottomrule" in body
        rows = body.split("\\midrule", 1)[1].split("\\bottomrule", 1)[0]
        assert rows.count("\\\\") == expected
        assert "_" not in rows.replace("\\_", "")  # underscores escaped
    assert latex.count("\\caption{") == 2


def test_markdown_export_has_both_tables_and_says_what_is_released(report):
    markdown = results.to_markdown(report)
    assert "## DP release" in markdown and "analyst-only" in markdown
    table_rows = [line for line in markdown.splitlines() if line.startswith("| ")]
    # Three tables (each + its header): declared budgets (DP releases), the budget 50 chosen
    # after the search (analyst-only), the per-trial frontier.
    assert len(table_rows) == 3 + len(report.adjusted) + len(report.frontier)
    release_section = markdown.split("## Analyst-only")[0]
    assert "| 50 |" not in release_section and "| 8 |" in release_section
    assert "| 50 |" in markdown.split("### Budgets chosen after the search")[1]


def test_plot_is_a_real_png(report, tmp_path):
    import matplotlib.image

    path = results.plot_frontier(report, tmp_path / "frontier.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 20_000
    pixels = matplotlib.image.imread(path)
    assert pixels.shape[0] > 400 and pixels.shape[1] > 600
    colours = {tuple(p) for p in pixels[::7, ::7, :3].reshape(-1, 3).round(1).tolist()}
    assert len(colours) > 10  # points, two coloured lines, text: not a blank canvas


def test_write_exports_leaves_every_format_in_the_directory(report, tmp_path):
    directory = report.experiments[0].path
    written = write_exports(directory, report)
    for name in ("pareto.md", "pareto.tex", "pareto.csv", "results.json", "frontier.png",
                 "search_adjusted.csv", "trials.csv"):  # fmt: skip
        assert (directory / name).stat().st_size > 0, name
    assert written["plot"] == directory / "frontier.png"
    # Re-loading reads trials.csv as a fallback only: the trial folders stay the source.
    again = results.load_experiment(directory)
    assert len(again.trials) == 3 and not again.warnings


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


# --- the CLI ------------------------------------------------------------------------------


def export(*args):
    return subprocess.run(
        [sys.executable, "results/export.py", *map(str, args)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_export_cli_writes_each_format_and_the_plot(tmp_path, capsys):
    from results.export import main

    directory = make_experiment(tmp_path / "e", [CHEAP_1, COSTLY, CHEAP_2], searcher="random")
    other = make_experiment(tmp_path / "f", [dict(CHEAP_1, id="x")], searcher="random")
    for fmt in ("csv", "json", "latex", "markdown"):
        out = tmp_path / f"out.{fmt}"
        args = [str(directory), str(other), "--format", fmt, "--out", str(out)]
        assert main([*args, "--budgets", "1,4,50"]) == 0
        assert out.stat().st_size > 0
    assert len(json.loads((tmp_path / "out.json").read_text())["experiments"]) == 2
    assert "\\begin{tabular}" in (tmp_path / "out.latex").read_text()
    # As a script, printing Markdown and writing the plot.
    result = export(directory, "--plot", tmp_path / "p.png")
    assert result.returncode == 0 and "Search-adjusted frontier" in result.stdout
    assert (tmp_path / "p.png").stat().st_size > 20_000


def test_an_experiment_without_trials_still_reports(tmp_path):
    directory = make_experiment(tmp_path / "e", [], searcher="random")
    experiment = results.load_experiment(directory)
    assert "no trials: the search has not run any" in experiment.warnings
    report = results.build_report(experiment)
    assert report.frontier.empty and report.releases[0]["trial_id"] is None
    assert "no completed trial" in results.to_markdown(report)
    assert "\\begin{tabular}" not in results.to_latex(report)  # no empty, invalid tabular
    assert json.loads(results.to_json(report))["per_trial_frontier"] == []
    assert results.plot_frontier(report, tmp_path / "p.png").stat().st_size > 0
