"""What many test modules share: tiny configurations, the command-line runners, hand-made
experiment directories and the clipping reference. Fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import accounting
from accounting import LedgerRecord, PrivacyLedger, read_ledger

ROOT = Path(__file__).resolve().parents[1]


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


DELTA = 1e-5


N = 1000


TINY = [
    "--space", "fmnist_quick",
    "--set", "dataset=synthetic", "--set", "synthetic_examples=320",
    "--set", "validation_fraction=0.2", "--set", "batch_size=64", "--set", "delta=1e-4",
]  # fmt: skip


CHEAP_1 = dict(id="a", q=0.01, sigma=1.0, steps=100, status="completed", start=10, end=20, val=0.60)


COSTLY = dict(id="b", q=0.05, sigma=0.8, steps=300, status="completed", start=11, end=40, val=0.90)


CHEAP_2 = dict(id="c", q=0.01, sigma=1.0, steps=100, status="completed", start=30, end=50, val=0.70)


needs_fashion_mnist = pytest.mark.skipif(
    not (FASHION_MNIST / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST IDX files missing: apt-get install -y dataset-fashion-mnist "
    "(.ci/run installs them, so CI never skips this)",
)


def tiny(**overrides):
    """Keyword arguments of a `TrainConfig` for a seconds-long synthetic trial."""
    values = {
        "dataset": "synthetic",
        "synthetic_examples": 320,
        "synthetic_image_size": 16,
        "validation_fraction": 0.2,
        "model": "tramer_boneh_cnn",
        "batch_size": 64,
        "max_physical_batch_size": 32,
        "epochs": 2,
        "learning_rate": 0.5,
        "momentum": 0.9,
        "max_grad_norm": 1.0,
        "target_epsilon": 8.0,
        "delta": 1e-4,
    }
    values.update(overrides)
    return values


def fast_clipped(model, images, labels, views, clip):
    """The fast engine's per-example norms and clipped sums (flattened over every parameter)
    of one batch: what the clipping tests compare with `microbatch_gradients`."""
    import torch
    import torch.nn.functional as F

    from trainers.fast_clipping import FastClipper, forward_with_input_grad

    clipper = FastClipper(model, clip)
    output = forward_with_input_grad(model, images)
    losses = F.cross_entropy(output, labels.repeat_interleave(views), reduction="none")
    clipper.backward(losses, views)
    sums = clipper.take_sums()
    clipper.close()
    summed = torch.cat([sums.get(id(p), torch.zeros_like(p)).flatten() for p in model.parameters()])
    return clipper.last_norms, summed


def scaled_images(batch: int, views: int = 1, size: int = 16, channels: int = 3):
    """Random float64 images, rows at scales from 0.01 to 10: per-example gradient norms far
    below and far above any clip norm."""
    import torch

    scales = torch.logspace(-2, 1, batch * views, dtype=torch.float64).view(-1, 1, 1, 1)
    return torch.randn(batch * views, channels, size, size, dtype=torch.float64) * scales


def assert_matches_microbatch(model, images, labels, views: int = 1) -> None:
    """The fast engine's per-example norms and clipped sums of one batch equal the microbatch
    reference's, with the clip norm where it bites (the median norm, or half the only one);
    frozen parameters get nothing."""
    import copy

    import torch

    per_example = microbatch_gradients(copy.deepcopy(model), images, labels, views)
    norms = per_example.norm(dim=1)
    clip = float(norms.median()) if len(labels) > 1 else float(norms[0]) / 2
    got_norms, summed = fast_clipped(model, images, labels, views, clip)
    torch.testing.assert_close(got_norms, norms, rtol=1e-5, atol=1e-12)
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    trains = torch.cat([torch.full((p.numel(),), p.requires_grad) for p in model.parameters()])
    assert not summed[~trains].any()  # frozen: nothing clipped, nothing summed
    torch.testing.assert_close(summed[trains], (per_example * factors[:, None]).sum(0),
                               rtol=1e-5, atol=1e-10)  # fmt: skip


def microbatch_gradients(model, images, labels, views: int = 1):
    """The reference for every clipping test: each example's gradient from its own backward
    passes (the mean over its `views` rows i·K … i·K+K−1), flattened over the trainable
    parameters."""
    import torch
    import torch.nn.functional as F

    rows = []
    for i in range(len(labels)):
        grads = []
        for k in range(views):
            model.zero_grad()
            row = i * views + k
            F.cross_entropy(model(images[row : row + 1]), labels[i : i + 1]).backward()
            grads.append(
                torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
            )
        rows.append(torch.stack(grads).mean(0))
    return torch.stack(rows)


def run(*args, timeout=300):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def run_in(cwd, args, timeout=300) -> subprocess.CompletedProcess:
    """`args` (a full command line) run in `cwd`, as a user in that folder would."""
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def assert_one_sentence_error(result, fragment):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and fragment in lines[-1], result.stderr


def search(*args, timeout=420, env=None, **kwargs):
    """`python search/run.py ARGS` as a user runs it; `env` adds to this environment."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore", **(env or {})}
    return subprocess.run(
        [sys.executable, "search/run.py", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=timeout, env=env, **kwargs,
    )  # fmt: skip


def search_epsilon(directory: Path) -> accounting.SearchEpsilon:
    """The search's ε from its plan and its ledger alone (`spent`: what the ledger shows)."""
    plan = accounting.SearchPrivacyPlan.load(directory)
    return plan.search_epsilon(accounting.reduce_ledger(read_ledger(directory)))


def make_experiment(
    directory: Path,
    trials: list[dict],
    *,
    mode: str = "composition",
    searcher: str = "optuna",
    scheduler: str = "fifo",
    **plan_extra,
) -> Path:
    """An experiment directory as `search/run.py` leaves it, from trial descriptions:
    {id, q, sigma, steps, status, start (first report time), end, val, test, config…}."""
    directory.mkdir(parents=True)
    # The plan search/run.py writes: every mechanism a trial may run (here: the trials' own),
    # as many trials as ran, the declared budgets.
    candidates = sorted({(t["q"], t["sigma"], t["steps"]) for t in trials if t["sigma"] > 0})
    plan = accounting.SearchPrivacyPlan(**{
        "mode": mode, "delta": DELTA, "num_trials": max(len(trials), 1),
        "candidates": tuple(accounting.Mechanism(sample_rate=q, noise_multiplier=s, steps=n)
                            for q, s, n in candidates),
        "adaptive": not (searcher == "random" and scheduler == "fifo"),
        "validation": "dp", "val_noise_multiplier": 20.0, **plan_extra,
    })  # fmt: skip
    search = {"space": "hand_made", "n_train": N, "searcher": searcher, "scheduler": scheduler,
              "seed": 0, "fixed": {}}  # fmt: skip
    (directory / "search.json").write_text(
        json.dumps({"search": search, "privacy": plan.to_dict()})
    )
    ledger = PrivacyLedger(directory)
    for t in trials:
        common = dict(
            trial_id=t["id"], attempt="a1", sample_rate=t["q"], noise_multiplier=t["sigma"]
        )
        half = t["steps"] // 2
        ledger.append(LedgerRecord(**common, steps=half, status="running", time=t["start"]))
        ledger.append(LedgerRecord(**common, steps=t["steps"], status=t["status"], time=t["end"]))
        folder = directory / f"dp_trial_{t['id']}_lr=0.1"
        folder.mkdir()
        config = t.get("config", {"learning_rate": 0.1})
        (folder / "params.json").write_text(json.dumps(config))
        last = {
            "trial_id": t["id"], "done": t["status"] == "completed", "steps": t["steps"],
            "val_accuracy": t["val"], "test_accuracy": t.get("test", t["val"] - 0.01),
            "test_class_accuracy": json.dumps(t.get("classes", [0.9, 0.5])),
            "config": config,
        }  # fmt: skip
        if "groups" in t:
            last["test_group_accuracy"] = json.dumps(t["groups"])
        (folder / "result.json").write_text(json.dumps({"trial_id": t["id"]}) + "\n" +
                                            json.dumps(last) + "\n")  # fmt: skip
    return directory


def assert_token_absent(result, experiment_dir: Path) -> None:
    """The Ray token (a secret) is in none of a search's output: its stdout and stderr and
    every file of its experiment directory (called by a real search's test in
    tests/search/test_search_ray.py)."""
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    assert len(token) >= 16
    assert token not in result.stdout and token not in result.stderr
    for path in experiment_dir.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


# --- broken mechanisms, for audits that must find them (monkeypatch: pytest's fixture) -------


def break_noise(monkeypatch, factor: float) -> None:
    """The step adds factor·σ·C noise while the accountant is told σ."""
    import trainers.loop
    from trainers.steps import FastStep

    real = trainers.loop.make_step

    def make_step(config, **kwargs):
        step, engine = real(config, **kwargs)
        if isinstance(step, FastStep):
            step.noise_multiplier *= factor
        else:
            step.optimizer.noise_multiplier *= factor
        return step, engine

    monkeypatch.setattr(trainers.loop, "make_step", make_step)


def skip_clipping_of_largest_layer(monkeypatch) -> None:
    """Per-example clip factors are not applied to the largest layer's gradients (in both
    engines, for real examples and canaries alike): its per-example gradients are summed
    unclipped."""
    import torch
    from opacus.optimizers import DPOptimizer

    import trainers.loop
    from trainers.fast_clipping.registry import handler_for, trainable_layers

    real = trainers.loop.make_step

    def make_step(config, *, model, **kwargs):
        largest = max(trainable_layers(model), key=lambda m: sum(p.numel() for p in m.parameters()))
        largest.audit_fault = True
        for param in largest.parameters():
            param.audit_fault = True
        return real(config, model=model, **kwargs)

    monkeypatch.setattr(trainers.loop, "make_step", make_step)

    # The fast engine: the largest layer's handler ignores the factors.
    handler = handler_for(torch.nn.Conv2d(1, 1, 1))
    for name in ("clipped_sums", "rows_clipped_sums"):
        original = getattr(handler, name)

        def unclipped(self, state, factors, original=original):
            if getattr(self.module, "audit_fault", False):
                factors = torch.ones_like(factors)
            return original(self, state, factors)

        monkeypatch.setattr(handler, name, unclipped)

    # Opacus: its optimizer sums the largest layer's per-sample gradients unclipped.
    original_clip = DPOptimizer.clip_and_accumulate

    def clip_and_accumulate(self):
        flagged = [p for p in self.params if getattr(p, "audit_fault", False)]
        before = {id(p): p.summed_grad for p in flagged}
        raw = {id(p): p.grad_sample.sum(dim=0) for p in flagged}
        original_clip(self)
        for p in flagged:
            p.summed_grad = raw[id(p)] if before[id(p)] is None else before[id(p)] + raw[id(p)]

    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", clip_and_accumulate)
