"""Run `search/run.py` as a user does (a subprocess, embedded local Ray) for a benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_search(storage: Path, name: str, *args: str) -> float:
    """Run one search into `storage`/`name`; its wall time in seconds (exits on failure)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "search/run.py", *args, "--storage-path", str(storage), "--name", name],
        cwd=ROOT, capture_output=True, text=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
    )  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"search {name} failed:\n{result.stderr[-3000:]}")
    return time.monotonic() - started
