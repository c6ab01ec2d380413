"""Frozen-feature cache: when only the head trains, run the frozen backbone once.

With `trainable_layers=head` and no augmentation, the backbone (in eval mode) is a fixed
function of each input, so every trial of a search — whatever its learning rate, clip norm,
batch size or ε — computes the very same features. They are computed once per (model, weights,
data, resolution) and stored as one file (by default in the experiment directory, so every
trial of a search shares it; a lock makes concurrent trials wait for the first instead of
computing it twice). A trial then trains the head alone on them: the same DP-SGD mechanism on
the same trainable parameters, a small fraction of the compute.

The features are the head's input, captured by a hook: whatever the architecture, the cached
path computes exactly what the full model computes (checked on a probe batch before use).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

import accounting
from trainers.config import TrainConfig
from trainers.data import DEFAULT_DATA_ROOT, Splits
from trainers.layers import head_module

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = DEFAULT_DATA_ROOT.parent / "features"
FORMAT_VERSION = 3  # 2: keyed-hash partition, public normalisation; 3: frontends


def cache_applies(config: TrainConfig) -> bool:
    """Whether this trial can train on cached features."""
    return config.trainable_layers == "head" and config.augmult == 0 and config.feature_cache


DATA_FIELDS = (
    "dataset", "data_dir", "validation", "validation_fraction", "validation_data",
    "train_fraction", "split_seed", "input_mean", "input_std", "image_size",
    "synthetic_examples", "synthetic_image_size", "synthetic_classes",
    "synthetic_channels", "synthetic_groups",
)  # fmt: skip
"""The settings that decide which images land in which split (and their resolution)."""


def cache_key(config: TrainConfig) -> str:
    """What the features depend on: model and weights, data and split, resolution."""
    import timm

    weights: dict = {"pretrained": config.pretrained}
    if config.pretrained_file:
        stat = Path(config.pretrained_file).stat()
        weights = {"file": str(Path(config.pretrained_file).resolve()), "size": stat.st_size,
                   "mtime": stat.st_mtime_ns}  # fmt: skip
    elif not config.pretrained:
        weights["seed"] = config.seed  # random weights: the initialisation seed decides them
    fields = {"format": FORMAT_VERSION, "timm": timm.__version__, "model": config.model,
              "weights": weights}  # fmt: skip
    if config.frontend != "none":  # the head's input is then the normalised frontend features
        fields.update(frontend=config.frontend, frontend_norm_groups=config.frontend_norm_groups)
    return f"{config.model}-{digest({**fields, **data_fields(config)})}"


def data_fields(config: TrainConfig) -> dict:
    """`DATA_FIELDS` of `config`, for a cache key."""
    return {k: getattr(config, k) for k in DATA_FIELDS}


def digest(fields: dict) -> str:
    """A short hash of a cache key's fields."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:20]


def cache_path(config: TrainConfig, name: str) -> Path:
    """Where the cache file called `name` lives (`feature_cache_dir` or the default)."""
    directory = Path(config.feature_cache_dir) if config.feature_cache_dir else DEFAULT_CACHE_DIR
    return directory / f"{name}.pt"


def compute_once(path: Path, compute) -> tuple[dict, bool]:
    """The tensors stored at `path`, or `compute()`'s, stored there first; (tensors, whether
    this call computed them). A lock makes concurrent trials wait for the first instead of
    computing the same thing twice; the write is atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stored = _load(path)
        if stored is not None:
            log.info("feature cache: loaded %s", path)
            return stored, False
        stored = compute()
        with accounting.atomic_file(path, "wb") as f:  # trials may fill one cache at once
            torch.save(stored, f)
        return stored, True


@dataclass(frozen=True)
class CachedFeatures:
    splits: Splits
    """The data set with images replaced by backbone features (float, shape (N, D))."""
    head: nn.Linear
    """The model's head, trained alone on the features."""
    path: Path
    computed: bool
    """Whether this trial computed the features (False: it loaded them)."""
    total_parameters: int
    """Parameters of the whole model (the backbone stays frozen)."""


