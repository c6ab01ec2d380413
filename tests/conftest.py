"""Shared fixtures and settings; shared helpers are in tests/helpers.py."""

from __future__ import annotations

import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
