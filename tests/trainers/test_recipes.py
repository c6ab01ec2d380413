"""The paper recipes in the trainer: augmentation multiplicity (against a microbatch reference),
EMA, layer selection, the frozen-feature cache, TAN simulation, and the smoke CLI."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import accounting
from accounting.ledger import read_ledger
from tests.helpers import ROOT, microbatch_gradients, tiny
from trainers import make_config, plan_mechanism, train
from trainers.augment import augment_views
from trainers.ema import ParameterEma
from trainers.layers import blocks, head_module, select_trainable
from trainers.models import build_model
from trainers.steps import OpacusStep, average_views, make_optimizer

# --- augmentation multiplicity --------------------------------------------------------------


def test_views_are_crops_of_the_padded_image_possibly_flipped():
    images = torch.randint(0, 256, (3, 3, 8, 8), dtype=torch.uint8)
    views = augment_views(images, 4, torch.Generator().manual_seed(0), padding=2)
    assert views.shape == (12, 3, 8, 8) and views.dtype == torch.uint8
    padded = F.pad(images.float(), (2,) * 4, mode="reflect")
    for row in range(12):
        source = padded[row // 4]  # example-major: row i·K + k is view k of image i
        crops = [source[:, t : t + 8, s : s + 8] for t in range(5) for s in range(5)]
        assert any(torch.equal(c, views[row].float()) or torch.equal(c.flip(-1), views[row].float())
                   for c in crops)  # fmt: skip
    again = augment_views(images, 4, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(views, again)  # the generator alone decides the views


def test_views_do_not_depend_on_how_a_batch_is_split_and_cover_every_crop_and_flip():
    images = torch.arange(64, dtype=torch.uint8).view(1, 1, 8, 8).repeat(54, 1, 1, 1)
    whole = augment_views(images, 2, torch.Generator().manual_seed(5), padding=2)
    generator = torch.Generator().manual_seed(5)
    split = torch.cat([augment_views(images[:32], 2, generator, padding=2),
                       augment_views(images[32:], 2, generator, padding=2)])  # fmt: skip
    assert torch.equal(whole, split)  # max_physical_batch_size is a memory setting only
    padded = F.pad(images[:1].float(), (2,) * 4, mode="reflect")[0]
    crops = [padded[:, t : t + 8, s : s + 8] for t in range(5) for s in range(5)]
    crops += [c.flip(-1) for c in crops]
    many = augment_views(images[:1], 2000, torch.Generator().manual_seed(0), padding=2).float()
    seen = {next(i for i, c in enumerate(crops) if torch.equal(c, view)) for view in many}
    assert seen == set(range(50))  # all 25 offsets, each flipped and not


@pytest.mark.parametrize("model_name, channels", [("tramer_boneh_cnn", 1), ("wrn_10_1", 3)])
def test_augmult_averages_view_gradients_before_clipping(model_name, channels):
    # Reference: per example, the mean over its K views of each view's own gradient, clipped
    # to C, summed over examples.
    torch.manual_seed(0)
    size, batch, views = 16, 5, 3
    config = make_config(
        tiny(model=model_name, synthetic_channels=channels, synthetic_image_size=size,
             noise_multiplier=1e-12, target_epsilon=None, augmult=views)
    )  # fmt: skip
    model = build_model(config, in_channels=channels, num_classes=10, image_size=size).double()
    reference = copy.deepcopy(model)
    scales = torch.logspace(-2, 1, batch * views, dtype=torch.float64).view(-1, 1, 1, 1)
    images = torch.randn(batch * views, channels, size, size, dtype=torch.float64) * scales
    labels = torch.arange(batch) % 10

    per_example = microbatch_gradients(reference, images, labels, views)
    clip = float(per_example.norm(dim=1).median())  # some examples clipped, some not
    factors = (clip / (per_example.norm(dim=1) + 1e-6)).clamp(max=1.0)

    config = make_config({**config.to_dict(), "max_grad_norm": clip})
    dataset = TensorDataset(torch.zeros(256, channels, size, size), torch.zeros(256).long())
    step = OpacusStep(model=model, optimizer=make_optimizer(config, model.parameters()),
                   dataset=dataset, config=config, noise_multiplier=1e-12,
                   device=torch.device("cpu"))  # fmt: skip
    F.cross_entropy(step.model(images), labels.repeat_interleave(views)).backward()
    average_views(step.optimizer.params, views)
    params = [p for p in step.model.parameters() if p.requires_grad]
    averaged = torch.cat([p.grad_sample.flatten(1) for p in params], dim=1)
    torch.testing.assert_close(averaged, per_example, rtol=1e-5, atol=1e-9)
    step.optimizer.pre_step()  # clip, sum, add (negligible) noise, divide by expected batch
    summed = torch.cat([p.grad.flatten() for p in params]) * step.optimizer.expected_batch_size
    torch.testing.assert_close(summed, (per_example * factors[:, None]).sum(0), rtol=1e-5,
                               atol=1e-8)  # fmt: skip
    assert (factors < 1).any() and (factors == 1).any()


def test_augmult_keeps_the_privacy_of_one_view():
    plain = train(make_config(tiny(epochs=1)))
    multi = train(make_config(tiny(epochs=1, augmult=4)))
    assert multi["epsilon"] == plain["epsilon"] and multi["steps"] == plain["steps"]
    assert multi["noise_multiplier"] == plain["noise_multiplier"]


# --- EMA -------------------------------------------------------------------------------------


def test_ema_follows_the_warmed_up_recursion_and_swaps_back():
    layer = torch.nn.Linear(2, 1)
    ema = ParameterEma(layer, decay=0.99)
    expected = [p.detach().clone() for p in layer.parameters()]
    for t in range(1, 6):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(1.0)
        ema.update()
        decay = min(0.99, (1 + t) / (10 + t))
        expected = [decay * e + (1 - decay) * p.detach() for e, p in
                    zip(expected, layer.parameters(), strict=True)]  # fmt: skip
    trained = [p.detach().clone() for p in layer.parameters()]
    with ema.swapped_in():
        for p, e in zip(layer.parameters(), expected, strict=True):
            torch.testing.assert_close(p.detach(), e)
    for p, t in zip(layer.parameters(), trained, strict=True):
        assert torch.equal(p.detach(), t)


def test_ema_is_evaluated_and_the_raw_iterate_reported_on_request():
    final = train(make_config(tiny(ema_decay=0.9, ema_evaluate_raw=True, reproducible=True)))
    assert {"val_accuracy", "test_accuracy", "test_accuracy_raw"} <= set(final)
    # DP validation releases one noisy score, of the EMA weights (the model a search selects).
    assert "val_accuracy_raw" not in final and final["val_releases"] == 2
    plain = train(make_config(tiny(reproducible=True)))
    # Same run, same raw iterate: the EMA only changes what is evaluated.
    assert final["test_loss_raw"] == pytest.approx(plain["test_loss"], rel=1e-6)
    assert final["test_loss"] != pytest.approx(plain["test_loss"], rel=1e-6)


def test_resume_with_augmult_and_ema_is_exact():
    values = tiny(epochs=2, augmult=2, ema_decay=0.9, reproducible=True)
    straight = train(make_config(values))
    states = []
    train(make_config(values), save_state=lambda s: states.append(copy.deepcopy(s)))
    resumed = train(make_config(values), state=states[0])
    assert resumed["test_loss"] == pytest.approx(straight["test_loss"], rel=1e-9)
    assert resumed["val_accuracy"] == straight["val_accuracy"]  # the noise stream resumes too
    assert resumed["steps"] == straight["steps"]


# --- layer selection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_name, channels", [("tramer_boneh_cnn", 1), ("test_nfnet", 3), ("test_vit", 3)]
)
@pytest.mark.parametrize(
    "mode", ["head", "last_k_blocks", "norms_and_head", "bias_and_head", "all"]
)
def test_layer_selection_freezes_the_rest_and_zeroes_the_head(model_name, channels, mode):
    config = make_config(tiny(model=model_name, trainable_layers=mode, synthetic_channels=channels,
                              synthetic_image_size=32))  # fmt: skip
    model = build_model(config, in_channels=channels, num_classes=10, image_size=32)
    counts = select_trainable(model, config)
    head = head_module(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    head_names = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
    assert head_names <= trainable
    assert counts["trainable_parameters"] == sum(
        p.numel() for p in model.parameters() if p.requires_grad
    )
    if mode == "all":
        assert trainable == {n for n, _ in model.named_parameters()}
        return
    assert torch.count_nonzero(head.weight) == 0  # zero-initialised head
    if mode == "head":
        assert trainable == head_names
    if mode == "bias_and_head":
        assert all(n.endswith("bias") for n in trainable - head_names) and trainable - head_names
    if mode == "last_k_blocks":
        last = {id(p) for p in blocks(model)[-1].parameters()}
        assert last <= {id(p) for p in model.parameters() if p.requires_grad}
        first = {id(p) for p in blocks(model)[0].parameters()}
        assert not first & {id(p) for p in model.parameters() if p.requires_grad}
    if mode == "norms_and_head" and model_name != "tramer_boneh_cnn":
        assert trainable - head_names  # GroupNorm/LayerNorm affine or NFNet gains


def test_frozen_parameters_never_change_and_only_trainable_ones_are_noised():
    # With frozen layers Opacus computes, clips and noises only the trainable parameters: the
    # frozen ones are bit-for-bit the initial ones after DP training.
    config = make_config(tiny(trainable_layers="bias_and_head", epochs=1))
    model = build_model(config, in_channels=1, num_classes=10, image_size=16)
    select_trainable(model, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    dataset = TensorDataset(torch.randint(0, 255, (64, 1, 16, 16), dtype=torch.uint8).float(),
                            torch.randint(0, 10, (64,)))  # fmt: skip
    step = OpacusStep(model=model, optimizer=make_optimizer(config, model.parameters()),
                   dataset=dataset, config=config, noise_multiplier=1.0,
                   device=torch.device("cpu"))  # fmt: skip
    for images, labels in step.batches():
        step(images, labels)
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert not torch.equal(param.detach(), before[name]), name
        else:
            assert torch.equal(param.detach(), before[name]), name
            assert getattr(param, "grad_sample", None) is None


# --- frozen-feature cache -------------------------------------------------------------------


def test_feature_cache_trains_the_same_head_as_the_full_model(tmp_path, caplog):
    values = tiny(model="test_nfnet", synthetic_channels=3, synthetic_image_size=32,
                  trainable_layers="head", feature_cache_dir=str(tmp_path),
                  reproducible=True)  # fmt: skip
    direct = train(make_config({**values, "feature_cache": False}))
    cached = train(make_config(values))
    assert cached["feature_cache"] and not direct["feature_cache"]
    assert cached["test_loss"] == pytest.approx(direct["test_loss"], rel=1e-4)
    assert cached["epsilon"] == direct["epsilon"] and cached["steps"] == direct["steps"]
    files = list(tmp_path.glob("*.pt"))
    assert len(files) == 1
    # Later trials build no backbone at all, and train the very same head.
    repeat = train(make_config(values))
    assert repeat["test_loss"] == pytest.approx(cached["test_loss"], rel=1e-6)
    assert repeat["trainable_parameters"] == cached["trainable_parameters"]
    mtime = files[0].stat().st_mtime_ns
    with caplog.at_level("INFO", logger="trainers.features"):
        again = train(make_config({**values, "learning_rate": 0.1, "seed": 0}))
    assert files[0].stat().st_mtime_ns == mtime and "loaded" in caplog.text  # computed once
    assert again["feature_cache"]
    # Other random backbone weights (seed), other features: a second file.
    train(make_config({**values, "seed": 1}))
    assert len(list(tmp_path.glob("*.pt"))) == 2


def test_feature_cache_is_not_used_when_the_backbone_input_changes(tmp_path):
    values = tiny(trainable_layers="head", feature_cache_dir=str(tmp_path), augmult=2)
    assert not train(make_config(values))["feature_cache"]
    assert not list(tmp_path.glob("*.pt"))


# --- TAN --------------------------------------------------------------------------------------


def test_tan_simulation_scales_noise_with_batch_and_accounts_what_ran(tmp_path):
    from trainers.data import load_splits

    reference = make_config(tiny(batch_size=128, epochs=2))
    simulated = make_config(tiny(batch_size=32, epochs=2, tan_reference_batch=128))
    n_train = len(load_splits(simulated).train)
    steps = 2 * math.ceil(n_train / 128)
    ref_plan = plan_mechanism(reference, n_train)
    sim_plan = plan_mechanism(simulated, n_train)
    assert sim_plan.simulated and sim_plan.steps == ref_plan.steps == steps
    assert sim_plan.tan_reference_noise == pytest.approx(ref_plan.noise_multiplier)
    assert sim_plan.noise_multiplier == pytest.approx(ref_plan.noise_multiplier * 32 / 128)
    final = train(simulated)
    assert final["tan_simulated"] and final["steps"] == steps
    executed = accounting.dp_sgd_event(
        sample_rate=1 / math.ceil(n_train / 32), noise_multiplier=sim_plan.noise_multiplier,
        steps=steps,
    )  # fmt: skip
    assert final["epsilon"] == pytest.approx(accounting.epsilon(executed, delta=1e-4))
    assert final["epsilon"] > 8.0  # a simulation is cheap in compute, not in privacy
    # The CLI's ledger labels it.
    result = subprocess.run(
        [sys.executable, "-m", "trainers", "--space", "fmnist_quick", "--smoke", "--quiet",
         "--set", "tan_reference_batch=32", "--set", "batch_size=8", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = read_ledger(tmp_path)
    assert records and all(r.simulated for r in records)


# --- smoke CLI --------------------------------------------------------------------------------


def test_smoke_cli_runs_a_heavy_space_in_seconds(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainers", "--space", "wrn_cifar10", "--smoke", "--quiet",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["config"]["model"] == "wrn_10_1" and metrics["config"]["augmult"] == 2
    assert math.isfinite(metrics["epsilon"]) and metrics["epsilon"] <= 8.0