def load_cached_head(config: TrainConfig, splits: Splits, device) -> CachedFeatures | None:
    """Features already cached and a zero-initialised head: the trial needs no backbone at
    all (building a large timm model costs more than training its head on cached features).
    None when there is no cache yet or the head must keep the model's own initialisation."""
    if config.head_init == "default":
        return None
    path = cache_path(config, cache_key(config))
    features = _load(path)
    if features is None:
        return None
    meta = features["meta"]
    head = nn.Linear(int(meta["in_features"]), splits.num_classes, bias=bool(meta["bias"]))
    nn.init.zeros_(head.weight)
    if head.bias is not None:
        nn.init.zeros_(head.bias)
    log.info("feature cache: loaded %s (no backbone built)", path)
    return _with_features(splits, features, head.to(device), path, False)


def with_inputs(splits: Splits, features: dict, **changes) -> Splits:
    """`splits` with each part's inputs replaced by `features[part]` (labels kept)."""
    return replace(
        splits,
        train=TensorDataset(features["train"], splits.train.tensors[1]),
        validation=None
        if splits.validation is None
        else TensorDataset(features["validation"], splits.validation.tensors[1]),
        test=TensorDataset(features["test"], splits.test.tensors[1]),
        **changes,
    )


def _with_features(splits, features, head, path, computed) -> CachedFeatures:
    total = int(features["meta"]["total_parameters"])
    return CachedFeatures(with_inputs(splits, features), head, path, computed, total)


def cached_features(
    model: nn.Module, splits: Splits, prepare, config: TrainConfig, device: torch.device
) -> CachedFeatures | None:
    """The features of every split (computed once, then loaded), or None when the model's
    output is not its head applied to the head's input (the cache would change the model)."""
    head = head_module(model)
    if not isinstance(head, nn.Linear) or not _head_is_output(model, head, splits, prepare):
        log.info("feature cache: %s's head is not a Linear layer applied last; training end to end",
                 config.model)  # fmt: skip
        return None
    path = cache_path(config, cache_key(config))

    def compute() -> dict:
        log.info("feature cache: computing %s features once into %s", config.model, path)
        features = {
            name: _features(model, head, dataset.tensors[0], prepare, config.eval_batch_size)
            for name, dataset in (
                ("train", splits.train), ("validation", splits.validation), ("test", splits.test),
            ) if dataset is not None
        }  # fmt: skip
        features["meta"] = {
            "in_features": head.in_features,
            "bias": head.bias is not None,
            "total_parameters": sum(p.numel() for p in model.parameters()),
        }
        return features

    features, computed = compute_once(path, compute)
    return _with_features(splits, features, head.to(device), path, computed)


def _load(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        features = torch.load(path, weights_only=True)
        if not {"train", "test", "meta"} <= set(features):
            raise ValueError("incomplete")
        return features
    except Exception as error:  # noqa: BLE001 - a damaged cache is recomputed, never trusted
        log.warning("feature cache %s is unreadable (%s); recomputing it", path, error)
        return None


@torch.no_grad()
def _features(model, head, images, prepare, batch_size) -> torch.Tensor:
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0].detach().cpu()))
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(images), batch_size):
            model(prepare(images[start : start + batch_size]))
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(captured).float()


@torch.no_grad()
def _head_is_output(model, head, splits: Splits, prepare) -> bool:
    # A public probe (fixed random inputs of the data's shape), never private examples: the
    # decision to use the cache must not depend on the data.
    shape = splits.train.tensors[0].shape[1:]
    inputs = torch.Generator().manual_seed(0)
    probe = torch.randint(0, 256, (2, *shape), generator=inputs, dtype=torch.uint8)
    probe = probe.to(splits.train.tensors[0].dtype)  # frontend features are float
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    saved = [p.detach().clone() for p in head.parameters()]
    was_training = model.training
    model.eval()
    try:
        # A random head: a zero-initialised one would make any output "equal" zero.
        generator = torch.Generator().manual_seed(0)
        for param in head.parameters():
            param.copy_(torch.randn(param.shape, generator=generator).to(param))
        output = model(prepare(probe))
        same = len(captured) == 1 and torch.allclose(
            head(captured[0]), output, atol=1e-5, rtol=1e-4
        )
    finally:
        hook.remove()
        model.train(was_training)
        for param, value in zip(head.parameters(), saved, strict=True):
            param.copy_(value)
    return same
