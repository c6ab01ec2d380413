"""What a running search shows without anything extra installed: one progress line now and
then (trials done, ε spent against the plan, best noisy validation score, an ETA), and the
same figures as Prometheus gauges via `ray.util.metrics` (docs/monitoring/)."""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path
from typing import TextIO

from ray.tune import Callback

import accounting
from accounting import PrivacyLedger
from search.plan import SearchPlan

log = logging.getLogger(__name__)

GAUGES = (
    ("epsilon_spent", "search epsilon spent so far, from the privacy ledger"),
    ("epsilon_planned", "the search epsilon fixed by the plan before the first trial"),
    ("budget_left", "planned search epsilon minus epsilon spent"),
    ("best_val_score", "best final noisy validation score of a completed trial"),
    ("trials_finished", "trials that completed, stopped or failed"),
)
"""Prometheus names: ray_dp_search_<name>{experiment=...}. Ray's descriptions must be ASCII."""


class SearchProgress(Callback):
    """Publishes the search's live figures from the ledger and the plan: Prometheus gauges
    (at most every 2 s and at each trial's end) and a progress line (every `print_every_s`
    and at each trial's end; `out=None`: none)."""

    def __init__(
        self,
        plan: SearchPlan,
        experiment_dir: Path,
        *,
        out: TextIO | None = sys.stdout,
        print_every_s: float = 30.0,
    ) -> None:
        from ray.util import metrics

        self.plan = plan
        self.ledger = PrivacyLedger(experiment_dir / accounting.LEDGER_FILENAME)
        self.out, self.print_every_s = out, print_every_s
        self.best = -math.inf
        self.started = time.monotonic()
        self.last_update = self.last_print = 0.0
        self.ended_before: int | None = None
        self.tags = {"experiment": experiment_dir.name}
        self.gauges = {
            name: metrics.Gauge(f"dp_search_{name}", description=text, tag_keys=("experiment",))
            for name, text in GAUGES
        }

    def setup(self, **info):
        # A resumed search unpickles this callback: its clocks start again with this process.
        self.started = time.monotonic()
        self.last_update = self.last_print = 0.0
        self.ended_before = None

    def on_trial_result(self, iteration, trials, trial, result, **info):
        now = time.monotonic()
        if now - self.last_update > 2.0:
            values = self.update()
            if values is not None and now - self.last_print > self.print_every_s:
                self.show(values, trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # The release chooses among completed trials by their last noisy score: so does this.
        score = (trial.last_result or {}).get(self.plan.metric)
        if score is not None and math.isfinite(float(score)):
            self.best = max(self.best, float(score))
        self._trial_ended(trials, trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._trial_ended(trials, trial)

    def on_experiment_end(self, trials, **info):
        self.update()

    def _trial_ended(self, trials, ended) -> None:
        values = self.update()
        if values is not None:  # Tune still lists the ended trial as running
            self.show(values, [t for t in trials if t is not ended])

    def update(self) -> dict[str, float] | None:
        self.last_update = time.monotonic()
        try:
            accounts = accounting.reduce_ledger(self.ledger.records())
            search = self.plan.privacy.search_epsilon(accounts)
        except accounting.AccountingError as error:  # a gauge never stops the search
            log.warning("privacy metrics not updated: %s", error)
            return None
        values = {
            "epsilon_spent": search.spent,
            "epsilon_planned": search.epsilon,
            "budget_left": search.epsilon - search.spent,
            "best_val_score": self.best if self.best > -math.inf else math.nan,
            "trials_finished": sum(a.status != "running" for a in accounts.values()),
        }
        for name, value in values.items():
            self.gauges[name].set(value, tags=self.tags)
        return values

    def show(self, values: dict[str, float], trials) -> None:
        if self.out is None:
            return
        self.last_print = time.monotonic()
        if self.ended_before is None:  # trials that ended before this process (a resume)
            self.ended_before = int(values["trials_finished"])
        elapsed = self.last_print - self.started
        print(progress_line(self.plan, values, trials, elapsed, self.ended_before),
              file=self.out, flush=True)  # fmt: skip


def progress_line(
    plan: SearchPlan, values: dict[str, float], trials, elapsed_s: float, ended_before: int = 0
) -> str:
    """One line: trials ended (the ledger's count) / planned (K stays unsaid under random
    stopping), ε spent of the plan's ε (analyst-only: the release is the plan's ε), the best
    final noisy validation score of a completed trial (what the release chooses by), and an
    ETA from the pace of the trials that ended in this run (`ended_before`: those that had
    ended before it, on a resume)."""
    done = int(values["trials_finished"])
    running = sum(t.status == "RUNNING" for t in trials)
    if plan.mode == "random-stopping":
        count, eta = f"{done} trials done, {running} running (K is secret)", ""
    else:
        count = f"{done}/{plan.num_trials} trials done, {running} running"
        left = plan.num_trials - done
        pace = done - ended_before
        eta = f" · ETA {_duration(elapsed_s * left / pace)}" if pace > 0 and left else ""
    best = values["best_val_score"]
    score = f"{best:.4f}" if math.isfinite(best) else "—"
    return (
        f"[{_duration(elapsed_s)}] {count} · ε spent "
        f"{accounting.show_epsilon(values['epsilon_spent'])} of "
        f"{accounting.show_epsilon(values['epsilon_planned'])} (spent: analyst-only) · best "
        f"noisy validation score {score}{eta}"
    )


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
