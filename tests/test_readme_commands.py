"""README commands no other test runs as written, run here as written (plus `--smoke`, a
temporary `--out` or hand-made experiment directories where the README's would need Fashion-MNIST
for minutes or a finished search). docs/user-paths.md maps every README command to its test."""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from importlib import metadata
from io import StringIO
from pathlib import Path

import pandas as pd
import pytest

from tests.helpers import (
    CHEAP_1,
    CHEAP_2,
    COSTLY,
    ROOT,
    TINY,
    make_experiment,
    needs_fashion_mnist,
    run_in,
)
from tests.helpers import search as run_search
from tests.test_user_paths_doc import (
    normalised,
    readme_bash_commands,
    readme_notebook,
    readme_quickstart,
)


def in_readme(command: str) -> str:
    assert command in readme_bash_commands(), f"README.md no longer gives: {command}"
    return command


def argv(command: str) -> list[str]:
    """The README's `.venv/bin/python SCRIPT …` as this interpreter runs it from any folder."""
    words = shlex.split(command)
    assert words[0] == ".venv/bin/python", command
    if words[1].endswith(".py"):
        words[1] = str(ROOT / words[1])
    return [sys.executable, *words[1:]]


def last_json(result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- one trial, without Ray --------------------------------------------------------------------

TRAINER_COMMANDS = {
    "fmnist_cnn": ".venv/bin/python -m trainers --space fmnist_cnn --out runs/tb",
    "set": ".venv/bin/python -m trainers --space fmnist_quick --set learning_rate=2 --set epochs=1 "
    "--out runs/a",
}


@pytest.mark.parametrize("name", TRAINER_COMMANDS)
def test_readme_trial_commands_with_smoke(name, tmp_path):
    """The README's trial, `--smoke` added (the space's recipe on tiny synthetic data, seconds):
    DIR/metrics.json and DIR/privacy_ledger.jsonl, with the space and every `--set` applied."""
    from trainers import parse_overrides

    words = argv(in_readme(TRAINER_COMMANDS[name]))
    out = words[words.index("--out") + 1]
    result = run_in(tmp_path, [*words, "--smoke", "--quiet"])
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / out / "metrics.json").read_text())
    assert metrics["space"] == words[words.index("--space") + 1]
    settings = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    for key, value in parse_overrides(settings).items():
        assert metrics["config"][key] == value, key
    assert 0 < metrics["epsilon"] <= metrics["config"]["target_epsilon"]
    assert (tmp_path / out / "privacy_ledger.jsonl").stat().st_size > 0


def test_readme_help_lists_every_train_config_field(tmp_path):
    """`python -c "import trainers; help(trainers.TrainConfig)"` (with the venv's Python):
    every setting `--set` takes, a line each."""
    from trainers import TrainConfig

    command = 'python -c "import trainers; help(trainers.TrainConfig)"'
    assert command in normalised((ROOT / "README.md").read_text(encoding="utf-8"))
    result = run_in(tmp_path, [sys.executable, *shlex.split(command)[1:]], timeout=60)
    assert result.returncode == 0, result.stderr
    lines = {line.strip(" |") for line in result.stdout.splitlines()}
    for field in dataclasses.fields(TrainConfig):
        assert any(line.startswith(f"{field.name} = ") for line in lines), field.name


# --- plan or audit the privacy of a search -----------------------------------------------------

TRIAL = "--sample-rate 0.0341 --noise-multiplier 2.15 --steps 1172 --delta 1e-5"
PLAN = "--sample-rate 0.08192 --steps 875 --delta 1e-5 --target-epsilon 8 --trials-mean 10"
PRIVACY_COMMANDS = {
    "trial": f".venv/bin/python search/privacy.py {TRIAL}",
    "poisson": f".venv/bin/python search/privacy.py {PLAN} --trials-distribution poisson",
    "auto": f".venv/bin/python search/privacy.py {PLAN} --trials-distribution auto",
    "composed": f".venv/bin/python search/privacy.py {TRIAL} --num-trials 10",
    "fit": f".venv/bin/python search/privacy.py {TRIAL} --target-epsilon 8",
}


