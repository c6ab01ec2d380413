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
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dp_accounting import dp_event

from accounting.mechanism import AccountingError
from accounting.search import trial_event

log = logging.getLogger(__name__)

LEDGER_FILENAME = "privacy_ledger.jsonl"
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

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise LedgerError(f"unknown trial status {self.status!r}; use one of {STATUSES}.")
        if not (0 <= self.start_steps <= self.steps):
            raise LedgerError(
                f"trial {self.trial_id}: steps={self.steps} must be ≥ start_steps="
                f"{self.start_steps} ≥ 0."
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


def executed_events(records: Iterable[LedgerRecord]) -> dict[str, dp_event.DpEvent]:
    """Each trial's executed mechanism, from the latest record of each of its attempts."""
    latest: dict[tuple[str, str], LedgerRecord] = {}
    for record in records:
        key = (record.trial_id, record.attempt)
        if key not in latest or record.steps >= latest[key].steps:
            latest[key] = record
    steps: dict[str, dict[tuple[float, float], int]] = defaultdict(lambda: defaultdict(int))
    for (trial_id, _), record in latest.items():
        steps[trial_id][(record.sample_rate, record.noise_multiplier)] += record.executed_steps
    return {
        trial_id: trial_event([(q, sigma, n) for (q, sigma), n in sorted(parts.items())])
        for trial_id, parts in sorted(steps.items())
    }


def reserved_events(records: Iterable[LedgerRecord]) -> dict[str, dp_event.DpEvent]:
    """Each trial's executed mechanism plus, while it is running, the steps it still plans.

    What a budget check must count: a running trial may still spend its remaining steps.
    """
    records = list(records)
    latest: dict[str, LedgerRecord] = {}
    for record in records:  # the trial's most recent record (newest attempt)
        if record.trial_id not in latest or record.time >= latest[record.trial_id].time:
            latest[record.trial_id] = record
    remaining = [
        LedgerRecord(
            trial_id=r.trial_id,
            attempt="(reserved)",
            sample_rate=r.sample_rate,
            noise_multiplier=r.noise_multiplier,
            steps=r.planned_steps - r.steps,
        )  # fmt: skip
        for r in latest.values()
        if r.status == "running" and r.planned_steps is not None and r.planned_steps > r.steps
    ]
    return executed_events([*records, *remaining])


def latest_status(records: Iterable[LedgerRecord]) -> dict[str, str]:
    """Each trial's status in its most recent record."""
    status: dict[str, tuple[float, str]] = {}
    for record in records:
        if record.trial_id not in status or record.time >= status[record.trial_id][0]:
            status[record.trial_id] = (record.time, record.status)
    return {trial_id: value for trial_id, (_, value) in status.items()}
