"""nn.Conv2d (grouped too; zero padding, given, "same" or "valid"): a `ProductHandler` whose
positions are the output pixels and whose inputs are the unfolded patches. timm's `Conv2dSame`
pads in its forward, asymmetrically: its handler (`SameConvHandler`) pads the same way."""

from __future__ import annotations

import torch
from torch import nn

from trainers.fast_clipping.algebra import mean_views
from trainers.fast_clipping.conv_kernels import (
    choose_kernel,
    explicit_padding,
    per_example_is_cheaper,
    unfold,
)
from trainers.fast_clipping.linear import ProductHandler, ProductState
from trainers.fast_clipping.registry import register_layer


@register_layer(nn.Conv2d)
class ConvHandler(ProductHandler):
    same_padding = False
    """Whether the layer pads its input itself, as timm's `*Same` convs do."""

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if module.padding_mode != "zeros":
            return f"{type(module).__name__} with padding_mode={module.padding_mode}"
        return None

    @property
    def groups(self) -> int:
        return self.module.groups

    def positions(self, a, g, views, output) -> ProductState:
        module = self.module
        a, padding = explicit_padding(module, a, same=self.same_padding)
        state = ProductState(views=views, raw=(a, g), padding=padding, output=output)
        groups = module.groups
        positions = views * g.shape[2] * g.shape[3]
        fan_in = a.shape[1] // groups * module.kernel_size[0] * module.kernel_size[1]
        if per_example_is_cheaper(positions, g.shape[1] // groups, fan_in,
                                  rows=a.shape[0] // views * groups):  # fmt: skip
            # Few channels, many positions: each example's gradient (B, groups, p, d).
            kernel = choose_kernel(module, a.shape, g.shape)
            state.per_example = kernel(module, a, g, padding, views)
            state.bias_sample = mean_views(g.flatten(2).sum(2), views)
            return state
        state.a = unfold(a, module, padding)
        state.g = g.flatten(2)
        return state

    def bias_sum(self, weighted: torch.Tensor) -> torch.Tensor:
        return weighted.reshape(weighted.shape[0], weighted.shape[1], -1).sum((0, 2))

    def weight_sum(self, a, weighted, state) -> torch.Tensor:
        module = self.module
        return torch.nn.grad.conv2d_weight(
            a, module.weight.shape, weighted, stride=module.stride,
            padding=state.padding, dilation=module.dilation, groups=module.groups,
        )  # fmt: skip


class SameConvHandler(ConvHandler):
    """timm's Conv2dSame (registered by `timm_layers`)."""

    same_padding = True
