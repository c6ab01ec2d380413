"""`make_private`: DP-SGD steps by fast clipping on your own model and optimizer.

    from trainers.fast_clipping import make_private

    model.train()
    with make_private(model, optimizer, noise_multiplier=1.1, max_grad_norm=1.0,
                      expected_batch_size=256, generator=noise_generator) as dp:
        for images, labels in logical_batches:  # sampled by you (Poisson, for the accounting)
            for x, y in zip(images.split(64), labels.split(64)):  # physical batches
                dp.backward(F.cross_entropy(dp.forward(x), y, reduction="none"))
            dp.step()  # p.grad = (Σ clipped + N(0, σ²C²)) / expected_batch_size; optimizer step

`dp.step(losses)` is `dp.backward(losses)` and `dp.step()` (a logical batch in one physical
batch). Per-example losses, not their mean: row i is example i's loss (with `views=K`, rows
i·K … i·K+K−1 are example i's K augmented views, its gradient their mean).

What it does not do: sample the batches and account for privacy (Opacus's `DPDataLoader` and
accountants, or this project's `accounting`, do). `expected_batch_size` None averages over the
examples actually seen, which suits fixed-size batches only: under Poisson sampling the batch
size is itself private, so pass q·N. `generator` None draws the noise from PyTorch's default
generator; pass a seeded `torch.Generator` to replay a run.

Nothing outlives the block: the hooks are the clipper's, on this model only, removed on exit,
and no setting is global. The model must be in training mode (the hooks capture training
passes only) and its trainable parameters fixed for the block's duration.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from trainers.fast_clipping.engine import FastClipper, noise_and_average


class PrivateTraining:
    """The handle `make_private` yields: `forward`, `backward` (clip, accumulate), `step`."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        if noise_multiplier < 0 or max_grad_norm <= 0:
            raise ValueError("noise_multiplier must be ≥ 0 and max_grad_norm > 0")
        if expected_batch_size is not None and expected_batch_size <= 0:
            raise ValueError("expected_batch_size must be positive (or None)")
        self.model, self.optimizer = model, optimizer
        self.noise_multiplier, self.max_grad_norm = noise_multiplier, max_grad_norm
        self.expected_batch_size, self.generator = expected_batch_size, generator
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._clipper = FastClipper(model, max_grad_norm)
        self._noise: dict = {}
        self._examples = 0

    @property
    def last_norms(self) -> torch.Tensor | None:
        """The per-example gradient norms (before clipping) of the last physical batch."""
        return self._clipper.last_norms

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's output on `inputs`, with what clipping needs captured."""
        return self._clipper.forward(inputs)

    def backward(self, loss_per_example: torch.Tensor, views: int = 1) -> None:
        """Clip this physical batch's per-example gradients and add them to the logical
        batch's sums (no `.grad` is written)."""
        self._clipper.backward(loss_per_example, views)
        self._examples += loss_per_example.numel() // views

    def step(self, loss_per_example: torch.Tensor | None = None, views: int = 1) -> None:
        """Noise and average the logical batch's clipped sums into `.grad`, step the
        optimizer and clear the gradients (`loss_per_example`: `backward` first)."""
        if loss_per_example is not None:
            self.backward(loss_per_example, views)
        batch = self.expected_batch_size or self._examples
        if not batch:
            raise ValueError("no examples since the last step: pass expected_batch_size")
        noise_and_average(
            self.params,
            self._clipper.take_sums(),
            noise_multiplier=self.noise_multiplier,
            max_grad_norm=self.max_grad_norm,
            expected_batch_size=batch,
            generator=self.generator,
            buffers=self._noise,
        )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._examples = 0

    def close(self) -> None:
        """Remove the hooks and drop sums not yet stepped."""
        self._clipper.close()
        self._clipper.take_sums()


@contextlib.contextmanager
def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[PrivateTraining]:
    """DP-SGD steps on `model` and `optimizer` inside a `with` block (see the module's
    docstring). Raises ValueError if a trainable layer of `model` has no handler
    (`fast_clipping_unsupported` says which; `register_layer` adds one)."""
    training = PrivateTraining(
        model, optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size, generator=generator,
    )  # fmt: skip
    try:
        yield training
    finally:
        training.close()
