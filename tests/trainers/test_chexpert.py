"""CheXpert: the directory format, labels, groups, ROC-AUC, and a search that maximises AUC."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import results
from trainers import TrainerError, make_config
from trainers.chexpert import LABELS, write_synthetic_chexpert
from trainers.data import load_splits
from trainers.evaluation import roc_auc


def brute_force_auc(scores, targets):
    positives = [s for s, t in zip(scores, targets, strict=True) if t]
    negatives = [s for s, t in zip(scores, targets, strict=True) if not t]
    if not positives or not negatives:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(-3, 3), st.booleans()), max_size=30))
def test_auc_matches_the_pairwise_definition(pairs):
    scores = [float(s) for s, _ in pairs]  # small integers: many ties
    targets = [t for _, t in pairs]
    got = roc_auc(torch.tensor(scores), torch.tensor(targets, dtype=torch.float32))
    expected = brute_force_auc(scores, targets)
    assert got == pytest.approx(expected) if expected is not None else got is None


@pytest.fixture(scope="module")
def chexpert_dir(tmp_path_factory):
    return write_synthetic_chexpert(tmp_path_factory.mktemp("chexpert"), n_train=60, n_valid=20)


def config_for(directory, **overrides):
    values = dict(dataset="chexpert", data_dir=str(directory), image_size=32,
                  validation_fraction=0.1, delta=1e-5, model="test_resnet")  # fmt: skip
    values.update(overrides)
    return make_config(values)


def frontal_rows(directory, split):
    with open(directory / f"{split}.csv") as f:
        return [r for r in csv.DictReader(f) if r["Frontal/Lateral"] == "Frontal"]


def test_loads_frontal_views_as_multilabel_with_groups(chexpert_dir):
    splits = load_splits(config_for(chexpert_dir))
    rows = frontal_rows(chexpert_dir, "train")
    assert splits.multilabel and splits.class_names == LABELS and splits.num_classes == 5
    assert len(splits.train) + len(splits.validation) == len(rows)  # lateral views skipped
    assert len(splits.test) == len(frontal_rows(chexpert_dir, "valid"))
    assert splits.train.tensors[0].shape[1:] == (1, 32, 32)
    assert splits.group_names == ("Female", "Male", "Unknown")
    assert splits.test_groups is not None and len(splits.test_groups) == len(splits.test)


def test_uncertain_labels_follow_the_policy(chexpert_dir):
    rows = frontal_rows(chexpert_dir, "valid")
    uncertain = [(i, k) for i, r in enumerate(rows) for k, n in enumerate(LABELS) if r[n] == "-1.0"]
    blank = [(i, k) for i, r in enumerate(rows) for k, n in enumerate(LABELS) if r[n] == ""]
    assert uncertain and blank
    ones = load_splits(config_for(chexpert_dir, uncertain_label="ones")).test.tensors[1]
    zeros = load_splits(config_for(chexpert_dir, uncertain_label="zeros")).test.tensors[1]
    assert all(ones[i, k] == 1 and zeros[i, k] == 0 for i, k in uncertain)
    assert all(ones[i, k] == 0 for i, k in blank)


def test_age_and_race_groups(chexpert_dir, tmp_path):
    assert load_splits(config_for(chexpert_dir, group_attribute="age")).group_names[0] == "<40"
    races = load_splits(config_for(chexpert_dir, group_attribute="race"))
    assert set(races.test_groups.tolist()) <= set(range(len(races.group_names)))
    # Without a Race column race groups are refused with a sentence saying what to do.
    for split in ("train", "valid"):
        with open(chexpert_dir / f"{split}.csv") as f:
            rows = list(csv.DictReader(f))
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, [c for c in rows[0] if c != "Race"])
            writer.writeheader()
            writer.writerows({k: v for k, v in r.items() if k != "Race"} for r in rows)
    (tmp_path / "CheXpert-v1.0-small").symlink_to(chexpert_dir / "CheXpert-v1.0-small")
    with pytest.raises(TrainerError, match="Race column"):
        load_splits(config_for(tmp_path, group_attribute="race"))


def test_missing_directory_says_how_to_provide_it(tmp_path):
    with pytest.raises(TrainerError, match="data_dir"):
        load_splits(make_config({"dataset": "chexpert"}))
    with pytest.raises(TrainerError, match="not a CheXpert directory"):
        load_splits(config_for(tmp_path))


def test_training_reports_auc_per_finding_and_group(chexpert_dir):
    from trainers import train

    final = train(config_for(chexpert_dir, batch_size=16, epochs=1, target_epsilon=8.0))
    # DP validation of multi-label data: noisy per-finding counts (sensitivity √5), released as
    # their mean accuracy; AUC (no data-independent sensitivity) only on the public test split.
    assert final["val_dp"] and 0.0 <= final["val_accuracy"] <= 1.0 and "val_auc" not in final
    assert 0.0 <= final["test_auc"] <= 1.0 and len(final["test_label_auc"]) == 5
    assert set(final["test_group_auc"]) == {"Female", "Male", "Unknown"}
    assert final["test_group_auc"]["Unknown"] is None  # no example: no AUC, not a zero


@pytest.mark.slow  # a real Ray search
def test_search_maximises_auc_and_results_report_group_auc(chexpert_dir, tmp_path):
    from tests.helpers import search

    result = search(
        "--space", "chexpert", "--set", f"data_dir={chexpert_dir}", "--set", "model=test_resnet",
        "--set", "pretrained=false", "--set", "image_size=32", "--set", "validation_fraction=0.1",
        "--set", "batch_size=16", "--set", "delta=1e-5", "--set", "epochs=1",
        "--num-samples", "2", "--storage-path", str(tmp_path), "--name", "cx", "--num-cpus", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    directory = tmp_path / "cx"
    # With DP validation the search selects on the noisy per-finding accuracy; the release
    # reports test AUC per group (the test split is public).
    assert json.loads((directory / "search.json").read_text())["privacy"]["metric"] == (
        "val_accuracy"
    )
    experiment = results.load_experiment(directory)
    assert experiment.metric == "val_accuracy"
    assert experiment.trials["val_score"].equals(experiment.trials["val_accuracy"])
    assert "test_worst_group_auc" in experiment.trials
    markdown = (directory / "pareto.md").read_text()
    assert "test AUC" in markdown and "worst group AUC" in markdown


def test_public_validation_keeps_auc_as_the_search_metric(chexpert_dir, tmp_path):
    from search.plan import make_plan

    public = write_synthetic_chexpert(tmp_path / "public", n_train=20, n_valid=4, seed=1)
    overrides = {"data_dir": str(chexpert_dir), "model": "test_resnet", "pretrained": False,
                 "image_size": 32, "batch_size": 16, "epochs": 1, "validation": "public",
                 "validation_data": str(public)}  # fmt: skip
    plan = make_plan(
        space_name="chexpert", overrides=overrides, num_samples=2, budget_epsilon=None,
        delta=1e-5, mode="composition", trials_distribution="poisson", eta=None,
        searcher="optuna", scheduler="fifo", seed=0,
    )  # fmt: skip
    assert plan.metric == "val_auc" and plan.privacy.validation == "public"
    assert not plan.releases_validation and plan.privacy.val_noise_multiplier is None
