"""Evaluation and its metrics: accuracy, loss, per-class and per-group accuracy, ROC-AUC.

Only aggregates leave this module: no example or label is ever reported. `task_loss` is here
too, since training and evaluation must use one loss.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from trainers.config import TrainConfig
from trainers.data import is_multilabel

COUNTS = ("correct", "label_correct", "examples")
"""What `evaluate` returns for a noisy validation release, not reported as metrics."""


def evaluate_selected(model, splits, dataset, groups, prepare, config, ema) -> dict:
    """`evaluate` of the model a search would select: the EMA weights when there is an EMA."""

    def run() -> dict:
        return evaluate(
            model, dataset, prepare, config, num_classes=splits.num_classes, groups=groups,
            group_names=splits.group_names,
        )  # fmt: skip

    if ema is None:
        return run()
    with ema.swapped_in():
        return run()


def evaluate_split(split, model, splits, dataset, groups, prepare, config, ema) -> dict:
    """`split`-prefixed metrics of a public split: of the EMA weights when there is an EMA (and
    of the last iterate too, suffixed `_raw`, on request), else of the model."""

    def run() -> dict:
        metrics = evaluate(
            model, dataset, prepare, config, num_classes=splits.num_classes, groups=groups,
            group_names=splits.group_names,
        )  # fmt: skip
        return {k: v for k, v in metrics.items() if k not in COUNTS}

    if ema is None:
        return _prefixed(split, run())
    with ema.swapped_in():
        metrics = _prefixed(split, run())
    if config.ema_evaluate_raw:
        metrics.update(_prefixed(split, run(), suffix="_raw"))
    return metrics


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: TensorDataset,
    prepare,
    config: TrainConfig,
    *,
    num_classes: int,
    groups: torch.Tensor | None = None,
    group_names: tuple[str, ...] = (),
) -> dict:
    """Accuracy, mean loss, per-class accuracy and, when `groups` gives each example's group,
    per-group accuracy (`group_accuracy`: group name → accuracy; None for an empty group).

    Only aggregates leave this function: no example or label is ever reported.
    """
    if is_multilabel(dataset.tensors[1]):
        return _evaluate_multilabel(model, dataset, prepare, config, groups, group_names)
    model.eval()
    images, labels = dataset.tensors
    correct = torch.zeros(num_classes, dtype=torch.long)
    counts = torch.bincount(labels, minlength=num_classes)
    hits_all = torch.zeros(len(labels), dtype=torch.bool)
    loss_sum = 0.0
    for start in range(0, len(labels), config.eval_batch_size):
        x = prepare(images[start : start + config.eval_batch_size])
        y = labels[start : start + config.eval_batch_size].to(x.device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        hits = (logits.argmax(dim=1) == y).cpu()
        hits_all[start : start + len(hits)] = hits
        correct += torch.bincount(y.cpu()[hits], minlength=num_classes)[:num_classes]
    model.train()
    n = max(len(labels), 1)
    per_class = [int(c) / int(k) if k else None for c, k in zip(correct, counts, strict=True)]
    metrics = {
        "accuracy": float(correct.sum()) / n,
        "loss": loss_sum / n,
        "class_accuracy": per_class,
        "correct": int(correct.sum()),
        "examples": len(labels),
    }
    if groups is not None:
        size = torch.bincount(groups, minlength=len(group_names))
        right = torch.bincount(groups[hits_all], minlength=len(group_names))
        metrics["group_accuracy"] = {
            name: int(r) / int(k) if k else None
            for name, r, k in zip(group_names, right, size, strict=True)
        }
    return metrics


def task_loss(output: torch.Tensor, targets: torch.Tensor, reduction: str = "mean"):
    """Cross-entropy for class indices; for multi-label 0/1 targets, the binary cross-entropy
    summed over findings, so that a mean is over examples (Opacus's per-example scaling)."""
    if is_multilabel(targets):
        per_example = F.binary_cross_entropy_with_logits(output, targets, reduction="none").sum(1)
    else:
        per_example = F.cross_entropy(output, targets, reduction="none")
    if reduction == "none":
        return per_example
    return per_example.mean() if reduction == "mean" else per_example.sum()


@torch.no_grad()
def _evaluate_multilabel(model, dataset, prepare, config, groups, group_names) -> dict:
    """ROC-AUC per finding and their mean (`auc`), mean per-finding accuracy at p = 0.5, loss,
    and with groups each group's mean AUC over the findings it has both classes of."""
    model.eval()
    images, labels = dataset.tensors
    scores, loss_sum = [], 0.0
    for start in range(0, len(labels), config.eval_batch_size):
        x = prepare(images[start : start + config.eval_batch_size])
        y = labels[start : start + config.eval_batch_size].to(x.device)
        logits = model(x)
        loss_sum += task_loss(logits, y, reduction="sum").item()
        scores.append(logits.float().cpu())
    model.train()
    scores = torch.cat(scores) if scores else torch.zeros(0, labels.shape[1])
    per_label = [roc_auc(scores[:, k], labels[:, k]) for k in range(labels.shape[1])]
    hits = (scores > 0).float() == labels
    metrics = {
        "auc": _mean(per_label),
        "label_auc": per_label,
        "accuracy": float(hits.float().mean()) if len(labels) else 0.0,
        "loss": loss_sum / max(len(labels), 1),
        "label_correct": [int(c) for c in hits.sum(dim=0)],
        "examples": len(labels),
    }
    if groups is not None:
        metrics["group_auc"] = {
            name: _mean(
                [
                    roc_auc(scores[groups == g, k], labels[groups == g, k])
                    for k in range(labels.shape[1])
                ]
            )  # fmt: skip
            for g, name in enumerate(group_names)
        }
    return metrics


def roc_auc(scores: torch.Tensor, targets: torch.Tensor) -> float | None:
    """Area under the ROC curve: the probability that a random positive scores above a random
    negative (ties count half), from average ranks (Mann–Whitney U). None without both classes.
    """
    positive = targets > 0.5
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    values = scores.double().numpy()
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    while start < len(values):  # average ranks over ties
        end = start
        while end + 1 < len(values) and sorted_values[end + 1] == sorted_values[start]:
            end += 1
        ranks[order[start : end + 1]] = (start + end) / 2.0 + 1.0
        start = end + 1
    rank_sum = ranks[positive.numpy()].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _mean(values) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def _prefixed(prefix: str, values: dict, suffix: str = "") -> dict:
    return {f"{prefix}_{key}{suffix}": value for key, value in values.items()}
