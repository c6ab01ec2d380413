"""The privacy ledger: an append-only, fsynced JSON-lines record of what every trial executed.

One line per trial per report. Each process running a trial is an *attempt* (a retry or a
resume starts a new one); a record holds the trial's cumulative `steps` and the `start_steps`
its attempt restored from a checkpoint, so the steps an attempt executed are
`steps - start_steps` of its latest record, and a trial's executed steps are the sum over its
attempts. Steps re-run after a restore are counted again: they touched the data again.
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dp_accounting import dp_event

from accounting.mechanism import AccountingError, trial_event, validation_event
from accounting.names import LEDGER_FILENAME
from accounting.rdp_curves import ParallelCurve

log = logging.getLogger(__name__)

STATUSES = ("running", "completed", "stopped", "failed")
"""running: more reports will follow; completed: ran all its steps; stopped: ended early by the
scheduler or the budget; failed: crashed (its steps still count)."""


class LedgerError(AccountingError):
    """The ledger cannot be read honestly; the message says what to do."""


@dataclass(frozen=True, kw_only=True)
class LedgerRecord:
    """One report of one attempt of one trial."""

    trial_id: str
    """The search's name for the trial (stable across retries and resumes)."""
    attempt: str
    """One execution of the trial (a process); a retry or resume starts a new attempt."""
    sample_rate: float
    """Poisson sampling rate q actually used."""
    noise_multiplier: float
    """σ actually used (0: not private)."""
    steps: int
    """Cumulative noisy steps of the trial so far, including steps restored from a checkpoint."""
    start_steps: int = 0
    """Steps restored from a checkpoint when this attempt began."""
    status: str = "running"
    """One of STATUSES."""
    planned_steps: int | None = None
    """Steps the trial will take if it runs to the end (reserved while it is running)."""
    time: float = field(default_factory=time.time)
    """Unix time of the record."""
    simulated: bool = False
    """A TAN simulation (a cheap stand-in for a larger-batch run); its steps count all the
    same: it read the data."""
    val_noise_multiplier: float = 0.0
    """σ_v of the trial's noisy validation scores, in units of the score's L2 sensitivity
    (0 with no private validation releases: a public validation set, or none)."""
    val_releases: int = 0
    """Cumulative noisy validation scores released by the trial so far (restored ones too)."""
    start_val_releases: int = 0
    """Validation releases restored from a checkpoint when this attempt began."""
    planned_val_releases: int | None = None
    """Validation releases the trial will make if it runs to the end (reserved while running)."""

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise LedgerError(f"unknown trial status {self.status!r}; use one of {STATUSES}.")
        if not (0 <= self.start_steps <= self.steps):
            raise LedgerError(
                f"trial {self.trial_id}: steps={self.steps} must be ≥ start_steps="
                f"{self.start_steps} ≥ 0."
            )
        if not (0 <= self.start_val_releases <= self.val_releases) or self.val_noise_multiplier < 0:
            raise LedgerError(
                f"trial {self.trial_id}: val_releases={self.val_releases} must be ≥ "
                f"start_val_releases={self.start_val_releases} ≥ 0 and val_noise_multiplier ≥ 0."
            )
        if self.val_releases > self.start_val_releases and self.val_noise_multiplier == 0:
            raise LedgerError(
                f"trial {self.trial_id}: validation releases without noise are not private; "
                "record their val_noise_multiplier."
            )
        if not (0 < self.sample_rate <= 1) or self.noise_multiplier < 0:
            raise LedgerError(
                f"trial {self.trial_id}: sample_rate must lie in (0, 1] and noise_multiplier "
                f"be ≥ 0 (got {self.sample_rate}, {self.noise_multiplier})."
            )

    @property
    def executed_steps(self) -> int:
        """Steps this attempt ran itself (not restored)."""
        return self.steps - self.start_steps

    @property
    def executed_val_releases(self) -> int:
        """Validation scores this attempt released itself (not restored)."""
        return self.val_releases - self.start_val_releases


