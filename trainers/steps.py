"""One optimisation step of a trial, in three kinds, and the optimizer they drive.

- `NonPrivateStep`: plain minibatch SGD (baselines).
- `OpacusStep`: DP-SGD with Opacus's per-example gradients and `BatchMemoryManager`.
- `FastStep`: DP-SGD with the fast clipping engine (`trainers.fast_clipping`): per-example
  norms without per-example gradients, same sampling and noise as Opacus.

Each yields its physical batches (`batches()`), takes one (`__call__` → loss sum, examples,
whether the logical step completed), checkpoints its model, optimizer and generators, and
`make_step` picks one for a config.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from trainers.config import TrainConfig, TrainerError
from trainers.evaluation import task_loss
from trainers.fast_clipping import (
    FastClipper,
    SharedLayerError,
    fast_clipping_unsupported,
    forward_with_input_grad,
    layer_run_twice,
    noise_and_average,
)
from trainers.randomness import NOISE, SAMPLING, mechanism_generator

log = logging.getLogger(__name__)


def make_step(
    config: TrainConfig, *, model, optimizer, dataset, noise_multiplier, device, example=None
):
    """The step `config` asks for: non-private, or DP-SGD on the engine the model allows
    (`example`: see `clipping_engine`). Returns (step, engine): engine is "fast", "opacus" or
    None (non-private)."""
    if not config.private:
        step = NonPrivateStep(model=model, optimizer=optimizer, dataset=dataset, config=config)
        return step, None
    engine = clipping_engine(config, model, example)
    step_class = FastStep if engine == "fast" else OpacusStep
    step = step_class(
        model=model, optimizer=optimizer, dataset=dataset, config=config,
        noise_multiplier=noise_multiplier, device=device,
    )  # fmt: skip
    return step, engine


class StepState:
    """What a step checkpoints: its model, its optimizer and its named generators (sampling,
    noise, shuffling), so a resumed trial continues the very same random streams."""

    GENERATORS: tuple[str, ...] = ()

    canaries = None
    """An audit's gradient canaries (`trainers.canaries.GradientCanaries`), or None. Each
    logical step, after its real examples are clipped, hands them the clipped sums
    (`clipped_before`), clips the rows of the canaries they sample with the same engine
    (`sampled_rows`), adds the noise, and hands them the noisy sums (`observe_noisy`)."""

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


class OpacusStep(StepState):
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
        self._wrap_for_canaries()

    GENERATORS = ("sampling_generator", "noise_generator")

    def _wrap_for_canaries(self) -> None:
        """Opacus's clip_and_accumulate and add_noise, with the canaries' part around them
        (see `canaries`); without canaries they do what Opacus's do."""
        optimizer = self.optimizer
        clip_and_accumulate, add_noise = optimizer.clip_and_accumulate, optimizer.add_noise

        def clip_with_canaries():
            clip_and_accumulate()  # the real examples of this physical batch
            canaries = self.canaries
            if canaries is None or optimizer._check_skip_next_step(pop_next=False):
                return  # not the logical step's last physical batch
            canaries.clipped_before({id(p): p.summed_grad for p in optimizer.params})
            for rows in canaries.sampled_rows():
                for param in optimizer.params:
                    param.grad_sample = rows[id(param)]
                clip_and_accumulate()  # Opacus clips the canaries with the same code

        def noise_then_observe():
            add_noise()
            if self.canaries is not None:  # p.grad: the noisy sums, not yet averaged
                self.canaries.observe_noisy({id(p): p.grad for p in optimizer.params})

        optimizer.clip_and_accumulate = clip_with_canaries
        optimizer.add_noise = noise_then_observe

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
            average_views(self.optimizer.params, views)
        self.optimizer.step()  # skipped by Opacus until the logical batch is complete
        self.optimizer.zero_grad(set_to_none=True)
        stepped = 0 if self.optimizer._is_last_step_skipped else 1
        return loss.item() * len(labels), len(labels), stepped

    def close(self) -> None:
        self.model._close()


def clipping_engine(config: TrainConfig, model: nn.Module, example=None) -> str:
    """fast or opacus, as `config.clipping` asks and the model allows. `example`: one
    data-independent model input (zeros), to find a layer the forward pass runs twice."""
    if config.clipping == "opacus":
        return "opacus"
    reason = fast_clipping_unsupported(model)
    if reason is None and example is not None:
        reused = layer_run_twice(model, example)
        if reused is not None:
            reason = f"a {reused} run twice in one forward pass"
    if reason is None:
        return "fast"
    if config.clipping == "fast":
        raise TrainerError(
            f"fast clipping does not support this model's layers ({reason}); use "
            "--set clipping=opacus (or auto)."
        )
    log.info("fast clipping does not support %s; using Opacus's per-example gradients", reason)
    return "opacus"


class FastStep(StepState):
    """DP-SGD with the fast clipping engine (trainers.fast_clipping): Opacus's Poisson data loader,
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
        self.noise_buffers: dict = {}
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
            try:
                output = forward_with_input_grad(self.model, images)
            except SharedLayerError as error:
                raise TrainerError(f"{error}.") from None
            losses = task_loss(output, labels.repeat_interleave(views, dim=0), reduction="none")
            self.clipper.backward(losses, views)
            loss_sum = losses.detach().sum().item() / views
        if not self._last_chunk:
            return loss_sum, len(labels), 0
        if self.canaries is not None:
            self.canaries.clipped_before(self.clipper.sums)
            for rows in self.canaries.sampled_rows():
                self.clipper.clip_rows(rows)  # clipped like the real examples
        sums = self.clipper.take_sums()
        noise_and_average(
            self.params,
            sums,
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=self.expected_batch_size,
            generator=self.noise_generator,
            buffers=self.noise_buffers,
        )
        if self.canaries is not None:
            scale = self.expected_batch_size
            self.canaries.observe_noisy({id(p): p.grad * scale for p in self.params})
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_sum, len(labels), 1

    def close(self) -> None:
        self.clipper.close()


def average_views(params, views: int) -> None:
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


class NonPrivateStep(StepState):
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


def make_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params,
        lr=config.learning_rate,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
