"""The privacy ledger: append-only, fsynced, concurrent, crash-tolerant, never double-counting."""

from __future__ import annotations

import json
import logging
import multiprocessing

import pytest
from dp_accounting import dp_event

from accounting import dp_sgd_event, epsilon
from accounting.ledger import (
    LEDGER_FILENAME,
    LedgerError,
    LedgerRecord,
    PrivacyLedger,
    executed_events,
    latest_status,
    read_ledger,
)
from accounting.selection import search_epsilon


def record(trial="t1", attempt="a", steps=10, start=0, status="running", q=0.01, sigma=1.0):
    return LedgerRecord(
        trial_id=trial, attempt=attempt, sample_rate=q, noise_multiplier=sigma,
        steps=steps, start_steps=start, status=status,
    )  # fmt: skip


def test_records_round_trip_and_latest_record_per_attempt_counts(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    assert ledger.path == tmp_path / LEDGER_FILENAME
    for steps in (10, 20, 30):
        ledger.append(record(steps=steps))
    ledger.append(record(steps=30, status="completed"))
    assert [r.steps for r in ledger.records()] == [10, 20, 30, 30]
    events = ledger.trial_events()
    assert events == {"t1": dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=30)}
    assert latest_status(ledger.records()) == {"t1": "completed"}


def test_resume_from_checkpoint_counts_each_executed_step_once(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    ledger.append(record(attempt="first", steps=40))  # crashed after 40 steps ...
    ledger.append(record(attempt="second", start=30, steps=30))  # ... restored at 30
    ledger.append(record(attempt="second", start=30, steps=100, status="completed"))
    # executed: 40 by the first attempt, 70 by the second (steps 31..40 ran twice)
    expected = dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=110)
    assert ledger.trial_events()["t1"] == expected


def test_retry_from_scratch_keeps_the_killed_attempts_steps(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    ledger.append(record(attempt="killed", steps=25, status="running"))
    ledger.append(record(attempt="retry", steps=50, status="completed"))
    assert ledger.trial_events()["t1"] == dp_sgd_event(
        sample_rate=0.01, noise_multiplier=1.0, steps=75
    )


def test_rereading_the_same_reports_never_double_counts(tmp_path):
    # Records are cumulative: 50 reports of a trial's growing step count are 50 steps, not
    # 1 + 2 + … + 50; and a resumed driver that re-appends the same reports counts nothing twice.
    ledger = PrivacyLedger(tmp_path)
    for _ in range(2):
        for steps in range(1, 51):
            ledger.append(record(trial="a", steps=steps))
            ledger.append(record(trial="b", steps=steps, q=0.02))
        found = search_epsilon(list(ledger.trial_events().values()), mode="composition", delta=1e-5)
        expected = epsilon(
            dp_event.ComposedDpEvent([
                dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=50),
                dp_sgd_event(sample_rate=0.02, noise_multiplier=1.0, steps=50),
            ]),
            delta=1e-5,
        )  # fmt: skip
        assert found.epsilon == pytest.approx(expected, rel=1e-12)


def _append_many(path, worker, count):
    ledger = PrivacyLedger(path)
    for step in range(1, count + 1):
        ledger.append(record(trial=f"trial{worker}", attempt=f"w{worker}", steps=step))


def test_concurrent_appends_from_several_processes_lose_nothing(tmp_path):
    path = tmp_path / LEDGER_FILENAME
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(path, i, 60)) for i in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 240 and all(json.loads(line) for line in lines)
    events = executed_events(read_ledger(path))
    assert set(events) == {f"trial{i}" for i in range(4)}
    assert all(
        e == dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=60) for e in events.values()
    )


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path, caplog):
    ledger = PrivacyLedger(tmp_path)
    ledger.append(record(steps=10))
    ledger.append(record(steps=20))
    with open(ledger.path, "ab") as f:  # a crash in the middle of writing the third record
        f.write(b'{"trial_id": "t1", "attempt": "a", "sample_')
    with caplog.at_level(logging.WARNING):
        records = ledger.records()
    assert [r.steps for r in records] == [10, 20]
    assert "incomplete" in caplog.text


def test_appending_after_a_torn_line_keeps_both_readable(tmp_path, caplog):
    ledger = PrivacyLedger(tmp_path)
    ledger.append(record(steps=10))
    with open(ledger.path, "ab") as f:
        f.write(b'{"trial_id": "t1", "steps": 2')
    ledger.append(record(steps=20))  # the resumed search writes on
    with caplog.at_level(logging.WARNING):
        assert [r.steps for r in ledger.records()] == [10, 20]


def test_damaged_middle_line_is_an_error_not_a_silent_undercount(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    ledger.append(record(steps=10))
    with open(ledger.path, "ab") as f:
        f.write(b"this is not a record\n")
    ledger.append(record(steps=20))
    with pytest.raises(LedgerError, match="line 2 is malformed"):
        ledger.records()


def test_missing_ledger_reads_as_empty(tmp_path):
    assert read_ledger(tmp_path) == []


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"status": "paused"}, "unknown trial status"),
        ({"steps": 5, "start": 10}, "start_steps"),
        ({"q": 0.0}, "sample_rate"),
        ({"sigma": -1.0}, "noise_multiplier"),
    ],
)
def test_bad_records_are_refused(kwargs, fragment):
    with pytest.raises(LedgerError, match=fragment):
        record(**kwargs)


def test_running_trials_reserve_their_remaining_planned_steps(tmp_path):
    from accounting.ledger import reserved_events

    ledger = PrivacyLedger(tmp_path)
    ledger.append(
        LedgerRecord(trial_id="a", attempt="x", sample_rate=0.01, noise_multiplier=1.0,
                     steps=30, planned_steps=100)
    )  # fmt: skip
    ledger.append(record(trial="b", steps=50, status="completed"))
    reserved = reserved_events(ledger.records())
    assert reserved["a"] == dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=100)
    assert reserved["b"] == dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=50)


def test_reserve_appends_only_what_fits(tmp_path):
    ledger = PrivacyLedger(tmp_path)
    assert ledger.reserve(record(trial="a"), lambda records: len(records) <= 2)
    assert ledger.reserve(record(trial="b"), lambda records: len(records) <= 2)
    assert not ledger.reserve(record(trial="c"), lambda records: len(records) <= 2)
    assert [r.trial_id for r in ledger.records()] == ["a", "b"]
