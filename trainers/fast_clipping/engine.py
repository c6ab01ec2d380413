"""The clipper: hooks on one model's supported layers, per-example norms, clip factors and the
clipped sums of a logical batch; and the noise Opacus's optimizer would add.

What a forward pass captures belongs to the `FastClipper` that hooked the model (one record
per layer, emptied by the clipper itself after each backward). Which forward passes capture is
scoped, not global: `forward_with_input_grad(model, …)` marks the layers of `model` as capturing
in a context variable (per thread and task) for that one call, so other forward passes of the
model (evaluation, a second model, another thread) capture nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from functools import partial

import torch
from torch import nn

from trainers.fast_clipping.registry import (
    LayerHandler,
    fast_clipping_unsupported,
    handler_for,
    trainable_layers,
)

_CAPTURING: ContextVar[frozenset[int]] = ContextVar("fast_clipping_capturing", default=frozenset())
"""ids of the modules whose forward passes are being captured in this context."""


@contextlib.contextmanager
def capturing(model: nn.Module) -> Iterator[None]:
    """Forward passes of `model` in this block are captured by the clippers hooked into its
    layers, with no weight requiring grad: the backward pass then computes the layer output
    gradients the engine needs (from the first trainable layer on) and no weight gradient."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    token = _CAPTURING.set(_CAPTURING.get() | {id(m) for m in model.modules()})
    try:
        yield
    finally:
        _CAPTURING.reset(token)
        for p in params:
            p.requires_grad_(True)


