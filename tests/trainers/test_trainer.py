"""The trainer on synthetic data: private and non-private paths, reports, seeds, errors."""

from __future__ import annotations

import math

import pytest
import torch

from tests.helpers import tiny
from trainers import TrainConfig, TrainerError, make_config, parse_overrides, train
from trainers.models import build_model

REPORT_KEYS = {
    "epoch", "steps", "val_accuracy", "val_releases", "val_noise_multiplier", "val_dp",
    "sample_rate", "noise_multiplier", "epsilon", "delta", "private", "done",
}  # fmt: skip


def test_private_trial_reports_each_epoch_and_meets_its_target_epsilon():
    reports = []
    final = train(make_config(tiny(epochs=3, target_epsilon=2.0)), reports.append)
    assert [r["epoch"] for r in reports] == [1, 2, 3]
    for report in reports:
        assert REPORT_KEYS <= set(report)
        # DP validation: one noisy score per epoch, and no exact figure of the validation set.
        assert not {"val_loss", "val_class_accuracy"} & set(report)
    assert [r["val_releases"] for r in reports] == [1, 2, 3]
    # Poisson sampling at q = 1 / ceil(N / B), N the records the keyed hash left to training.
    per_epoch = math.ceil(reports[0]["n_train"] / 64)
    assert [r["steps"] for r in reports] == [per_epoch, 2 * per_epoch, 3 * per_epoch]
    assert reports[0]["sample_rate"] == pytest.approx(1 / per_epoch)
    epsilons = [r["epsilon"] for r in reports]
    assert epsilons == sorted(epsilons) and epsilons[-1] <= 2.0
    assert epsilons[-1] >= 1.98  # σ calibrated to the target, not merely below it
    assert "test_accuracy" in final and "test_accuracy" not in reports[0]
    assert final is reports[-1] or final == reports[-1]


def test_given_noise_multiplier_is_used_and_its_epsilon_reported():
    final = train(make_config(tiny(noise_multiplier=2.0, target_epsilon=None, epochs=1)))
    assert final["noise_multiplier"] == 2.0
    assert 0 < final["epsilon"] < math.inf


def test_noise_multiplier_that_would_overspend_the_target_is_refused():
    with pytest.raises(TrainerError, match="would spend"):
        train(make_config(tiny(noise_multiplier=0.3, target_epsilon=1.0)))


def test_non_private_baseline_learns_and_reports_infinite_epsilon():
    config = make_config(tiny(private=False, epochs=8, learning_rate=0.1))
    final = train(config)
    assert final["epsilon"] == math.inf and final["noise_multiplier"] == 0.0
    assert final["private"] is False
    assert final["test_accuracy"] > 0.9  # 10 classes: chance is 0.1


def test_private_training_learns_on_easy_data():
    final = train(make_config(tiny(epochs=4, target_epsilon=50.0, learning_rate=2.0)))
    assert final["test_accuracy"] > 0.6


def test_a_default_run_cannot_be_replayed_from_its_configuration():
    """Sampling and noise come from secret seeds: the same configuration (same `seed`) trains
    a different model each time, so knowing every setting does not let anyone replay it."""
    a = train(make_config(tiny(epochs=1, seed=3)))
    b = train(make_config(tiny(epochs=1, seed=3)))
    assert a["test_loss"] != b["test_loss"] and a["train_loss"] != b["train_loss"]
    assert a["epsilon"] == b["epsilon"]  # the mechanism is the same, only its noise differs
    assert a["reproducible"] is False and "release_label" not in a


def test_reproducible_run_replays_and_says_it_is_no_dp_release():
    a = train(make_config(tiny(epochs=1, seed=3, reproducible=True)))
    b = train(make_config(tiny(epochs=1, seed=3, reproducible=True)))
    c = train(make_config(tiny(epochs=1, seed=4, reproducible=True)))
    for key in ("val_accuracy", "test_loss", "train_loss", "epsilon"):
        assert a[key] == b[key]
    assert a["test_loss"] != c["test_loss"]
    assert "not a DP release" in a["release_label"]


def test_secret_seeds_never_reach_reports_or_logs(monkeypatch, caplog):
    import trainers.randomness

    sentinel = 0x5EC2E7_5EED_1234
    monkeypatch.setattr(trainers.randomness.secrets, "randbits", lambda bits: sentinel)
    reports, claims = [], []
    caplog.set_level("DEBUG")
    train(make_config(tiny(epochs=1)), reports.append, before_epoch=claims.append)
    text = repr(reports) + repr(claims) + caplog.text
    assert str(sentinel) not in text and hex(sentinel) not in text


def test_physical_batch_size_does_not_change_the_mechanism():
    small = train(make_config(tiny(epochs=1, max_physical_batch_size=8)))
    large = train(make_config(tiny(epochs=1, max_physical_batch_size=64)))
    for key in ("steps", "sample_rate", "noise_multiplier", "epsilon"):
        assert small[key] == large[key]


def test_pld_accountant_is_honoured():
    final = train(make_config(tiny(epochs=1, accountant="pld", target_epsilon=2.0)))
    assert final["accountant"] == "pld" and final["epsilon"] <= 2.0


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"batch_size": 10_000}, "exceeds"),
        ({"delta": 0.5}, "not below 1/n"),
    ],
)
def test_trial_level_errors_are_sentences(overrides, fragment):
    with pytest.raises(TrainerError, match=fragment):
        train(make_config(tiny(**overrides)))


