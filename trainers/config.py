"""The configuration of one trial: a frozen, keyword-only dataclass, and parsing of `--set`.

Over 400 lines on purpose: `TrainConfig` is the one list of every setting a trial reads, each
field with the line of documentation `help(trainers.TrainConfig)` shows, beside the checks that
refuse a bad value; splitting the fields from their checks would put one concept in two files.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from accounting import VALIDATION_MODES


class TrainerError(ValueError):
    """Bad configuration, missing data or weights, or a model that cannot be made private.

    The message is one sentence that says what to do; command-line tools print it without a
    traceback.
    """


GROUP_ATTRIBUTES = ("sex", "age", "race")
OPTIMIZERS = ("sgd", "adam")
TRAINABLE_LAYERS = ("all", "head", "last_k_blocks", "norms_and_head", "bias_and_head")
HEAD_INITS = ("auto", "zero", "default")
CLIPPING_ENGINES = ("auto", "fast", "opacus")
FRONTENDS = ("none", "scatternet")


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything one DP-SGD trial needs. Search spaces set these keys; `--set key=value` too."""

    # --- data ---
    dataset: str = "fashion_mnist"
    """A data set registered in trainers/datasets.py: fashion_mnist, cifar10, cifar100, chexpert
    (multi-label; local directory), synthetic."""
    data_dir: str | None = None
    """Where the data set lies; None: the standard places (see README, "Data and weights")."""
    download: bool = False
    """Let torchvision download a missing data set (needs internet)."""
    validation: str = "dp"
    """dp: validation scores come from a held-out part of the private pool and are released
    through a Gaussian mechanism (noisy counts; accounted in the ledger); public: from the
    separate data set in `validation_data`, which you declare public (no privacy cost; never
    the test split); off: no validation score."""
    validation_fraction: float = 0.1
    """validation=dp: the share of the private pool held out for validation. Each record's part
    is decided by a keyed hash of its own content (`split_seed` the key), so adding or
    removing one record moves no other; the realised size varies around the share."""
    validation_data: str | None = None
    """validation=public: the directory of a separate validation set in the data set's format
    (its training files are read), declared public by you."""
    val_noise_multiplier: float = 20.0
    """validation=dp: σ_v, the noise of every released validation score in units of its L2
    sensitivity (the count of correct predictions: 1; per-finding counts: √findings): ±20
    correct answers, 0.4 % accuracy on 5000 validation examples."""
    train_fraction: float = 1.0
    """The share of the non-validation records that train, chosen by the same keyed hash: quick
    runs on part of a large pool. ε is computed for the realised number of examples."""
    synthetic_examples: int = 1024
    """Synthetic data set only: size of the pool (training and validation; the test split has
    a quarter as many)."""
    synthetic_image_size: int = 28
    """Synthetic data set only: height and width of the images."""
    synthetic_channels: int = 1
    """Synthetic data set only: image channels."""
    synthetic_classes: int = 10
    """Synthetic data set only: number of classes."""
    group_attribute: str = "sex"
    """CheXpert only: the attribute whose groups get their own metrics (sex, age, race)."""
    uncertain_label: str = "ones"
    """CheXpert only: uncertain findings (−1) count as positive (ones) or negative (zeros)."""
    synthetic_groups: int = 0
    """Synthetic data set only: give every example a `group` (0 = none); group g's images carry
    more noise as g grows, so groups differ in difficulty like sub-populations of real data."""

    # --- model ---
    model: str = "tramer_boneh_cnn"
    """A model registered in trainers/models.py (tramer_boneh_cnn, tramer_boneh_cifar_cnn,
    wrn_16_4, …) or any timm model name."""
    pretrained: bool = False
    """timm models: start from pretrained (ImageNet) weights."""
    pretrained_file: str | None = None
    """timm models: a local weights file to use instead of downloading (implies pretrained)."""
    image_size: int | None = None
    """Resize inputs to this size (e.g. for pretrained timm models); None: native size."""
    input_mean: str | None = None
    """Per-channel normalisation mean in [0, 1], comma-separated (one value: every channel).
    None: the data set's published constant, or 0.5 — never a statistic of the private images."""
    input_std: str | None = None
    """Per-channel normalisation std, like `input_mean` (None: published constant, or 0.5)."""

    # --- optimisation ---
    optimizer: str = "sgd"
    """sgd (with momentum) or adam."""
    learning_rate: float = 0.1
    """Step size."""
    momentum: float = 0.0
    """SGD momentum (ignored by adam)."""
    weight_decay: float = 0.0
    """L2 penalty applied by the optimizer (after noising: post-processing)."""
    batch_size: int = 256
    """Expected logical batch size B; the Poisson sampling rate is q = 1 / ⌈N / B⌉ (≤ B / N,
    Opacus's loader; accounting.dp_sgd_schedule)."""
    max_physical_batch_size: int = 256
    """Largest batch put through the model at once; logical batches are split to fit memory."""
    epochs: int = 1
    """Passes over the training data: T = epochs · ⌈N / B⌉ steps (accounting.dp_sgd_schedule)."""

    # --- paper recipes (see trainers/augment.py, ema.py, layers.py, features.py) ---
    frontend: str = "none"
    """A fixed, public feature extractor applied to each image on its own before the model
    (trainers/frontends.py): none, or scatternet (Tramèr & Boneh 2021: scattering transform,
    J=2, L=8; a 28×28 image becomes 81×7×7). Computed once per data set and cached."""
    frontend_norm_groups: int = 27
    """GroupNorm groups (no learned scale) normalising each example's frontend features on
    their own: data-independent, so free of privacy cost (0: no normalisation)."""
    augmult: int = 0
    """Augmentation multiplicity K (De et al. 2022): 0 = no augmentation; K ≥ 1 = K random
    crop+flip views of every example, their gradients averaged before clipping (one example's
    sensitivity: privacy as without augmentation). A physical batch holds K× the examples."""
    ema_decay: float = 0.0
    """EMA of the parameters, evaluated instead of the last iterate (0 = off; e.g. 0.999)."""
    ema_evaluate_raw: bool = False
    """With EMA: also report the last iterate's metrics (`val_accuracy_raw`, …)."""
    trainable_layers: str = "all"
    """all, head, last_k_blocks, norms_and_head or bias_and_head (Cattan et al. 2022)."""
    trainable_blocks: int = 1
    """last_k_blocks only: how many of the last blocks train."""
    head_init: str = "auto"
    """zero, default (the model's own init), or auto: zero unless every layer trains."""
    feature_cache: bool = True
    """Head-only trials without augmentation train on backbone features computed once."""
    feature_cache_dir: str | None = None
    """Where cached features live (None: ~/.cache/dp-tune/features; a search uses its
    experiment directory)."""
    tan_reference_batch: int | None = None
    """TAN simulation (Sander et al. 2023): run at `batch_size` B with σ = σ0·B/B0 for the
    steps a batch-B0 run takes, σ0 being that run's noise; tune cheaply, then run B0 for real.
    The trial still spends what it ran (accounted, labelled simulated)."""

    clipping: str = "auto"
    """Per-example clipping engine: fast (trainers.fast_clipping: per-example norms without
    per-example gradients), opacus (its per-example gradients), or auto (fast wherever it
    supports every trainable layer, else opacus with a log line)."""

    # --- privacy ---
    private: bool = True
    """False: a non-private baseline (no clipping, no noise, ε = ∞)."""
    max_grad_norm: float = 1.0
    """Clipping norm C of each example's gradient."""
    noise_multiplier: float | None = None
    """σ: noise std in units of C. None: calibrated so the trial meets target_epsilon."""
    target_epsilon: float | None = 8.0
    """ε the trial may spend at `delta` (used to calibrate σ; checked when σ is given)."""
    delta: float = 1e-5
    """δ of the (ε, δ) guarantee; must be well below 1 / N."""
    accountant: str = "rdp"
    """rdp or pld: how ε is computed from the executed mechanism."""

    # --- run ---
    seed: int = 0
    """Seeds model initialisation and augmentation (public randomness). Sampling and noise
    come from secret randomness unless `reproducible` is set."""
    reproducible: bool = False
    """True: Poisson sampling, DP-SGD noise and validation noise are seeded from `seed` too, so
    the run can be replayed — a research run, NOT a DP release (every output says so). False
    (default): they are seeded from os.urandom and the seeds are never written anywhere."""
    split_seed: int = 0
    """Key of the keyed hash that assigns each record to training or validation (it may be
    public: the partition only has to ignore the other records); fixed across a search."""
    device: str = "auto"
    """auto (CUDA when present), cpu, cuda, or cuda:N."""
    eval_batch_size: int = 1024
    """Batch size for validation and test passes."""

    def __post_init__(self) -> None:
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def held_out_fraction(self) -> float:
        """The share of the private pool held out for validation (0 unless validation=dp)."""
        return self.validation_fraction if self.validation == "dp" else 0.0


