"""Ctrl-C during a search: stop the way Tune stops cleanly (its last state saved, unfinished
trials left to resume), and remember that it happened, so the command ends with exit status
130 and our `--resume` line instead of a DP-release report and Tune's `Tuner.restore` hint."""

from __future__ import annotations

import logging
import os
import signal

TUNE_LOGGER = "ray.tune.tune"


class Interrupted(Exception):
    """The user stopped the search (SIGINT); nothing is released."""


class GracefulInterrupt:
    """Within it, the first SIGINT asks Tune to stop (Tune's own graceful path, which it also
    takes on SIGUSR1) and is recorded in `received`; a second one stops at once. Tune's own
    SIGINT handler is switched off so it cannot hide the interruption from us."""

    def __init__(self) -> None:
        self.received = False

    def __enter__(self) -> GracefulInterrupt:
        self._env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
        os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
        self._previous = signal.signal(signal.SIGINT, self._handle)
        self._filter = _DropRestoreHint()
        logging.getLogger(TUNE_LOGGER).addFilter(self._filter)
        self._level = logging.getLogger("ray.tune").level
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)
        logging.getLogger(TUNE_LOGGER).removeFilter(self._filter)
        logging.getLogger("ray.tune").setLevel(self._level)
        if self._env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = self._env

    def _handle(self, signum, frame) -> None:
        if self.received:
            raise KeyboardInterrupt  # a second Ctrl-C: no more waiting
        self.received = True
        print("\nStopping the search (its state is saved; Ctrl-C again to stop at once)…",
              flush=True)  # fmt: skip
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, signal.SIG_IGN, None):
            raise KeyboardInterrupt  # Tune is not running yet: nothing to stop gracefully
        # Tune's graceful stop; its own words about it (and about the trials it cut short)
        # would only repeat ours.
        logging.getLogger("ray.tune").setLevel(logging.ERROR)
        os.kill(os.getpid(), signal.SIGUSR1)


class _DropRestoreHint(logging.Filter):
    """Tune's "Resume experiment with: Tuner.restore(...)" is not how our users resume."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore" not in record.getMessage()
