"""Layers whose output at each position is W a + b: `ProductHandler`, their shared algebra, and
its handler for nn.Linear (conv.py's handles nn.Conv2d over unfolded patches).

Per example (K views merged: an example's positions are its views' positions together), the
weight gradient is g aᵀ summed over positions: its squared norm by `algebra.plain_norms` (ghost
or direct), and the clipped sum Σ_i c_i g_i a_iᵀ by the layer's own weight-gradient kernel on
the c-weighted output gradients, with no second backward pass through the network.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from trainers.fast_clipping.algebra import merge_views, plain_norms, trains
from trainers.fast_clipping.registry import LayerHandler, register_layer


@dataclass
class ProductState:
    """One physical batch of one layer."""

    views: int
    raw: tuple[torch.Tensor, torch.Tensor]
    """(a, g) as the layer's own weight-gradient kernel takes them (rows are views)."""
    a: torch.Tensor | None = None
    """(B, groups, d, P): each example's inputs per position (views merged)."""
    g: torch.Tensor | None = None
    """(B, groups, p, P): each example's output gradients per position (over K)."""
    per_example: torch.Tensor | None = None
    """(B, groups, p, d): each example's weight gradient, where materialising it is cheaper."""
    bias_sample: torch.Tensor | None = None
    """(B, p): each example's bias gradient, with `per_example`."""
    padding: tuple[int, int] = (0, 0)
    output: torch.Tensor | None = None
    standardisation: tuple | None = None


class ProductHandler(LayerHandler):
    """y = W a + b at each position; subclasses say what the positions are (`positions`), how
    the layer's own kernels sum over them (`bias_sum`, `weight_sum`), and may reparameterise
    the weight (`weight_trains`, `weight_norms`, `weight_sums`)."""

    groups = 1

    def positions(self, a, g, views: int, output) -> ProductState:
        """The state with `a` (B·K, d, P) and `g` (B·K, p, P), or with `per_example` set."""
        raise NotImplementedError

    def bias_sum(self, weighted: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def weight_sum(self, a: torch.Tensor, weighted: torch.Tensor, state) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, activations, backprops, views, output=None) -> ProductState:
        state = self.positions(activations, backprops, views, output)
        if state.per_example is not None:
            return state
        a, g = state.a, state.g
        if views > 1:
            # An example's views are its positions; its gradient is their mean.
            a = merge_views(a, views)
            g = merge_views(g, views) / views
        # Grouped convs: group j maps its own input channels to its own output channels.
        groups = self.groups
        state.a = a.reshape(a.shape[0], groups, -1, a.shape[-1])
        state.g = g.reshape(g.shape[0], groups, -1, g.shape[-1])
        return state

    def weight_trains(self) -> bool:
        """Whether any parameter behind the effective weight trains."""
        return self.module.weight.requires_grad

    def squared_norms(self, state: ProductState) -> torch.Tensor:
        bias = getattr(self.module, "bias", None)
        if state.per_example is not None:
            per_example = state.per_example
            total = torch.zeros(per_example.shape[0], dtype=per_example.dtype,
                                device=per_example.device)  # fmt: skip
            if trains(bias):
                total = total + state.bias_sample.pow(2).sum(1)
        else:
            g = state.g
            total = torch.zeros(g.shape[0], dtype=g.dtype, device=g.device)
            if trains(bias):
                total = total + g.sum(3).pow(2).sum((1, 2))
        if not self.weight_trains():
            return total
        return total + self.weight_norms(state)

    def compact(self, state: ProductState) -> None:
        # The clipped sums need the per-example gradients where they were materialised, else
        # the layer's raw input and output gradient (for its own weight-gradient kernel).
        state.a = state.g = state.output = None
        if state.per_example is not None:
            state.raw = None

    def weight_norms(self, state: ProductState) -> torch.Tensor:
        """Each example's squared weight-gradient norm."""
        if state.per_example is not None:  # a fused norm: one pass, no squared copy
            return torch.linalg.vector_norm(state.per_example.flatten(1), dim=1) ** 2
        return plain_norms(state.a, state.g)

    def clipped_sums(self, state: ProductState, factors: torch.Tensor) -> Iterator:
        bias = getattr(self.module, "bias", None)
        if state.per_example is not None:  # materialised already: the clipped sums are cheap
            factors = factors.to(state.per_example.dtype)
            if trains(bias):
                yield bias, factors @ state.bias_sample
            if not self.weight_trains():
                return
            summed = factors @ state.per_example.flatten(1)
            summed = summed.reshape(self.module.weight.shape)
        else:
            # Rows are views: each carries its example's factor, over K (its gradient is the
            # mean), on the output gradients; then the layer's own weight-gradient kernel.
            a, g = state.raw
            rows = (factors / state.views).repeat_interleave(state.views)
            weighted = g * rows.view(-1, *([1] * (g.dim() - 1)))
            if trains(bias):
                yield bias, self.bias_sum(weighted)
            if not self.weight_trains():
                return
            summed = self.weight_sum(a, weighted, state)
        yield from self.weight_sums(summed, state)

    def weight_sums(self, summed: torch.Tensor, state: ProductState) -> Iterator:
        """(parameter, clipped sum) pairs from the clipped sum of the effective weight's
        gradients."""
        yield self.module.weight, summed


@register_layer(nn.Linear)
class LinearHandler(ProductHandler):
    """nn.Linear over any leading dimensions: each (…) index of an example is a position."""

    def positions(self, a, g, views, output) -> ProductState:
        state = ProductState(views=views, raw=(a, g))
        state.a = a.reshape(a.shape[0], -1, a.shape[-1]).transpose(1, 2)
        state.g = g.reshape(g.shape[0], -1, g.shape[-1]).transpose(1, 2)
        return state

    def bias_sum(self, weighted: torch.Tensor) -> torch.Tensor:
        return weighted.reshape(-1, weighted.shape[-1]).sum(0)

    def weight_sum(self, a, weighted, state) -> torch.Tensor:
        return weighted.reshape(-1, weighted.shape[-1]).T @ a.reshape(-1, a.shape[-1])
