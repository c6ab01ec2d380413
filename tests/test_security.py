"""Security: no pickle code runs from a checkpoint or weights file, no private data or secret
reaches the outputs, and every output says which numbers are DP releases. (The dashboard's
binding and token: tests/search/test_search_ray.py::test_dashboard_requires_the_token.)"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from tests.helpers import CHEAP_1, COSTLY, ROOT, make_experiment, run, tiny
from trainers import make_config
from trainers.features import _load as load_feature_cache

PROJECT_DIRS = ("accounting", "search", "trainers", "results", "spaces", "benchmarks")


def test_every_torch_load_is_weights_only():
    loads = []
    for path in sorted(p for d in PROJECT_DIRS for p in (ROOT / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                keywords = {k.arg: ast.unparse(k.value) for k in node.keywords}
                loads.append((f"{path.relative_to(ROOT)}:{node.lineno}", keywords))
    assert len(loads) >= 2, "expected the checkpoint and feature-cache loads"
    unsafe = [where for where, keywords in loads if keywords.get("weights_only") != "True"]
    assert not unsafe, f"torch.load without weights_only=True: {unsafe}"


class _Payload:
    """A pickle that runs code when loaded without weights_only."""

    def __reduce__(self):
        return (Path.touch, (Path("/tmp/dp_tune_pickle_ran"),))


def test_a_malicious_feature_cache_runs_no_code_and_is_recomputed(tmp_path, caplog):
    marker = Path("/tmp/dp_tune_pickle_ran")
    marker.unlink(missing_ok=True)
    cache = tmp_path / "features.pt"
    torch.save({"train": _Payload(), "test": 1, "meta": 2}, cache)
    assert load_feature_cache(cache) is None  # refused, so recomputed by the caller
    assert not marker.exists()
    assert "unreadable" in caplog.text


def test_trial_outputs_hold_aggregates_only(tmp_path):
    # A trial's metrics, log and ledger: numbers about the data set (accuracies per class and
    # group, losses, ε), never its examples or labels — no list as long as the data.
    config = make_config(tiny(synthetic_groups=2))
    result = run(
        "-m", "trainers", "--space", "fmnist_quick", "--smoke", "--set", "synthetic_groups=2",
        "--out", tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    n_small = max(config.synthetic_classes, 2)

    def lists(value):
        if isinstance(value, list):
            yield value
            for item in value:
                yield from lists(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from lists(item)

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert all(len(values) <= n_small for values in lists(metrics["final"]))
    for line in (tmp_path / "privacy_ledger.jsonl").read_text().splitlines():
        assert not list(lists(json.loads(line)))  # mechanism only: q, σ, steps, status
    assert len(result.stdout) + len(result.stderr) < 20_000  # progress lines, no dumps


@pytest.mark.parametrize("fmt", ["markdown", "latex", "csv", "json"])
def test_every_export_says_what_is_a_dp_release_and_what_is_analyst_only(tmp_path, fmt):
    from results import build_report, load_experiments
    from results.export import render

    directory = make_experiment(tmp_path / "e", [CHEAP_1, COSTLY], searcher="random")
    text = render(build_report(load_experiments([directory])), fmt, None)
    lowered = text.lower()
    assert "dp release" in lowered or "dp_release" in lowered, text[:500]
    assert "analyst-only" in lowered or "analyst_only" in lowered, text[:500]
