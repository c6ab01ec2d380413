"""The command lines: help, errors as one sentence without a traceback, and a real trial."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import spaces
from tests.helpers import ROOT, needs_fashion_mnist, run


def test_search_help_documents_space():
    result = run("search/run.py", "--help")
    assert result.returncode == 0
    assert "--space" in result.stdout and "--list-spaces" in result.stdout


def test_search_lists_every_space_with_its_description():
    result = run("search/run.py", "--list-spaces")
    assert result.returncode == 0
    for space in spaces.list_spaces():
        assert any(
            line.split()[0] == space.name and space.description in line
            for line in result.stdout.splitlines()
        )


def test_trainer_help():
    result = run("-m", "trainers", "--help")
    assert result.returncode == 0 and "--set" in result.stdout and "--out" in result.stdout


def test_trainer_writes_metrics_on_synthetic_data(tmp_path):
    result = run(
        "-m", "trainers", "--space", "fmnist_quick",
        "--set", "dataset=synthetic", "--set", "synthetic_examples=320",
        "--set", "validation_fraction=0.2", "--set", "batch_size=64", "--set", "epochs=1",
        "--set", "delta=1e-4", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    for key in (
        "accuracy",
        "epsilon",
        "delta",
        "noise_multiplier",
        "sample_rate",
        "steps",
        "config",
    ):
        assert key in metrics
    assert 0 <= metrics["accuracy"] <= 1 and metrics["epsilon"] <= 3.0
    assert metrics["config"]["learning_rate"] == 4.0  # the space's default
    assert "epoch 1/1" in result.stderr  # progress is shown
    assert "test accuracy" in result.stdout
    # The trial's ledger gives back the trial's ε.
    audit = run("search/privacy.py", "--ledger", str(tmp_path), "--delta", "1e-4", "--json")
    assert audit.returncode == 0, audit.stderr
    assert json.loads(audit.stdout.splitlines()[-1])["trial_epsilon"] == metrics["epsilon"]


@needs_fashion_mnist
def test_trainer_runs_on_real_fashion_mnist(tmp_path):
    result = run(
        "-m", "trainers", "--space", "fmnist_quick", "--set", "train_fraction=0.08",
        "--set", "batch_size=256", "--set", "epochs=2",
        "--set", "validation_fraction=0.02", "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    # 8 % of the 98 % of 60 000 records the keyed hash leaves to training (binomial).
    assert 4300 < metrics["final"]["n_train"] < 5100
    assert metrics["epsilon"] <= 3.0 and metrics["accuracy"] > 0.3


def test_non_private_epsilon_is_written_as_null_not_infinity(tmp_path):
    result = run(
        "-m", "trainers", "--space", "fmnist_quick", "--set", "private=false",
        "--set", "dataset=synthetic", "--set", "synthetic_examples=160",
        "--set", "validation_fraction=0.2", "--set", "batch_size=64", "--set", "epochs=1",
        "--out", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "metrics.json").read_text()
    assert "Infinity" not in text and json.loads(text)["epsilon"] is None
    assert "not private" in result.stdout


def test_installed_commands_are_the_documented_scripts():
    # pyproject's [project.scripts]: each command on the venv's PATH runs the program the
    # README names (the same options as that script's parser). Started at once: each is a
    # cold Python start.
    import results.export
    import search.arguments
    import search.audit
    import search.privacy
    import trainers.__main__

    parsers = {
        "dp-search": search.arguments.build_parser(),
        "dp-search-privacy": search.privacy._parser(),
        "dp-export": results.export._parser(),
        "dp-train": trainers.__main__._parser(),
        "dp-audit": search.audit.build_parser(),
    }
    bin_dir = Path(sys.executable).parent
    running = {
        command: subprocess.Popen(
            [str(bin_dir / command), "--help"], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        for command in parsers
    }
    for command, process in running.items():
        stdout, _ = process.communicate(timeout=120)
        assert process.returncode == 0, command
        options = {word.strip(",[]") for word in stdout.split() if word.startswith("--")}
        expected = {
            word.strip(",[]")
            for word in parsers[command].format_help().split()
            if word.startswith("--")
        }
        assert options and options == expected, command
