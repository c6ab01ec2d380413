"""The search: `search/run.py` CLI, Ray Tune orchestration, search-level privacy accounting."""
