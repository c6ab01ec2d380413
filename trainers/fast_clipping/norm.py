"""nn.GroupNorm's affine weight and bias: y = γ ⊙ x̂ + β per channel, x̂ the group-normalised
input (of each view on its own), so an example's gradients are Σ g ⊙ x̂ and Σ g over positions,
averaged over its views."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainers.fast_clipping.algebra import trains
from trainers.fast_clipping.registry import LayerHandler, register_layer


@dataclass
class GroupNormState:
    a: torch.Tensor
    g: torch.Tensor
    views: int
    weight_sample: torch.Tensor | None = None
    bias_sample: torch.Tensor | None = None


@register_layer(nn.GroupNorm)
class GroupNormHandler(LayerHandler):
    def prepare(self, activations, backprops, views, output=None) -> GroupNormState:
        return GroupNormState(activations, backprops, views)

    def squared_norms(self, state: GroupNormState) -> torch.Tensor:
        module = self.module
        # Per view (each normalised on its own), then the mean over an example's views.
        normalised = F.group_norm(state.a, module.num_groups, None, None, module.eps)
        views = state.views

        def merge(x):
            return x.reshape(-1, views, x.shape[1]).mean(1)

        total = 0.0
        if trains(module.weight):
            state.weight_sample = merge((state.g * normalised).flatten(2).sum(2))
            total = total + state.weight_sample.pow(2).sum(1)
        if trains(module.bias):
            state.bias_sample = merge(state.g.flatten(2).sum(2))
            total = total + state.bias_sample.pow(2).sum(1)
        return total

    def clipped_sums(self, state: GroupNormState, factors: torch.Tensor) -> Iterator:
        module = self.module
        if trains(module.weight):
            yield module.weight, (factors[:, None] * state.weight_sample).sum(0)
        if trains(module.bias):
            yield module.bias, (factors[:, None] * state.bias_sample).sum(0)


class GroupNormActHandler(GroupNormHandler):
    """timm's GroupNormAct (BiT, NFNet-free ResNets): the GroupNorm above, then an activation.
    The hooks see the gradient at the activation's output; the affine parameters need it at
    the norm's output, g ⊙ act'(y), recomputed here by autograd through the activation alone
    (any activation, in place or not). Registered for timm's type in `timm_layers`."""

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if not isinstance(module.drop, nn.Identity):
            return f"{type(module).__name__} with a drop layer ({type(module.drop).__name__})"
        return None

    def prepare(self, activations, backprops, views, output=None) -> GroupNormState:
        module = self.module
        weight = None if module.weight is None else module.weight.detach()
        bias = None if module.bias is None else module.bias.detach()
        with torch.enable_grad():
            normed = F.group_norm(activations.detach(), module.num_groups, weight, bias, module.eps)
            normed.requires_grad_(True)
            (at_norm,) = torch.autograd.grad(module.act(normed.clone()), normed, backprops)
        return GroupNormState(activations, at_norm, views)