@pytest.mark.parametrize("name", PRIVACY_COMMANDS)
def test_readme_privacy_commands_say_what_their_comments_say(name, tmp_path):
    """Each as written, `--json` added to read its figures."""
    from search import privacy

    words = argv(in_readme(PRIVACY_COMMANDS[name]))
    data = last_json(run_in(tmp_path, [*words, "--json"], timeout=120))
    assert data["delta"] == 1e-5 and data["trial_epsilon"] > 0
    if name == "trial":  # ε of one trial (q, σ, T) at δ
        assert data["mode"] == "none" and data["epsilon"] == data["trial_epsilon"]
    elif name in ("poisson", "auto"):  # σ so that the whole random-stopping search has ε ≤ 8
        assert data["mode"] == "random-stopping" and data["calibrated"]
        assert 7.9 <= data["epsilon"] <= 8.0 and data["trials_mean"] == 10
        if name == "poisson":
            assert data["trials_distribution"] == "poisson"
        else:  # the distribution needing the least σ, and what each would need
            assert data["noise_multiplier"] == min(data["trials_choice"].values())
            assert len(data["trials_choice"]) > 2
    elif name == "composed":  # ε of 10 trials composed
        assert data["mode"] == "composition" and data["num_trials"] == 10
        assert data["epsilon"] > data["trial_epsilon"]
    else:  # how many composed trials fit in ε = 8: that many fit, one more does not

        def composed(k: int) -> float:
            args = [*TRIAL.split(), "--num-trials", str(k), "--json"]
            buffer = StringIO()
            stdout, sys.stdout = sys.stdout, buffer
            try:
                assert privacy.main(args) == 0
            finally:
                sys.stdout = stdout
            return json.loads(buffer.getvalue().strip().splitlines()[-1])["epsilon"]

        fit = data["max_trials"]
        assert fit >= 1 and composed(fit) <= 8.0 < composed(fit + 1)


# --- the search: what each README command plans (no Ray) ---------------------------------------

SEARCH_COMMANDS = {
    "default": ".venv/bin/python search/run.py --space fmnist_quick",
    "budget-asha": ".venv/bin/python search/run.py --space fmnist_quick --target-epsilon 8 "
    "--num-samples 6 --scheduler asha",
    "random-stopping": ".venv/bin/python search/run.py --space fmnist_quick --target-epsilon 8 "
    "--num-samples 6 --search-accounting random-stopping",
    "scatternet": ".venv/bin/python search/run.py --space fmnist_scatternet --target-epsilon 3 "
    "--num-samples 4 --search-accounting random-stopping --set batch_size=8192 --set epochs=40",
    "frontier": ".venv/bin/python search/run.py --space fmnist_frontier --num-samples 12 "
    "--budgets 1,2,4,8,16",
}


@needs_fashion_mnist
@pytest.mark.parametrize("name", [*SEARCH_COMMANDS, "quickstart"])
def test_readme_searches_plan_what_their_comments_say(name, tmp_path, monkeypatch):
    """Each README search as written, on the real Fashion-MNIST, up to its plan: what run.py
    decides and prints before the first trial (the trials themselves run, on tiny data, in
    tests/search/). "quickstart": the search of the README's first command, read from it."""
    import accounting
    from search.arguments import build_parser
    from search.run import _new_plan

    if name == "quickstart":
        command = readme_quickstart().split("&&")[-1].strip()
    else:
        command = in_readme(SEARCH_COMMANDS[name])
    words = shlex.split(command)
    assert words[:2] == [".venv/bin/python", "search/run.py"], command
    monkeypatch.chdir(tmp_path)  # the default --storage-path, runs/, is relative
    plan, directory = _new_plan(build_parser().parse_args(words[2:]))
    privacy = plan.privacy
    assert plan.space == words[words.index("--space") + 1]
    assert directory.parent == tmp_path / "runs" and not any(tmp_path.iterdir())  # unwritten
    epsilon = privacy.epsilon()
    if name == "default":  # 8 trials, each at its own ε = 3, the search ε composes them
        assert privacy.mode == "composition" and privacy.num_trials == 8
        assert privacy.budget_epsilon is None and privacy.noise_multiplier is None
        assert plan.searcher == "optuna" and plan.scheduler == "fifo"
        for mechanism in privacy.candidates:
            trial = accounting.epsilon(
                accounting.dp_sgd_event(
                    sample_rate=mechanism.sample_rate,
                    noise_multiplier=mechanism.noise_multiplier,
                    steps=mechanism.steps,
                ),
                delta=privacy.delta,
            )
            assert trial <= 3.0
        assert 3.0 < epsilon <= 8 * 3.0
    elif name == "budget-asha":  # σ planned so that the whole search meets ε = 8
        assert privacy.mode == "composition" and privacy.num_trials == 6
        assert plan.scheduler == "asha" and privacy.noise_multiplier is not None
        assert 7.9 <= epsilon <= 8.0
    elif name in ("random-stopping", "scatternet"):
        budget = 8.0 if name == "random-stopping" else 3.0
        assert privacy.mode == "random-stopping" and privacy.trials_mean == (
            6 if name == "random-stopping" else 4
        )
        assert plan.searcher == "random" and plan.scheduler == "fifo"
        assert privacy.trials_choice.startswith("auto chose K ~ ")  # the least-noise law
        assert budget - 0.1 <= epsilon <= budget
        if name == "scatternet":
            assert plan.fixed["batch_size"] == 8192 and plan.fixed["epochs"] == 40
    elif name == "frontier":  # each trial targets its own ε; the budgets declared up front
        assert privacy.num_trials == 12 and privacy.noise_multiplier is None
        assert privacy.budgets == (1.0, 2.0, 4.0, 8.0, 16.0)
    else:
        assert privacy.num_trials >= 1 and epsilon > 0


