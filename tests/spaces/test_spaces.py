"""The registry, and a contract every registered space must meet (run over all of them)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spaces
from spaces import Choice, IntUniform, LogUniform, Uniform
from tests.helpers import tiny
from trainers import TrainConfig, make_config, train
from trainers.config import config_keys
from trainers.smoke import smoke_config

ALL_SPACES = [space.name for space in spaces.list_spaces()]

# The real models of the spaces whose smoke runs use a small sibling (the space's `smoke`):
# test_heavy_space_models_take_a_dp_step checks each takes a DP step.
HEAVY_MODELS = sorted(
    {
        space.default_config()["model"]
        for space in spaces.list_spaces()
        if "model" in space.smoke and space.smoke["model"] != space.default_config()["model"]
    }
)


def test_the_required_spaces_are_registered():
    assert {
        "fmnist_cnn",
        "fmnist_quick",
        "fmnist_frontier",
        "nfnet_cifar",
        "nfnet_cifar100",
        "wrn_cifar10",
        "vit_cifar100",
        "chexpert",
    } <= set(ALL_SPACES)


def test_unknown_space_lists_the_known_ones():
    with pytest.raises(spaces.SpaceError, match="fmnist_quick"):
        spaces.get_space("no_such_space")


@pytest.mark.parametrize("name", ALL_SPACES)
class TestSpaceContract:
    def test_every_key_is_a_trainer_setting(self, name):
        space = spaces.get_space(name)
        assert set(space.fixed) | set(space.searched) <= set(config_keys())

    def test_description_is_one_line(self, name):
        space = spaces.get_space(name)
        assert space.description.strip() and "\n" not in space.description
        assert len(space.description) <= 100

    def test_default_config_is_a_valid_private_trial(self, name):
        config = make_config(spaces.get_space(name).default_config())
        assert config.private
        assert config.target_epsilon is not None or config.noise_multiplier is not None
        assert 0 < config.delta <= 1e-4

    def test_searches_the_canonical_hyperparameters_by_their_canonical_names(self, name):
        space = spaces.get_space(name)
        assert "learning_rate" in space.searched
        assert set(space.searched) & set(spaces.CANONICAL_HYPERPARAMETERS)

    def test_random_draws_are_valid_configs(self, name):
        space = spaces.get_space(name)
        rng = random.Random(0)
        for _ in range(25):
            values = space.sample_config(rng)
            for key, dist in space.searched.items():
                assert dist.contains(values[key]), (key, values[key])
            assert isinstance(make_config(values), TrainConfig)

    def test_runs_in_smoke_mode(self, name, tmp_path):
        # The space's own recipe and code path, shrunk (trainers.smoke): synthetic data shaped
        # like its data set, random weights, one short epoch. ε stays within the target.
        reports = []
        final = train(make_config(smoke_config(spaces.get_space(name), tmp_path)), reports.append)
        assert len(reports) == 1 and final["done"]
        assert 0 < final["epsilon"] <= 8.0
        assert 0.0 <= final["test_accuracy"] <= 1.0
        assert 0.0 <= final["val_accuracy"] <= 1.0 and final["val_releases"] == 1


@pytest.mark.parametrize("model", HEAVY_MODELS)
def test_heavy_space_models_take_a_dp_step(model):
    # On both engines: the fast one clips every trainable layer (clipping=auto picks it), and
    # Opacus's per-example gradients (clipping=opacus) cover every parameter.
    import torch
    from opacus import GradSampleModule

    from trainers.models import build_model
    from trainers.steps import clipping_engine

    config = make_config(tiny(model=model, pretrained=False))
    built = build_model(config, in_channels=3, num_classes=10, image_size=32)
    assert clipping_engine(config, built) == "fast"
    net = GradSampleModule(built)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([1, 7])
    torch.nn.functional.cross_entropy(net(images), labels).backward()
    trainable = [p for p in net.parameters() if p.requires_grad]
    assert all(p.grad_sample is not None and p.grad_sample.shape[0] == 2 for p in trainable)


def test_space_cannot_fix_and_search_the_same_key():
    with pytest.raises(spaces.SpaceError, match="both fixes and searches"):
        spaces.SearchSpace(
            name="bad",
            description="bad",
            fixed={"learning_rate": 1.0},
            searched={"learning_rate": LogUniform(low=0.1, high=1.0, default=0.5)},
        )


def test_registering_a_different_space_under_a_taken_name_fails():
    taken = ALL_SPACES[0]
    with pytest.raises(spaces.SpaceError, match="two search spaces"):
        spaces.register_space(spaces.SearchSpace(name=taken, description="impostor"))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Uniform(low=1.0, high=0.0, default=0.5),
        lambda: LogUniform(low=0.0, high=1.0, default=0.5),
        lambda: IntUniform(low=1, high=4, default=9),
        lambda: Choice(values=(1, 2), default=3),
        lambda: Choice(values=(), default=None),
    ],
)
def test_ill_formed_distributions_are_rejected(make):
    with pytest.raises(ValueError):
        make()


@settings(max_examples=50, deadline=None)
@given(
    low=st.floats(1e-4, 10.0),
    ratio=st.floats(1.0, 1e4),
    int_low=st.integers(1, 100),
    int_span=st.integers(0, 5000),
    seed=st.integers(0, 2**32),
)
def test_samples_stay_inside_their_distribution(low, ratio, int_low, int_span, seed):
    rng = random.Random(seed)
    high = low * ratio
    for dist in (
        Uniform(low=low, high=high, default=low),
        LogUniform(low=low, high=high, default=high),
        IntUniform(low=int_low, high=int_low + int_span, default=int_low),
        IntUniform(low=int_low, high=int_low + int_span, default=int_low, log=True),
        Choice(values=("a", "b", 3), default="b"),
    ):
        for _ in range(5):
            assert dist.contains(dist.sample(rng))


def test_log_int_uniform_reaches_both_ends():
    dist = IntUniform(low=1, high=4, default=1, log=True)
    rng = random.Random(0)
    assert {dist.sample(rng) for _ in range(500)} == {1, 2, 3, 4}
