"""One trial under Ray Tune: the trainer, its checkpoints, and its lines in the privacy ledger.

The ledger is written from inside the trial as it runs, fsynced, and ahead of each epoch
(its steps are recorded before it touches data), so whatever happens to the driver or to the
trial's own process, every executed step is on disk.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import torch

import accounting
from accounting import LedgerRecord, PrivacyLedger
from trainers import make_config, plan_mechanism, planned_steps, train

CHECKPOINT_FILE = "state.pt"
RESULT_KEYS_DROPPED = (
    "val_class_accuracy",
    "test_class_accuracy",
    "val_group_accuracy",
    "test_group_accuracy",
    "val_label_auc",
    "test_label_auc",
    "val_group_auc",
    "test_group_auc",
)
"""Lists and dicts Tune would flatten into one column per class or group; kept as JSON
strings instead (the results layer parses them back)."""


def run_trial(config: dict[str, Any], *, experiment_dir: str, plan: dict) -> None:
    """Tune function trainable: train one configuration, report every epoch.

    `plan`: {"privacy": the search's SearchPrivacyPlan as a dict, "n_train": …,
    "releases_validation": …}: what the trial's reservation is checked against."""
    from ray import tune

    context = tune.get_context()
    trial_id = context.get_trial_id()
    # A trial uses the CPUs Tune gave it: torch would otherwise start a thread per core in
    # every trial, and concurrent trials would fight over the same cores.
    cpus = context.get_trial_resources().required_resources.get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    ledger = PrivacyLedger(Path(experiment_dir) / accounting.LEDGER_FILENAME)
    # Head-only trials share backbone features through the experiment directory.
    config = {"feature_cache_dir": str(Path(experiment_dir) / "feature_cache"), **config}
    train_config = make_config(config)
    attempt = uuid.uuid4().hex[:12]

    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, weights_only=True)

    if not _reserve(ledger, trial_id, attempt, train_config, plan, state):
        return  # the plan cannot hold this trial: it never starts (and spends nothing)

    pending: dict[str, Any] = {}
    last: dict[str, Any] = {}
    claimed: dict[str, Any] = {}

    def before_epoch(upcoming: dict[str, Any]) -> None:
        # Written ahead: the epoch's steps count before it runs, so a kill mid-epoch (no
        # Python left to record anything) still leaves them in the ledger.
        claimed.update(upcoming)
        ledger.append(_record(trial_id, attempt, upcoming, train_config, "running"))

    def save_state(trial_state: dict[str, Any]) -> None:
        pending["state"] = trial_state

    def report(metrics: dict[str, Any]) -> None:
        last.update(metrics)
        status = "completed" if metrics["done"] else "running"
        ledger.append(_record(trial_id, attempt, metrics, train_config, status))
        with tempfile.TemporaryDirectory() as directory:
            torch.save(pending.pop("state"), Path(directory) / CHECKPOINT_FILE)
            tune.report(_for_tune(metrics), checkpoint=tune.Checkpoint.from_directory(directory))

    try:
        train(train_config, report, state=state, save_state=save_state, before_epoch=before_epoch)
    except SystemExit:
        # Tune ends a trial it stops (ASHA, a stopper, the final result) with sys.exit(0)
        # inside `tune.report`; the steps already reported stay counted.
        if last and not last["done"]:
            ledger.append(_record(trial_id, attempt, last, train_config, "stopped"))
        raise
    except BaseException:
        # The epoch in flight counts whole (its steps were claimed before it ran).
        ran = max((last, claimed), key=lambda m: m.get("steps", -1))
        if ran:
            ledger.append(_record(trial_id, attempt, ran, train_config, "failed"))
        raise


def _record(trial_id, attempt, metrics, config, status) -> LedgerRecord:
    return LedgerRecord(
        trial_id=trial_id,
        attempt=attempt,
        sample_rate=metrics["sample_rate"],
        noise_multiplier=metrics["noise_multiplier"],
        steps=metrics["steps"],
        start_steps=metrics["start_steps"],
        status=status,
        planned_steps=planned_steps(config, metrics["n_train"]),
        simulated=bool(metrics.get("tan_simulated", False)),
        val_noise_multiplier=metrics["val_noise_multiplier"],
        val_releases=metrics["val_releases"],
        start_val_releases=metrics["start_val_releases"],
        planned_val_releases=metrics["planned_val_releases"],
    )


def _reserve(ledger, trial_id, attempt, config, plan, state) -> bool:
    """Reserve this attempt's planned steps and validation releases in the ledger before it
    touches any data, if the search's privacy plan admits them (its Rényi filter) together
    with everything the ledger already holds: executed steps, and the remaining plans of
    running trials. Check and append are one atomic step under the ledger's lock, so a retry
    that re-runs steps, or concurrent trials, can never push the search past its plan."""
    privacy = accounting.SearchPrivacyPlan.from_dict(plan["privacy"])
    mechanism = plan_mechanism(config, plan["n_train"])
    restored_steps = 0 if state is None else state["steps"]
    restored_releases = 0 if state is None else state.get("val_releases", 0)
    releases = plan["releases_validation"] and config.validation == "dp"
    start = LedgerRecord(
        trial_id=trial_id,
        attempt=attempt,
        sample_rate=mechanism.sample_rate,
        noise_multiplier=mechanism.noise_multiplier,
        steps=restored_steps,
        start_steps=restored_steps,
        status="running",
        planned_steps=mechanism.steps,
        simulated=mechanism.simulated,
        val_noise_multiplier=config.val_noise_multiplier if releases else 0.0,
        val_releases=restored_releases,
        start_val_releases=restored_releases,
        planned_val_releases=mechanism.epochs if releases else 0,
    )

    def fits(records) -> bool:
        return privacy.admits(accounting.reduce_ledger(records, reserve=True))

    if ledger.reserve(start, fits):
        return True
    ledger.append(
        dataclasses.replace(
            start,
            status="stopped",
            planned_steps=restored_steps,
            planned_val_releases=restored_releases,
        )  # fmt: skip
    )
    return False


def _for_tune(metrics: dict[str, Any]) -> dict[str, Any]:
    import ray

    return {
        **tune_metrics(metrics),
        "node_id": ray.get_runtime_context().get_node_id(),
        "pid": os.getpid(),
    }


def tune_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A trainer report as Tune receives it (what Tune, Optuna, ASHA and the release choice
    can see): lists and dicts as JSON strings, ε finite or ∞."""
    import json

    clean = {k: v for k, v in metrics.items() if k not in RESULT_KEYS_DROPPED}
    for key in RESULT_KEYS_DROPPED:
        if key in metrics:
            clean[key] = json.dumps(metrics[key])
    clean["epsilon"] = metrics["epsilon"] if math.isfinite(metrics["epsilon"]) else float("inf")
    return clean