@pytest.mark.slow  # a local Ray
def test_the_readme_quickstart_search_runs_on_tiny_data(tmp_path):
    """The search of the README's first command, read from it, on tiny synthetic data (2
    trials of one epoch) in a temporary --storage-path: it ends with its DP release."""
    command = readme_quickstart().split("&&")[-1].strip()
    words = shlex.split(command)
    assert words[:2] == [".venv/bin/python", "search/run.py"], command
    result = run_search(
        *words[2:], *TINY[2:], "--num-samples", "2", "--set", "epochs=1",
        "--storage-path", str(tmp_path), "--name", "quickstart", "--num-cpus", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    directory = tmp_path / "quickstart"
    assert "## DP release" in result.stdout
    assert len(pd.read_csv(directory / "trials.csv")) == 2
    for name in ("search.json", "privacy_ledger.jsonl", "pareto.md", "optuna_journal.log"):
        assert (directory / name).stat().st_size > 0, name


# --- the Optuna dashboard ------------------------------------------------------------------------


def test_readme_dashboard_extra_is_installed_by_dev():
    """`.venv/bin/pip install -e ".[dashboard]"` is not run (it needs the network and would
    reinstall the shared venv): what it installs, `.[dev]` installs, so it is here."""
    from packaging.requirements import Requirement

    in_readme('.venv/bin/pip install -e ".[dashboard]"')
    requirements = [Requirement(r) for r in metadata.requires("dp-tune")]
    extras = {
        extra: [r for r in requirements if r.marker and r.marker.evaluate({"extra": extra})]
        for extra in ("dashboard", "dev")
    }
    assert extras["dashboard"]
    assert any(r.name == "dp-tune" and "dashboard" in r.extras for r in extras["dev"])
    for requirement in extras["dashboard"]:
        installed = metadata.version(requirement.name)
        assert requirement.specifier.contains(installed, prereleases=True), requirement
    assert (Path(sys.executable).parent / "optuna-dashboard").exists()


# --- tables and plots from experiment directories ----------------------------------------------

EXPORT_COMMANDS = {
    "markdown": ".venv/bin/python results/export.py runs/NAME",
    "latex-plot": ".venv/bin/python results/export.py runs/A runs/B --format latex "
    "--out frontier.tex --plot frontier.png",
    "csv-budgets": ".venv/bin/python results/export.py runs/NAME --format csv "
    "--table search-adjusted --budgets 1,2,4,8",
}


@pytest.fixture
def experiments(tmp_path):
    """runs/NAME, runs/A and runs/B as a finished search leaves them (hand-made)."""
    make_experiment(tmp_path / "runs" / "NAME", [CHEAP_1, COSTLY, CHEAP_2], searcher="random")
    make_experiment(tmp_path / "runs" / "A", [CHEAP_1, COSTLY], searcher="random")
    make_experiment(tmp_path / "runs" / "B", [dict(CHEAP_2, id="x")], searcher="random")
    return tmp_path


@pytest.mark.parametrize("name", EXPORT_COMMANDS)
def test_readme_export_commands(name, experiments):
    result = run_in(experiments, argv(in_readme(EXPORT_COMMANDS[name])), timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    if name == "markdown":
        assert result.stdout.startswith("# Accuracy vs ε")
        assert "## DP release" in result.stdout and "Search-adjusted frontier" in result.stdout
    elif name == "latex-plot":
        tex = (experiments / "frontier.tex").read_text()
        assert "\\begin{tabular}" in tex and "\\toprule" in tex
        assert "A" in tex and "B" in tex
        assert (experiments / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        table = pd.read_csv(StringIO(result.stdout))
        assert set(table["table"]) == {"search-adjusted"}
        assert list(table["budget"]) == [1.0, 2.0, 4.0, 8.0]
        assert (table["search_epsilon"] <= table["budget"]).all()


def test_readme_notebook_block(experiments, monkeypatch):
    """The README's ```python block, executed as written in a folder holding runs/A and
    runs/B."""
    monkeypatch.chdir(experiments)
    namespace: dict = {}
    exec(compile(readme_notebook(), "README.md", "exec"), namespace)
    report = namespace["report"]
    for table in (report.adjusted, report.frontier, report.trials):
        assert isinstance(table, pd.DataFrame) and not table.empty
    assert sorted(report.adjusted["budget"].unique()) == [1, 2, 4, 8]
    assert (experiments / "frontier.png").stat().st_size > 0
