"""The fast clipping package's extension points and wrapper: handlers registered by a user
for their own layers (and inherited by subclasses), and `make_private` on a user's model and
optimizer, against the microbatch reference."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import ROOT, fast_clipped, microbatch_gradients
from trainers.fast_clipping import (
    FastClipper,
    LayerHandler,
    fast_clipping_unsupported,
    forward_with_input_grad,
    make_private,
    register_layer,
)
from trainers.fast_clipping import registry as fast_registry
from trainers.models import ScalarGain

# --- the registry ---------------------------------------------------------------------------


class ChannelScale(nn.Module):
    """A user's layer: y = x · w per channel."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class ChannelScaleHandler(LayerHandler):
    """Its per-example gradient Σ g ⊙ x over positions, the mean over an example's views."""

    def prepare(self, activations, backprops, views, output=None):
        sample = (backprops * activations).sum((2, 3))
        return sample.reshape(-1, views, sample.shape[1]).mean(1)

    def squared_norms(self, state):
        return state.pow(2).sum(1)

    def clipped_sums(self, state, factors):
        yield self.module.weight, factors @ state


@pytest.fixture
def handlers(monkeypatch):
    """The registry, restored after the test."""
    monkeypatch.setattr(fast_registry, "HANDLERS", dict(fast_registry.HANDLERS))
    return fast_registry.HANDLERS


def _check_against_reference(model, views=1, batch=4):
    model = model.double()
    torch.manual_seed(1)
    images = torch.randn(batch * views, 2, 8, 8, dtype=torch.float64)
    images = images * torch.logspace(-2, 1, batch * views, dtype=torch.float64).view(-1, 1, 1, 1)
    labels = torch.arange(batch) % 3
    per_example = microbatch_gradients(copy.deepcopy(model), images, labels, views)
    clip = float(per_example.norm(dim=1).median())
    norms, summed = fast_clipped(model, images, labels, views, clip)
    torch.testing.assert_close(norms, per_example.norm(dim=1), rtol=1e-6, atol=1e-12)
    factors = (clip / (norms + 1e-6)).clamp(max=1.0)
    torch.testing.assert_close(summed, (per_example * factors[:, None]).sum(0), rtol=1e-6,
                               atol=1e-12)  # fmt: skip


def _user_model(scale_layer):
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), scale_layer, nn.Tanh(), nn.Flatten(),
                         nn.Linear(3 * 6 * 6, 3))  # fmt: skip


@pytest.mark.parametrize("views", [1, 2])
def test_a_user_registered_layer_is_clipped_exactly(handlers, views):
    model = _user_model(ChannelScale(3))
    assert fast_clipping_unsupported(model) == "ChannelScale"
    with pytest.raises(ValueError, match="ChannelScale"):
        FastClipper(model, 1.0)
    register_layer(ChannelScale)(ChannelScaleHandler)
    assert fast_clipping_unsupported(model) is None
    _check_against_reference(model, views)


def test_subclasses_take_their_base_handler_unless_they_override_forward(handlers):
    register_layer(ChannelScale)(ChannelScaleHandler)

    class Renamed(ChannelScale):
        pass

    class Doubled(ChannelScale):
        def forward(self, x):
            return 2 * super().forward(x)

    class PlainLinear(nn.Linear):
        pass

    class LoggedLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x)

    _check_against_reference(_user_model(Renamed(3)))
    model = _user_model(Doubled(3))
    model[-1] = LoggedLinear(3 * 6 * 6, 3)
    assert fast_clipping_unsupported(model) == "Doubled, LoggedLinear"
    register_layer(Doubled)(ChannelScaleHandler)  # a user vouches for its own subclass
    assert fast_clipping_unsupported(model) == "LoggedLinear"
    model = _user_model(Renamed(3))
    model[-1] = PlainLinear(3 * 6 * 6, 3)
    _check_against_reference(model)
    with pytest.raises(TypeError):
        register_layer(int)
    with pytest.raises(TypeError):
        register_layer(ChannelScale)(object)


