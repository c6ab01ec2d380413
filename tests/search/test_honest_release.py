"""The released ε is true: what reaches Tune and the release is noisy, K is secret, random
stopping covers the space, research runs say what they are, the log never rounds ε down.

Each test here failed on the version before `docs/privacy.md`: the claims that page makes.
"""

from __future__ import annotations

import json
import math
import re
import statistics

import pytest
import torch

import accounting
import results
from search.plan import make_plan
from tests.helpers import CHEAP_1, CHEAP_2, COSTLY, make_experiment, tiny
from trainers import make_config, train
from trainers.validation import release_validation

SYNTHETIC = {"dataset": "synthetic", "synthetic_examples": 320, "validation_fraction": 0.2,
             "batch_size": 64, "delta": 1e-4}  # fmt: skip


def plan_for(space="fmnist_quick", **kwargs):
    values = dict(
        space_name=space, overrides=dict(SYNTHETIC), num_samples=4, budget_epsilon=None,
        delta=None, mode="composition", trials_distribution="poisson", eta=None,
        searcher="optuna", scheduler="fifo", seed=0,
    )  # fmt: skip
    values.update(kwargs)
    return make_plan(**values)


# --- the selection signal -------------------------------------------------------------------


@pytest.mark.parametrize("multilabel", [False, True])
def test_validation_scores_are_gaussian_noised_counts_with_the_stated_sensitivity(multilabel):
    """The released score is the exact count plus N(0, (σ_v·Δ)²), Δ = 1 or √L; measured over
    many releases of one fixed model's counts."""
    config = make_config(tiny(val_noise_multiplier=20.0))
    n = 10_000
    exact = ({"label_correct": [4000, 5000, 6000, 7000, 8000], "examples": n} if multilabel
             else {"correct": 6000, "examples": n})  # fmt: skip
    truth = 0.6
    generator = torch.Generator().manual_seed(0)
    scores = [
        release_validation(lambda: exact, config, generator, public=False)["val_accuracy"]
        for _ in range(4000)
    ]
    # Both: noise std on the released accuracy is σ_v / n (Δ = √L spread over L findings).
    assert statistics.fmean(scores) == pytest.approx(truth, abs=2e-4)
    assert statistics.stdev(scores) == pytest.approx(20.0 / n, rel=0.05)
    assert len(set(scores)) == len(scores)  # never the exact value


def test_tune_optuna_and_the_release_see_only_noisy_scores():
    """What a trial reports (to Tune, hence Optuna, ASHA and the release choice) holds one
    noisy validation score and no exact figure of the validation records."""
    from search.trial import tune_metrics

    reports = []
    train(make_config(tiny(epochs=2, val_noise_multiplier=1e6)), reports.append)
    for report in reports:
        tune = tune_metrics(report)
        validation = {k for k in tune if k.startswith("val_")}
        assert validation == {"val_accuracy", "val_dp", "val_examples", "val_releases",
                              "val_noise_multiplier"}  # fmt: skip
        # Noise this large drowns any signal: the released accuracy is clipped to 0 or 1.
        assert tune["val_accuracy"] in (0.0, 1.0)
    assert [r["val_releases"] for r in reports] == [1, 2]


def test_the_trial_epsilon_covers_its_validation_releases():
    noisy = train(make_config(tiny(epochs=1, val_noise_multiplier=0.3, target_epsilon=1.0)))
    quiet = train(make_config(tiny(epochs=1, target_epsilon=1.0)))
    assert quiet["epsilon"] <= 1.0 < noisy["epsilon"]  # one release at σ_v = 0.3 costs ε > 1
    release = accounting.epsilon(accounting.validation_event(noise_multiplier=0.3, releases=1),
                                 delta=1e-4)  # fmt: skip
    assert noisy["epsilon"] == pytest.approx(release)


# --- random stopping: K and the worst case --------------------------------------------------


def test_k_is_secret_and_not_decided_by_the_seed():
    ks = [plan_for(mode="random-stopping", searcher="random", num_samples=20).num_trials
          for _ in range(5)]  # fmt: skip
    # The same --seed, five different draws (Poisson(20): all five equal has chance < 1e-4).
    assert len(set(ks)) > 1


