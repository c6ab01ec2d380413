"""Per-example clipping of the trainer's DP step, checked against a microbatch reference:
each example's gradient computed alone, clipped to max_grad_norm, then summed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from tests.helpers import microbatch_gradients, tiny
from trainers import make_config
from trainers.models import build_model
from trainers.steps import OpacusStep, make_optimizer


def _dp_step_for(model_name, channels, size, max_grad_norm):
    values = tiny(
        model=model_name,
        synthetic_channels=channels,
        synthetic_image_size=size,
        max_grad_norm=max_grad_norm,
        noise_multiplier=1e-12,  # σ·C ≪ the tolerance: the test sees the clipped sum alone
        target_epsilon=None,
    )
    config = make_config(values)
    model = build_model(config, in_channels=channels, num_classes=10, image_size=size).double()
    reference = copy.deepcopy(model)
    dataset = TensorDataset(torch.zeros(256, channels, size, size), torch.zeros(256).long())
    step = OpacusStep(
        model=model,
        optimizer=make_optimizer(config, model.parameters()),
        dataset=dataset,
        config=config,
        noise_multiplier=config.noise_multiplier,
        device=torch.device("cpu"),
    )
    return step, reference


@pytest.mark.parametrize(
    "model_name, channels, size",
    [
        ("tramer_boneh_cnn", 1, 28),
        ("test_resnet", 3, 32),
        ("test_nfnet", 3, 32),
        ("wrn_10_1", 3, 32),
    ],  # WRN: weight-standardised convs + GroupNorm
)
@pytest.mark.parametrize("batch", [1, 7])
def test_clipped_sum_matches_microbatch_reference(model_name, channels, size, batch):
    torch.manual_seed(0)
    # Inputs at very different scales give gradient norms far below and far above C.
    scales = torch.logspace(-2, 1, batch, dtype=torch.float64).view(-1, 1, 1, 1)
    images = torch.randn(batch, channels, size, size, dtype=torch.float64) * scales
    labels = torch.arange(batch) % 10

    probe, reference = _dp_step_for(model_name, channels, size, max_grad_norm=1.0)
    norms = microbatch_gradients(reference, images, labels).norm(dim=1)
    clip = float(norms.median()) if batch > 1 else float(norms[0]) / 2  # some clipped, some not

    step, reference = _dp_step_for(model_name, channels, size, max_grad_norm=clip)
    per_example = microbatch_gradients(reference, images, labels)
    factors = (clip / (per_example.norm(dim=1) + 1e-6)).clamp(max=1.0)
    clipped = per_example * factors[:, None]
    assert (clipped.norm(dim=1) <= clip * (1 + 1e-9)).all()

    F.cross_entropy(step.model(images), labels).backward()
    params = [p for p in step.model.parameters() if p.requires_grad]
    opacus_per_example = torch.cat([p.grad_sample.flatten(1) for p in params], dim=1)
    torch.testing.assert_close(opacus_per_example, per_example, rtol=1e-5, atol=1e-9)

    step.optimizer.pre_step()  # clip, sum, add (negligible) noise, divide by expected batch
    summed = torch.cat([p.grad.flatten() for p in params]) * step.optimizer.expected_batch_size
    torch.testing.assert_close(summed, clipped.sum(dim=0), rtol=1e-5, atol=1e-8)
    assert (factors < 1).any() or batch == 1


def test_weight_standardised_groupnorm_resnetv2_matches_microbatch_reference():
    # BiT's building blocks (timm ResNetV2 with StdConv2d + GroupNormAct), at ResNet-18 depth:
    # the per-example gradients Opacus computes through the weight standardisation are exact.
    from functools import partial

    import timm
    from timm.layers import GroupNormAct, StdConv2d

    from trainers.models import make_dp_compatible

    torch.manual_seed(0)
    net = timm.create_model("resnetv2_18", num_classes=10, conv_layer=StdConv2d,
                            norm_layer=partial(GroupNormAct, num_groups=8))  # fmt: skip
    assert any(isinstance(m, StdConv2d) for m in net.modules())
    model = make_dp_compatible(net, example_input=torch.zeros(2, 3, 32, 32)).double()
    reference = copy.deepcopy(model)
    images = torch.randn(3, 3, 32, 32, dtype=torch.float64) * torch.tensor(
        [0.01, 1.0, 10.0], dtype=torch.float64
    ).view(-1, 1, 1, 1)
    labels = torch.tensor([1, 4, 7])
    per_example = microbatch_gradients(reference, images, labels)
    clip = float(per_example.norm(dim=1).median())
    config = make_config(tiny(noise_multiplier=1e-12, target_epsilon=None, max_grad_norm=clip))
    step = OpacusStep(model=model, optimizer=make_optimizer(config, model.parameters()),
                   dataset=TensorDataset(torch.zeros(256, 3, 32, 32), torch.zeros(256).long()),
                   config=config, noise_multiplier=1e-12, device=torch.device("cpu"))  # fmt: skip
    F.cross_entropy(step.model(images), labels).backward()
    params = [p for p in step.model.parameters() if p.requires_grad]
    got = torch.cat([p.grad_sample.flatten(1) for p in params], dim=1)
    torch.testing.assert_close(got, per_example, rtol=1e-5, atol=1e-9)
    step.optimizer.pre_step()
    summed = torch.cat([p.grad.flatten() for p in params]) * step.optimizer.expected_batch_size
    factors = (clip / (per_example.norm(dim=1) + 1e-6)).clamp(max=1.0)
    torch.testing.assert_close(summed, (per_example * factors[:, None]).sum(0), rtol=1e-5,
                               atol=1e-8)  # fmt: skip