def test_nfnet_gains_are_recognised_by_type_not_name(handlers):
    class Namesake(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(()))

        def forward(self, x):
            return x * self.gain

    Namesake.__name__ = Namesake.__qualname__ = "ScalarGain"  # not trainers.models.ScalarGain
    assert fast_clipping_unsupported(nn.Sequential(Namesake())) == "ScalarGain"
    gain = ScalarGain(nn.Parameter(torch.ones(())))
    assert fast_clipping_unsupported(nn.Sequential(gain)) is None


def test_models_without_timm_layers_never_import_timm():

    code = (
        "import sys; from torch import nn; import trainers.fast_clipping as f\n"
        "model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.Flatten(), "
        "nn.Linear(8, 2))\n"
        "assert f.fast_clipping_unsupported(model) is None\n"
        "f.FastClipper(model, 1.0).close()\n"
        "assert 'timm' not in sys.modules, 'timm imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- make_private ---------------------------------------------------------------------------


def _private_setup():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.GroupNorm(2, 4), nn.Flatten(),
        nn.Linear(4 * 8 * 8, 3),
    ).double()  # fmt: skip
    images = torch.randn(5, 2, 8, 8, dtype=torch.float64)
    images = images * torch.logspace(-2, 1, 5, dtype=torch.float64).view(-1, 1, 1, 1)
    labels = torch.tensor([0, 1, 2, 0, 1])
    per_example = microbatch_gradients(copy.deepcopy(model), images, labels)
    clip = float(per_example.norm(dim=1).median())
    factors = (clip / (per_example.norm(dim=1) + 1e-6)).clamp(max=1.0)
    clipped_sum = (per_example * factors[:, None]).sum(0)
    return model, images, labels, clip, clipped_sum


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_make_private_steps_by_the_clipped_mean_without_noise():
    model, images, labels, clip, clipped_sum = _private_setup()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = _flat(model)
    with make_private(model, optimizer, noise_multiplier=0.0, max_grad_norm=clip) as dp:
        for rows in (slice(0, 3), slice(3, 5)):  # two physical batches, one logical
            dp.backward(F.cross_entropy(dp.forward(images[rows]), labels[rows],
                                        reduction="none"))  # fmt: skip
        dp.step()
        assert all(p.grad is None for p in model.parameters())
    torch.testing.assert_close(before - _flat(model), clipped_sum / 5, rtol=1e-6, atol=1e-12)
    # Nothing outlives the block: no hooks, and plain training works as before.
    assert not any(m._forward_hooks for m in model.modules())
    F.cross_entropy(model(images), labels).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_make_private_adds_the_noise_its_generator_draws():
    model, images, labels, clip, clipped_sum = _private_setup()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    before = _flat(model)
    generator = torch.Generator().manual_seed(7)
    with make_private(model, optimizer, noise_multiplier=0.5, max_grad_norm=clip,
                      expected_batch_size=4.0, generator=generator) as dp:  # fmt: skip
        dp.step(F.cross_entropy(dp.forward(images), labels, reduction="none"))
        assert dp.last_norms.shape == (5,)
    replay = torch.Generator().manual_seed(7)
    noise = torch.cat([torch.empty_like(p).normal_(0, 0.5 * clip, generator=replay).flatten()
                       for p in model.parameters()])  # fmt: skip
    torch.testing.assert_close(before - _flat(model), (clipped_sum + noise) / 4, rtol=1e-6,
                               atol=1e-12)  # fmt: skip
    with pytest.raises(ValueError, match="PReLU"):  # a layer with no handler
        odd = nn.Sequential(nn.Flatten(), nn.PReLU())
        with make_private(odd, optimizer, noise_multiplier=1.0, max_grad_norm=1.0):
            pass


