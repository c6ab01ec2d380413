"""`python search/audit.py` as the README documents it: a consistent audit prints ε, ε̂ and
the verdict and ends with one JSON line; a broken mechanism is a VIOLATION with exit status 1;
bad input is one sentence and exit status 2."""

from __future__ import annotations

import json

import pytest

from search import audit
from tests.helpers import assert_one_sentence_error, break_noise, needs_fashion_mnist, run


def test_readme_audit_command_prints_the_verdict_and_one_json_line():
    # Verbatim from the README.
    result = run("search/audit.py", "--space", "fmnist_quick", "--smoke", "--canaries", "500",
                 "--engine", "opacus", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    for key in ("epsilon", "epsilon_lower", "confidence", "guesses", "correct", "verdict"):
        assert key in report
    assert report["verdict"] == "consistent" and report["engine"] == "opacus"
    assert 0 <= report["epsilon_lower"] <= report["epsilon"] and report["canaries"] == 500
    assert "verdict: consistent" in result.stdout and "ε̂ (audit lower bound" in result.stdout


@pytest.mark.slow  # a real Fashion-MNIST trial, ~1 min
@needs_fashion_mnist
def test_readme_audit_of_real_fashion_mnist():
    result = run("search/audit.py", "--space", "fmnist_quick", "--canaries", "1000")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "1000 gradient canaries" in result.stdout and "verdict: consistent" in result.stdout
    assert "epoch 2/2" in result.stderr  # progress is shown


def test_a_violation_exits_with_status_1(monkeypatch, capsys):
    break_noise(monkeypatch, 0.0)
    status = audit.main(["--space", "fmnist_quick", "--smoke", "--canaries", "400", "--quiet",
                         "--set", "synthetic_examples=1250", "--set", "batch_size=250",
                         "--set", "epochs=5", "--set", "target_epsilon=2", "--json"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 1, out
    assert "verdict: VIOLATION" in out and "do not release" in out
    assert json.loads(out.strip().splitlines()[-1])["verdict"] == "VIOLATION"


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--space", "no_such_space"], "no_such_space"),
        (["--space", "fmnist_quick", "--canaries", "1"], "--canaries"),
        (["--space", "fmnist_quick", "--confidence", "1.5"], "--confidence"),
        (["--space", "fmnist_quick", "--set", "private=false"], "private"),
    ],
)
def test_bad_input_is_one_sentence(args, fragment):
    assert_one_sentence_error(run("search/audit.py", *args, "--smoke", "--quiet"), fragment)
