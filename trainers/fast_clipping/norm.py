"""nn.GroupNorm's affine weight and bias: y = γ ⊙ x̂ + β per channel, x̂ the group-normalised
input (of each view on its own), so an example's gradients are Σ g ⊙ x̂ and Σ g over positions,
averaged over its views."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.fast_clipping.algebra import mean_views, trains
from trainers.fast_clipping.registry import MaterialisedHandler, register_layer


@register_layer(nn.GroupNorm)
class GroupNormHandler(MaterialisedHandler):
    def prepare(self, activations, backprops, views, output=None) -> list[torch.Tensor]:
        module = self.module
        # Per view (each normalised on its own), then the mean over an example's views.
        samples = {}
        if trains(module.weight):
            normalised = F.group_norm(activations, module.num_groups, None, None, module.eps)
            samples[id(module.weight)] = mean_views((backprops * normalised).flatten(2).sum(2),
                                                    views)  # fmt: skip
        if trains(module.bias):
            samples[id(module.bias)] = mean_views(backprops.flatten(2).sum(2), views)
        return self.in_order(samples)


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

    def prepare(self, activations, backprops, views, output=None) -> list[torch.Tensor]:
        module = self.module
        weight = None if module.weight is None else module.weight.detach()
        bias = None if module.bias is None else module.bias.detach()
        with torch.enable_grad():
            normed = F.group_norm(activations.detach(), module.num_groups, weight, bias, module.eps)
            normed.requires_grad_(True)
            (at_norm,) = torch.autograd.grad(module.act(normed.clone()), normed, backprops)
        return super().prepare(activations, at_norm, views)
