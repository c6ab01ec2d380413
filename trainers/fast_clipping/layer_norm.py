"""Elementwise affine maps over the trailing dimensions: y = γ ⊙ n(x) + β at each position,
n(x) computed from that position alone (of each view on its own). An example's gradients are
Σ g ⊙ n(x) and Σ g over its positions (the leading dimensions: a transformer's tokens),
averaged over its views. Materialising them costs B × |γ|, as small as the layer.

- nn.LayerNorm and timm's LayerNorm: n(x) = x̂, the normalised position; timm's LayerNorm2d
  the same over NCHW channels;
- nn.RMSNorm and timm's RmsNorm: n(x) = x / rms(x), no β;
- timm's LayerScale (ViT blocks with `init_values`): n(x) = x, no β; LayerScale2d the same
  over NCHW channels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainers.fast_clipping.algebra import trains
from trainers.fast_clipping.registry import MaterialisedHandler, register_layer


class TrailingAffineHandler(MaterialisedHandler):
    """y = γ ⊙ n(x) + β over the trailing `shape()`; subclasses say what n is and where γ and β
    live."""

    scale_name = "weight"
    shift_name: str | None = "bias"

    def shape(self) -> tuple[int, ...]:
        return tuple(self.module.normalized_shape)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def channels_last(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input or output gradient with its affine dimensions last."""
        return x

    def affine_parameters(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        shift = getattr(self.module, self.shift_name, None) if self.shift_name else None
        return getattr(self.module, self.scale_name, None), shift

    def prepare(self, activations, backprops, views, output=None) -> list[torch.Tensor]:
        shape = self.shape()
        rows = activations.shape[0]

        def per_example(x: torch.Tensor) -> torch.Tensor:
            # (B·K, positions…, *shape) → (B, *shape): sum over positions, mean over views.
            summed = self.channels_last(x).reshape(rows, -1, *shape).sum(1)
            return summed.reshape(rows // views, views, *shape).mean(1)

        scale, shift = self.affine_parameters()
        samples = {}
        if trains(scale):
            samples[id(scale)] = per_example(backprops * self.normalise(activations))
        if trains(shift):
            samples[id(shift)] = per_example(backprops)
        return self.in_order(samples)


@register_layer(nn.LayerNorm)
class LayerNormHandler(TrailingAffineHandler):
    def normalise(self, x):
        return F.layer_norm(x, self.shape(), None, None, self.module.eps)


class LayerNorm2dHandler(LayerNormHandler):
    """timm's LayerNorm2d (ConvNeXt): LayerNorm over the channels of NCHW images."""

    def channels_last(self, x):
        return x.movedim(1, -1)

    def normalise(self, x):
        return super().normalise(x.movedim(1, -1)).movedim(-1, 1)


@register_layer(nn.RMSNorm)
class RMSNormHandler(TrailingAffineHandler):
    """nn.RMSNorm, and timm's RmsNorm (registered in `timm_layers`): the same algebra."""

    shift_name = None

    def normalise(self, x):
        return F.rms_norm(x, self.shape(), None, self.module.eps)


class LayerScaleHandler(TrailingAffineHandler):
    """timm's LayerScale: y = x ⊙ γ over the last dimension (registered in `timm_layers`)."""

    scale_name = "gamma"
    shift_name = None

    @classmethod
    def unsupported(cls, module: nn.Module) -> str | None:
        if module.inplace:  # its input, which the hooks keep, is overwritten by its output
            return f"{type(module).__name__} with inplace=True"
        return None

    def shape(self):
        return tuple(self.module.gamma.shape)

    def normalise(self, x):
        return x


class LayerScale2dHandler(LayerScaleHandler):
    """timm's LayerScale2d: y = x ⊙ γ per channel of NCHW images."""

    def channels_last(self, x):
        return x.movedim(1, -1)
