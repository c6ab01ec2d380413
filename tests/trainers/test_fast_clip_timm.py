"""The fast engine on timm's transformer and BiT models (pretrained=False), against the
microbatch reference: ViT's class/register tokens and position embedding, patch embedding,
attention and MLP Linear layers on tokens, LayerNorm, RMSNorm, LayerScale; BiT's
weight-standardised convs and GroupNormAct; with 1 and 2 views and with layer selection. And
every space's model runs on the fast engine with clipping=auto."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from timm.layers import GroupNormAct, LayerNorm2d, LayerScale2d, RmsNorm
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from spaces import list_spaces
from tests.helpers import assert_matches_microbatch, scaled_images, tiny
from trainers import make_config
from trainers.fast_clipping import fast_clipping_unsupported
from trainers.fast_clipping.algebra import plain_norms
from trainers.layers import select_trainable
from trainers.models import build_model

BATCHES = [(1, 1), (4, 1), (3, 2)]

VITS = {
    # name: VisionTransformer keyword arguments (16 px images, 4 px patches: 16 patch tokens)
    "cls token, pos_embed over it": {},
    "registers, pos_embed on patches only, LayerScale, qk LayerNorm": dict(
        reg_tokens=2, no_embed_class=True, init_values=0.1, qk_norm=True
    ),
    "no class token, average pooling, RmsNorm": dict(
        class_token=False, global_pool="avg", norm_layer=RmsNorm
    ),
}


def small_vit(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    values = dict(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2,
                  num_classes=10)  # fmt: skip
    return VisionTransformer(**{**values, **kwargs}).double()


def randomise(model: nn.Module) -> nn.Module:
    """timm initialises some parameters to zero or one (tokens, LayerScale, heads): random
    values make every per-example gradient term count."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    return model


@pytest.mark.parametrize("variant", list(VITS))
@pytest.mark.parametrize("batch, views", BATCHES)
def test_vision_transformer_matches_the_microbatch_reference(variant, batch, views):
    model = randomise(small_vit(**VITS[variant]))
    assert fast_clipping_unsupported(model) is None
    assert_matches_microbatch(model, scaled_images(batch, views), torch.arange(batch) % 10, views)


@pytest.mark.parametrize("batch, views", [(3, 1), (2, 2)])
def test_dynamic_size_vit_at_another_grid_clips_its_resampled_position_embedding(batch, views):
    # Built for 16 px (a 4×4 grid), fed 24 px (6×6): pos_embed is resampled (bicubic) in the
    # forward, so its per-example gradient is the resampling's adjoint of each example's.
    model = randomise(small_vit(dynamic_img_size=True))
    x = scaled_images(batch, views, size=24)
    assert_matches_microbatch(model, x, torch.arange(batch) % 10, views)


@pytest.mark.parametrize(
    "selection",
    [dict(trainable_layers="last_k_blocks", trainable_blocks=1),
     dict(trainable_layers="norms_and_head"), dict(trainable_layers="bias_and_head"),
     "tokens and head, patch embedding frozen"],
)  # fmt: skip
def test_vision_transformer_with_layer_selection(selection):
    model = randomise(small_vit(reg_tokens=1))
    if isinstance(selection, dict):
        select_trainable(model, make_config(tiny(**selection, head_init="default")))
    else:  # nothing before the tokens trains: the backward pass starts at the token sequence
        for name, param in model.named_parameters():
            param.requires_grad_(name in {"cls_token", "reg_token", "pos_embed"}
                                 or name.startswith("head"))  # fmt: skip
    assert fast_clipping_unsupported(model) is None
    assert_matches_microbatch(model, scaled_images(3, 2), torch.arange(3) % 10, 2)


def small_bit() -> nn.Module:
    # BiT's ResNetV2 (pre-activation bottlenecks, StdConv2d, GroupNormAct), two tiny stages.
    torch.manual_seed(0)
    return ResNetV2(layers=[1, 1], channels=(16, 32), stem_chs=8, num_classes=10,
                    norm_layer=partial(GroupNormAct, num_groups=4)).double()  # fmt: skip


@pytest.mark.parametrize("batch, views", BATCHES)
def test_bit_resnetv2_matches_the_microbatch_reference(batch, views):
    model = randomise(small_bit())
    assert fast_clipping_unsupported(model) is None
    assert_matches_microbatch(model, scaled_images(batch, views), torch.arange(batch) % 10, views)


@pytest.mark.parametrize("mode", ["last_k_blocks", "norms_and_head"])
def test_bit_resnetv2_with_layer_selection(mode):
    model = randomise(small_bit())
    select_trainable(model, make_config(tiny(trainable_layers=mode, head_init="default")))
    assert_matches_microbatch(model, scaled_images(3, 2), torch.arange(3) % 10, 2)


class ChannelsFirstBlock(nn.Module):
    """timm's NCHW LayerNorm2d and LayerScale2d (ConvNeXt-style) between convs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2)
        self.norm = LayerNorm2d(8)
        self.scale = LayerScale2d(8, init_values=0.5)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(self.scale(self.norm(self.conv(x))).mean((2, 3)))


@pytest.mark.parametrize("batch, views", BATCHES)
def test_channels_first_layer_norm_and_layer_scale(batch, views):
    model = randomise(ChannelsFirstBlock().double())
    assert fast_clipping_unsupported(model) is None
    assert_matches_microbatch(model, scaled_images(batch, views), torch.arange(batch) % 10, views)


def test_in_place_layer_scale_is_refused():
    from timm.layers import LayerScale

    assert "inplace=True" in fast_clipping_unsupported(LayerScale(4, inplace=True))


@pytest.mark.parametrize(
    "positions, d, p",
    [(197, 768, 768), (197, 768, 2304), (197, 3072, 768), (50, 384, 1152), (5, 64, 192),
     (300, 64, 64)],  # ViT-B/16 and ViT-S at 224 px, test_vit at 32 px; a wide-token case
)  # fmt: skip
def test_token_linear_norms_equal_the_per_example_gradient_either_way(positions, d, p):
    # Bu et al.'s rule picks the ghost norm where 2T² < p·d (every ViT-B/16 layer at 224 px)
    # and the per-example gradient otherwise; both must give ‖Σ_t g_t a_tᵀ‖² exactly.
    torch.manual_seed(0)
    a = torch.randn(2, 1, d, positions, dtype=torch.float64)
    g = torch.randn(2, 1, p, positions, dtype=torch.float64)
    direct = torch.matmul(g, a.transpose(-1, -2)).pow(2).sum((1, 2, 3))
    torch.testing.assert_close(plain_norms(a, g), direct, rtol=1e-10, atol=0)


def test_every_space_runs_on_the_fast_engine():
    # Each space's smoke model, and its own model where the smoke run shrinks it to the same
    # one; the large models the smoke runs stand in for (ViT-B/16, NFNet-F0, ResNet-50) are
    # checked by tests/spaces/test_spaces.py::test_heavy_space_models_take_a_dp_step.
    from trainers.smoke import smoke_config
    from trainers.steps import clipping_engine

    for space in list_spaces():
        configs = [smoke_config(space)]
        if "model" not in space.smoke:
            configs.append(space.default_config())
        for values in configs:
            config = make_config({**values, "pretrained": False, "pretrained_file": None})
            model = build_model(config, in_channels=3, num_classes=10,
                                image_size=int(values.get("image_size") or 32))  # fmt: skip
            assert clipping_engine(config, model) == "fast", (space.name, config.model)
