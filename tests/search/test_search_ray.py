"""The search on real Ray clusters: accounting modes, budget, ledger, multi-node, dashboard,
resume after the driver is killed. Tiny synthetic data keeps each search to seconds."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

import accounting
from accounting.ledger import latest_status, read_ledger
from tests.helpers import TINY, assert_token_absent, search, search_epsilon

pytestmark = pytest.mark.slow  # real Ray clusters


def test_composition_search_with_budget_and_asha(tmp_path):
    result = search(
        *TINY, "--num-samples", "4", "--target-epsilon", "8", "--scheduler", "asha",
        "--storage-path", str(tmp_path), "--name", "comp", "--num-cpus", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    directory = tmp_path / "comp"
    assert_token_absent(result, directory)
    plan = json.loads((directory / "search.json").read_text())["privacy"]
    trials = pd.read_csv(directory / "trials.csv")
    records = read_ledger(directory)
    # The ledger covers every trial Tune ran, each with the planned σ.
    assert set(trials["trial_id"]) == {r.trial_id for r in records} and len(trials) == 4
    assert {r.noise_multiplier for r in records} == {plan["noise_multiplier"]}
    assert set(latest_status(records).values()) <= {"completed", "stopped"}
    # Every trial released one noisy validation score per epoch it ran, in the ledger.
    assert {r.val_noise_multiplier for r in records} == {20.0}
    # The budget holds: the released ε is the plan's, the ledger's spending is below it.
    release = search_epsilon(directory)
    spent = release.spent
    assert 0 < spent <= release.epsilon <= 8.0 and not release.exceeded
    assert "search ε = **" in result.stdout and "DP release" in result.stdout
    assert (directory / "pareto.csv").exists() and (directory / "optuna_journal.log").exists()
    assert list(directory.glob("dp_trial_*/events.out.tfevents.*"))  # TensorBoard logs kept
    markdown = (directory / "pareto.md").read_text()
    assert "analyst-only" in markdown and f"{accounting.round_up(spent, 3):g}" in markdown
    # The end of the search wrote every export; the search-adjusted table's largest budget
    # is the whole search's ε, and no row spends more than its budget.
    for name in ("pareto.tex", "results.json", "search_adjusted.csv", "frontier.png"):
        assert (directory / name).stat().st_size > 0, name
    adjusted = pd.read_csv(directory / "search_adjusted.csv")
    assert set(adjusted["budget"]) == {1, 2, 3, 4, 8}  # declared: the grid and ε = 3 per trial
    assert adjusted["declared"].all()
    assert (adjusted["search_epsilon"] <= adjusted["budget"]).all()


def test_random_stopping_draws_k_and_stays_within_budget(tmp_path):
    result = search(
        *TINY, "--num-samples", "3", "--target-epsilon", "6",
        "--search-accounting", "random-stopping", "--trials-distribution", "geometric",
        "--seed", "1", "--storage-path", str(tmp_path), "--name", "rs", "--num-cpus", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    directory = tmp_path / "rs"
    plan = json.loads((directory / "search.json").read_text())
    assert plan["search"]["searcher"] == "random" and plan["search"]["scheduler"] == "fifo"
    k = plan["privacy"]["num_trials"]
    # K is secret: drawn from the OS's randomness, kept in search.json, never printed.
    assert "K trials drawn secretly from geometric" in result.stdout
    assert f"K = {k}" not in result.stdout
    assert len({r.trial_id for r in read_ledger(directory)}) == k
    release = search_epsilon(directory)
    assert release.spent <= release.epsilon <= 6.0
    assert "only the best one released" in (directory / "pareto.md").read_text()


def test_scatternet_search_chooses_k_automatically_and_shares_one_feature_cache(tmp_path):
    """`search/run.py --space fmnist_scatternet` with random stopping and the default
    `--trials-distribution auto`, on tiny synthetic 28×28 data."""
    result = search(
        "--space", "fmnist_scatternet", "--set", "dataset=synthetic",
        "--set", "synthetic_examples=320", "--set", "synthetic_image_size=28",
        "--set", "validation_fraction=0.2", "--set", "batch_size=64", "--set", "epochs=2",
        "--set", "delta=1e-4", "--num-samples", "3", "--target-epsilon", "6",
        "--search-accounting", "random-stopping", "--storage-path", str(tmp_path),
        "--name", "scatter", "--num-cpus", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    directory = tmp_path / "scatter"
    plan = json.loads((directory / "search.json").read_text())["privacy"]
    assert plan["trials_choice"].startswith("auto chose K ~ ")
    assert f"Trials: {plan['trials_choice']}." in result.stdout
    assert plan["trials_distribution"] in accounting.TRIAL_DISTRIBUTIONS
    trials = {r.trial_id for r in read_ledger(directory)}
    assert len(trials) == plan["num_trials"]
    if trials:  # K may be 0 under Poisson K; otherwise the trials share one copy of the
        # features (computing them once under a lock: tests/trainers/test_frontends.py)
        assert len(list((directory / "feature_cache").glob("scatternet-*.pt"))) == 1
    release = search_epsilon(directory)
    assert release.spent <= release.epsilon <= 6.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dashboard_requires_the_token():
    import ray

    port = _free_port()
    context = ray.init(
        num_cpus=1, include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port
    )
    try:
        url = f"http://{context.dashboard_url}/api/jobs/"
        assert context.dashboard_url.startswith("127.0.0.1:")
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        deadline = time.monotonic() + 60
        while True:  # the dashboard's HTTP server comes up a moment after ray.init returns
            try:
                request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
                with urllib.request.urlopen(request, timeout=5) as response:
                    assert response.status == 200
                    json.loads(response.read())
                break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code in (401, 403)
    finally:
        ray.shutdown()


def test_trials_run_on_both_nodes_of_a_two_node_cluster(tmp_path):
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        result = search(
            *TINY, "--num-samples", "4", "--searcher", "random", "--set", "epochs=2",
            "--address", cluster.address, "--storage-path", str(tmp_path), "--name", "multi",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        trials = pd.read_csv(tmp_path / "multi" / "trials.csv")
        assert trials["node_id"].nunique() == 2
    finally:
        cluster.shutdown()


def test_live_privacy_metrics_are_recomputed_from_the_ledger(tmp_path):
    import ray

    from accounting.ledger import LedgerRecord, PrivacyLedger
    from search.live import SearchProgress
    from search.plan import SearchPlan

    privacy = accounting.SearchPrivacyPlan(
        mode="composition", delta=1e-5, num_trials=2, budget_epsilon=8.0, noise_multiplier=1.0,
        candidates=(accounting.Mechanism(sample_rate=0.01, noise_multiplier=1.0, steps=100),),
    )  # fmt: skip
    plan = SearchPlan(space="fmnist_quick", privacy=privacy, n_train=1000, searcher="random",
                      scheduler="fifo", seed=0)  # fmt: skip
    ledger = PrivacyLedger(tmp_path)
    for trial, status in (("a", "completed"), ("b", "running")):
        ledger.append(
            LedgerRecord(trial_id=trial, attempt="x", sample_rate=0.01, noise_multiplier=1.0,
                         steps=100, status=status)
        )  # fmt: skip
    ray.init(num_cpus=1, include_dashboard=False)
    try:
        callback = SearchProgress(plan, tmp_path, out=None)
        callback.on_trial_result(0, [], None, {"val_accuracy": 0.9})  # an epoch, not final
        callback.on_trial_complete(0, [], SimpleNamespace(last_result={"val_accuracy": 0.7}))
        values = callback.update()
    finally:
        ray.shutdown()
    expected = accounting.epsilon(
        accounting.dp_sgd_event(sample_rate=0.01, noise_multiplier=1.0, steps=200), delta=1e-5
    )
    assert values["epsilon_spent"] == pytest.approx(expected)
    assert values["budget_left"] == pytest.approx(privacy.epsilon() - expected)
    assert values["best_val_score"] == 0.7 and values["trials_finished"] == 1


def test_frontier_space_runs_multi_objective_optuna(tmp_path):
    # The space varies each trial's ε: Optuna optimises accuracy and ε together, and with no
    # budget each trial calibrates σ to its own target; the search ε composes them all.
    args = [a if a != "fmnist_quick" else "fmnist_frontier" for a in TINY]
    result = search(
        *args, "--num-samples", "4", "--set", "epochs=1", "--storage-path", str(tmp_path),
        "--name", "front", "--num-cpus", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    directory = tmp_path / "front"
    trials = pd.read_csv(directory / "trials.csv")
    assert len(trials) == 4
    # One trial at each ε the space offers comes first: 4 trials trace the whole frontier.
    assert sorted(trials["config/target_epsilon"]) == [1.0, 2.0, 4.0, 8.0]
    assert (trials["trial_epsilon"] <= trials["config/target_epsilon"] + 1e-9).all()
    plan = json.loads((directory / "search.json").read_text())["privacy"]
    assert plan["noise_multiplier"] is None  # no budget: σ per trial
    # The plan bounds the 4 mechanisms the space can run (its 4 ε targets at 1 epoch).
    assert len(plan["candidates"]) == 4
    release = search_epsilon(directory)
    assert release.epsilon >= release.spent > trials["trial_epsilon"].max()
    import optuna

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(directory / "optuna_journal.log"))
    )
    study = optuna.load_study(study_name="fmnist_frontier", storage=storage)
    assert len(study.directions) == 2  # accuracy and ε
    assert study.metric_names == ["val_accuracy", "epsilon"]  # not "Objective 0", "Objective 1"
    assert optuna_dashboard_objectives(directory / "optuna_journal.log") == study.metric_names
    # The results layer matches every Tune trial to its Optuna trial.
    import results

    loaded = results.load_experiment(directory).trials
    assert sorted(loaded["optuna_number"]) == [0, 1, 2, 3]
    assert set(loaded["optuna_state"]) == {"complete"}


def optuna_dashboard_objectives(journal: Path) -> list[str]:
    """The README's `optuna-dashboard runs/NAME/optuna_journal.log` (on a free port), asked
    over its HTTP API for the names it shows for the study's objectives."""
    port = _free_port()
    command = [str(Path(sys.executable).parent / "optuna-dashboard"), str(journal),
               "--port", str(port), "--host", "127.0.0.1"]  # fmt: skip
    dashboard = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/studies/0"
                with urllib.request.urlopen(url, timeout=5) as response:
                    return json.loads(response.read())["objective_names"]
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        dashboard.terminate()
        dashboard.wait(timeout=30)
