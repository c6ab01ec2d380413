"""The fast clipping engine against a microbatch reference (each example's gradient computed
alone, clipped, summed), on every supported layer type, and the trainer's use of it."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import (
    assert_matches_microbatch,
    fast_clipped,
    microbatch_gradients,
    scaled_images,
    tiny,
)
from trainers import TrainerError, make_config, train
from trainers.fast_clipping import (
    FastClipper,
    fast_clipping_unsupported,
    forward_with_input_grad,
)
from trainers.fast_clipping.conv_kernels import choose_kernel, explicit_padding, per_example_kernels
from trainers.models import ScalarGain, build_model

MODELS = [
    ("tramer_boneh_cnn", 1, 28),  # Conv2d (direct and ghost norms), Linear
    ("tramer_boneh_cifar_cnn", 3, 32),
    ("wrn_10_1", 3, 32),  # StdConv2d (weight standardisation) + GroupNorm
    ("test_nfnet", 3, 32),  # grouped ScaledStdConv2dSame with gains, SE convs, skip-init gains
    ("test_resnet", 3, 32),  # BatchNorm → GroupNorm, in-place residual adds
]


def model_for(name, channels, size, seed=0):
    torch.manual_seed(seed)
    config = make_config(tiny(model=name, synthetic_channels=channels))
    return build_model(config, in_channels=channels, num_classes=10, image_size=size).double()


@pytest.mark.parametrize("name, channels, size", MODELS)
@pytest.mark.parametrize("batch, views", [(1, 1), (5, 1), (3, 2)])
def test_norms_and_clipped_sum_match_microbatch_reference(name, channels, size, batch, views):
    model = model_for(name, channels, size)
    assert fast_clipping_unsupported(model) is None
    # Inputs at very different scales: gradient norms far below and far above the clip norm.
    scales = torch.logspace(-3, 1.5, batch * views, dtype=torch.float64).view(-1, 1, 1, 1)
    images = torch.randn(batch * views, channels, size, size, dtype=torch.float64) * scales
    assert_matches_microbatch(model, images, torch.arange(batch) % 10, views)


CONVS = [  # (in, out, kernel, stride, padding, dilation, groups): every shape rule a kernel has
    (1, 4, 8, 2, 2, 1, 1),  # the CNN's first layer
    (3, 4, 3, 1, 1, 1, 1),
    (4, 6, (3, 2), (2, 1), (1, 0), 1, 1),  # rectangular kernel, unequal strides and padding
    (3, 4, 3, 2, 0, 2, 1),  # dilated; the swapped kernel's output overhangs the kernel
    (4, 6, 3, 1, 1, 1, 2),  # grouped
    (4, 4, 3, 1, 1, 1, 4),  # depthwise
    (3, 4, 4, 1, "same", 1, 1),  # asymmetric "same" padding
    (3, 4, 3, 2, "valid", 1, 1),
]


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("views", [1, 2])
def test_every_per_example_kernel_gives_each_examples_gradient(conv, views):
    # Each kernel the engine may pick, against autograd on one example at a time.
    in_ch, out_ch, kernel, stride, padding, dilation, groups = conv
    torch.manual_seed(0)
    module = nn.Conv2d(in_ch, out_ch, kernel, stride, padding, dilation, groups).double()
    inputs = torch.randn(3 * views, in_ch, 11, 10, dtype=torch.float64)
    outputs = module(inputs)
    output_grads = torch.randn_like(outputs)
    expected = []
    for i in range(3):
        rows = slice(i * views, (i + 1) * views)
        (grad,) = torch.autograd.grad(module(inputs[rows]), module.weight, output_grads[rows])
        expected.append(grad / views)  # an example's gradient is the mean over its views
    expected = torch.stack(expected).reshape(3, groups, out_ch // groups, -1)
    padded, explicit = explicit_padding(module, inputs)
    kernels = per_example_kernels(module)
    assert len(kernels) == (3 if groups == 1 else 2)
    for kernel_fn in kernels:
        got = kernel_fn(module, padded, output_grads, explicit, views)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=kernel_fn.__name__)


def test_same_padded_convs_match_the_microbatch_reference():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 4, padding="same"), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2),
        nn.Flatten(), nn.Linear(4 * 5 * 5, 3),
    ).double()  # fmt: skip
    assert fast_clipping_unsupported(model) is None
    images = torch.randn(4, 2, 11, 11, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    per_example = microbatch_gradients(copy.deepcopy(model), images, labels)
    clip = float(per_example.norm(dim=1).median())
    norms, summed = fast_clipped(model, images, labels, 1, clip)
    torch.testing.assert_close(norms, per_example.norm(dim=1), rtol=1e-6, atol=1e-12)
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    torch.testing.assert_close(summed, (per_example * factors[:, None]).sum(0), rtol=1e-6,
                               atol=1e-12)  # fmt: skip


def test_zero_gradients_give_zero_norms_and_nothing_to_clip():
    model = model_for("tramer_boneh_cnn", 1, 28)
    with torch.no_grad():
        model[-1].weight.zero_()  # the loss's gradient still reaches the head's bias only
    images = torch.zeros(4, 1, 28, 28, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    per_example = microbatch_gradients(copy.deepcopy(model), images, labels)
    norms, summed = fast_clipped(model, images, labels, 1, clip=100.0)
    torch.testing.assert_close(norms, per_example.norm(dim=1))
    torch.testing.assert_close(summed, per_example.sum(0))  # far below C: unclipped sum


def test_zero_conv_gain_uses_the_exact_fallback():
    model = model_for("test_nfnet", 3, 32)
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "gain") and not isinstance(module, ScalarGain):
                module.gain[0] = 0.0  # the gain-free output cannot be read off the output
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([1, 2, 3])
    per_example = microbatch_gradients(copy.deepcopy(model), images, labels)
    norms, _ = fast_clipped(model, images, labels, 1, clip=1.0)
    torch.testing.assert_close(norms, per_example.norm(dim=1), rtol=1e-5, atol=1e-12)


def test_frozen_layers_get_nothing_and_trainable_biases_are_exact():
    from trainers.layers import select_trainable

    model = model_for("wrn_10_1", 3, 32)
    select_trainable(model, make_config(tiny(trainable_layers="bias_and_head")))
    trainable = [p for p in model.parameters() if p.requires_grad]
    images = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3])
    per_example = microbatch_gradients(copy.deepcopy(model), images, labels)
    clipper = FastClipper(model, 0.5)
    clipper.backward(F.cross_entropy(forward_with_input_grad(model, images), labels,
                                     reduction="none"), 1)  # fmt: skip
    torch.testing.assert_close(clipper.last_norms, per_example.norm(dim=1), rtol=1e-5, atol=0)
    sums = clipper.take_sums()
    assert set(sums) == {id(p) for p in trainable}


def test_unsupported_layers_fall_back_to_opacus_with_a_log_line(caplog):
    class Odd(nn.Module):  # a parameter used by a module the engine does not know
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return x * self.scale

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2), Odd())
    assert "Odd" in fast_clipping_unsupported(model)
    from trainers.steps import clipping_engine

    with caplog.at_level(logging.INFO, logger="trainers.steps"):
        assert clipping_engine(make_config(tiny()), model) == "opacus"
    assert "fast clipping does not support Odd" in caplog.text
    with pytest.raises(TrainerError, match="clipping=opacus"):
        clipping_engine(make_config(tiny(clipping="fast")), model)


@pytest.mark.parametrize(
    "extra",
    [{}, {"augmult": 2}, {"trainable_layers": "bias_and_head"},
     {"model": "wrn_10_1", "synthetic_channels": 3, "synthetic_image_size": 32},
     {"model": "test_vit", "synthetic_channels": 3, "synthetic_image_size": 32, "augmult": 2}],
)  # fmt: skip
def test_trainer_engines_train_the_same_model(extra):
    # Same Poisson batches, same noise draws: the engines differ only in float rounding.
    fast_run = train(make_config(tiny(**extra, clipping="fast", reproducible=True)))
    opacus_run = train(make_config(tiny(**extra, clipping="opacus", reproducible=True)))
    assert fast_run["clipping"] == "fast" and opacus_run["clipping"] == "opacus"
    assert fast_run["steps"] == opacus_run["steps"]
    assert fast_run["epsilon"] == opacus_run["epsilon"]
    assert fast_run["test_loss"] == pytest.approx(opacus_run["test_loss"], rel=2e-3)


@pytest.mark.parametrize("augmult", [0, 2])
def test_physical_batches_add_up_to_the_logical_one(augmult):
    whole = train(make_config(tiny(max_physical_batch_size=256, reproducible=True,
                                   augmult=augmult)))  # fmt: skip
    split = train(make_config(tiny(max_physical_batch_size=16, reproducible=True,
                                   augmult=augmult)))  # fmt: skip
    assert whole["clipping"] == "fast"
    assert split["test_loss"] == pytest.approx(whole["test_loss"], rel=1e-4)


# --- kernel choice: same seed, same bits --------------------------------------------------


def _mixed_kernel_model():
    """Convs that take each per-example kernel: one input channel (swapped), 16 channels over
    16×16 positions (grouped at 64 rows), 3 channels (unfolded)."""
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 16, 3, padding=1), nn.Tanh(),
        nn.Conv2d(16, 8, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10),
    )  # fmt: skip


def test_kernel_choice_is_a_rule_and_repeated_steps_are_bit_identical():
    # A choice by timing switched kernels over a clipper's first steps (and between runs);
    # kernels round differently, so float32 results changed in the last bits from step 3 on.
    # Now every step and every run of one seed computes the very same floats.
    torch.manual_seed(0)
    model = _mixed_kernel_model()
    images = torch.randn(64, 1, 16, 16) * torch.logspace(-2, 1, 64).view(-1, 1, 1, 1)
    labels = torch.arange(64) % 10
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    chosen = {choose_kernel(m, (64, m.in_channels, 16, 16), (64, m.out_channels, 16, 16))
              for m in convs}  # fmt: skip
    assert chosen == set(per_example_kernels(convs[0]))  # the test exercises all three

    def steps(model, count):
        clipper = FastClipper(model, 1.0)
        for _ in range(count):
            losses = F.cross_entropy(forward_with_input_grad(model, images), labels,
                                     reduction="none")  # fmt: skip
            clipper.backward(losses, 1)
            sums = clipper.take_sums()
            yield clipper.last_norms, torch.cat([sums[id(p)].flatten() for p in model.parameters()])
        clipper.close()

    runs = list(steps(model, 8)) + list(steps(copy.deepcopy(model), 2))
    for norms, summed in runs[1:]:
        assert torch.equal(norms, runs[0][0]) and torch.equal(summed, runs[0][1])


def test_same_seed_trials_on_the_fast_engine_are_bit_identical():
    values = tiny(epochs=1, seed=5, reproducible=True, clipping="fast", synthetic_channels=3,
                  synthetic_image_size=16, model="tramer_boneh_cifar_cnn")  # fmt: skip
    a, b = train(make_config(values)), train(make_config(values))
    assert a["clipping"] == "fast"
    for key in ("test_loss", "train_loss", "val_accuracy"):
        assert a[key] == b[key], key


class TinyTransformer(nn.Module):
    """A ViT's trainable layer types without its module-level parameters: a patch-embedding
    conv, LayerNorms over tokens (timm's, one without bias, one frozen), 3-D Linear layers."""

    def __init__(self, channels: int = 3, width: int = 8) -> None:
        from timm.layers import LayerNorm

        super().__init__()
        self.patches = nn.Conv2d(channels, width, kernel_size=4, stride=4)
        self.norm1 = LayerNorm(width)
        hidden = 2 * width
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))
        self.norm2 = nn.LayerNorm(width, bias=False)
        self.norm3 = nn.LayerNorm(width)
        self.norm3.requires_grad_(False)
        self.head = nn.Linear(width, 10)

    def forward(self, x):
        tokens = self.patches(x).flatten(2).transpose(1, 2)  # (N, T, width)
        tokens = tokens + self.mlp(self.norm1(tokens))
        return self.head(self.norm3(self.norm2(tokens)).mean(1))


