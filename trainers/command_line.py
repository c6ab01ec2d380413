"""What the command lines share (`python -m trainers`, `search/run.py`, `search/audit.py`):
the `--set KEY=VALUE …` option and its parsing into typed `TrainConfig` settings, and the check
of an output folder (which creates nothing)."""

from __future__ import annotations

import difflib
import os
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trainers.config import TrainConfig, TrainerError, coerce_setting


def parse_overrides(assignments: Iterable[str]) -> dict[str, Any]:
    """Parse `key=value` strings (from `--set`) into typed values of `TrainConfig` fields."""
    hints = typing.get_type_hints(TrainConfig)
    result: dict[str, Any] = {}
    for text in assignments:
        key, sep, raw = text.partition("=")
        key = key.strip()
        if not sep or not key:
            raise TrainerError(f"--set expects key=value (got {text!r}).")
        if key not in hints:
            close = difflib.get_close_matches(key, hints, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise TrainerError(
                f"unknown hyperparameter {key!r}; {hint}known: {', '.join(sorted(hints))}."
            )
        value = _parse_text(raw.strip())
        if hints[key] is str and value is not None:
            value = raw.strip()  # a text setting keeps its words ("off", "1e-3", …)
        result[key] = coerce_setting(key, value, hints[key])
    return result


def _parse_text(raw: str) -> Any:
    lowered = raw.lower()
    if lowered in ("none", "null", ""):
        return None
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def writable_directory(path: Path, flag: str) -> Path:
    """`path` if it is a writable folder or could be created as one, else a one-sentence
    TrainerError naming `flag` (--out, --storage-path). It creates nothing: a command refused
    by a later check must leave no folder behind, so each command creates its output only
    once every check has passed."""
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # the nearest folder that exists: where mkdir would start
    if not existing.is_dir():
        raise TrainerError(
            f"cannot create {flag} {str(path)!r}: {existing} is a file, not a folder; choose "
            "another folder."
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        where = path.absolute()
        what = "is not writable" if existing == where else f"cannot be created in {existing}"
        raise TrainerError(f"{flag} {str(path)!r} {what}; choose another folder.")
    return path


def add_settings_argument(parser, help: str) -> None:
    """The `--set KEY=VALUE …` option of every command line: repeatable, and several settings
    may follow one --set (`--set epochs=2 batch_size=64`)."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="extend",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help=help,
    )