def _validate(c: TrainConfig) -> None:
    _validate_choices_and_data(c)
    _validate_training(c)
    _validate_privacy_and_run(c)


def _need(ok: bool, sentence: str) -> None:
    if not ok:
        raise TrainerError(sentence)


def _validate_choices_and_data(c: TrainConfig) -> None:
    # NOTE: imported here, not at the top: the data sets' loaders import this module.
    from trainers.datasets import DATASETS

    _need(
        c.dataset in DATASETS,
        f"unknown dataset {c.dataset!r}; choose one of: {', '.join(DATASETS)}.",
    )
    _need(
        c.optimizer in OPTIMIZERS,
        f"unknown optimizer {c.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}.",
    )
    _need(
        c.accountant in ("rdp", "pld"), f"unknown accountant {c.accountant!r}; choose rdp or pld."
    )
    _need(
        c.validation in VALIDATION_MODES,
        f"unknown validation {c.validation!r}; choose one of: {', '.join(VALIDATION_MODES)}.",
    )
    _need(
        0.0 <= c.validation_fraction < 1.0,
        f"validation_fraction must lie in [0, 1) (got {c.validation_fraction}); 0.1 is usual.",
    )
    _need(
        0.0 < c.train_fraction <= 1.0,
        f"train_fraction must lie in (0, 1] (got {c.train_fraction}).",
    )
    _need(
        c.val_noise_multiplier > 0 and math.isfinite(c.val_noise_multiplier),
        f"val_noise_multiplier must be a positive number (got {c.val_noise_multiplier}).",
    )
    _need(
        c.synthetic_examples >= 2, f"synthetic_examples must be ≥ 2 (got {c.synthetic_examples})."
    )
    _need(
        c.synthetic_image_size >= 8,
        f"synthetic_image_size must be ≥ 8 (got {c.synthetic_image_size}).",
    )
    _need(
        c.synthetic_channels in (1, 3),
        f"synthetic_channels must be 1 or 3 (got {c.synthetic_channels}).",
    )
    _need(c.synthetic_classes >= 2, f"synthetic_classes must be ≥ 2 (got {c.synthetic_classes}).")
    _need(
        c.group_attribute in GROUP_ATTRIBUTES,
        f"unknown group_attribute {c.group_attribute!r}; choose one of: "
        f"{', '.join(GROUP_ATTRIBUTES)}.",
    )
    _need(
        c.uncertain_label in ("ones", "zeros"),
        f"uncertain_label must be ones or zeros (got {c.uncertain_label!r}).",
    )
    _need(c.synthetic_groups >= 0, f"synthetic_groups must be ≥ 0 (got {c.synthetic_groups}).")
    _need(
        c.image_size is None or c.image_size >= 8,
        f"image_size must be ≥ 8 or unset (got {c.image_size}).",
    )