class PrivacyLedger:
    """Append-only ledger file; safe for several processes appending at once."""

    def __init__(self, path: str | os.PathLike) -> None:
        path = Path(path)
        self.path = path / LEDGER_FILENAME if path.is_dir() else path

    def append(self, record: LedgerRecord) -> None:
        """Append one line and fsync it before returning (a crash loses at most this line)."""
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # One write under an exclusive lock: concurrent writers never interleave lines,
            # even over network filesystems where O_APPEND alone is not atomic.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                _repair_torn_tail(fd)
                _write_line(fd, record, self.path)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def reserve(self, record: LedgerRecord, fits: Callable[[list[LedgerRecord]], bool]) -> bool:
        """Append `record` only if `fits(existing records + [record])`, atomically.

        Check and append happen under the ledger's lock, so concurrent trials cannot both
        pass a budget check that only one of them fits in.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if not fits([*read_ledger(self.path), record]):
                    return False
                _repair_torn_tail(fd)
                _write_line(fd, record, self.path)
                return True
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def records(self) -> list[LedgerRecord]:
        return read_ledger(self.path)

    def trial_events(self) -> dict[str, dp_event.DpEvent]:
        return executed_events(self.records())


def _write_line(fd: int, record: LedgerRecord, path: Path) -> None:
    line = (json.dumps(asdict(record), sort_keys=True) + "\n").encode()
    written = os.write(fd, line)
    if written != len(line):
        raise OSError(f"short write to {path} ({written} of {len(line)} bytes)")
    os.fsync(fd)


def _repair_torn_tail(fd: int) -> None:
    """If a crash left a last line without its newline, end it so the next record stands alone.

    The torn line stays (append-only) and is skipped with a warning when read.
    """
    size = os.fstat(fd).st_size
    if size == 0:
        return
    if os.pread(fd, 1, size - 1) != b"\n":
        os.write(fd, b"\n")


def read_ledger(path: str | os.PathLike) -> list[LedgerRecord]:
    """All well-formed records, in file order.

    A torn line (a crash mid-write: no newline, or cut-off JSON that the next append ended) is
    skipped with a warning; such a line is at most one report of one trial, and the trial's
    earlier records still count. Any other malformed line is an error: the ledger was edited
    or damaged and its ε cannot be trusted.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LEDGER_FILENAME
    if not path.exists():
        return []
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LedgerError(f"cannot read the privacy ledger {path} ({error.strerror}).") from None
    lines = data.split(b"\n")
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_last = number == len(lines)  # no newline after it
        try:
            values = json.loads(raw)
            records.append(LedgerRecord(**values))
        except (ValueError, TypeError) as error:
            if is_last or _looks_torn(raw):
                log.warning(
                    "privacy ledger %s: line %d is incomplete (a crash mid-write?); skipping it",
                    path,
                    number,
                )
                continue
            raise LedgerError(
                f"privacy ledger {path}, line {number} is malformed ({error}); restore the "
                "file from a backup: the search ε cannot be computed from a damaged ledger."
            ) from None
    return records


def _looks_torn(raw: bytes) -> bool:
    """A prefix of a JSON object that was cut off (it never got its closing brace)."""
    text = raw.strip()
    return text.startswith(b"{") and not text.endswith(b"}")


@dataclass(frozen=True)
class TrialAccount:
    """What the ledger says about one trial (see `reduce_ledger`)."""

    trial_id: str
    train: dp_event.DpEvent
    """Its executed DP-SGD steps (summed over attempts), plus reservations when asked."""
    validation: dp_event.DpEvent
    """Its noisy validation releases (summed over attempts), plus reservations when asked."""
    status: str
    """The status of its most recent record."""
    latest: LedgerRecord
    """Its most recent record (the newest attempt's)."""
    most_steps: LedgerRecord
    """The record with the most steps (the newest among equals): its q, σ and steps."""
    first_time: float
    """When its first record was written (a reservation: from then on it may touch data)."""
    first_report_time: float
    """When it first recorded steps beyond its start (NaN: never); before that, nothing it
    computed from the data can have reached a searcher or scheduler."""
    end_time: float
    """When its last record was written."""

    @property
    def curve(self) -> ParallelCurve:
        """Its RDP in the training and validation parts (see `ParallelCurve`)."""
        return ParallelCurve.of(self.train, self.validation)