def test_random_stopping_without_a_budget_covers_the_space():
    """Before, a search without a budget bounded only the configurations it happened to draw;
    the base algorithm draws from the whole space, so the bound must cover all of it."""
    plan = plan_for(mode="random-stopping", searcher="random", trials_distribution="geometric")
    privacy = plan.privacy
    assert len(privacy.candidates) == 3  # fmnist_quick: ε = 3 at 1, 2 or 3 epochs
    distribution = privacy.distribution
    each = [accounting.parallel_search_curve([c.curve(privacy.retry_epochs)],
                                             mode="random-stopping",
                                             distribution=distribution).epsilon(1e-4)
            for c in privacy.candidates]  # fmt: skip
    assert privacy.epsilon() >= max(each) * (1 - 1e-12)
    # … and it is what every release of this search says, whatever ran.
    assert privacy.search_epsilon({}).epsilon == privacy.epsilon()


def test_random_stopping_with_a_budget_meets_it(monkeypatch):
    plan = plan_for(mode="random-stopping", searcher="random", budget_epsilon=6.0,
                    trials_distribution="logarithmic")  # fmt: skip
    assert plan.privacy.epsilon() <= 6.0 and len(plan.privacy.candidates) == 1


def test_a_space_without_a_finite_worst_case_needs_a_budget(monkeypatch):
    import spaces
    from search.plan import SearchError
    from spaces import LogUniform, SearchSpace
    from spaces.registry import _REGISTRY

    quick = spaces.get_space("fmnist_quick")
    space = SearchSpace(
        name="continuous_target", description="test: ε searched over a continuous range",
        fixed={k: v for k, v in quick.fixed.items() if k != "target_epsilon"},
        searched={**quick.searched, "target_epsilon": LogUniform(low=1.0, high=8.0, default=2.0)},
    )  # fmt: skip
    monkeypatch.setitem(_REGISTRY, space.name, space)
    with pytest.raises(SearchError, match="continuous range"):
        plan_for(space.name, mode="random-stopping", searcher="random")
    assert plan_for(space.name, budget_epsilon=8.0).privacy.epsilon() <= 8.0


def test_k_stays_out_of_every_released_output(tmp_path):
    trials = [dict(CHEAP_1, id=f"t{i}", start=10 + i, end=20 + i) for i in range(7)]
    directory = make_experiment(
        tmp_path / "rs", trials, mode="random-stopping", searcher="random",
        trials_distribution="geometric", trials_mean=3.0,
    )  # fmt: skip
    report = results.build_report(results.load_experiment(directory))
    assert report.releases[0]["num_trials"] is None
    payload = json.loads(results.to_json(report))
    assert "num_trials" not in payload["experiments"][0]["plan"]
    assert payload["experiments"][0]["release"]["num_trials"] is None
    release_section = results.to_markdown(report).split("## Analyst-only")[0]
    assert not re.search(r"\b7\b", release_section)
    adjusted = report.table("search-adjusted")
    assert "trials_covered" not in adjusted


# --- research runs, budgets, the log --------------------------------------------------------


def test_a_reproducible_search_is_labelled_a_research_run(tmp_path):
    directory = make_experiment(tmp_path / "r", [CHEAP_1, COSTLY], searcher="random",
                                reproducible=True)  # fmt: skip
    report = results.build_report(results.load_experiment(directory))
    assert "NOT a DP release" in results.to_markdown(report).split("## DP release")[0]
    rows = [json.loads(line) for line in [results.to_json(report, "search-adjusted")]][0]
    assert rows and all("NOT a DP release" in row["standing"] for row in rows)
    assert json.loads(results.to_json(report))["research_run"] is True
    plan = plan_for(reproducible=True)
    assert plan.fixed["reproducible"] and plan.privacy.reproducible