def _validate_training(c: TrainConfig) -> None:
    _need(
        c.learning_rate > 0 and math.isfinite(c.learning_rate),
        f"learning_rate must be a positive number (got {c.learning_rate}).",
    )
    _need(c.momentum >= 0 and c.momentum < 1, f"momentum must lie in [0, 1) (got {c.momentum}).")
    _need(c.weight_decay >= 0, f"weight_decay must be ≥ 0 (got {c.weight_decay}).")
    _need(c.batch_size >= 1, f"batch_size must be ≥ 1 (got {c.batch_size}).")
    _need(
        c.max_physical_batch_size >= 1,
        f"max_physical_batch_size must be ≥ 1 (got {c.max_physical_batch_size}).",
    )
    _need(c.eval_batch_size >= 1, f"eval_batch_size must be ≥ 1 (got {c.eval_batch_size}).")
    _need(c.epochs >= 1, f"epochs must be ≥ 1 (got {c.epochs}).")
    _need(c.augmult >= 0, f"augmult must be 0 (off) or a number of views ≥ 1 (got {c.augmult}).")
    _need(
        c.frontend in FRONTENDS,
        f"unknown frontend {c.frontend!r}; choose one of: {', '.join(FRONTENDS)}.",
    )
    _need(
        c.frontend == "none" or c.augmult == 0,
        f"frontend={c.frontend} computes features once per image; augmult needs new views "
        "every step: set augmult=0.",
    )
    _need(
        c.frontend_norm_groups >= 0,
        f"frontend_norm_groups must be ≥ 0 (got {c.frontend_norm_groups}).",
    )
    _need(
        0.0 <= c.ema_decay < 1.0,
        f"ema_decay must lie in [0, 1): 0 is off, 0.999 typical (got {c.ema_decay}).",
    )
    _need(
        c.trainable_layers in TRAINABLE_LAYERS,
        f"unknown trainable_layers {c.trainable_layers!r}; choose one of: "
        f"{', '.join(TRAINABLE_LAYERS)}.",
    )
    _need(c.trainable_blocks >= 1, f"trainable_blocks must be ≥ 1 (got {c.trainable_blocks}).")
    _need(
        c.head_init in HEAD_INITS,
        f"unknown head_init {c.head_init!r}; choose one of: {', '.join(HEAD_INITS)}.",
    )
    _need(
        c.clipping in CLIPPING_ENGINES,
        f"unknown clipping {c.clipping!r}; choose one of: {', '.join(CLIPPING_ENGINES)}.",
    )
    _need(
        c.tan_reference_batch is None or c.tan_reference_batch >= 1,
        f"tan_reference_batch must be ≥ 1 or unset (got {c.tan_reference_batch}).",
    )
    _need(
        c.tan_reference_batch is None or c.private,
        "tan_reference_batch simulates a private run; drop it or set private=true.",
    )


