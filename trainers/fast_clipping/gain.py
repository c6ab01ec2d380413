"""NFNets' skip-init gains (`trainers.models.ScalarGain`, recognised by type): y = γ·x with one
scalar γ, so an example's gradient is Σ g ⊙ x (the mean over its views)."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from trainers.fast_clipping.registry import LayerHandler, register_layer
from trainers.models import ScalarGain


@register_layer(ScalarGain)
class ScalarGainHandler(LayerHandler):
    def prepare(self, activations, backprops, views, output=None) -> torch.Tensor:
        sample = (backprops * activations).flatten(1).sum(1)
        return sample.reshape(-1, views).mean(1)

    def squared_norms(self, state: torch.Tensor) -> torch.Tensor:
        return state.pow(2)

    def clipped_sums(self, state: torch.Tensor, factors: torch.Tensor) -> Iterator:
        gain = self.module.gain
        yield gain, (factors * state).sum().reshape(gain.shape)
