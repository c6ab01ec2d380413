"""What a user types first: fast answers to mistakes, several settings after one --set, the
closest name suggested, a hint when the venv is missing, and nothing written by a refused
command (issue 17, items 6 and 8). The searches themselves are in tests/search/."""

from __future__ import annotations

import sys

import pytest

from search.arguments import build_parser
from tests.helpers import ROOT, TINY, needs_fashion_mnist, run, run_in, search
from trainers import TrainerError, parse_overrides

LIGHT_CHECK = """
import sys
from search.run import main
status = main({argv!r})
heavy = sorted(m for m in ("torch", "ray", "dp_accounting", "opacus", "timm") if m in sys.modules)
print("HEAVY", heavy, "STATUS", status)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["--space", "fmnist_quik"],
        ["--space", "fmnist_quick", "--set", "learning_rat=1"],
        ["--space", "fmnist_quick", "--num-samples", "0"],
        ["--space", "fmnist_quick", "--gpus-per-trial", "-1"],
        ["--space", "fmnist_quick", "--budgets", "1,x"],
    ],
)
def test_argument_and_space_errors_are_answered_before_torch_or_ray_load(argv):
    # What makes them answer in well under a second (figures: docs/benchmarks.md): nothing
    # heavy is imported before the request is checked.
    result = run("-c", LIGHT_CHECK.format(argv=argv))
    assert "HEAVY [] STATUS 2" in result.stdout, result.stdout + result.stderr
    assert "error: " in result.stderr and "Traceback" not in result.stderr


def test_typos_get_the_closest_name():
    result = search("--space", "fmnist_quik")
    assert "did you mean 'fmnist_quick'?" in result.stderr
    with pytest.raises(TrainerError, match="did you mean 'learning_rate'"):
        parse_overrides(["learning_rat=1"])


def test_one_set_takes_several_settings():
    args = build_parser().parse_args(
        ["--space", "fmnist_quick", "--set", "epochs=2", "batch_size=64", "--set", "seed=3"]
    )
    assert args.overrides == ["epochs=2", "batch_size=64", "seed=3"]
    assert parse_overrides(args.overrides) == {"epochs": 2, "batch_size": 64, "seed": 3}


def test_a_python_without_the_project_is_told_to_use_the_venv():
    # -S: no site-packages, as with a system Python that never saw `pip install -e .`.
    result = run("-S", "search/run.py", "--space", "fmnist_quick")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert ".venv/bin/python search/run.py" in result.stderr
    assert "source .venv/bin/activate" in result.stderr


def test_a_mistyped_space_writes_nothing(tmp_path):
    result = run_in(tmp_path, [sys.executable, str(ROOT / "search/run.py"), "--space", "nope"])
    assert result.returncode == 2
    assert list(tmp_path.iterdir()) == []  # no runs/


@needs_fashion_mnist
def test_a_refused_search_does_not_create_its_storage_path(tmp_path):
    # The README's cluster command on a machine without CIFAR: refused, and /shared/runs (here
    # tmp/shared/runs) is not created on the way.
    storage = tmp_path / "shared" / "runs"
    for argv in (
        ["--space", "nfnet_cifar", "--set", "data_dir=/nonexistent", "download=false"],
        [*TINY, "--set", "batch_size=0"],
        [*TINY, "--gpus-per-trial", "-1"],
    ):
        result = search(*argv, "--storage-path", str(storage))
        assert result.returncode == 2 and "error: " in result.stderr, result.stderr[-2000:]
        assert not (tmp_path / "shared").exists(), argv


def test_the_progress_line_says_what_a_user_needs_and_keeps_k_secret():
    from types import SimpleNamespace

    from search.live import progress_line

    values = {"epsilon_spent": 2.0001, "epsilon_planned": 6.3401, "best_val_score": 0.81234,
              "trials_finished": 2}  # fmt: skip
    trials = [SimpleNamespace(status=s) for s in ("TERMINATED", "TERMINATED", "RUNNING")]
    composed = SimpleNamespace(mode="composition", num_trials=8)
    line = progress_line(composed, values, trials, elapsed_s=90.0)
    assert line == (
        "[1m30s] 2/8 trials done, 1 running · ε spent 2.001 of 6.341 (spent: analyst-only) · "
        "best noisy validation score 0.8123 · ETA 4m30s"
    )
    secret = SimpleNamespace(mode="random-stopping", num_trials=5)  # K = 5, never shown
    line = progress_line(secret, values, trials, elapsed_s=90.0)
    assert "2 trials done, 1 running (K is secret)" in line
    assert "/5" not in line and "ETA" not in line


def test_a_dashboard_port_that_cannot_be_had_is_refused_before_ray_starts(tmp_path):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        for port, answer in ((taken, f"--dashboard-port {taken} is taken"),
                             (70000, "--dashboard-port must be in 1-65535")):  # fmt: skip
            result = search(*TINY, "--dashboard-port", str(port), "--storage-path", str(tmp_path))
            assert result.returncode == 2 and answer in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