def reduce_ledger(
    records: Iterable[LedgerRecord], *, until: float | None = None, reserve: bool = False
) -> dict[str, TrialAccount]:
    """Every trial's account, the one reduction of a ledger that every reader uses.

    A trial's executed steps (and validation releases) are, per attempt, those of the
    attempt's latest record (the most steps), summed over its attempts: retries and resumes
    neither lose nor double-count. Args:
        until: only records written at or before this time (what had happened by then; the
            steps claimed ahead of an epoch count from the claim on).
        reserve: add, for each trial whose most recent record is `running`, the steps and
            validation releases it still plans: what a budget must hold for it.
    """
    records = [r for r in records if until is None or r.time <= until]
    by_attempt: dict[tuple[str, str], LedgerRecord] = {}
    val_by_attempt: dict[tuple[str, str], LedgerRecord] = {}
    by_trial: dict[str, list[LedgerRecord]] = defaultdict(list)
    for record in records:
        key = (record.trial_id, record.attempt)
        if key not in by_attempt or record.steps >= by_attempt[key].steps:
            by_attempt[key] = record
        if key not in val_by_attempt or record.val_releases >= val_by_attempt[key].val_releases:
            val_by_attempt[key] = record
        by_trial[record.trial_id].append(record)
    train: dict[str, dict[tuple[float, float], int]] = defaultdict(lambda: defaultdict(int))
    validation: dict[str, dict[float, int]] = defaultdict(lambda: defaultdict(int))
    for (trial_id, _), record in by_attempt.items():
        train[trial_id][(record.sample_rate, record.noise_multiplier)] += record.executed_steps
    for (trial_id, _), record in val_by_attempt.items():
        if record.executed_val_releases:
            validation[trial_id][record.val_noise_multiplier] += record.executed_val_releases
    accounts = {}
    for trial_id, mine in sorted(by_trial.items()):
        # Ties in time go to the later line (the ledger is append-only).
        latest = max(enumerate(mine), key=lambda item: (item[1].time, item[0]))[1]
        most_steps = max(enumerate(mine), key=lambda item: (item[1].steps, item[1].time,
                                                             item[0]))[1]  # fmt: skip
        if reserve and latest.status == "running":
            if latest.planned_steps is not None and latest.planned_steps > latest.steps:
                key = (latest.sample_rate, latest.noise_multiplier)
                train[trial_id][key] += latest.planned_steps - latest.steps
            planned_val = latest.planned_val_releases
            if planned_val is not None and planned_val > latest.val_releases:
                validation[trial_id][latest.val_noise_multiplier] += (
                    planned_val - latest.val_releases
                )
        reports = [r.time for r in mine if r.steps > r.start_steps]
        accounts[trial_id] = TrialAccount(
            trial_id=trial_id,
            train=trial_event([(q, s, n) for (q, s), n in sorted(train[trial_id].items())]),
            validation=_validation_event(validation[trial_id]),
            status=latest.status,
            latest=latest,
            most_steps=most_steps,
            first_time=min(r.time for r in mine),
            first_report_time=min(reports) if reports else math.nan,
            end_time=max(r.time for r in mine),
        )
    return accounts


def _validation_event(releases: dict[float, int]) -> dp_event.DpEvent:
    events = [
        validation_event(noise_multiplier=sigma, releases=n)
        for sigma, n in sorted(releases.items())
        if n
    ]
    if not events:
        return dp_event.NoOpDpEvent()
    return events[0] if len(events) == 1 else dp_event.ComposedDpEvent(events)


def executed_events(records: Iterable[LedgerRecord]) -> dict[str, dp_event.DpEvent]:
    """Each trial's executed DP-SGD event (its training part; see `reduce_ledger`)."""
    return {t: a.train for t, a in reduce_ledger(records).items()}


def reserved_events(records: Iterable[LedgerRecord]) -> dict[str, dp_event.DpEvent]:
    """Each trial's executed DP-SGD event plus, while it runs, the steps it still plans."""
    return {t: a.train for t, a in reduce_ledger(records, reserve=True).items()}


def latest_status(records: Iterable[LedgerRecord]) -> dict[str, str]:
    """Each trial's status in its most recent record."""
    return {t: a.status for t, a in reduce_ledger(records).items()}