def forward_with_input_grad(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """`model(images)` captured for the clippers hooked into it (see `capturing`)."""
    with capturing(model):
        return model(images.detach())


class SharedLayerError(RuntimeError):
    """A trainable layer ran twice before a backward pass (see `FastClipper._first_use`)."""

    def __init__(self, message: str, layer: str) -> None:
        super().__init__(message)
        self.layer = layer


class _Capture:
    """One hooked layer: its handler and what this physical batch's passes left for it."""

    __slots__ = ("handler", "activations", "backprops", "output", "handle")

    def __init__(self, handler: LayerHandler) -> None:
        self.handler = handler
        self.activations = self.backprops = self.output = None
        self.handle = None

    def take(self):
        """The captured tensors, and an empty record for the next batch."""
        taken = self.activations, self.backprops, self.output
        self.activations = self.backprops = self.output = None
        return taken


def _prepare(handler: LayerHandler, activations, backprops, output, views: int):
    if activations is None or backprops is None:
        raise RuntimeError(
            f"fast clipping captured no pass through {type(handler.module).__name__}: run the "
            "model by forward_with_input_grad (in training mode), and let the loss depend on "
            "every trainable layer"
        )
    return handler.prepare(activations, backprops, views, output)


class FastClipper:
    """Clips one physical batch at a time and accumulates the clipped sums of a logical one.

    Hooks every layer of `model` with trainable parameters of its own (fixed at construction)
    until `close()`. Per physical batch: `forward_with_input_grad(model, x)` (or `forward`),
    then `backward(per-example losses, views)`; `take_sums()` hands over Σ_i c_i ∇_i per
    parameter (keyed by id) of the logical batch so far. Raises ValueError for a model with a
    trainable layer no handler clips (`fast_clipping_unsupported`).
    """

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        reason = fast_clipping_unsupported(model)
        if reason is not None:
            raise ValueError(f"fast clipping does not support this model's layers: {reason}")
        self.model = model
        self.max_grad_norm = max_grad_norm
        self._captures = []
        for module in trainable_layers(model):
            capture = _Capture(handler_for(module)(module))
            site, where = capture.handler.capture_site()
            if where == "output":
                capture.handle = site.register_forward_hook(partial(self._forward, capture))
            else:
                capture.handle = site.register_forward_pre_hook(partial(self._input, capture))
            self._captures.append(capture)
        self.sums: dict[int, torch.Tensor] = {}
        self.last_norms: torch.Tensor | None = None

    @property
    def handlers(self) -> list[LayerHandler]:
        return [capture.handler for capture in self._captures]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        """The model's captured forward pass (`forward_with_input_grad`)."""
        return forward_with_input_grad(self.model, inputs)

    @staticmethod
    def _captures_now(module: nn.Module) -> bool:
        return torch.is_grad_enabled() and module.training and id(module) in _CAPTURING.get()

    @staticmethod
    def _first_use(capture: _Capture) -> None:
        """A layer run twice before a backward (a shared layer, or two forward passes) has
        the sum of both uses as each example's gradient, which a handler, seeing one input and
        one output gradient, would get wrong: refused, never clipped wrongly."""
        if capture.activations is not None:
            layer = type(capture.handler.module).__name__
            raise SharedLayerError(
                f"fast clipping: {layer} ran twice before a backward pass (a shared layer, or "
                "a second forward); run one forward per backward, or use Opacus's per-example "
                "gradients (clipping=opacus)",
                layer,
            )

    def _input(self, capture: _Capture, module, inputs):
        """A pre-hook: the module's input, and (by a tensor hook) the gradient at it."""
        if not self._captures_now(module):
            return None
        self._first_use(capture)
        x = inputs[0]
        capture.activations = x.detach()
        if not x.requires_grad:  # nothing before it trains: the backward pass starts here
            x = x.detach().requires_grad_(True)
            x.register_hook(partial(self._backward, capture))
            return (x, *inputs[1:])
        x.register_hook(partial(self._backward, capture))
        return None

    def _forward(self, capture: _Capture, module, inputs, output):
        if not self._captures_now(module):
            return None
        self._first_use(capture)
        capture.activations = inputs[0].detach()
        if capture.handler.needs_output:
            capture.output = output.detach()
        if not output.requires_grad:
            # Nothing before this layer needs a gradient (the first layer, or a frozen
            # backbone): start the backward pass here instead of at the input.
            output = output.detach().requires_grad_(True)
            output.register_hook(partial(self._backward, capture))
            return output
        output.register_hook(partial(self._backward, capture))
        return None

    @staticmethod
    def _backward(capture: _Capture, grad: torch.Tensor) -> None:
        capture.backprops = grad.detach()

    def backward(self, loss_per_row: torch.Tensor, views: int) -> None:
        """Per-example norms, clip factors and clipped sums of this physical batch: rows are
        B examples' K views each (i·K … i·K+K−1), an example's gradient their mean."""
        loss_per_row.sum().backward()
        if loss_per_row.numel() == 0:
            for capture in self._captures:
                capture.take()
            return
        # Layer by layer: each layer's norms at once, then its state keeps only what its
        # clipped sums need, so one layer's intermediates (unfolded inputs, per-example
        # gradients) are freed before the next layer's exist.
        pairs, squared = [], 0
        for capture in self._captures:
            handler = capture.handler
            state = _prepare(handler, *capture.take(), views)
            squared = squared + handler.squared_norms(state)
            handler.compact(state)
            pairs.append((handler, state))
        norms = squared.clamp_min(0).sqrt()
        self.last_norms = norms.detach()
        factors = self._factors(norms)
        for handler, state in pairs:
            self._accumulate(handler.clipped_sums(state, factors))

    def clip_rows(self, rows: dict[int, torch.Tensor]) -> None:
        """Explicit per-example gradients (id(param) → (n, *param.shape) for every trainable
        parameter; an audit's gradient canaries) clipped into the logical batch's sums: each
        row's norm over all layers, the same clip factors, its sum per layer by the layer's
        handler."""
        groups = [
            (handler, [rows[id(p)] for p in handler.trainable_parameters()])
            for handler in self.handlers
        ]
        squared = sum(handler.rows_squared_norms(layer_rows) for handler, layer_rows in groups)
        factors = self._factors(squared.clamp_min(0).sqrt())
        for handler, layer_rows in groups:
            self._accumulate(handler.rows_clipped_sums(layer_rows, factors))

    def _factors(self, norms: torch.Tensor) -> torch.Tensor:
        """Per-example clip factors min(1, C / ‖g‖), as Opacus computes them."""
        return (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)

    def _accumulate(self, pairs) -> None:
        for param, value in pairs:
            key = id(param)
            self.sums[key] = value if key not in self.sums else self.sums[key] + value

    def take_sums(self) -> dict[int, torch.Tensor]:
        sums, self.sums = self.sums, {}
        return sums

    def close(self) -> None:
        """Removes the hooks (the clipper cannot be used after)."""
        for capture in self._captures:
            capture.handle.remove()
            capture.take()


def layer_run_twice(model: nn.Module, example: torch.Tensor) -> str | None:
    """The type of a trainable layer that one training-mode forward pass of `example` runs
    twice (a layer reused inside the model), None if none. `example` should be
    data-independent (zeros of an input's shape): the probe chooses the engine before any
    step, so a model that reuses a layer is sent to Opacus up front instead of stopping its
    first step. The global random state (dropout) is left as it was."""
    modes = [(module, module.training) for module in model.modules()]
    clipper = FastClipper(model, 1.0)
    devices = [example.device] if example.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.train()
            forward_with_input_grad(model, example)
    except SharedLayerError as error:
        return error.layer
    finally:
        clipper.close()
        for module, training in modes:
            module.training = training
    return None


def noise_and_average(
    params: list[torch.Tensor],
    sums: dict[int, torch.Tensor],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator | None,
    buffers: dict | None = None,
) -> None:
    """p.grad = (Σ clipped + N(0, σ²C²)) / expected batch size, as Opacus does for a mean loss.

    `buffers`, a dict kept by the caller across steps, holds one scratch tensor for the noise
    draws (as large as the largest parameter, not the model: each draw is added at once).
    `generator` None draws from PyTorch's default generator.
    """
    for param in params:
        # The draws Opacus's optimizer makes (same generator, same parameter order, the same
        # count per call), into scratch kept across steps: a fresh tensor per parameter and
        # step costs page faults (a 68 M-float NFNet).
        noise = _scratch(buffers, param).normal_(
            0, noise_multiplier * max_grad_norm, generator=generator
        )
        summed = sums.get(id(param))
        grad = noise.clone() if summed is None else summed.to(param.dtype).add_(noise)
        param.grad = grad.div_(expected_batch_size)


def _scratch(buffers: dict | None, param: torch.Tensor) -> torch.Tensor:
    """An uninitialised tensor shaped like `param`: a view of `buffers`' scratch for its
    device and dtype (grown to the largest parameter seen), or a new one without `buffers`."""
    if buffers is None:
        return torch.empty_like(param)
    key = ("noise scratch", param.device, param.dtype)
    scratch = buffers.get(key)
    if scratch is None or scratch.numel() < param.numel():
        scratch = buffers[key] = torch.empty(param.numel(), dtype=param.dtype, device=param.device)
    return scratch[: param.numel()].view(param.shape)
