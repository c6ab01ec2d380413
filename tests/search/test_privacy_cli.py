"""`python search/privacy.py`: planning and auditing from the command line."""

from __future__ import annotations

import json

import pytest

from accounting import dp_sgd_event, epsilon
from accounting.ledger import LedgerRecord, PrivacyLedger
from tests.helpers import assert_one_sentence_error, run

DE_ET_AL = ["--sample-rate", str(4096 / 50_000), "--steps", "875", "--delta", "1e-5"]


def last_json(result):
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_one_trial_epsilon_matches_the_published_vector():
    result = run("search/privacy.py", *DE_ET_AL, "--noise-multiplier", "10", "--json")
    data = last_json(result)
    assert data["epsilon"] == pytest.approx(0.988, abs=5e-4)
    assert data["trial_epsilon"] == data["epsilon"] and data["calibrated"] is False
    assert "ONE run" in result.stdout


def test_pld_accountant_from_the_command_line():
    data = last_json(
        run(
            "search/privacy.py",
            *DE_ET_AL,
            "--noise-multiplier",
            "10",
            "--accountant",
            "pld",
            "--json",
        )
    )
    assert data["epsilon"] == pytest.approx(0.903, abs=5e-4)


def test_calibrates_sigma_for_a_random_stopping_search_budget():
    result = run(
        "search/privacy.py", *DE_ET_AL, "--target-epsilon", "8", "--trials-mean", "10",
        "--trials-distribution", "poisson", "--json",
    )  # fmt: skip
    data = last_json(result)
    assert data["calibrated"] is True and data["mode"] == "random-stopping"
    assert 7.92 <= data["epsilon"] <= 8.0
    assert data["trial_epsilon"] < data["epsilon"]
    assert "only the best one released" in result.stdout


def test_negative_binomial_needs_and_uses_eta():
    base = [*DE_ET_AL, "--noise-multiplier", "3", "--trials-mean", "5"]
    data = last_json(
        run(
            "search/privacy.py",
            *base,
            "--trials-distribution",
            "negative-binomial",
            "--eta",
            "0.5",
            "--json",
        )
    )
    assert data["epsilon"] > data["trial_epsilon"]
    assert_one_sentence_error(
        run("search/privacy.py", *base, "--trials-distribution", "negative-binomial"), "--eta"
    )


def test_composition_and_how_many_trials_fit():
    data = last_json(
        run(
            "search/privacy.py",
            *DE_ET_AL,
            "--noise-multiplier",
            "10",
            "--num-trials",
            "4",
            "--json",
        )
    )
    assert data["mode"] == "composition" and data["epsilon"] > data["trial_epsilon"]
    fit = last_json(
        run(
            "search/privacy.py",
            *DE_ET_AL,
            "--noise-multiplier",
            "10",
            "--target-epsilon",
            "3",
            "--json",
        )
    )
    assert fit["max_trials"] >= 2


def test_epsilon_of_a_recorded_search(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    for trial, steps, status in (("a", 100, "completed"), ("b", 40, "stopped")):
        ledger.append(
            LedgerRecord(trial_id=trial, attempt="x", sample_rate=0.01, noise_multiplier=1.0,
                         steps=steps, status=status)
        )  # fmt: skip
    result = run("search/privacy.py", "--ledger", str(tmp_path), "--delta", "1e-5", "--json")
    data = last_json(result)
    expected_trial = epsilon(
        dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=100), delta=1e-5
    )
    assert data["trial_epsilon"] == pytest.approx(expected_trial)
    assert data["epsilon"] > expected_trial and data["num_trials"] == 2
    assert data["trial_status"] == {"completed": 1, "stopped": 1}
    assert "1 stopped" in result.stdout


@pytest.mark.parametrize("mode", ["composition", "random-stopping"])
def test_ledger_audit_reads_the_plan_and_equals_the_results_layer(tmp_path, mode):
    """Before, `--ledger` took mode, δ and K's distribution from flags: on a random-stopping
    search it printed 5.23 where the search cost 7.64. Now it reads the plan."""
    import results
    from tests.helpers import CHEAP_1, COSTLY, make_experiment

    extra = {}
    if mode == "random-stopping":
        extra = {"trials_distribution": "geometric", "trials_mean": 3.0}
    directory = make_experiment(tmp_path / "e", [CHEAP_1, COSTLY], mode=mode, searcher="random",
                                **extra)  # fmt: skip
    data = last_json(run("search/privacy.py", "--ledger", str(directory), "--json"))
    expected = results.load_experiment(directory).search_epsilon()
    assert data["epsilon"] == pytest.approx(expected.epsilon, rel=1e-12)
    assert data["mode"] == mode and data["delta"] == 1e-5
    assert data["spent_epsilon"] == pytest.approx(expected.spent, rel=1e-12)
    for flags in (["--delta", "1e-6"], ["--search-accounting", "none"],
                  ["--trials-distribution", "poisson", "--trials-mean", "3"]):  # fmt: skip
        refused = run("search/privacy.py", "--ledger", str(directory), *flags)
        assert_one_sentence_error(refused, "contradicts the experiment's plan")


def test_auto_chooses_the_distribution_with_the_least_search_epsilon():
    result = run("search/privacy.py", *DE_ET_AL, "--noise-multiplier", "10", "--trials-mean",
                 "10", "--trials-distribution", "auto", "--json")  # fmt: skip
    data = last_json(result)
    assert data["trials_distribution"] == "logarithmic" and data["mode"] == "random-stopping"
    assert "num_trials" not in data  # K is drawn, not given
    assert data["epsilon"] == min(data["trials_choice"].values())
    assert data["trials_choice"]["poisson (mean 10)"] == pytest.approx(2.29, abs=6e-3)
    assert "auto chose K ~ logarithmic (mean 10)" in result.stdout


def test_auto_with_a_budget_chooses_the_least_sigma_and_meets_the_budget():
    args = ["--target-epsilon", "8", "--trials-mean", "10", "--trials-distribution", "auto"]
    data = last_json(run("search/privacy.py", *DE_ET_AL, *args, "--json"))
    assert data["noise_multiplier"] == min(data["trials_choice"].values())
    assert 7.92 <= data["epsilon"] <= 8.0


def test_auto_refuses_eta_and_a_recorded_search(tmp_path):
    base = [*DE_ET_AL, "--noise-multiplier", "3", "--trials-mean", "5"]
    result = run("search/privacy.py", *base, "--trials-distribution", "auto", "--eta", "0.5")
    assert_one_sentence_error(result, "drop --eta")
    (tmp_path / "privacy_ledger.jsonl").write_text("")  # an empty ledger, no plan beside it
    result = run("search/privacy.py", "--ledger", str(tmp_path), "--delta", "1e-5",
                 "--trials-mean", "5", "--trials-distribution", "auto")  # fmt: skip
    assert_one_sentence_error(result, "drop it")
