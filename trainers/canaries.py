"""Canaries for a one-run privacy audit (`accounting.audit`): m records, each included in the
trial's input independently with probability ½ by secret randomness, and a score per canary
after training (higher: more likely included).

- `GradientCanaries` (white-box, the strongest and cheapest audit of DP-SGD): canary i is a
  fixed gradient along its own random direction u_i of the trainable parameters. Whenever an
  included canary is sampled (Poisson, at the trial's rate q, like every record), it is one
  more example of that step, of norm 100·C before clipping: the engine (Opacus's optimizer,
  or the fast engine's per-layer handlers) clips it to C with the real examples. Its score
  is how far the trial's updates moved along u_i, less what the real examples' clipped
  gradients contributed: the auditor is white-box, sees every noisy update and knows every
  other record and whether it was sampled, as DP's adversary may (those bits are independent
  of a canary's inclusion). Without that subtraction, on a small model the real gradients'
  projections drown the canaries. It audits sampling, clipping, noise and accounting of
  either engine; not the data path, nor the fast engine's norm algebra per layer type (which
  tests/trainers checks exactly against per-example gradients).
- `InputCanaries` (black-box): m out-of-distribution examples (uniform noise images with random
  labels) appended to the training set when included, so they pass through everything a
  record does: Poisson sampling, augmentation, physical batches, the clipping engine, noise.
  Its score is −loss of the final model on it. It audits the whole trainer, clipping included,
  but is much weaker: a model does not memorise one example the way a gradient canary moves a
  parameter.

Canaries are secret like the mechanism's noise (`trainers.randomness`): their directions,
images and inclusion bits come from the CSPRNG unless the run is reproducible.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from trainers.config import TrainerError
from trainers.data import Splits

CANARY_KINDS = ("gradient", "input")

PRE_CLIP_NORM = 100.0
"""A gradient canary's norm before clipping, in units of C: a correct engine clips it to
exactly C (its direction unchanged), and an engine that under-clips any layer lets far more
through, which the audit sees."""

ROWS_AT_ONCE = 8
"""Canary gradients materialised at once (each as large as the trainable parameters)."""


class GradientCanaries:
    """m gradient canaries, clipped to norm C by the engine (white-box); see the module
    docstring."""

    kind = "gradient"

    def __init__(self, count: int, generator: torch.Generator, max_grad_norm: float) -> None:
        self.count = count
        self.generator = generator
        self.max_grad_norm = max_grad_norm
        self.included = torch.rand(count, generator=generator) < 0.5
        self.seeds = torch.randint(0, 2**62, (count,), generator=generator).tolist()
        self.params: list[torch.Tensor] = []
        self.sample_rate = 0.0
        self.observed: torch.Tensor | None = None
        self._clipped: dict[int, torch.Tensor] = {}

    def insert(self, splits: Splits) -> Splits:
        return splits  # gradient canaries are no data

    def attach(self, *, step, model, prepare, sample_rate: float) -> None:
        """Join `step`'s logical steps from now on."""
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.sample_rate = sample_rate
        self.observed = torch.zeros(sum(p.numel() for p in self.params))
        step.canaries = self

    def direction(self, index: int) -> torch.Tensor:
        """u_index: a unit vector over the trainable parameters, from the canary's own seed."""
        generator = torch.Generator().manual_seed(self.seeds[index])
        u = torch.randn(len(self.observed), generator=generator)
        return u / u.norm()

    def clipped_before(self, sums: dict[int, torch.Tensor]) -> None:
        """The real examples' clipped sums of this logical step (id(param) → tensor), before
        the canaries join them: what `observe_noisy` subtracts."""
        self._clipped = {key: value.detach().clone() for key, value in sums.items()}

    def sampled_rows(self) -> Iterator[dict[int, torch.Tensor]]:
        """This logical step's canaries: each included one is sampled with probability q and
        is one more example whose gradient is PRE_CLIP_NORM·C·u_i, for the engine to clip with
        the real ones; as id(param) → rows, at most ROWS_AT_ONCE rows at a time (a row is as
        large as the model)."""
        sampled = torch.rand(self.count, generator=self.generator) < self.sample_rate
        chosen = torch.nonzero(sampled & self.included).flatten().tolist()
        scale = PRE_CLIP_NORM * self.max_grad_norm
        sizes = [p.numel() for p in self.params]
        for start in range(0, len(chosen), ROWS_AT_ONCE):
            batch = chosen[start : start + ROWS_AT_ONCE]
            rows = torch.stack([self.direction(i) for i in batch]) * scale
            yield {
                id(p): part.reshape(len(batch), *p.shape).to(p)
                for p, part in zip(self.params, rows.split(sizes, dim=1), strict=True)
            }

    def observe_noisy(self, noisy: dict[int, torch.Tensor]) -> None:
        """The same step after the noise: what the canaries and the noise added to the real
        examples' clipped sum, accumulated over the steps."""
        parts = []
        for param in self.params:
            value = noisy[id(param)].detach().float()
            clipped = self._clipped.get(id(param))
            parts.append((value if clipped is None else value - clipped).flatten().cpu())
        self.observed += torch.cat(parts)
        self._clipped = {}

    def scores(self) -> np.ndarray:
        """⟨Σ_t (noisy sum_t − real clipped sum_t), u_i⟩ per canary: how far the canaries and
        the noise pushed the gradient sums along u_i over the trial (the parameters' movement
        along −u_i they caused, before the learning rate and the optimizer)."""
        return np.array([float(self.observed @ self.direction(i)) for i in range(self.count)])


