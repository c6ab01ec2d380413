"""The benchmark scripts' machinery, at toy size on CPU: dp_overhead.py's child processes,
rows and command line, and gpu_check.sh's dry run (what the GPU machine will run, minus the
install, CUDA and realistic sizes). Their figures are benchmarks, never asserted here."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, assert_one_sentence_error

MODELS = {"cnn": "tramer_boneh_cnn", "nfnet": "test_nfnet", "vit": "test_vit"}
DP_MODES = {"fast (this project)", "opacus hooks", "opacus functorch", "opacus ghost"}


def dp_overhead(*args, timeout=300):
    return subprocess.run(
        [sys.executable, "benchmarks/dp_overhead.py", *args], cwd=ROOT, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def test_gpu_check_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", "benchmarks/gpu_check.sh"], cwd=ROOT)
    assert result.returncode == 0


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--models", "cnn,resnet"], "unknown model 'resnet' in --models; choose from cnn"),
        (["--batch", "vit=0"], "--batch takes MODEL=N"),
        (["--steps", "0"], "--steps must be ≥ 1"),
    ],
)
def test_bad_arguments_are_one_sentence_errors(args, fragment):
    assert_one_sentence_error(dp_overhead("--dry-run", *args), fragment)


def test_a_mode_that_cannot_run_is_a_row_with_an_error_not_a_crash(tmp_path):
    # A child that outlives --mode-timeout is one real way a mode fails (out of memory is another).
    out = tmp_path / "dp.json"
    result = dp_overhead("--dry-run", "--models", "cnn", "--mode-timeout", "0.01", "--json", out)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())["results"]
    assert {r["mode"] for r in rows} == DP_MODES and {r["model"] for r in rows} == {MODELS["cnn"]}
    for row in rows:
        assert "timed out" in row["error"]
        assert row["ratio"] is None and row["memory_ratio"] is None and row["dp_s"] is None
    assert "cannot run" in result.stdout


@pytest.mark.slow  # ~40 s on 2 cores: 6 fresh processes and a Ray search
def test_gpu_check_dry_run_writes_both_parts_to_one_json(tmp_path):
    out = tmp_path / "out" / "gpu_check.json"
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", str(out)], cwd=ROOT, capture_output=True, text=True,
        timeout=600, env={**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    check = json.loads(out.read_text())
    assert check["ok"] and check["dry_run"]
    assert {name: part["status"] for name, part in check["parts"].items()} == {
        "dp_overhead": 0,
        "search": 0,
    }
    # The benchmark: every model, the fast step (the dry run skips Opacus's), both ratios.
    rows = check["dp_overhead"]["results"]
    assert {(r["key"], r["mode"]) for r in rows} == {(k, "fast (this project)") for k in MODELS}
    for row in rows:
        assert "error" not in row, row
        assert row["model"] == MODELS[row["key"]] and row["device"] == "cpu"
        assert row["ratio"] > 0 and row["memory_ratio"] > 0 and "step_memory_ratio" in row
    # The search ran nfnet_cifar's recipe on synthetic data to its end, every trial complete.
    search = check["search"]
    assert search["finished"] and search["status"] == 0
    assert len(search["trials"]) == 2 and search["search_epsilon"] > 0
    assert search["fixed"]["dataset"] == "synthetic" and search["fixed"]["optimizer"] == "sgd"
    assert "--space nfnet_cifar" in check["parts"]["search"]["command"]
    # The logs stay beside the JSON; the work folder (checkpoints) does not stay.
    assert (out.parent / "gpu_check_logs" / "search.log").exists()
    assert "work folder kept" not in result.stdout


def test_fast_clip_phases_times_every_phase(tmp_path):
    out = tmp_path / "phases.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/fast_clip_phases.py", "--model", "test_vit", "--batch", "2",
         "--image-size", "32", "--steps", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    seconds = json.loads(out.read_text())["seconds"]
    assert {"non-private step", "norms", "clipped sums", "noise"} <= set(seconds)
    assert all(value > 0 for value in seconds.values())
    assert "DP step, all phases" in result.stdout
