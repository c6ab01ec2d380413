"""Injected faults on a real local Ray cluster: a trial's process killed mid-training, the
driver killed mid-search then resumed, the experiment directory filling up or turning
read-only mid-search. In each: the search ends cleanly, and the privacy ledger stays parseable
and counts every step that ran — once. (Damaged ledgers and result files on load: see
tests/accounting/test_ledger.py and tests/results/test_loading_and_frontiers.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

import accounting
from accounting.ledger import latest_status, read_ledger
from search.plan import SearchPlan
from tests.helpers import ROOT, TINY, search

pytestmark = pytest.mark.slow  # real Ray searches with injected faults

# Three trials of three epochs of four steps (256 synthetic examples, batch 64), two at a time.
TRIALS = 3
SEARCH = [*TINY, "--num-samples", str(TRIALS), "--searcher", "random", "--set", "epochs=3",
          "--num-cpus", "2"]  # fmt: skip
STEPS_PER_EPOCH = 4
ENV = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}


def start_search(storage: Path, name: str, *extra) -> subprocess.Popen:
    args = [*SEARCH, *extra, "--storage-path", str(storage), "--name", name]
    return subprocess.Popen(
        [sys.executable, "search/run.py", *args], cwd=ROOT, env=ENV, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def wait_for(condition, what: str, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def statuses(ledger: Path) -> dict[str, str]:
    return latest_status(read_ledger(ledger)) if ledger.exists() else {}


def one_done_and_another_running(ledger: Path) -> bool:
    current = statuses(ledger)
    return list(current.values()).count("completed") >= 1 and len(current) >= 2


def assert_each_trial_ran_its_plan(records, extra_epochs_allowed: int = 0) -> None:
    """Executed steps per trial: its plan, plus whole epochs that really ran twice (re-run
    from a checkpoint after a kill) — never fewer."""
    for trial_id, event in accounting.executed_events(records).items():
        planned = max(r.planned_steps for r in records if r.trial_id == trial_id)
        slack = extra_epochs_allowed * STEPS_PER_EPOCH
        assert planned <= event.count <= planned + slack, (trial_id, planned, event.count)


def assert_all_completed(records) -> None:
    final = latest_status(records)
    assert len(final) == TRIALS and set(final.values()) == {"completed"}, final


def sampled_configs(directory: Path) -> set[tuple]:
    trials = pd.read_csv(directory / "trials.csv")
    columns = sorted(c for c in trials.columns if c.startswith("config/"))
    return {tuple(round(float(v), 9) for v in row) for row in trials[columns].itertuples(False)}


@pytest.fixture(scope="module")
def worker_killed(tmp_path_factory):
    """A search whose trial worker is SIGKILLed in its second epoch, run to the end: the
    killed trial's id and the experiment directory."""
    storage = tmp_path_factory.mktemp("worker_killed")
    driver = start_search(storage, "kill")
    directory = storage / "kill"

    def running_trial_pid():  # a trial that has reported its first epoch and is not done
        for results in directory.glob("dp_trial_*/result.json"):
            lines = [json.loads(line) for line in results.read_text().splitlines() if line]
            if lines and not lines[-1]["done"]:
                return lines[-1]["trial_id"], lines[-1]["pid"]
        return None

    trial_id, pid = wait_for(running_trial_pid, "a trial in its second epoch")
    os.kill(pid, signal.SIGKILL)  # the trial's worker process, mid-training
    out, err = driver.communicate(timeout=400)
    assert driver.returncode == 0, err[-3000:]
    return trial_id, directory


def test_killed_trial_worker_is_retried_and_its_steps_still_count(worker_killed):
    trial_id, directory = worker_killed
    records = read_ledger(directory)
    assert_all_completed(records)
    mine = [r for r in records if r.trial_id == trial_id]
    attempts = list(dict.fromkeys(r.attempt for r in mine))
    assert len(attempts) >= 2  # retried: a new attempt, resumed from the last checkpoint
    killed = [r for r in mine if r.attempt == attempts[0]]
    # The killed attempt's steps stay counted: every epoch it reported, and the epoch it was
    # in (recorded ahead, before it touched data) — the retry re-ran that one from the
    # checkpoint, so at most one epoch counts twice.
    assert killed[-1].steps >= STEPS_PER_EPOCH and killed[-1].status == "running"
    retry = [r for r in mine if r.attempt == attempts[1]]
    assert retry[0].start_steps >= STEPS_PER_EPOCH  # from the checkpoint, not from scratch
    assert_each_trial_ran_its_plan(records, extra_epochs_allowed=1)
    assert len(pd.read_csv(directory / "trials.csv")) == TRIALS


