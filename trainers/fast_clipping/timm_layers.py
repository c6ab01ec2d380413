"""Handlers for timm's layers, by type. Imported by the registry on the first lookup of a
class defined in timm (a model without timm layers never imports timm)."""

from __future__ import annotations

from timm.layers import (
    Conv2dSame,
    GroupNormAct,
    LayerNorm,
    LayerNorm2d,
    LayerScale,
    LayerScale2d,
    RmsNorm,
    ScaledStdConv2d,
    ScaledStdConv2dSame,
    StdConv2d,
    StdConv2dSame,
)
from timm.models.vision_transformer import VisionTransformer

from trainers.fast_clipping.conv import SameConvHandler
from trainers.fast_clipping.layer_norm import (
    LayerNorm2dHandler,
    LayerNormHandler,
    LayerScale2dHandler,
    LayerScaleHandler,
    RMSNormHandler,
)
from trainers.fast_clipping.norm import GroupNormActHandler
from trainers.fast_clipping.registry import register_layer
from trainers.fast_clipping.standardisation import (
    SameScaledStdConvHandler,
    SameStdConvHandler,
    ScaledStdConvHandler,
    StdConvHandler,
)
from trainers.fast_clipping.vit_tokens import VisionTransformerTokensHandler

register_layer(Conv2dSame)(SameConvHandler)
register_layer(StdConv2d)(StdConvHandler)
register_layer(StdConv2dSame)(SameStdConvHandler)
register_layer(ScaledStdConv2d)(ScaledStdConvHandler)
register_layer(ScaledStdConv2dSame)(SameScaledStdConvHandler)
register_layer(GroupNormAct)(GroupNormActHandler)
register_layer(LayerNorm)(LayerNormHandler)  # timm's: nn.LayerNorm's algebra, a fused kernel
register_layer(LayerNorm2d)(LayerNorm2dHandler)
register_layer(RmsNorm)(RMSNormHandler)
register_layer(LayerScale)(LayerScaleHandler)
register_layer(LayerScale2d)(LayerScale2dHandler)
register_layer(VisionTransformer)(VisionTransformerTokensHandler)
