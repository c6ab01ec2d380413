"""Which handler clips which layer: `register_layer(*types)` maps nn.Module types to handler
classes (as Opacus's `register_grad_sampler` maps them to grad samplers).

A handler class (a `LayerHandler`) knows one layer type's per-example algebra; the engine makes
one handler per layer of a model that has trainable parameters of its own, and a model is fully
supported when every such layer has one (`fast_clipping_unsupported` says which do not).

Lookup walks the layer type's MRO, so a subclass of a registered type is clipped by its base's
handler, unless it overrides `forward`: a handler's algebra describes its registered type's
forward, and a new forward may compute anything (timm's `Linear` or `GroupNormAct` override it,
and stay unsupported). Register such a subclass explicitly if its forward keeps the algebra.

Layers from timm register lazily (`timm_layers`): the first lookup of a class defined in timm
imports the handlers for timm's types, so models without timm layers never import timm (3-4 s
in every trial process).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import torch
from torch import nn

HANDLERS: dict[type[nn.Module], type[LayerHandler]] = {}
"""Layer type → handler class, filled by `register_layer`."""

LAZY_REGISTRATIONS = {"timm.": "trainers.fast_clipping.timm_layers"}
"""Class-module prefix → the module that registers handlers for those classes when imported."""


class LayerHandler:
    """How the engine clips one layer type. Subclass it and register it with `register_layer`.

    The engine calls, once per physical batch of B examples (B·K rows with K views each):

    - `prepare(activations, backprops, views, output)`: the per-batch state, from the layer's
      input `activations` (its first positional input, B·K rows), the gradient `backprops` of
      the summed per-example losses with respect to its output, and (if `needs_output`) the
      output itself; an example's gradient is the mean over its K views' rows (`capture_site`
      may move where these are taken);
    - `squared_norms(state)`: (B,) each example's squared gradient norm over the layer's
      trainable parameters; then `compact(state)` may free what only the norms needed;
    - `clipped_sums(state, factors)`: pairs (parameter, Σ_i factors_i ∇_i parameter) for each
      trainable parameter, `factors` (B,) the clip factors.
    """

    needs_output: ClassVar[bool] = False
    """Whether `prepare` needs the layer's output (kept from the forward pass)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        """Why this handler cannot clip this instance of its type (None: it can)."""
        return None

    def capture_site(self) -> tuple[nn.Module, str]:
        """Which pass the engine captures for `prepare`: (module, "output"), the default, is
        this layer's input and the gradient at its output; (module, "input") is `module`'s input
        and the gradient at that input, for parameters that enter the network inside a larger
        forward (ViT's position embedding, added before its `pos_drop`)."""
        return self.module, "output"

    def prepare(
        self,
        activations: torch.Tensor,
        backprops: torch.Tensor,
        views: int,
        output: torch.Tensor | None = None,
    ) -> Any:
        raise NotImplementedError

    def squared_norms(self, state: Any) -> torch.Tensor:
        raise NotImplementedError

    def compact(self, state: Any) -> None:
        """After `squared_norms`: drop from `state` what `clipped_sums` does not need (the
        engine keeps every layer's state until the clip factors are known)."""

    def clipped_sums(
        self, state: Any, factors: torch.Tensor
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        raise NotImplementedError

    # Explicit per-example gradients (an audit's gradient canaries, `FastClipper.clip_rows`):
    # rows given per trainable parameter, (n, *parameter shape) each.

    def trainable_parameters(self) -> list[torch.Tensor]:
        """The layer's own trainable parameters, in the order rows are given."""
        return [p for p in self.module.parameters(recurse=False) if p.requires_grad]

    def rows_squared_norms(self, rows: list[torch.Tensor]) -> torch.Tensor:
        """(n,) each explicit row's squared norm over this layer's parameters."""
        return sum(r.reshape(len(r), -1).pow(2).sum(dim=1) for r in rows)

    def rows_clipped_sums(
        self, rows: list[torch.Tensor], factors: torch.Tensor
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        """Pairs (parameter, Σ_i factors_i · row_i) of explicit rows."""
        for param, row in zip(self.trainable_parameters(), rows, strict=True):
            yield param, torch.einsum("n,n...->...", factors.to(row), row)


class MaterialisedHandler(LayerHandler):
    """A layer whose per-example gradients are as small as its parameters (norm affines, ViT
    tokens): `prepare` returns them, (B, *parameter shape) per trainable parameter in
    `trainable_parameters()` order, and the norms and clipped sums are those of explicit rows."""

    def squared_norms(self, state: list[torch.Tensor]) -> torch.Tensor:
        return self.rows_squared_norms(state)

    def clipped_sums(self, state: list[torch.Tensor], factors: torch.Tensor):
        return self.rows_clipped_sums(state, factors)

    def in_order(self, samples: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        """`samples` (id(parameter) → rows) as `prepare`'s state."""
        return [samples[id(param)] for param in self.trainable_parameters()]


def register_layer(
    *types: type[nn.Module],
) -> Callable[[type[LayerHandler]], type[LayerHandler]]:
    """Class decorator: `handler` clips layers of `types` (and of their subclasses that keep
    their forward). A later registration of a type replaces an earlier one.

        @register_layer(MyScale)
        class MyScaleHandler(LayerHandler):
            ...
    """
    if not types or not all(isinstance(t, type) and issubclass(t, nn.Module) for t in types):
        raise TypeError("register_layer takes one or more nn.Module subclasses")

    def decorate(handler: type[LayerHandler]) -> type[LayerHandler]:
        if not (isinstance(handler, type) and issubclass(handler, LayerHandler)):
            raise TypeError(f"{handler!r} is not a LayerHandler subclass")
        for layer_type in types:
            HANDLERS[layer_type] = handler
        return handler

    return decorate


def _load_lazy_registrations(layer_type: type) -> None:
    for prefix, module_name in list(LAZY_REGISTRATIONS.items()):
        if any(cls.__module__.startswith(prefix) for cls in layer_type.__mro__):
            LAZY_REGISTRATIONS.pop(prefix, None)
            importlib.import_module(module_name)


def handler_for(module: nn.Module) -> type[LayerHandler] | None:
    """The handler class registered for `module`'s type or its nearest registered base, None
    if there is none or `module`'s class overrides that base's forward."""
    layer_type = type(module)
    _load_lazy_registrations(layer_type)
    for cls in layer_type.__mro__:
        handler = HANDLERS.get(cls)
        if handler is not None:
            return handler if layer_type.forward is cls.forward else None
    return None


def unsupported_reason(module: nn.Module) -> str | None:
    """None if a handler clips `module`'s own parameters, else why not."""
    handler = handler_for(module)
    if handler is None:
        return type(module).__name__
    return handler.unsupported(module)


def trainable_layers(model: nn.Module) -> list[nn.Module]:
    """The modules with trainable parameters of their own, in `model.modules()` order."""
    return [
        module
        for module in model.modules()
        if any(p.requires_grad for p in module.parameters(recurse=False))
    ]


def shared_parameters(model: nn.Module) -> list[list[str]]:
    """The names of each trainable parameter that more than one layer holds (tied weights, or
    one layer registered under two names). Each layer's handler sees only its own use, so the
    engine would take ‖g₁‖² + ‖g₂‖² for the example's ‖g₁ + g₂‖²: a wrong norm, a broken clip
    bound. Opacus's per-example gradients sum both uses."""
    holders: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        for own, param in module.named_parameters(recurse=False):
            if param.requires_grad:
                holders.setdefault(id(param), []).append(f"{name}.{own}" if name else own)
    return [names for names in holders.values() if len(names) > 1]


def fast_clipping_unsupported(model: nn.Module) -> str | None:
    """Why the engine cannot clip this model (None: it can): the sorted, comma-separated
    reasons of its trainable layers that no handler clips, and any parameter shared between
    layers."""
    reasons = {unsupported_reason(module) for module in trainable_layers(model)} - {None}
    reasons |= {
        f"a parameter shared by {' and '.join(names)}" for names in shared_parameters(model)
    }
    return ", ".join(sorted(reasons)) if reasons else None
