"""`--trials-distribution auto`: the planner picks the distribution of K that costs least."""

import pytest

import accounting
from accounting import TrialsDistribution, choose_trials, repeat_and_select_epsilon

# De et al. (2022)'s CIFAR-10 mechanism at ε ≈ 1: B = 4096 of 50 000, σ = 10, 875 steps.
DE_ET_AL = accounting.dp_sgd_event(sample_rate=4096 / 50000, noise_multiplier=10.0, steps=875)
DELTA = 1e-5


def search_eps(distribution: TrialsDistribution) -> float:
    return repeat_and_select_epsilon([DE_ET_AL], distribution=distribution, delta=DELTA)


def test_the_reference_search_epsilons_of_each_distribution():
    """The issue's reference figures for E[K] = 10 on De et al.'s mechanism (search ε with a
    trial ε ≈ 0.99): Poisson 2.29, geometric 2.10, η = 0.5 1.93, logarithmic 1.74."""
    reference = {"poisson": 2.29, "geometric": 2.10, "logarithmic": 1.74}
    for kind, expected in reference.items():
        assert search_eps(TrialsDistribution(kind=kind, mean=10)) == pytest.approx(
            expected, abs=6e-3
        )
    half = TrialsDistribution(kind="negative-binomial", mean=10, eta=0.5)
    assert search_eps(half) == pytest.approx(1.93, abs=6e-3)


def test_auto_picks_the_cheapest_and_says_what_each_costs():
    choice = choose_trials(10.0, search_eps, measure="ε")
    costs = dict(choice.costs)
    assert choice.chosen == TrialsDistribution(kind="logarithmic", mean=10)
    assert costs[choice.chosen] == min(costs.values())
    assert costs[choice.chosen] / accounting.epsilon(DE_ET_AL, delta=DELTA) < 1.8
    assert {d.kind for d in costs} == {"poisson", "geometric", "negative-binomial", "logarithmic"}
    assert all(d.mean == 10.0 for d in costs)
    text = choice.describe()
    # Every figure shown is rounded up (ε must never be shown below its bound).
    assert "logarithmic" in text and "poisson (mean 10) ε = 2.2898" in text
    assert f"ε = {accounting.round_up(costs[choice.chosen], 4):g} (vs" in text


def test_auto_is_not_always_the_heaviest_tail():
    """For a budget of ε = 3 at E[K] = 2 on Tramèr & Boneh's ScatterNet mechanism, Poisson
    needs less noise per trial than the logarithmic distribution: the choice is computed."""

    def sigma(distribution):
        return accounting.plan_noise_multiplier(
            budget_epsilon=3.0, delta=DELTA, sample_rate=1 / 7, steps=280,
            mode="random-stopping", distribution=distribution,
        )  # fmt: skip

    choice = choose_trials(2.0, sigma, measure="σ")
    assert choice.chosen.kind == "poisson"
    assert dict(choice.costs)[choice.chosen] < sigma(TrialsDistribution(kind="logarithmic", mean=2))


def test_equal_costs_go_to_the_lighter_tail():
    choice = choose_trials(5.0, lambda d: 1.0, measure="ε")
    assert choice.chosen.kind == "poisson"
    assert [d.kind for d in accounting.auto_candidates(5.0)][-1] == "logarithmic"
