"""`train(config, report)`: one DP-SGD trial as a plain loop that needs no Ray.

The loop records the mechanism it executes (sampling rate q, noise multiplier σ, steps T) and
asks `accounting` for ε; it does no privacy math itself.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import accounting
from trainers.augment import augment_views
from trainers.config import TrainConfig, TrainerError
from trainers.data import Splits, load_splits
from trainers.ema import ParameterEma
from trainers.fast_clip import (
    FastClipper,
    fast_clipping_unsupported,
    forward_with_input_grad,
    noise_and_average,
)
from trainers.features import cache_applies, cached_features, load_cached_head
from trainers.layers import select_trainable, set_frozen_modes
from trainers.models import build_model, check_pretrained_file
from trainers.randomness import (
    NOISE,
    RESEARCH_RUN,
    SAMPLING,
    VALIDATION,
    mechanism_generator,
)
from trainers.validation import release_validation

log = logging.getLogger(__name__)

# NOTE: PyTorch warns on every backward that the first layer's input needs no gradient, which
# is true of every image model and changes nothing for Opacus's hooks.
warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)

Report = Callable[[dict[str, Any]], None]
"""Receives one dict of metrics per epoch (the Ray wrapper forwards it to `ray.tune.report`)."""

_PROGRESS_EVERY_S = 10.0


def train(
    config: TrainConfig,
    report: Report | None = None,
    *,
    state: dict[str, Any] | None = None,
    save_state: Callable[[dict[str, Any]], None] | None = None,
    before_epoch: Report | None = None,
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
    """
    report = report or (lambda metrics: None)
    device = _device(config)
    check_pretrained_file(config)
    _seed_everything(config.seed)
    splits = load_splits(config)
    n_train = len(splits.train)
    check_fits_data(config, n_train)

    # Head-only trials train the head alone on the frozen backbone's features (computed once
    # per model, weights, data and resolution): same parameters, same mechanism, a fraction of
    # the compute. Once the features exist no backbone is even built.
    cached = load_cached_head(config, splits, device) if cache_applies(config) else None
    if cached is None:
        image_size = config.image_size or splits.image_size
        full_model = build_model(
            config, in_channels=splits.channels, num_classes=splits.num_classes,
            image_size=image_size,
        ).to(device)  # fmt: skip
        counts = select_trainable(full_model, config)
        prepare = _BatchPreparer(
            full_model, splits, image_size=image_size, device=device, config=config
        )
        model = full_model
        if cache_applies(config):
            cached = cached_features(full_model, splits, prepare, config, device)
    if cached is not None:
        model, splits, prepare = cached.head, cached.splits, _ToDevice(device)
        counts = {
            "trainable_parameters": sum(p.numel() for p in model.parameters()),
            "total_parameters": cached.total_parameters,
        }
    optimizer = _make_optimizer(config, model.parameters())
    mechanism = plan_mechanism(config, n_train)
    sample_rate, planned_steps = mechanism.sample_rate, mechanism.steps

    if config.private:
        noise_multiplier = mechanism.noise_multiplier
        engine = _clipping_engine(config, model)
        step_class = _FastDpStep if engine == "fast" else _DpStep
        step_fn = step_class(
            model=model,
            optimizer=optimizer,
            dataset=splits.train,
            config=config,
            noise_multiplier=noise_multiplier,
            device=device,
        )
    else:
        noise_multiplier, engine = 0.0, None
        step_fn = _NonPrivateStep(
            model=model, optimizer=optimizer, dataset=splits.train, config=config
        )
    ema = ParameterEma(model, config.ema_decay) if config.ema_decay > 0 else None
    augment_generator = torch.Generator().manual_seed(config.seed + 3)
    # The validation score's noise is part of the mechanism: secret unless reproducible.
    val_generator = mechanism_generator(config, VALIDATION)
    releases_validation = splits.validation is not None and config.validation == "dp"
    if config.reproducible:
        log.warning(RESEARCH_RUN)
    log.info(
        "training %s on %s: n=%d, q=%.5g, σ=%.4g, C=%g, %d steps (%d per epoch)%s, device %s",
        config.model, config.dataset, n_train, sample_rate, noise_multiplier,
        config.max_grad_norm, planned_steps, mechanism.steps_per_epoch,
        f", TAN simulation of batch {config.tan_reference_batch} (σ0="
        f"{mechanism.tan_reference_noise:.4g})" if mechanism.simulated else "", device,
    )  # fmt: skip

    steps, first_epoch = 0, 1
    if state is not None:
        if state["noise_multiplier"] != noise_multiplier or state["sample_rate"] != sample_rate:
            raise TrainerError(
                "the checkpoint was written by a trial with another sampling rate or noise "
                "multiplier; start the trial afresh instead of resuming it."
            )
        step_fn.load_state_dict(state["step"])
        torch.set_rng_state(state["torch_rng"])  # dropout, drop-path
        augment_generator.set_state(state["augment_generator"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        steps, first_epoch = state["steps"], state["epoch"] + 1
        val_releases = state.get("val_releases", 0)
        if state.get("val_generator") is not None:
            val_generator.set_state(state["val_generator"])
        log.info("resumed after epoch %d (%d steps)", state["epoch"], steps)
    else:
        val_releases = 0
    start_steps, start_val_releases = steps, val_releases
    val_sigma = config.val_noise_multiplier if releases_validation else 0.0
    ledger_fields = {
        "start_steps": start_steps, "sample_rate": sample_rate,
        "noise_multiplier": noise_multiplier, "n_train": n_train,
        "tan_simulated": mechanism.simulated, "start_val_releases": start_val_releases,
        "val_noise_multiplier": val_sigma,
        "planned_val_releases": mechanism.epochs if releases_validation else 0,
    }  # fmt: skip
    started = time.monotonic()
    metrics: dict[str, Any] = {}
    for epoch in range(first_epoch, mechanism.epochs + 1):
        if before_epoch is not None:
            upcoming = min(planned_steps, steps + mechanism.steps_per_epoch)
            before_epoch({
                "epoch": epoch, "steps": upcoming,
                "val_releases": val_releases + int(releases_validation), **ledger_fields,
            })  # fmt: skip
        model.train()
        if cached is None:
            set_frozen_modes(model, config)
        last_log = time.monotonic()
        train_loss, train_seen = 0.0, 0
        for images, labels in step_fn.batches():
            if config.augmult:
                images = augment_views(images, config.augmult, augment_generator)
            loss_sum, n, stepped = step_fn(prepare(images), labels.to(device), config.augmult)
            train_loss += loss_sum
            train_seen += n
            steps += stepped
            if stepped and ema is not None:
                ema.update()
            if time.monotonic() - last_log > _PROGRESS_EVERY_S:
                log.info("epoch %d: step %d/%d", epoch, steps, planned_steps)
                last_log = time.monotonic()
            if stepped and steps >= planned_steps:
                break  # TAN runs the reference run's steps: its last epoch may be partial
        done = epoch == mechanism.epochs or steps >= planned_steps
        metrics = {
            "epoch": epoch,
            "steps": steps,
            "train_loss": train_loss / max(train_seen, 1),
            **ledger_fields,
            "time_s": time.monotonic() - started,
            "done": done,
            "trainable_parameters": counts["trainable_parameters"],
            "feature_cache": cached is not None,
            "clipping": engine,
            "reproducible": config.reproducible,
        }
        if config.reproducible:
            metrics["release_label"] = RESEARCH_RUN
        if mechanism.simulated:
            metrics.update(
                tan_simulated=True,
                tan_reference_batch=config.tan_reference_batch,
                tan_reference_noise_multiplier=mechanism.tan_reference_noise,
            )

        if splits.validation is not None and config.validation != "off":
            metrics.update(
                release_validation(
                    lambda: _evaluate_selected(
                        model, splits, splits.validation, splits.validation_groups, prepare,
                        config, ema,
                    ),
                    config,
                    val_generator,
                    public=splits.validation_public,
                )  # fmt: skip
            )
            val_releases += int(releases_validation)
        metrics["val_releases"] = val_releases
        metrics.update(
            _mechanism(config, sample_rate, noise_multiplier, steps, val_releases, val_sigma)
        )
        if done:
            metrics.update(
                _evaluate_split(
                    "test", model, splits, splits.test, splits.test_groups, prepare, config, ema
                )
            )
        log.info(
            "epoch %d/%d: steps %d, trial ε ≤ %s, val acc %s%s",
            epoch, mechanism.epochs, steps, accounting.show_epsilon(metrics["epsilon"]),
            _fmt(metrics.get("val_accuracy")),
            f", test acc {_fmt(metrics['test_accuracy'])}" if "test_accuracy" in metrics else "",
        )  # fmt: skip
        if save_state is not None:
            save_state(
                {
                    "epoch": epoch,
                    "steps": steps,
                    "sample_rate": sample_rate,
                    "noise_multiplier": noise_multiplier,
                    "step": step_fn.state_dict(),
                    "torch_rng": torch.get_rng_state(),
                    "augment_generator": augment_generator.get_state(),
                    "ema": None if ema is None else ema.state_dict(),
                    "val_releases": val_releases,
                    "val_generator": val_generator.get_state(),
                }
            )
        report(metrics)
        if done:
            break
    step_fn.close()
    return metrics


_COUNTS = ("correct", "label_correct", "examples")
"""What `evaluate` returns for a noisy validation release, not reported as metrics."""


def _evaluate_selected(model, splits, dataset, groups, prepare, config, ema) -> dict:
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


def _evaluate_split(split, model, splits, dataset, groups, prepare, config, ema) -> dict:
    """`split`-prefixed metrics of a public split: of the EMA weights when there is an EMA (and
    of the last iterate too, suffixed `_raw`, on request), else of the model."""

    def run() -> dict:
        metrics = evaluate(
            model, dataset, prepare, config, num_classes=splits.num_classes, groups=groups,
            group_names=splits.group_names,
        )  # fmt: skip
        return {k: v for k, v in metrics.items() if k not in _COUNTS}

    if ema is None:
        return _prefixed(split, run())
    with ema.swapped_in():
        metrics = _prefixed(split, run())
    if config.ema_evaluate_raw:
        metrics.update(_prefixed(split, run(), suffix="_raw"))
    return metrics


def check_fits_data(config: TrainConfig, n_train: int) -> None:
    """The settings that only the data set's size can refuse."""
    if config.batch_size > n_train:
        raise TrainerError(
            f"batch_size={config.batch_size} exceeds the {n_train} training examples; lower it."
        )
    if config.tan_reference_batch is not None and config.tan_reference_batch > n_train:
        raise TrainerError(
            f"tan_reference_batch={config.tan_reference_batch} exceeds the {n_train} training "
            "examples; lower it."
        )
    if config.private and config.delta >= 1.0 / n_train:
        raise TrainerError(
            f"delta={config.delta} is not below 1/n = {1.0 / n_train:.2g} for n={n_train} "
            "training examples, which permits releasing whole examples; lower delta."
        )


def check_runnable(configs: list[TrainConfig], splits: Splits) -> None:
    """Everything `train` would refuse before its first step, checked without training, for
    each config: the data's size, the weights file, the model (known, loadable, made
    DP-compatible), the layer selection and the clipping engine. A search's driver calls it
    for every model its space can draw, so a bad setting fails there in one sentence instead
    of in every trial on the cluster. Each distinct model is built once."""
    built: dict = {}
    for config in configs:
        check_fits_data(config, len(splits.train))
        check_pretrained_file(config)
        size = config.image_size or splits.image_size
        key = (config.model, config.pretrained, config.pretrained_file, size, config.seed)
        if key not in built:
            built[key] = build_model(
                config, in_channels=splits.channels, num_classes=splits.num_classes,
                image_size=size,
            )  # fmt: skip
        model = copy.deepcopy(built[key])
        select_trainable(model, config)
        if config.private:
            _clipping_engine(config, model)


@dataclass(frozen=True)
class MechanismPlan:
    """The DP-SGD mechanism a trial will run, decided before it starts."""

    sample_rate: float
    steps_per_epoch: int
    steps: int
    """Total steps planned (T)."""
    epochs: int
    """Epochs to run (the last may stop early when `steps` is reached)."""
    noise_multiplier: float
    """σ (0 for a non-private trial)."""
    simulated: bool = False
    """A TAN simulation (its σ is scaled from the reference run's σ0)."""
    tan_reference_noise: float | None = None


def planned_steps(config: TrainConfig, n_train: int) -> int:
    """T: the steps the trial will take (what a search reserves before it starts)."""
    return _schedule(config, n_train).steps


def _schedule(config: TrainConfig, n_train: int) -> accounting.DpSgdSchedule:
    return accounting.dp_sgd_schedule(
        n_train=n_train, batch_size=config.batch_size, epochs=config.epochs,
        tan_reference_batch=config.tan_reference_batch,
    )  # fmt: skip


def plan_mechanism(config: TrainConfig, n_train: int) -> MechanismPlan:
    """q, T and σ of the trial: also what a search reserves in its ledger before it starts."""
    schedule = _schedule(config, n_train)
    q, steps = schedule.sample_rate, schedule.steps
    if config.tan_reference_batch is None:
        sigma = _noise_multiplier(config, q, steps) if config.private else 0.0
        return MechanismPlan(q, schedule.steps_per_epoch, steps, schedule.epochs, sigma)
    # TAN (Sander et al. 2023): at a fixed number of steps S, what matters is σ/B. The
    # reference run (batch B0, `epochs` epochs) has S steps and the σ0 meeting the target;
    # the simulation runs S steps at batch B with σ = σ0·B/B0.
    sigma0 = _noise_multiplier(config, schedule.reference_sample_rate, steps)
    sigma = sigma0 * config.batch_size / config.tan_reference_batch
    return MechanismPlan(q, schedule.steps_per_epoch, steps, schedule.epochs, sigma, True, sigma0)


class _ToDevice:
    """`prepare` for cached features: they are model inputs already."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        return features.to(self.device, non_blocking=True)


# --- privacy --------------------------------------------------------------------------------


def _noise_multiplier(config: TrainConfig, sample_rate: float, steps: int) -> float:
    if config.noise_multiplier is None:
        return accounting.calibrate_noise_multiplier(
            target_epsilon=config.target_epsilon,
            delta=config.delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=config.accountant,
        )
    if config.target_epsilon is not None:
        event = accounting.dp_sgd_event(
            sample_rate=sample_rate, noise_multiplier=config.noise_multiplier, steps=steps
        )
        planned = accounting.epsilon(event, delta=config.delta, accountant=config.accountant)
        if planned > config.target_epsilon:
            raise TrainerError(
                f"noise_multiplier={config.noise_multiplier} would spend ε={planned:.3f} > "
                f"target_epsilon={config.target_epsilon}; raise noise_multiplier, or unset it "
                "(--set noise_multiplier=none) to calibrate it."
            )
    return config.noise_multiplier


def _mechanism(
    config: TrainConfig, sample_rate: float, noise_multiplier: float, steps: int,
    val_releases: int = 0, val_noise_multiplier: float = 0.0,
) -> dict[str, Any]:
    """The executed mechanism and its ε so far (∞ for a non-private run): the training steps
    and, in parallel, the noisy validation scores (accounting.ParallelCurve says why the
    larger of the two ε covers both)."""
    if config.private:
        event = accounting.dp_sgd_event(
            sample_rate=sample_rate, noise_multiplier=noise_multiplier, steps=steps
        )
        epsilon = accounting.epsilon(event, delta=config.delta, accountant=config.accountant)
        if val_releases:
            releases = accounting.validation_event(
                noise_multiplier=val_noise_multiplier, releases=val_releases
            )
            validation = accounting.epsilon(releases, delta=config.delta,
                                            accountant=config.accountant)  # fmt: skip
            epsilon = max(epsilon, validation)
    else:
        epsilon = math.inf
    return {
        "private": config.private,
        "sample_rate": sample_rate,
        "noise_multiplier": noise_multiplier,
        "max_grad_norm": config.max_grad_norm,
        "epsilon": epsilon,
        "delta": config.delta,
        "accountant": config.accountant,
    }


# --- one optimisation step ------------------------------------------------------------------


class _StepState:
    """What a step checkpoints: its model, its optimizer and its named generators (sampling,
    noise, shuffling), so a resumed trial continues the very same random streams."""

    GENERATORS: tuple[str, ...] = ()

    def _saved_optimizer(self):
        return self.optimizer

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self._saved_optimizer().state_dict(),
            **{name: getattr(self, name).get_state() for name in self.GENERATORS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self._saved_optimizer().load_state_dict(state["optimizer"])
        for name in self.GENERATORS:
            getattr(self, name).set_state(state[name])


class _DpStep(_StepState):
    """DP-SGD with Opacus: Poisson sampling, per-example clipping, Gaussian noise, and logical
    batches split into physical ones (`BatchMemoryManager`) so large batches fit in memory."""

    def __init__(self, *, model, optimizer, dataset, config, noise_multiplier, device) -> None:
        from opacus import PrivacyEngine

        self.sampling_generator = mechanism_generator(config, SAMPLING)
        loader = DataLoader(
            dataset, batch_size=config.batch_size, generator=self.sampling_generator
        )
        with warnings.catch_warnings():
            # Noise from torch's PRNG with a secret seed (trainers/randomness.py) rather than
            # Opacus's secure_mode CSPRNG: said in docs/privacy.md instead of Opacus's warning.
            warnings.filterwarnings("ignore", message="Secure RNG turned off")
            engine = PrivacyEngine(secure_mode=False)
        self.noise_generator = mechanism_generator(config, NOISE, device)
        self.model, self.optimizer, self.loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=config.max_grad_norm,
            poisson_sampling=True,
            noise_generator=self.noise_generator,
        )
        self.max_physical_batch_size = config.max_physical_batch_size

    GENERATORS = ("sampling_generator", "noise_generator")

    def _saved_optimizer(self):
        return self.optimizer.original_optimizer  # Opacus's wrapper holds no state of its own

    def batches(self):
        from opacus.utils.batch_memory_manager import BatchMemoryManager

        with BatchMemoryManager(
            data_loader=self.loader,
            max_physical_batch_size=self.max_physical_batch_size,
            optimizer=self.optimizer,
        ) as loader:
            yield from loader

    def __call__(self, images, labels, augmult: int = 0) -> tuple[float, int, int]:
        views = max(augmult, 1)
        output = self.model(images)
        targets = labels.repeat_interleave(views, dim=0)
        loss = task_loss(output, targets) if len(labels) else output.sum() * 0.0
        loss.backward()
        if views > 1:
            _average_views(self.optimizer.params, views)
        self.optimizer.step()  # skipped by Opacus until the logical batch is complete
        self.optimizer.zero_grad(set_to_none=True)
        stepped = 0 if self.optimizer._is_last_step_skipped else 1
        return loss.item() * len(labels), len(labels), stepped

    def close(self) -> None:
        self.model._close()


def _clipping_engine(config: TrainConfig, model: nn.Module) -> str:
    """fast or opacus, as `config.clipping` asks and the model allows."""
    if config.clipping == "opacus":
        return "opacus"
    reason = fast_clipping_unsupported(model)
    if reason is None:
        return "fast"
    if config.clipping == "fast":
        raise TrainerError(
            f"fast clipping does not support this model's {reason} layers; use "
            "--set clipping=opacus (or auto)."
        )
    log.info("fast clipping does not support %s; using Opacus's per-example gradients", reason)
    return "opacus"


class _FastDpStep(_StepState):
    """DP-SGD with the fast clipping engine (trainers.fast_clip): Opacus's Poisson data loader,
    per-example norms without per-example gradients, and Gaussian noise added exactly as
    Opacus's optimizer adds it (same generator use, same order, same scaling), so a seed gives
    the same sampling and noise as the Opacus engine."""

    def __init__(self, *, model, optimizer, dataset, config, noise_multiplier, device) -> None:
        from opacus.data_loader import DPDataLoader

        self.model, self.optimizer = model, optimizer
        self.sampling_generator = mechanism_generator(config, SAMPLING)
        self.loader = DPDataLoader.from_data_loader(
            DataLoader(dataset, batch_size=config.batch_size, generator=self.sampling_generator)
        )
        self.noise_generator = mechanism_generator(config, NOISE, device)
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = config.max_grad_norm
        self.expected_batch_size = int(len(dataset) / len(self.loader))
        self.physical = config.max_physical_batch_size
        self.clipper = FastClipper(model, config.max_grad_norm)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.noise_buffers: dict[int, torch.Tensor] = {}
        self._last_chunk = False

    GENERATORS = ("sampling_generator", "noise_generator")

    def batches(self):
        """Physical batches of every Poisson-sampled logical batch (the last one steps)."""
        for images, labels in self.loader:
            starts = list(range(0, len(labels), self.physical)) or [0]
            for start in starts:
                self._last_chunk = start == starts[-1]
                yield images[start : start + self.physical], labels[start : start + self.physical]

    def __call__(self, images, labels, augmult: int = 0) -> tuple[float, int, int]:
        views = max(augmult, 1)
        loss_sum = 0.0
        if len(labels):
            output = forward_with_input_grad(self.model, images)
            losses = task_loss(output, labels.repeat_interleave(views, dim=0), reduction="none")
            self.clipper.backward(losses, views)
            loss_sum = losses.detach().sum().item() / views
        if not self._last_chunk:
            return loss_sum, len(labels), 0
        noise_and_average(
            self.params,
            self.clipper.take_sums(),
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            generator=self.noise_generator,
            buffers=self.noise_buffers,
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, len(labels), 1

    def close(self) -> None:
        self.clipper.close()


def _average_views(params, views: int) -> None:
    """Augmentation multiplicity: each example's per-view gradients (rows i·K … i·K+K−1 of
    `grad_sample`) averaged into one per-example gradient, before Opacus clips it.

    Opacus scales per-sample gradients of a mean loss back to per-row gradients, so row j is
    ∇ loss_j; their mean over an example's K views is the gradient of its mean view loss.
    """
    for param in params:
        sample = param.grad_sample
        if sample is None:
            continue
        param.grad_sample = sample.view(-1, views, *sample.shape[1:]).mean(dim=1)


class _NonPrivateStep(_StepState):
    """Plain minibatch SGD for baselines: shuffled batches of `batch_size`, no clipping or
    noise, gradients accumulated over physical batches."""

    def __init__(self, *, model, optimizer, dataset, config) -> None:
        self.model, self.optimizer = model, optimizer
        self.shuffle_generator = torch.Generator().manual_seed(config.seed + 1)
        self.loader = DataLoader(
            dataset, batch_size=config.batch_size, shuffle=True, generator=self.shuffle_generator
        )
        self.physical = config.max_physical_batch_size

    GENERATORS = ("shuffle_generator",)

    def batches(self):
        yield from self.loader

    def __call__(self, images, labels, augmult: int = 0) -> tuple[float, int, int]:
        views = max(augmult, 1)
        targets = labels.repeat_interleave(views, dim=0)
        total = 0.0
        physical = self.physical * views
        for start in range(0, len(targets), physical):
            chunk = slice(start, start + physical)
            loss = task_loss(self.model(images[chunk]), targets[chunk], reduction="sum")
            (loss / len(targets)).backward()
            total += loss.item() / views
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total, len(labels), 1

    def close(self) -> None:
        pass


def _make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )


# --- data to device, evaluation -------------------------------------------------------------


class _BatchPreparer:
    """uint8 images → float, resized to the model's input size, normalised, on the device."""

    def __init__(self, model: nn.Module, splits: Splits, *, image_size, device, config) -> None:
        mean, std = splits.mean, splits.std
        cfg = getattr(model, "pretrained_cfg", None)
        if (config.pretrained or config.pretrained_file) and cfg and "mean" in cfg:
            # Pretrained weights expect the statistics they were trained with.
            mean, std = cfg["mean"], cfg["std"]
            if splits.channels == 1:
                mean, std = (sum(mean) / len(mean),), (sum(std) / len(std),)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.image_size = image_size
        self.device = device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, non_blocking=True).float().div_(255)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std


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
    if dataset.tensors[1].ndim == 2:
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
    if targets.ndim == 2:
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
