"""`train(config, report)`: one DP-SGD trial as a plain loop that needs no Ray.

A reader sees the shape of a trial here: set up, then per epoch the ledger written ahead, the
epoch's steps, the metrics (DP validation release, ε, test at the end), the checkpoint and the
report. What each part does lives in a module named after it: `trainers.mechanism` (q, T, σ
and ε, via `accounting`), `trainers.steps` (non-private, Opacus and fast DP-SGD steps),
`trainers.evaluation` (metrics), `trainers.inputs` (batches to model inputs).
"""

from __future__ import annotations

import logging
import random
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

import accounting
from trainers.augment import augment_views
from trainers.checks import check_fits_data
from trainers.config import TrainConfig, TrainerError
from trainers.data import load_splits
from trainers.ema import ParameterEma
from trainers.evaluation import evaluate_selected, evaluate_split
from trainers.features import cache_applies, cached_features, load_cached_head
from trainers.frontends import NormalisedFeatures, frontend_splits
from trainers.inputs import FeaturesToDevice, ImagePreparer
from trainers.layers import select_trainable, set_frozen_modes
from trainers.mechanism import executed_mechanism, plan_mechanism
from trainers.models import build_model, check_pretrained_file
from trainers.randomness import RESEARCH_RUN, VALIDATION, mechanism_generator
from trainers.steps import make_optimizer, make_step
from trainers.validation import release_validation

log = logging.getLogger(__name__)

# NOTE: PyTorch warns on every backward that the first layer's input needs no gradient, which
# is true of every image model and changes nothing for Opacus's hooks.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

MetricsCallback = Callable[[dict[str, Any]], None]
"""Receives one dict of metrics per epoch (the Ray wrapper forwards it to `ray.tune.report`)."""

_PROGRESS_EVERY_S = 10.0


def train(
    config: TrainConfig,
    report: MetricsCallback | None = None,
    *,
    state: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    before_epoch: MetricsCallback | None = None,
    canaries=None,
) -> dict[str, Any]:
    """Run one trial; call `report` after every epoch; return the final metrics.

    Every report holds the validation metrics, the steps done and the mechanism executed so far
    (`sample_rate`, `noise_multiplier`, `steps`, and `start_steps`: the steps restored from
    `state`) with its `epsilon` at `delta`. The last report (`done=True`) adds the test
    metrics; it is also the return value.

    Args:
        state: a dict an earlier run passed to `save_state`: training resumes after its epoch
            with the same model, optimizer, sampler, noise, augmentation and EMA states.
        save_state: called with the trial's state after every epoch, before `report` (a
            checkpoint: the Ray wrapper stores it so a restarted trial resumes).
        before_epoch: called before each epoch touches data with the mechanism as it will be
            at that epoch's end (`steps` an upper bound): a privacy ledger written ahead, so
            a process killed mid-epoch still counts the whole epoch (never fewer steps).
        canaries: an audit's canaries (`trainers.canaries`): inserted into the training
            split or the clipped sums; their scores are read after `train` returns.
    """
    run = _Run(config, canaries)
    if state is not None:
        run.restore(state)
    metrics: dict[str, Any] = {}
    for epoch in range(run.epoch + 1, run.mechanism.epochs + 1):
        if before_epoch is not None:
            before_epoch(run.ahead_of(epoch))  # the ledger, before the epoch touches data
        train_loss = run.train_epoch(epoch)
        metrics = run.epoch_metrics(train_loss)  # DP validation, ε; test after the last epoch
        if save_state is not None:
            save_state(run.state_dict())  # the checkpoint, before the report
        if report is not None:
            report(metrics)
        if metrics["done"]:
            break
    run.close()
    return metrics