class InputCanaries:
    """m input-space canaries (black-box): noise images with random labels; see the module
    docstring."""

    kind = "input"

    def __init__(self, count: int, generator: torch.Generator) -> None:
        self.count = count
        self.generator = generator
        self.included = torch.rand(count, generator=generator) < 0.5
        self.images: torch.Tensor | None = None
        self.labels: torch.Tensor | None = None
        self.model = self.prepare = None

    def insert(self, splits: Splits) -> Splits:
        """The training split with the included canaries appended (q = B/n counts them)."""
        images, labels = splits.train.tensors
        shape = (self.count, *images.shape[1:])
        self.images = torch.randint(0, 256, shape, generator=self.generator, dtype=torch.uint8)
        if splits.multilabel:
            draws = torch.rand((self.count, labels.shape[1]), generator=self.generator)
            self.labels = (draws < 0.5).to(labels.dtype)
        else:
            draws = torch.randint(0, splits.num_classes, (self.count,), generator=self.generator)
            self.labels = draws.to(labels.dtype)
        keep = self.included
        train = TensorDataset(
            torch.cat([images, self.images[keep].to(images.dtype)]),
            torch.cat([labels, self.labels[keep]]),
        )
        return dataclasses.replace(splits, train=train)

    def attach(self, *, step, model, prepare, sample_rate: float) -> None:
        self.model, self.prepare = model, prepare

    @torch.no_grad()
    def scores(self) -> np.ndarray:
        """−loss of the trained model on each canary (in evaluation mode)."""
        was_training = self.model.training
        self.model.eval()
        losses = []
        for start in range(0, self.count, 256):
            images = self.prepare(self.images[start : start + 256])
            output = self.model(images)
            labels = self.labels[start : start + 256].to(output.device)
            if labels.dtype.is_floating_point:  # multi-label: one binary loss per finding
                loss = F.binary_cross_entropy_with_logits(output, labels, reduction="none")
                losses.append(loss.mean(dim=1))
            else:
                losses.append(F.cross_entropy(output, labels, reduction="none"))
        self.model.train(was_training)
        return -torch.cat(losses).float().cpu().numpy()


def make_canaries(kind: str, count: int, generator: torch.Generator, max_grad_norm: float):
    """The canaries an audit asks for."""
    if kind not in CANARY_KINDS:
        raise TrainerError(f"unknown canary kind {kind!r}; use one of {', '.join(CANARY_KINDS)}.")
    if count < 2:
        raise TrainerError(f"an audit needs at least 2 canaries (got {count}); use ≥ 100.")
    if kind == "gradient":
        return GradientCanaries(count, generator, max_grad_norm)
    return InputCanaries(count, generator)