class SharedLinear(nn.Module):
    """One Linear used twice in a forward pass: each example's gradient is the sum over both
    uses, which the engine's one-input-one-gradient handlers cannot see."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))


def test_a_layer_used_twice_before_a_backward_is_refused_not_clipped_wrongly():
    model = SharedLinear().double()
    x = torch.randn(4, 6, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="ran twice before a backward pass"):
        fast_clipped(model, x, torch.arange(4), 1, clip=1.0)
    # Two forward passes of an unshared model before one backward: refused the same way.
    model = nn.Sequential(nn.Linear(6, 10)).double()
    clipper = FastClipper(model, 1.0)
    forward_with_input_grad(model, x)
    with pytest.raises(RuntimeError, match="ran twice"):
        forward_with_input_grad(model, x)
    clipper.close()


def test_a_model_that_reuses_a_layer_is_found_before_its_first_step(monkeypatch):
    """A forward pass of zeros (data-independent) before training finds the reused layer:
    under auto the trial runs on Opacus, with clipping=fast it stops in one sentence before
    any step; the probe leaves the global random state and the layers' modes as they were."""
    from tests.helpers import tiny
    from trainers import TrainerError, make_config, train
    from trainers import models as trainer_models
    from trainers.fast_clipping import layer_run_twice

    def shared_linear_net(in_channels, num_classes, image_size):
        flat = in_channels * image_size * image_size
        return nn.Sequential(nn.Flatten(), nn.Linear(flat, 6), nn.Dropout(0.5), SharedLinear())

    model = shared_linear_net(1, 10, 4).eval()
    state = torch.get_rng_state()
    assert layer_run_twice(model, torch.zeros(1, 1, 4, 4)) == "Linear"
    assert torch.equal(torch.get_rng_state(), state) and not model.training
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    assert layer_run_twice(plain, torch.zeros(1, 16)) is None

    monkeypatch.setitem(trainer_models._MODELS, "shared_linear_net", shared_linear_net)
    with pytest.raises(TrainerError, match="a Linear run twice in one forward.*clipping=opacus"):
        train(make_config(tiny(model="shared_linear_net", clipping="fast")))
    run = train(make_config(tiny(model="shared_linear_net")))
    assert run["clipping"] == "opacus" and run["epsilon"] > 0


class TiedLinear(nn.Module):
    """Two Linear layers holding one weight (tied weights): each layer runs once, so nothing
    runs twice, yet each example's gradient of the weight is the sum over both layers."""

    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = nn.Linear(6, 6), nn.Linear(6, 6)
        self.second.weight = self.first.weight
        self.head = nn.Linear(6, 10)

    def forward(self, x):
        return self.head(torch.tanh(self.second(torch.tanh(self.first(x)))))


def test_parameters_shared_between_layers_go_to_opacus_which_clips_them_exactly():
    """Before this check the engine took ‖g₁‖² + ‖g₂‖² for ‖g₁ + g₂‖² (norms 6 % off on this
    model): the clip bound did not hold. Now such a model is not the engine's, under auto it
    runs on Opacus, whose per-example gradients sum both uses."""
    from opacus import GradSampleModule

    from tests.helpers import tiny
    from trainers import TrainerError, make_config
    from trainers.steps import clipping_engine

    model = TiedLinear().double()
    reason = fast_clipping_unsupported(model)
    assert reason == "a parameter shared by first.weight and second.weight"
    with pytest.raises(ValueError, match="shared by first.weight and second.weight"):
        FastClipper(model, 1.0)
    assert clipping_engine(make_config(tiny()), model) == "opacus"
    with pytest.raises(TrainerError, match="shared by first.weight.*clipping=opacus"):
        clipping_engine(make_config(tiny(clipping="fast")), model)
    # One layer registered under two names shares all its parameters the same way.
    linear = nn.Linear(6, 6)
    assert fast_clipping_unsupported(nn.Sequential(linear, nn.Tanh(), linear)) == (
        "a parameter shared by 0.bias and 2.bias, a parameter shared by 0.weight and 2.weight"
    )
    # Opacus's per-example gradients of the tied model equal the microbatch reference.
    x, labels = torch.randn(5, 6, dtype=torch.float64), torch.arange(5)
    reference = microbatch_gradients(copy.deepcopy(model), x, labels)
    sampled = GradSampleModule(copy.deepcopy(model), loss_reduction="sum")
    F.cross_entropy(sampled(x), labels, reduction="sum").backward()
    rows = torch.cat([p.grad_sample.reshape(5, -1) for p in sampled._module.parameters()], 1)
    torch.testing.assert_close(rows, reference, rtol=1e-8, atol=1e-12)