@pytest.mark.parametrize("batch, views", [(1, 1), (5, 1), (3, 2)])
def test_layer_norm_over_tokens_matches_the_microbatch_reference(batch, views):
    torch.manual_seed(0)
    model = TinyTransformer().double()
    assert fast_clipping_unsupported(model) is None
    assert_matches_microbatch(model, scaled_images(batch, views), torch.arange(batch) % 10, views)


@pytest.mark.parametrize("act", ["relu", "silu"])
@pytest.mark.parametrize("batch, views", [(1, 1), (5, 1), (3, 2)])
def test_timm_group_norm_act_matches_the_microbatch_reference(act, batch, views):
    from timm.layers import GroupNormAct

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), GroupNormAct(8, num_groups=4, act_layer=act),
        nn.Conv2d(8, 8, 3, stride=2), GroupNormAct(8, num_groups=2, act_layer=act),
        nn.Flatten(), nn.Linear(8 * 7 * 7, 10),
    ).double()  # fmt: skip
    assert fast_clipping_unsupported(model) is None
    assert_matches_microbatch(model, scaled_images(batch, views), torch.arange(batch) % 10, views)


class TinyTextModel(nn.Module):
    """Token embeddings (one index for padding), tokens averaged, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(12, 6, padding_idx=0)
        self.head = nn.Linear(6, 10)

    def forward(self, tokens):
        return self.head(torch.tanh(self.embed(tokens)).mean(1))


@pytest.mark.parametrize("batch, views", [(1, 1), (5, 1), (3, 2)])
def test_embedding_matches_the_microbatch_reference(batch, views):
    # Repeated tokens within an example (and across its views), and padding tokens.
    torch.manual_seed(0)
    model = TinyTextModel().double()
    assert fast_clipping_unsupported(model) is None
    tokens = torch.randint(0, 12, (batch * views, 9))
    tokens[:, -2:] = 0
    assert_matches_microbatch(model, tokens, torch.arange(batch) % 10, views)
    assert fast_clipping_unsupported(nn.Embedding(4, 2, max_norm=1.0)) == "Embedding with max_norm"