def _validate_privacy_and_run(c: TrainConfig) -> None:
    _need(
        c.max_grad_norm > 0 and math.isfinite(c.max_grad_norm),
        f"max_grad_norm must be a positive number (got {c.max_grad_norm}).",
    )
    _need(
        c.noise_multiplier is None
        or (c.noise_multiplier > 0 and math.isfinite(c.noise_multiplier)),
        "noise_multiplier must be a positive number, or unset to calibrate it "
        f"(got {c.noise_multiplier}).",
    )
    _need(
        c.target_epsilon is None or (c.target_epsilon > 0 and math.isfinite(c.target_epsilon)),
        f"target_epsilon must be a positive number (got {c.target_epsilon}).",
    )
    _need(
        0 < c.delta < 1, f"delta must lie strictly between 0 and 1 (got {c.delta}); 1e-5 is usual."
    )
    _need(
        not c.private or c.noise_multiplier is not None or c.target_epsilon is not None,
        "a private trial needs target_epsilon (to calibrate σ) or noise_multiplier; set one.",
    )
    _need(
        c.device == "auto" or c.device == "cpu" or c.device.startswith("cuda"),
        f"device must be auto, cpu, cuda or cuda:N (got {c.device!r}).",
    )


def config_keys() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def make_config(values: Mapping[str, Any]) -> TrainConfig:
    """Build a `TrainConfig` from a mapping, with a clear error for unknown keys or bad types."""
    known = set(config_keys())
    unknown = sorted(set(values) - known)
    if unknown:
        raise TrainerError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))}; "
            f"known: {', '.join(sorted(known))}."
        )
    hints = typing.get_type_hints(TrainConfig)
    checked = {key: coerce_setting(key, value, hints[key]) for key, value in values.items()}
    return TrainConfig(**checked)


def coerce_setting(key: str, value: Any, hint: Any) -> Any:
    """Check `value` against the field's annotation, converting int → float where meant."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None:
        if type(None) in allowed:
            return None
        raise TrainerError(f"{key} cannot be empty.")
    for kind in allowed:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is int and isinstance(value, float) and value.is_integer():
            return int(value)
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
    names = " or ".join("none" if k is type(None) else k.__name__ for k in allowed)
    raise TrainerError(f"{key} must be {names} (got {value!r}).")