class _Run:
    """One trial's state between epochs: data, model, mechanism, step and generators."""

    def __init__(self, config: TrainConfig, canaries=None) -> None:
        self.config = config
        self.device = _device(config)
        check_pretrained_file(config)
        _seed_everything(config.seed)
        splits = load_splits(config)
        if canaries is not None:
            splits = canaries.insert(splits)  # input canaries join the training split
        self.n_train = len(splits.train)
        check_fits_data(config, self.n_train)
        self.model, self.splits, self.prepare, self.counts, self.cached = _model_and_inputs(
            config, splits, self.device
        )
        optimizer = make_optimizer(config, self.model.parameters())
        self.mechanism = plan_mechanism(config, self.n_train)
        # Zeros of an input's shape: the engine is chosen from the model, not from the data.
        example = self.prepare(torch.zeros_like(self.splits.train[0][0])[None])
        self.step, self.engine = make_step(
            config, model=self.model, optimizer=optimizer, dataset=self.splits.train,
            noise_multiplier=self.mechanism.noise_multiplier, device=self.device,
            example=example,
        )  # fmt: skip
        if canaries is not None:
            canaries.attach(step=self.step, model=self.model, prepare=self.prepare,
                            sample_rate=self.mechanism.sample_rate)  # fmt: skip
        self.ema = ParameterEma(self.model, config.ema_decay) if config.ema_decay > 0 else None
        self.augment_generator = torch.Generator().manual_seed(config.seed + 3)
        # The validation score's noise is part of the mechanism: secret unless reproducible.
        self.val_generator = mechanism_generator(config, VALIDATION)
        self.releases_validation = self.splits.validation is not None and config.validation == "dp"
        self.val_sigma = config.val_noise_multiplier if self.releases_validation else 0.0
        self.epoch, self.steps, self.val_releases = 0, 0, 0
        self.start_steps, self.start_val_releases = 0, 0
        self.started = time.monotonic()
        if config.reproducible:
            log.warning(RESEARCH_RUN)
        self._log_plan()

    def restore(self, state: dict[str, Any]) -> None:
        """Continue after the checkpointed epoch with the same model, optimizer, sampler,
        noise, augmentation and EMA states."""
        mechanism = self.mechanism
        if (
            state["noise_multiplier"] != mechanism.noise_multiplier
            or state["sample_rate"] != mechanism.sample_rate
        ):
            raise TrainerError(
                "the checkpoint was written by a trial with another sampling rate or noise "
                "multiplier; start the trial afresh instead of resuming it."
            )
        self.step.load_state_dict(state["step"])
        torch.set_rng_state(state["torch_rng"])  # dropout, drop-path
        self.augment_generator.set_state(state["augment_generator"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.epoch, self.steps = state["epoch"], state["steps"]
        self.val_releases = state.get("val_releases", 0)
        if state.get("val_generator") is not None:
            self.val_generator.set_state(state["val_generator"])
        self.start_steps, self.start_val_releases = self.steps, self.val_releases
        log.info("resumed after epoch %d (%d steps)", self.epoch, self.steps)

    def ledger_fields(self) -> dict[str, Any]:
        """The mechanism as the ledger records it, in every report."""
        return {
            "start_steps": self.start_steps, "sample_rate": self.mechanism.sample_rate,
            "noise_multiplier": self.mechanism.noise_multiplier, "n_train": self.n_train,
            "tan_simulated": self.mechanism.simulated,
            "start_val_releases": self.start_val_releases,
            "val_noise_multiplier": self.val_sigma,
            "planned_val_releases": self.mechanism.epochs if self.releases_validation else 0,
        }  # fmt: skip

    def ahead_of(self, epoch: int) -> dict[str, Any]:
        """The mechanism as it will be at `epoch`'s end (`steps` an upper bound): written
        ahead, so a process killed mid-epoch still counts the whole epoch."""
        upcoming = min(self.mechanism.steps, self.steps + self.mechanism.steps_per_epoch)
        return {
            "epoch": epoch, "steps": upcoming,
            "val_releases": self.val_releases + int(self.releases_validation),
            **self.ledger_fields(),
        }  # fmt: skip

    def train_epoch(self, epoch: int) -> float:
        """One epoch of steps (the last may stop at T); returns the mean training loss."""
        config, planned = self.config, self.mechanism.steps
        self.model.train()
        if self.cached is None:
            set_frozen_modes(self.model, config)
        last_log = time.monotonic()
        train_loss, train_seen = 0.0, 0
        for images, labels in self.step.batches():
            if config.augmult:
                images = augment_views(images, config.augmult, self.augment_generator)
            loss_sum, n, stepped = self.step(
                self.prepare(images), labels.to(self.device), config.augmult
            )
            train_loss += loss_sum
            train_seen += n
            self.steps += stepped
            if stepped and self.ema is not None:
                self.ema.update()
            if time.monotonic() - last_log > _PROGRESS_EVERY_S:
                log.info("epoch %d: step %d/%d", epoch, self.steps, planned)
                last_log = time.monotonic()
            if stepped and self.steps >= planned:
                break  # TAN runs the reference run's steps: its last epoch may be partial
        self.epoch = epoch
        return train_loss / max(train_seen, 1)

    def epoch_metrics(self, train_loss: float) -> dict[str, Any]:
        """The epoch's report: mechanism and ε so far, the DP validation release, and after
        the last epoch the test metrics (`done=True`)."""
        config, mechanism, splits = self.config, self.mechanism, self.splits
        done = self.epoch == mechanism.epochs or self.steps >= mechanism.steps
        metrics = {
            "epoch": self.epoch, "steps": self.steps, "train_loss": train_loss,
            **self.ledger_fields(),
            "time_s": time.monotonic() - self.started, "done": done,
            "trainable_parameters": self.counts["trainable_parameters"],
            "feature_cache": self.cached is not None, "clipping": self.engine,
            "reproducible": config.reproducible,
        }  # fmt: skip
        if config.reproducible:
            metrics["release_label"] = RESEARCH_RUN
        if mechanism.simulated:
            metrics.update(
                tan_simulated=True,
                tan_reference_batch=config.tan_reference_batch,
                tan_reference_noise_multiplier=mechanism.tan_reference_noise,
            )
        if splits.validation is not None and config.validation != "off":
            metrics.update(self._release_validation())
            self.val_releases += int(self.releases_validation)
        metrics["val_releases"] = self.val_releases
        metrics.update(
            executed_mechanism(
                config,
                mechanism.sample_rate,
                mechanism.noise_multiplier,
                self.steps,
                self.val_releases,
                self.val_sigma,
            )  # fmt: skip
        )
        if done:
            metrics.update(
                evaluate_split(
                    "test",
                    self.model,
                    splits,
                    splits.test,
                    splits.test_groups,
                    self.prepare,
                    config,
                    self.ema,
                )  # fmt: skip
            )
        self._log_epoch(metrics)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """The checkpoint `restore` continues from."""
        return {
            "epoch": self.epoch,
            "steps": self.steps,
            "sample_rate": self.mechanism.sample_rate,
            "noise_multiplier": self.mechanism.noise_multiplier,
            "step": self.step.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "augment_generator": self.augment_generator.get_state(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "val_releases": self.val_releases,
            "val_generator": self.val_generator.get_state(),
        }

    def close(self) -> None:
        self.step.close()

    def _release_validation(self) -> dict[str, Any]:
        splits = self.splits
        return release_validation(
            lambda: evaluate_selected(
                self.model, splits, splits.validation, splits.validation_groups, self.prepare,
                self.config, self.ema,
            ),
            self.config,
            self.val_generator,
            public=splits.validation_public,
        )  # fmt: skip

    def _log_plan(self) -> None:
        config, mechanism = self.config, self.mechanism
        log.info(
            "training %s on %s: n=%d, q=%.5g, σ=%.4g, C=%g, %d steps (%d per epoch)%s, device %s",
            config.model, config.dataset, self.n_train, mechanism.sample_rate,
            mechanism.noise_multiplier, config.max_grad_norm, mechanism.steps,
            mechanism.steps_per_epoch,
            f", TAN simulation of batch {config.tan_reference_batch} (σ0="
            f"{mechanism.tan_reference_noise:.4g})" if mechanism.simulated else "", self.device,
        )  # fmt: skip

    def _log_epoch(self, metrics: dict[str, Any]) -> None:
        log.info(
            "epoch %d/%d: steps %d, trial ε ≤ %s, val acc %s%s",
            self.epoch, self.mechanism.epochs, self.steps,
            accounting.show_epsilon(metrics["epsilon"]), _fmt(metrics.get("val_accuracy")),
            f", test acc {_fmt(metrics['test_accuracy'])}" if "test_accuracy" in metrics else "",
        )  # fmt: skip


def _model_and_inputs(config: TrainConfig, splits, device: torch.device):
    """(model, splits, prepare, parameter counts, cached features or None).

    A frontend (ScatterNet) first replaces the images by their public per-image features,
    computed once. Head-only trials train the head alone on the frozen backbone's features
    (computed once per model, weights, data and resolution): same parameters, same mechanism,
    a fraction of the compute. Once the features exist no backbone is even built.
    """
    frontend = config.frontend != "none"
    if frontend:
        splits = frontend_splits(config, splits, device)
    cached = load_cached_head(config, splits, device) if cache_applies(config) else None
    if cached is None:
        image_size = splits.image_size if frontend else config.image_size or splits.image_size
        model = build_model(
            config, in_channels=splits.channels, num_classes=splits.num_classes,
            image_size=image_size,
        ).to(device)  # fmt: skip
        counts = select_trainable(model, config)
        if frontend:
            prepare = NormalisedFeatures(config, splits.channels, device)
        else:
            prepare = ImagePreparer(model, splits, image_size=image_size, device=device,
                                    config=config)  # fmt: skip
        if cache_applies(config):
            cached = cached_features(model, splits, prepare, config, device)
    if cached is None:
        return model, splits, prepare, counts, None
    counts = {
        "trainable_parameters": sum(p.numel() for p in cached.head.parameters()),
        "total_parameters": cached.total_parameters,
    }
    return cached.head, cached.splits, FeaturesToDevice(device), counts, cached


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _device(config: TrainConfig) -> torch.device:
    if config.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainerError(f"device={config.device} but no CUDA GPU is visible; use device=cpu.")
    return torch.device(config.device)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
