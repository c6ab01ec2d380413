"""The search's privacy plan: parallel composition of training and validation, the Rényi
filter every trial reserves against, the (q, T) schedule, and the plan's round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

import accounting
from accounting import (
    LedgerRecord,
    Mechanism,
    ParallelCurve,
    SearchPrivacyPlan,
    dp_sgd_event,
    dp_sgd_schedule,
    reduce_ledger,
    validation_event,
)
from accounting.rdp_curves import calibrate_curve

DELTA = 1e-5


def rdp_epsilon(event) -> float:
    return RdpAccountant().compose(event).get_epsilon(DELTA)


# --- parallel composition -------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    q=st.floats(0.001, 0.2),
    sigma=st.floats(0.6, 6.0),
    steps=st.integers(1, 2000),
    val_sigma=st.floats(1.0, 60.0),
    releases=st.integers(0, 40),
    trials=st.integers(1, 6),
)
def test_parallel_composition_is_never_above_plain_composition(
    q, sigma, steps, val_sigma, releases, trials
):
    train = dp_sgd_event(sample_rate=q, noise_multiplier=sigma, steps=steps)
    val = validation_event(noise_multiplier=val_sigma, releases=releases)
    parallel = ParallelCurve.of(train, val) * trials
    plain = rdp_epsilon(dp_event.SelfComposedDpEvent(dp_event.ComposedDpEvent([train, val]),
                                                     trials))  # fmt: skip
    assert parallel.epsilon(DELTA) <= plain * (1 + 1e-9)
    # and never below either part alone (each part is a mechanism the search runs)
    assert parallel.epsilon(DELTA) >= rdp_epsilon(
        dp_event.SelfComposedDpEvent(train, trials)) * (1 - 1e-9)  # fmt: skip


def test_with_one_part_it_is_exactly_the_library():
    trials = [dp_sgd_event(sample_rate=0.01 * k, noise_multiplier=1.2, steps=300)
              for k in (1, 2, 3)]  # fmt: skip
    total = sum((ParallelCurve.of(t) for t in trials), ParallelCurve.zero())
    assert total.epsilon(DELTA) == pytest.approx(
        rdp_epsilon(dp_event.ComposedDpEvent(trials)), rel=1e-12
    )
    only_validation = ParallelCurve.of(dp_event.NoOpDpEvent(), validation_event(
        noise_multiplier=5.0, releases=12))  # fmt: skip
    assert only_validation.epsilon(DELTA) == pytest.approx(
        rdp_epsilon(dp_event.SelfComposedDpEvent(dp_event.GaussianDpEvent(5.0), 12)), rel=1e-12
    )


def test_validation_releases_match_the_gaussian_mechanisms_closed_form():
    # R releases of a sensitivity-1 Gaussian with σ_v: RDP α R / (2 σ_v²) at every order.
    curve = ParallelCurve.of(dp_event.NoOpDpEvent(),
                             validation_event(noise_multiplier=20.0, releases=24))  # fmt: skip
    orders = curve.validation.orders
    assert np.allclose(curve.validation.values, orders * 24 / (2 * 20.0**2))


def test_default_validation_noise_costs_nothing_beside_a_typical_search():
    # fmnist_quick-like: 8 trials of ε = 3 each (q = 2048/54 000, 3 epochs), 3 noisy scores each.
    q = 1 / math.ceil(54_000 / 2048)
    sigma = accounting.calibrate_noise_multiplier(
        target_epsilon=3.0, delta=DELTA, sample_rate=q, steps=81
    )
    trial = ParallelCurve.of(
        dp_sgd_event(sample_rate=q, noise_multiplier=sigma, steps=81),
        validation_event(noise_multiplier=20.0, releases=3),
    )
    without = ParallelCurve.of(dp_sgd_event(sample_rate=q, noise_multiplier=sigma, steps=81))
    assert (trial * 8).epsilon(DELTA) == pytest.approx((without * 8).epsilon(DELTA), rel=1e-9)


def test_curve_calibration_agrees_with_the_library_calibration():
    event = lambda sigma: dp_sgd_event(sample_rate=0.02, noise_multiplier=sigma, steps=500)  # noqa: E731
    ours = calibrate_curve(lambda s: accounting.RdpCurve.of(event(s)), target_epsilon=2.0,
                           delta=DELTA)  # fmt: skip
    library = accounting.calibrate_noise(event, target_epsilon=2.0, delta=DELTA)
    assert ours == pytest.approx(library, rel=1e-3)
    assert accounting.RdpCurve.of(event(ours)).epsilon(DELTA) <= 2.0


# --- the schedule: one place for q and T ----------------------------------------------------


def test_schedule_is_the_one_the_trainer_runs():
    from trainers import make_config, plan_mechanism

    for batch, epochs, reference in ((64, 3, None), (100, 2, None), (32, 2, 128)):
        config = make_config({"batch_size": batch, "epochs": epochs, "target_epsilon": 4.0,
                              "tan_reference_batch": reference})  # fmt: skip
        schedule = dp_sgd_schedule(n_train=1000, batch_size=batch, epochs=epochs,
                                   tan_reference_batch=reference)  # fmt: skip
        mechanism = plan_mechanism(config, 1000)
        assert (mechanism.sample_rate, mechanism.steps, mechanism.epochs) == (
            schedule.sample_rate, schedule.steps, schedule.epochs,
        )  # fmt: skip
    assert dp_sgd_schedule(n_train=1000, batch_size=64, epochs=3).sample_rate == 1 / 16
    assert dp_sgd_schedule(n_train=1000, batch_size=64, epochs=3).steps == 48


# --- the plan and its filter ----------------------------------------------------------------

WORST = Mechanism(sample_rate=0.05, noise_multiplier=1.5, steps=60, val_noise_multiplier=20.0,
                  val_releases=3)  # fmt: skip


def plan(**kwargs) -> SearchPrivacyPlan:
    values = {"mode": "composition", "delta": DELTA, "num_trials": 4, "candidates": (WORST,)}
    return SearchPrivacyPlan(**{**values, **kwargs})


def record(trial, attempt, steps, *, start=0, status="running", planned=60, releases=0,
           start_releases=0, time=0.0) -> LedgerRecord:  # fmt: skip
    return LedgerRecord(
        trial_id=trial, attempt=attempt, sample_rate=0.05, noise_multiplier=1.5, steps=steps,
        start_steps=start, status=status, planned_steps=planned, time=time,
        val_noise_multiplier=20.0, val_releases=releases, start_val_releases=start_releases,
        planned_val_releases=3,
    )  # fmt: skip


def test_the_filter_admits_the_planned_trials_and_refuses_a_retry_beyond_the_plan():
    p = plan()
    # Four trials, each reserving its whole plan: exactly the plan.
    reserved = [record(f"t{i}", "a", 0) for i in range(4)]
    assert p.admits(reduce_ledger(reserved, reserve=True))
    # t0 was killed after claiming 40 steps and 2 releases; its retry restores 20 steps from a
    # checkpoint and reserves the remaining 40 again: 20 re-run steps beyond the plan.
    killed = record("t0", "a", 40, releases=2)
    retry = record("t0", "b", 20, start=20, releases=1, start_releases=1)
    assert not p.admits(reduce_ledger([*reserved, killed, retry], reserve=True))
    # With a fifth of the plan unused by another trial, the same retry fits.
    small = [*reserved[:3], record("t3", "a", 0, planned=12, status="completed")]
    assert p.admits(reduce_ledger([*small, killed, retry], reserve=True))


def test_random_stopping_filters_each_trial_against_the_worst_case():
    p = plan(mode="random-stopping", trials_mean=4.0, trials_distribution="geometric")
    assert p.admits(reduce_ledger([record("t0", "a", 0)], reserve=True))
    killed = record("t0", "a", 40, releases=2)
    retry = record("t0", "b", 20, start=20, releases=1, start_releases=1)
    assert not p.admits(reduce_ledger([record("t0", "a", 0), killed, retry], reserve=True))


def test_the_released_epsilon_is_the_plans_whatever_the_search_did():
    p = plan()
    nothing = p.search_epsilon(reduce_ledger([]))
    some = p.search_epsilon(reduce_ledger([record("t0", "a", 60, status="completed",
                                                  releases=3)]))  # fmt: skip
    assert nothing.epsilon == some.epsilon == p.epsilon()
    assert some.spent < some.epsilon and not some.exceeded
    # A ledger beyond the plan (e.g. written before the filter) is covered, and said.
    over = [record(f"t{i}", "a", 60, status="completed", releases=3) for i in range(5)]
    result = p.search_epsilon(reduce_ledger(over))
    assert result.exceeded and result.epsilon == pytest.approx(result.spent)


def test_random_stopping_bound_covers_the_spaces_worst_case_not_only_the_drawn_trials():
    weak = Mechanism(sample_rate=0.01, noise_multiplier=3.0, steps=10)
    strong = Mechanism(sample_rate=0.05, noise_multiplier=1.0, steps=100)
    p = plan(mode="random-stopping", candidates=(weak, strong), trials_mean=5.0,
             trials_distribution="poisson")  # fmt: skip
    only_weak_ran = LedgerRecord(trial_id="t", attempt="a", sample_rate=0.01,
                                 noise_multiplier=3.0, steps=10, status="completed")  # fmt: skip
    expected = accounting.repeat_and_select_epsilon(
        [strong.curve and dp_sgd_event(sample_rate=0.05, noise_multiplier=1.0, steps=100)],
        distribution=p.distribution, delta=DELTA,
    )  # fmt: skip
    assert p.search_epsilon(reduce_ledger([only_weak_ran])).epsilon == pytest.approx(expected)


def test_budget_curves_scale_the_guarantee_and_filter_cost_inverts_them():
    p = plan()
    whole = p.epsilon()
    for budget in (0.5 * whole, 0.8 * whole):
        curve = p.budget_curve(budget)
        assert curve.epsilon(DELTA) <= budget
        assert curve.epsilon(DELTA) == pytest.approx(budget, rel=1e-4)
        assert p.filter_cost(curve) == pytest.approx(curve.epsilon(DELTA), rel=1e-6)
    assert p.budget_curve(2 * whole).epsilon(DELTA) == pytest.approx(whole)
    one_trial = WORST.curve()
    assert p.filter_cost(one_trial) <= whole
    assert p.filter_cost(one_trial * 4) == pytest.approx(whole)


def test_plan_round_trips_through_search_json_and_hides_k(tmp_path):
    import json

    p = plan(mode="random-stopping", trials_mean=6.0, trials_distribution="negative-binomial",
             eta=0.5, num_trials=9, budgets=(1.0, 3.0))  # fmt: skip
    (tmp_path / "search.json").write_text(json.dumps({"search": {}, "privacy": p.to_dict()}))
    loaded = SearchPrivacyPlan.load(tmp_path)
    assert loaded == p and loaded.epsilon() == p.epsilon()
    assert "num_trials" not in p.public_dict()
    with pytest.raises(accounting.AccountingError, match="not an experiment directory"):
        SearchPrivacyPlan.load(tmp_path / "missing")


def test_ledger_reduction_sums_validation_releases_over_attempts():
    first = record("t", "a", 40, releases=2)
    retry = record("t", "b", 60, start=20, releases=3, start_releases=1, status="completed")
    account = reduce_ledger([record("t", "a", 0), first, retry])["t"]
    assert account.train == dp_sgd_event(sample_rate=0.05, noise_multiplier=1.5, steps=80)
    assert account.validation == validation_event(noise_multiplier=20.0, releases=4)
    assert account.status == "completed"


def test_exact_validation_scores_cannot_be_recorded_as_private():
    with pytest.raises(accounting.LedgerError, match="without noise"):
        LedgerRecord(trial_id="t", attempt="a", sample_rate=0.1, noise_multiplier=1.0, steps=1,
                     val_releases=1)  # fmt: skip


def test_retry_room_is_part_of_the_plan_and_admits_that_many_re_run_epochs():
    worst = Mechanism(sample_rate=0.05, noise_multiplier=1.5, steps=60, val_noise_multiplier=20.0,
                      val_releases=3, steps_per_epoch=20)  # fmt: skip
    tight = plan(candidates=(worst,))
    roomy = plan(candidates=(worst,), retry_epochs=1)
    assert roomy.epsilon() > tight.epsilon()  # the room is paid for in the released ε
    reserved = [record(f"t{i}", "a", 0) for i in range(4)]
    killed = record("t0", "a", 40, releases=2)  # died in its 2nd epoch (claimed ahead)
    retry = record("t0", "b", 20, start=20, releases=1, start_releases=1)  # resumes epoch 2
    ledger = [*reserved, killed, retry]
    assert not tight.admits(reduce_ledger(ledger, reserve=True))
    assert roomy.admits(reduce_ledger(ledger, reserve=True))
    # A second crash of the same epoch needs a second epoch of room.
    again = record("t0", "c", 20, start=20, releases=1, start_releases=1)
    died = record("t0", "b", 40, start=20, releases=2, start_releases=1)
    assert not roomy.admits(reduce_ledger([*ledger, died, again], reserve=True))