@pytest.mark.parametrize(
    "values, fragment",
    [
        ({"lr": 1.0}, "unknown hyperparameter"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate must be float"),
        ({"dataset": "imagenet"}, "unknown dataset"),
        ({"target_epsilon": 0.0}, "target_epsilon"),
        ({"delta": 1.0}, "delta"),
        ({"epochs": 0}, "epochs"),
        ({"noise_multiplier": None, "target_epsilon": None}, "needs target_epsilon"),
        ({"optimizer": "lbfgs"}, "unknown optimizer"),
    ],
)
def test_config_errors_say_what_is_wrong(values, fragment):
    with pytest.raises(TrainerError, match=fragment):
        make_config(values)


def test_parse_overrides_types_values_from_the_config_fields():
    parsed = parse_overrides(
        ["learning_rate=2", "epochs=3", "private=false", "noise_multiplier=none", "model=resnet18"]
    )
    assert parsed == {
        "learning_rate": 2.0,
        "epochs": 3,
        "private": False,
        "noise_multiplier": None,
        "model": "resnet18",
    }
    assert isinstance(parsed["learning_rate"], float)
    with pytest.raises(TrainerError, match="key=value"):
        parse_overrides(["learning_rate"])
    with pytest.raises(TrainerError, match="epochs must be int"):
        parse_overrides(["epochs=1.5"])


def test_timm_models_are_made_dp_compatible():
    # BatchNorm (plain and timm's fused BatchNormAct2d) → GroupNorm; in-place ReLUs off.
    for name in ("test_resnet", "test_byobnet"):
        model = build_model(TrainConfig(model=name), in_channels=3, num_classes=10, image_size=32)
        kinds = {type(m).__name__ for m in model.modules()}
        assert not any("BatchNorm" in kind for kind in kinds), kinds
        assert not any(getattr(m, "inplace", False) is True for m in model.modules())


def test_nf_resnet_trains_privately_despite_inplace_activations():
    # Opacus fails on timm's nf_resnet with in-place activations ("Output 0 of
    # BackwardHookFunction is a view and is being modified inplace"); the trainer fixes it.
    final = train(
        make_config(
            tiny(
                model="nf_resnet26", synthetic_channels=3, synthetic_image_size=32,
                synthetic_examples=20, validation_fraction=0.2, batch_size=8,
                max_physical_batch_size=8, epochs=1,
            )
        )
    )  # fmt: skip
    assert final["steps"] == math.ceil(final["n_train"] / 8) and final["epsilon"] <= 8.0


def test_residual_in_place_additions_are_handled():
    # timm's ResNet does `x += shortcut` on a hooked layer's output: outputs get copied.
    model = build_model(TrainConfig(model="resnet18"), in_channels=3, num_classes=10, image_size=32)
    from opacus import GradSampleModule

    net = GradSampleModule(model)
    torch.nn.functional.cross_entropy(
        net(torch.randn(3, 3, 32, 32)), torch.tensor([0, 1, 2])
    ).backward()
    assert all(p.grad_sample.shape[0] == 3 for p in net.parameters() if p.requires_grad)


def test_unsupported_layers_are_a_clear_error():
    with pytest.raises(TrainerError, match="Opacus cannot train privately"):
        build_model(TrainConfig(model="test_coatnet"), in_channels=3, num_classes=10, image_size=32)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(TrainerError, match="unknown model"):
        build_model(TrainConfig(model="no_such_net"), in_channels=1, num_classes=10, image_size=28)


def test_pretrained_weights_load_from_a_local_file(tmp_path):
    # The offline route for ImageNet weights: --set pretrained_file=PATH.
    import timm

    torch.manual_seed(123)
    source = timm.create_model("test_resnet", num_classes=10)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    loaded = build_model(
        TrainConfig(model="test_resnet", pretrained_file=str(path)),
        in_channels=3, num_classes=10, image_size=32,
    )  # fmt: skip
    fresh = build_model(
        TrainConfig(model="test_resnet"), in_channels=3, num_classes=10, image_size=32
    )
    expected = source.state_dict()
    convs = {
        key.replace(".module", ""): value
        for key, value in loaded.state_dict().items()
        if value.dim() == 4  # conv kernels: untouched by the BatchNorm → GroupNorm swap
    }
    assert convs and all(torch.equal(value, expected[key]) for key, value in convs.items())
    assert not torch.equal(
        next(v for v in fresh.state_dict().values() if v.dim() == 4),
        next(iter(convs.values())),
    )


@pytest.mark.parametrize("private", [True, False])
def test_resuming_from_a_saved_state_reproduces_the_uninterrupted_run(private, tmp_path):
    config = make_config(tiny(epochs=3, private=private, learning_rate=0.1 if not private else 0.5,
                              reproducible=True))  # fmt: skip
    uninterrupted = train(config)

    states = []
    reports = []

    def crash_after_first_epoch(metrics):
        reports.append(metrics)
        if metrics["epoch"] == 1:
            raise KeyboardInterrupt  # the process dies after checkpointing epoch 1

    with pytest.raises(KeyboardInterrupt):
        train(config, crash_after_first_epoch, save_state=states.append)
    # The state goes through torch.save / torch.load(weights_only=True), as checkpoints do.
    torch.save(states[-1], tmp_path / "state.pt")
    restored = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed_reports = []
    resumed = train(config, resumed_reports.append, state=restored)
    assert [r["epoch"] for r in resumed_reports] == [2, 3]
    assert resumed_reports[0]["start_steps"] == reports[0]["steps"]
    for key in ("steps", "epsilon", "val_accuracy", "val_releases", "test_loss", "test_accuracy"):
        assert resumed[key] == pytest.approx(uninterrupted[key], rel=1e-6), key