def test_budgets_are_declared_before_the_search_and_never_move_with_results(tmp_path):
    first = make_experiment(tmp_path / "a", [CHEAP_1, COSTLY, CHEAP_2], searcher="random")
    better = [dict(t, val=t["val"] / 2 + 0.5, end=t["end"] + 7) for t in (CHEAP_1, COSTLY, CHEAP_2)]
    second = make_experiment(tmp_path / "b", better, searcher="random")
    budgets = [results.default_budgets([results.load_experiment(d)]) for d in (first, second)]
    assert budgets[0] == budgets[1]
    whole = accounting.round_up(results.load_experiment(first).privacy.epsilon(), 3)
    assert budgets[0] == sorted({1.0, 2.0, 4.0, 8.0, whole})
    # The planner declares the space's own ε levels too, and the user's when given.
    assert plan_for().privacy.budgets == (1.0, 2.0, 3.0, 4.0, 8.0)
    assert plan_for(budgets=(0.5, 3.0)).privacy.budgets == (0.5, 3.0)


def test_the_trainer_log_never_rounds_epsilon_down(caplog):
    caplog.set_level("INFO", logger="trainers.loop")
    final = train(make_config(tiny(epochs=1, target_epsilon=2.0)))
    shown = [float(v) for v in re.findall(r"trial ε ≤ ([0-9.]+)", caplog.text)]
    assert shown and shown[-1] >= final["epsilon"] and not math.isclose(shown[-1], 0)


# --- the distribution of K: auto --------------------------------------------------------------


def test_auto_picks_the_distribution_needing_the_least_noise_for_the_budget():
    auto = plan_for(mode="random-stopping", searcher="random", budget_epsilon=6.0,
                    trials_distribution="auto", num_samples=6).privacy  # fmt: skip
    assert auto.epsilon() <= 6.0
    assert auto.trials_choice.startswith("auto chose K ~ ") and "σ =" in auto.trials_choice
    for kind in ("poisson", "geometric", "logarithmic"):
        named = plan_for(mode="random-stopping", searcher="random", budget_epsilon=6.0,
                         trials_distribution=kind, num_samples=6).privacy  # fmt: skip
        assert named.trials_choice is None
        assert auto.noise_multiplier <= named.noise_multiplier * (1 + 1e-9)
    # The choice is saved with the plan (search.json) and read back.
    loaded = accounting.SearchPrivacyPlan.from_dict(auto.to_dict())
    assert loaded.trials_choice == auto.trials_choice and loaded.distribution == auto.distribution


def test_auto_without_a_budget_picks_the_least_search_epsilon():
    auto = plan_for(mode="random-stopping", searcher="random", trials_distribution="auto")
    assert "search ε" in auto.privacy.trials_choice
    for distribution in accounting.auto_candidates(4.0):
        named = plan_for(mode="random-stopping", searcher="random",
                         trials_distribution=distribution.kind, eta=distribution.eta)  # fmt: skip
        assert auto.privacy.epsilon() <= named.privacy.epsilon() * (1 + 1e-12)


def test_auto_applies_to_random_stopping_only_and_takes_no_eta():
    from search.plan import SearchError

    assert plan_for(trials_distribution="auto").privacy.trials_choice is None  # composition
    with pytest.raises(SearchError, match="--eta"):
        plan_for(mode="random-stopping", searcher="random", trials_distribution="auto", eta=0.5)


def test_auto_skips_distributions_that_cannot_meet_the_budget():
    """With σ_v = 10 and ε = 1.28, the validation scores alone fit the budget under Poisson K
    (1.27) but not geometric (1.54) or logarithmic (1.30) K: auto takes one that fits."""
    from search.plan import SearchError

    overrides = {**SYNTHETIC, "val_noise_multiplier": 10.0}
    auto = plan_for(mode="random-stopping", searcher="random", budget_epsilon=1.28,
                    trials_distribution="auto", overrides=overrides).privacy  # fmt: skip
    assert auto.trials_distribution == "poisson" and auto.epsilon() <= 1.28
    assert "geometric (mean 4) σ = inf" in auto.trials_choice
    with pytest.raises(SearchError, match="validation scores alone"):  # none fits: the reason
        plan_for(mode="random-stopping", searcher="random", budget_epsilon=1.0,
                 trials_distribution="auto", overrides=overrides)  # fmt: skip
