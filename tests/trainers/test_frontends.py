"""The ScatterNet frontend: public per-image features, computed once, free of privacy cost."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny
from trainers import TrainerError, make_config, train
from trainers.data import load_splits
from trainers.frontends import NormalisedFeatures, ScatterNet, frontend_splits

CPU = torch.device("cpu")


def scattering(**overrides):
    values = tiny(frontend="scatternet", model="scatter_linear", synthetic_image_size=28,
                  batch_size=32, eval_batch_size=64)  # fmt: skip
    values.update(overrides)
    return make_config(values)


def test_scatternet_has_tramer_and_bonehs_shape_and_no_parameters():
    grey, colour = ScatterNet(28, 28), ScatterNet(32, 32)
    assert grey(torch.rand(2, 1, 28, 28)).shape == (2, 81, 7, 7)
    assert colour(torch.rand(2, 3, 32, 32)).shape == (2, 243, 8, 8)
    assert not list(grey.parameters())


def test_a_records_features_do_not_depend_on_any_other_record(tmp_path):
    """The claim that makes the frontend free (docs/privacy.md): each record's features and
    their normalisation are a function of that record alone."""
    config = scattering(feature_cache=False)
    splits = load_splits(config)
    features = frontend_splits(config, splits, CPU).train.tensors[0]
    # One more record in the data set: the others' features are bit-for-bit the same.
    images, labels = splits.train.tensors
    extra = torch.randint(0, 256, (1, *images.shape[1:]), dtype=images.dtype)
    grown = type(splits.train)(torch.cat([images, extra]), torch.cat([labels, labels[:1]]))
    more = frontend_splits(config, _with_train(splits, grown), CPU).train.tensors[0]
    assert torch.equal(more[: len(features)], features)
    # The normalisation treats each example on its own, whatever its batch.
    prepare = NormalisedFeatures(config, features.shape[1], CPU)
    batch = prepare(features[:8])
    alone = torch.cat([prepare(features[i : i + 1]) for i in range(8)])
    assert torch.allclose(batch, alone, atol=1e-6)
    assert torch.allclose(batch.reshape(8, 27, -1).mean(-1), torch.zeros(8, 27), atol=1e-5)


def _with_train(splits, train_part):
    from dataclasses import replace

    return replace(splits, train=train_part)


@pytest.mark.parametrize("model", ["scatter_linear", "scatter_cnn"])
def test_a_trial_on_scattering_features_computes_them_once(tmp_path, caplog, model):
    config = scattering(model=model, feature_cache_dir=str(tmp_path))
    first = train(config)
    files = list(tmp_path.glob("scatternet-*.pt"))
    assert len(files) == 1 and first["epsilon"] <= 8.0 and first["steps"] > 0
    stored = torch.load(files[0], weights_only=True)
    assert stored["train"].shape[1:] == (81, 7, 7)
    mtime = files[0].stat().st_mtime_ns
    with caplog.at_level("INFO", logger="trainers.features"):
        second = train(make_config({**config.to_dict(), "learning_rate": 0.1,
                                    "frontend_norm_groups": 81}))  # fmt: skip
    assert files[0].stat().st_mtime_ns == mtime and "loaded" in caplog.text
    assert second["steps"] == first["steps"]


def test_both_clipping_engines_train_the_same_scattering_model(tmp_path):
    values = {**scattering(feature_cache_dir=str(tmp_path)).to_dict(), "reproducible": True}
    fast = train(make_config({**values, "clipping": "fast"}))
    opacus = train(make_config({**values, "clipping": "opacus"}))
    assert fast["clipping"] == "fast" and opacus["clipping"] == "opacus"
    assert fast["test_loss"] == pytest.approx(opacus["test_loss"], rel=1e-4)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"frontend": "wavelets"}, "unknown frontend"),
        ({"augmult": 2}, "set augmult=0"),
        ({"frontend_norm_groups": 10}, "does not divide"),
        ({"frontend_norm_groups": 0, "synthetic_image_size": 30}, "divisible by 4"),
        ({"synthetic_image_size": 30}, "divisible by 4"),
    ],
)
def test_bad_frontend_settings_say_what_to_do(tmp_path, overrides, fragment):
    with pytest.raises(TrainerError, match=fragment):
        train(scattering(feature_cache_dir=str(tmp_path), **overrides))


def test_the_feature_cache_is_keyed_by_the_images_themselves(tmp_path):
    """Data files replaced under the same settings get features of their own."""
    from torch.utils.data import TensorDataset

    config = scattering(feature_cache_dir=str(tmp_path))
    splits = load_splits(config)
    first = frontend_splits(config, splits, CPU).train.tensors[0]
    images, labels = splits.train.tensors
    changed = frontend_splits(config, _with_train(splits, TensorDataset(255 - images, labels)), CPU)
    assert len(list(tmp_path.glob("scatternet-*.pt"))) == 2
    assert not torch.equal(changed.train.tensors[0], first)


def test_bad_frontend_settings_fail_before_any_feature_is_computed(tmp_path):
    """A search checks every trial it can draw (`check_runnable`) before the first runs."""
    from trainers import check_runnable

    config = scattering(feature_cache_dir=str(tmp_path))
    splits = load_splits(config)
    check_runnable([config, scattering(model="scatter_cnn")], splits)
    with pytest.raises(TrainerError, match="does not divide the frontend's 81 channels"):
        check_runnable([scattering(frontend_norm_groups=10)], splits)
    assert not list(tmp_path.glob("*.pt"))


def test_an_audit_with_input_canaries_refuses_a_frontend():
    from trainers.audit import audit_trial

    with pytest.raises(TrainerError, match="gradient canaries"):
        audit_trial(scattering(), kind="input", canaries=10)
