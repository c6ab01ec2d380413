"""nn.LayerNorm's elementwise affine: y = γ ⊙ x̂ + β over the normalised trailing dimensions,
x̂ each position's own normalisation (of each view on its own), so an example's gradients are
Σ g ⊙ x̂ and Σ g over its positions (the leading dimensions: a transformer's tokens), averaged
over its views. Materialising them costs B × |γ|, as small as the layer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers.fast_clipping.algebra import trains
from trainers.fast_clipping.registry import LayerHandler, register_layer


@dataclass
class LayerNormState:
    weight_sample: torch.Tensor | None = None
    bias_sample: torch.Tensor | None = None


@register_layer(nn.LayerNorm)
class LayerNormHandler(LayerHandler):
    def prepare(self, activations, backprops, views, output=None) -> LayerNormState:
        module = self.module
        shape = tuple(module.normalized_shape)
        normalised = F.layer_norm(activations, shape, None, None, module.eps)
        rows = activations.shape[0]

        def per_example(x: torch.Tensor) -> torch.Tensor:
            # (B·K, positions…, *shape) → (B, *shape): sum over positions, mean over views.
            summed = x.reshape(rows, -1, *shape).sum(1)
            return summed.reshape(rows // views, views, *shape).mean(1)

        state = LayerNormState()
        if trains(module.weight):
            state.weight_sample = per_example(backprops * normalised)
        if trains(module.bias):
            state.bias_sample = per_example(backprops)
        return state

    def squared_norms(self, state: LayerNormState) -> torch.Tensor:
        samples = [s for s in (state.weight_sample, state.bias_sample) if s is not None]
        return sum(s.flatten(1).pow(2).sum(1) for s in samples)

    def clipped_sums(self, state: LayerNormState, factors: torch.Tensor) -> Iterator:
        for param, sample in ((self.module.weight, state.weight_sample),
                              (self.module.bias, state.bias_sample)):  # fmt: skip
            if sample is not None:
                yield param, torch.einsum("n,n...->...", factors.to(sample), sample)
