"""An experiment directory → one pandas row per trial.

Sources, in the order they are trusted:
- `search.json`: the search's privacy plan (`accounting.SearchPrivacyPlan`: δ, mode, the
  worst case, validation noise, declared budgets), the source of the released ε. Required.
- `privacy_ledger.jsonl`: every trial's executed mechanism, hence its ε, and its status. The
  only source of what was spent: a trial Tune knows but the ledger does not gets ε = ∞.
- Tune's trial folders (`*/result.json`, `*/params.json`): configuration and metrics.
- `trials.csv` (written at the end of a search): metrics of trials whose folders are gone.
- The Optuna journal (`optuna_journal.log`): each trial's Optuna number and state.

Damaged or partial directories load with warnings that name what is missing
(`Experiment.warnings`, also logged); only a missing plan or a damaged ledger middle line
(the ε could no longer be trusted) is an error.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

import accounting
from accounting import LedgerError, LedgerRecord
from results.fairness import add_fairness_columns

log = logging.getLogger(__name__)

TRIALS_FILENAME = "trials.csv"
OPTUNA_JOURNAL = "optuna_journal.log"
EPSILON_DIGITS = 3
"""ε is reported rounded *up* to this many decimals (never down)."""


class ExperimentError(ValueError):
    """An experiment directory that cannot be loaded; the message says what to do."""


@dataclass
class Experiment:
    """One search: its privacy plan, its ledger and one row per trial (`trials`)."""

    path: Path
    privacy: accounting.SearchPrivacyPlan
    records: list[LedgerRecord]
    trials: pd.DataFrame
    warnings: list[str] = field(default_factory=list)
    name: str = ""
    """How tables name it (its folder's name; its path when names clash)."""

    def __post_init__(self) -> None:
        self.name = self.name or self.path.name
        self.accounts = accounting.reduce_ledger(self.records)

    @property
    def delta(self) -> float:
        return float(self.privacy.delta)

    @property
    def mode(self) -> str:
        return self.privacy.mode

    @property
    def metric(self) -> str:
        """The validation score the search selected on."""
        return self.privacy.metric

    @property
    def adaptive(self) -> bool:
        """Whether a trial's configuration or fate can depend on other trials' results."""
        return self.privacy.adaptive

    @property
    def release_plan(self) -> accounting.SearchPrivacyPlan:
        """The plan results account with: a search run with accounting `none` is composed
        here, so results always show the ε that covers the search."""
        if self.mode != "none":
            return self.privacy
        return dataclasses.replace(self.privacy, mode="composition")

    def search_epsilon(self) -> accounting.SearchEpsilon:
        """The ε of releasing this search's selected model: the plan's (fixed before the
        search), unless the ledger shows more was spent."""
        return self.release_plan.search_epsilon(self.accounts)


def load_experiment(path: str | Path) -> Experiment:
    """Load one experiment directory (see the module docstring for what is read)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ExperimentError(f"{path} is not a directory; pass an experiment directory.")
    warnings: list[str] = []
    privacy = _load_plan(path)
    records = _load_ledger(path, warnings)
    tune_rows = _load_tune_results(path, warnings)
    trials = _trial_table(path, privacy, records, tune_rows, warnings)
    _add_optuna(path, trials, warnings)
    trials = add_fairness_columns(trials)
    experiment = Experiment(
        path=path, privacy=privacy, records=records, trials=trials, warnings=warnings
    )
    if privacy.legacy:
        warnings.append(
            "search.json predates privacy plans with a worst case: its ε is recomputed from the "
            "ledger, so it depends on what the search did, and its validation scores were exact"
        )
    if experiment.search_epsilon().exceeded:
        warnings.append(
            "the ledger shows more spent than the plan allowed; the search ε shown covers the "
            "ledger (larger than planned)"
        )
    for message in warnings:
        log.warning("%s: %s", path.name, message)
    return experiment


def load_experiments(paths: Iterable[str | Path]) -> list[Experiment]:
    experiments = [load_experiment(p) for p in paths]
    names = [e.name for e in experiments]
    if len(set(names)) != len(names):
        # Trials are keyed by (experiment, trial_id): name them by their full paths instead.
        for experiment in experiments:
            experiment.name = str(experiment.path)
            experiment.trials["experiment"] = experiment.name
    return experiments


# --- sources --------------------------------------------------------------------------------


def _load_plan(path: Path) -> accounting.SearchPrivacyPlan:
    try:
        return accounting.SearchPrivacyPlan.load(path)
    except accounting.AccountingError as error:
        raise ExperimentError(str(error)) from None


def _load_ledger(path: Path, warnings: list[str]) -> list[LedgerRecord]:
    ledger = path / accounting.LEDGER_FILENAME
    if not ledger.exists():
        warnings.append(
            f"no privacy ledger ({accounting.LEDGER_FILENAME}): every trial's ε is unknown (∞)"
        )
        return []
    torn = _TornLineCounter()
    logging.getLogger("accounting.ledger").addHandler(torn)
    try:
        records = accounting.read_ledger(ledger)
    except LedgerError as error:
        raise ExperimentError(str(error)) from None
    finally:
        logging.getLogger("accounting.ledger").removeHandler(torn)
    for message in torn.messages:
        warnings.append(f"{message} (that report's steps are not counted)")
    return records


class _TornLineCounter(logging.Handler):
    """Collects the ledger reader's warnings about torn lines into the experiment's warnings."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _load_tune_results(path: Path, warnings: list[str]) -> dict[str, dict]:
    """trial_id → {"config": …, metrics of the last parseable report, "failed": bool}."""
    rows: dict[str, dict] = {}
    for folder in sorted(p for p in path.iterdir() if p.is_dir()):
        result_file = folder / "result.json"
        if not result_file.exists() and not (folder / "params.json").exists():
            continue  # not a trial folder (Ray's own state, a checkpoint store)
        last, damaged = None, 0
        if result_file.exists():
            for line in result_file.read_text(errors="replace").splitlines():
                if not line.strip():
                    continue
                try:
                    last = json.loads(line)
                except ValueError:
                    damaged += 1
        if damaged:
            warnings.append(f"{folder.name}/result.json: {damaged} unreadable line(s) skipped")
        failed = (folder / "error.txt").exists()
        if last is None:
            warnings.append(f"trial folder {folder.name} has no results (it never reported)")
            # Its configuration is still known: keep it (a folder with reports wins).
            trial_id = _trial_id_from_folder(folder.name)
            config = _read_json(folder / "params.json")
            if trial_id and isinstance(config, dict) and trial_id not in rows:
                rows[trial_id] = {"config": config, "failed": failed, "never_reported": True}
            continue
        trial_id = str(last.get("trial_id") or folder.name)
        config = last.get("config")
        if not isinstance(config, dict):
            config = _read_json(folder / "params.json") or {}
        rows[trial_id] = {**last, "config": config, "failed": failed}
    return rows


# Tune names a trial's folder "<trainable>_<trial id>_<index>_<config>_<date>"; a trial id is
# the experiment's hex prefix and a five-digit counter.
_TRIAL_FOLDER = re.compile(r"^.+?_([0-9a-f]+_\d{5})_\d+_")


def _trial_id_from_folder(name: str) -> str | None:
    match = _TRIAL_FOLDER.match(name)
    return match.group(1) if match else None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# --- the table ------------------------------------------------------------------------------

METRIC_COLUMNS = (
    "val_accuracy", "val_loss", "test_accuracy", "test_loss", "val_class_accuracy",
    "test_class_accuracy", "val_group_accuracy", "test_group_accuracy", "val_auc", "test_auc",
    "val_label_auc", "test_label_auc", "val_group_auc", "test_group_auc", "epoch", "node_id",
    "tan_simulated", "val_dp", "val_public", "val_examples", "reproducible",
)  # fmt: skip
"""Metrics taken from a trial's last report."""
BASE_COLUMNS = (
    "experiment", "trial_id", "status", "trial_epsilon", "steps", "sample_rate",
    "noise_multiplier", "first_report_time", "end_time", "val_accuracy", "test_accuracy",
)  # fmt: skip
TEXT_COLUMNS = ("experiment", "trial_id", "status")
LIST_COLUMNS = ("val_class_accuracy", "test_class_accuracy", "val_label_auc", "test_label_auc")
DICT_COLUMNS = ("val_group_accuracy", "test_group_accuracy", "val_group_auc", "test_group_auc")


def _trial_table(path, privacy, records, tune_rows, warnings) -> pd.DataFrame:
    accounts = accounting.reduce_ledger(records)
    ids = sorted(set(accounts) | set(tune_rows))
    fallback = _load_trials_csv(path, warnings)

    rows = []
    for trial_id in ids:
        tune = tune_rows.get(trial_id, {})
        row: dict = {"experiment": path.name, "trial_id": trial_id}
        account = accounts.get(trial_id)
        if account is not None:
            # RDP, as the search accounts (training and validation parts in parallel).
            row["trial_epsilon"] = account.curve.epsilon(privacy.delta)
            row["status"] = account.status
        else:
            warnings.append(
                f"trial {trial_id} has results but no privacy-ledger records: its ε is unknown "
                "and counted as ∞"
            )
            row["trial_epsilon"] = math.inf
            row["status"] = "failed" if tune.get("failed") else _tune_status(tune)
        last = account.most_steps if account else None
        row.update(
            steps=last.steps if last else tune.get("steps"),
            sample_rate=last.sample_rate if last else tune.get("sample_rate"),
            noise_multiplier=last.noise_multiplier if last else tune.get("noise_multiplier"),
            val_releases=last.val_releases if last else tune.get("val_releases"),
            start_time=account.first_time if account else math.nan,
            first_report_time=account.first_report_time if account else math.nan,
            end_time=account.end_time if account else math.nan,
        )
        for key, value in (tune.get("config") or {}).items():
            row[f"config/{key}"] = value
        for column in METRIC_COLUMNS:
            if column in tune:
                row[column] = tune[column]
        if "val_accuracy" not in row and "val_auc" not in row and trial_id in fallback:
            row.update(fallback[trial_id])
        reported = bool(tune) and not tune.get("never_reported")
        if not reported and trial_id not in fallback and row["status"] != "stopped":
            warnings.append(f"trial {trial_id} is in the ledger but has no results")
        rows.append(row)

    trials = pd.DataFrame(rows)
    if trials.empty:
        warnings.append("no trials: the search has not run any")
    # Every table has these, so later steps need no special case for an empty or a
    # validation-less search.
    for column in BASE_COLUMNS:
        if column not in trials:
            trials[column] = pd.Series(dtype=object if column in TEXT_COLUMNS else float)
    trials["trial_epsilon"] = trials["trial_epsilon"].astype(float)
    # Reported ε rounds up: trials calibrated to one target differ only in far digits and
    # should tie on the frontier instead of all appearing on it.
    trials["reported_epsilon"] = trials["trial_epsilon"].map(
        lambda e: accounting.round_up(e, EPSILON_DIGITS) if math.isfinite(e) else e
    )
    trials["private"] = trials["trial_epsilon"].map(math.isfinite)
    for column in ("val_accuracy", "test_accuracy", "val_loss", "test_loss", "val_auc",
                   "test_auc"):  # fmt: skip
        if column in trials:
            trials[column] = pd.to_numeric(trials[column], errors="coerce")
    # The search's own metric, under one name the frontiers use whatever it is.
    metric = privacy.metric
    for split in ("val", "test"):
        source = metric.replace("val_", f"{split}_", 1)
        trials[f"{split}_score"] = trials[source] if source in trials else float("nan")
    for column in LIST_COLUMNS + DICT_COLUMNS:
        if column in trials:
            trials[column] = trials[column].map(_parse_structured)
    return trials


def _tune_status(tune: dict) -> str:
    if not tune or tune.get("never_reported"):
        return "failed"
    return "completed" if tune.get("done") else "stopped"


def _load_trials_csv(path: Path, warnings: list[str]) -> dict[str, dict]:
    csv = path / TRIALS_FILENAME
    if not csv.exists():
        return {}
    try:
        table = pd.read_csv(csv)
    except (OSError, ValueError, pd.errors.ParserError) as error:
        warnings.append(f"{TRIALS_FILENAME} is unreadable ({error}); ignored")
        return {}
    if "trial_id" not in table:
        warnings.append(f"{TRIALS_FILENAME} has no trial_id column; ignored")
        return {}
    keep = [c for c in METRIC_COLUMNS if c in table]
    return {
        str(row["trial_id"]): {c: row[c] for c in keep if not _missing(row[c])}
        for _, row in table.iterrows()
    }


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _parse_structured(value):
    """Lists and dicts that travelled through Tune or CSV as strings, back to objects."""
    if isinstance(value, (list, dict)) or _missing(value):
        return value
    if isinstance(value, np.ndarray):
        return value.tolist()
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        try:
            return ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return None


def _add_optuna(path: Path, trials: pd.DataFrame, warnings: list[str]) -> None:
    """Each trial's Optuna number and state, matched on the searched parameters."""
    journal = path / OPTUNA_JOURNAL
    if not journal.exists() or trials.empty:
        return
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = optuna.storages.JournalStorage(
            optuna.storages.journal.JournalFileBackend(str(journal))
        )
        studies = optuna.get_all_study_summaries(storage)
        study_trials = [
            t
            for s in studies
            for t in optuna.load_study(study_name=s.study_name, storage=storage).trials
        ]
    except Exception as error:  # noqa: BLE001 - a damaged journal must not stop the load
        warnings.append(f"{OPTUNA_JOURNAL} is unreadable ({type(error).__name__}); ignored")
        return
    numbers, states = [], []
    for _, row in trials.iterrows():
        match = next(
            (
                t
                for t in study_trials
                if t.params and all(row.get(f"config/{k}") == v for k, v in t.params.items())
            ),
            None,
        )
        numbers.append(match.number if match else None)
        states.append(match.state.name.lower() if match else None)
    trials["optuna_number"] = pd.array(numbers, dtype="Int64")
    trials["optuna_state"] = states