def test_killed_driver_resumes_to_the_same_trials_and_counts_nothing_twice(tmp_path, worker_killed):
    # A driver kill can make every trial re-run one epoch: the one in flight, or the last one
    # of a trial whose end the driver had not yet taken in. Room for all three, so that each
    # resumes (a resume beyond the room: the next test).
    driver = start_search(tmp_path, "res", "--retry-epochs", str(TRIALS))
    ledger = tmp_path / "res" / accounting.LEDGER_FILENAME
    try:
        wait_for(lambda: one_done_and_another_running(ledger), "one trial done, one running")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local cluster it started
        driver.communicate()
    before = set(statuses(ledger))

    resumed = search("--storage-path", tmp_path, "--name", "res", "--resume", "--num-cpus", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = read_ledger(ledger)
    assert before <= set(latest_status(records))
    assert_all_completed(records)
    assert_each_trial_ran_its_plan(records, extra_epochs_allowed=1)

    # The same trials as the same command whose driver was never killed (the plan and the
    # searcher's seed and state survive the kill; a killed trial worker retries its config).
    assert sampled_configs(tmp_path / "res") == sampled_configs(worker_killed[1])


def mid_epoch_trial(ledger: Path) -> str | None:
    """A trial whose latest line claims an epoch it has not reported yet (claimed ahead: the
    same step count appears once in its attempt)."""
    records = read_ledger(ledger) if ledger.exists() else []
    for trial_id, status in latest_status(records).items():
        mine = [r for r in records if r.trial_id == trial_id]
        last = mine[-1]
        same = [r for r in mine if r.attempt == last.attempt and r.steps == last.steps]
        if status == "running" and last.steps > last.start_steps and len(same) == 1:
            return trial_id
    return None


def test_resume_beyond_the_retry_room_stops_that_trial_and_ends_cleanly(tmp_path):
    """No room for re-run epochs, and a trial killed mid-epoch: its epoch runs twice if it
    resumes, so the three trials no longer fit the plan. Whichever trial comes to reserve
    last (the filter is first come, first served) ends stopped, with a warning, and the search
    still ends with exit 0, inside its plan."""
    driver = start_search(tmp_path, "tight", "--retry-epochs", "0")
    ledger = tmp_path / "tight" / accounting.LEDGER_FILENAME
    try:
        wait_for(lambda: mid_epoch_trial(ledger), "a trial in the middle of an epoch")
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate()

    resumed = search("--storage-path", tmp_path, "--name", "tight", "--resume", "--num-cpus", "2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr
    assert "ended without a result: the privacy plan had no room left" in resumed.stderr
    records = read_ledger(ledger)
    final = latest_status(records)
    assert "stopped" in final.values() and "running" not in final.values(), final
    plan = SearchPlan.load(tmp_path / "tight").privacy
    assert plan.retry_epochs == 0 and plan.admits(accounting.reduce_ledger(records))


@pytest.fixture
def small_filesystem(tmp_path):
    """A 64 MiB filesystem of its own (tmpfs), to fill up or remount read-only."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (CI runs as root)")
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount_point)],
                   check=True)  # fmt: skip
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def remount_read_only(mount_point: Path) -> None:
    """The kernel refuses (EBUSY) while a file there is open for writing, which the search
    does now and then (a checkpoint, a result line): try again until a moment it is not."""

    def remounted():
        command = ["mount", "-o", "remount,ro", str(mount_point)]
        return subprocess.run(command, capture_output=True).returncode == 0

    wait_for(remounted, "a moment with no file open for writing, to remount read-only", 60)


def test_full_disk_stops_the_search_cleanly_and_resume_ends_it(small_filesystem):
    driver = start_search(small_filesystem, "full")
    ledger = small_filesystem / "full" / accounting.LEDGER_FILENAME
    wait_for(lambda: one_done_and_another_running(ledger), "one trial done, one running")
    filler = small_filesystem / "filler"
    with pytest.raises(OSError), open(filler, "wb") as f:  # fill the disk to the last byte
        while True:
            f.write(b"\0" * (1 << 20))
            f.flush()
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 2 and "Traceback" not in err.split("error: ")[-1]
    last = [line for line in err.splitlines() if line.startswith("error: ")][-1]
    assert "is full" in last and "--resume --name full" in last
    records = read_ledger(ledger)  # parseable (a torn last line is skipped with a warning)
    assert any(r.status == "completed" for r in records)

    filler.unlink()  # space again: the search goes on where it stopped
    resumed = search("--storage-path", str(small_filesystem), "--name", "full", "--resume",
                     "--num-cpus", "2")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = read_ledger(ledger)
    final = latest_status(records)
    # Every trial ends. Tune's own state is written as the disk fills: its last complete copy
    # may have lost the trial in flight (it then ends failed, its steps counted) or one not
    # yet started; the resumed search says so instead of passing over it.
    assert "running" not in final.values(), final
    if len(final) < TRIALS or "failed" in final.values():
        # (How many were planned stays unsaid: under random stopping K is secret.)
        assert "not every planned trial ran" in resumed.stderr or "failed" in (resumed.stderr), (
            resumed.stderr[-2000:]
        )
    assert list(final.values()).count("completed") >= 1
    # A trial that Tune's last saved state still had running re-runs from that state's
    # checkpoint, or from scratch if a newer one had replaced it: those steps really ran
    # again and count again. Never fewer steps than ran.
    for trial_id, event in accounting.executed_events(records).items():
        planned = max(r.planned_steps for r in records if r.trial_id == trial_id)
        if final[trial_id] == "completed":
            assert event.count >= planned, (trial_id, event.count)


def test_read_only_directory_stops_the_search_cleanly(small_filesystem):
    driver = start_search(small_filesystem, "ro")
    ledger = small_filesystem / "ro" / accounting.LEDGER_FILENAME
    wait_for(lambda: one_done_and_another_running(ledger), "one trial done, one running")
    remount_read_only(small_filesystem)
    try:
        out, err = driver.communicate(timeout=300)
        assert driver.returncode == 2
        last = [line for line in err.splitlines() if line.startswith("error: ")][-1]
        assert "read-only" in last and "--resume" in last
        records = read_ledger(ledger)  # parseable, and what ran is there
        assert any(r.status == "completed" for r in records)
        assert all(r.steps <= 3 * STEPS_PER_EPOCH for r in records)
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_filesystem)], check=True)
