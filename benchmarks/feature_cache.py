"""Frozen-feature cache: head-only trials of dm_nfnet_f0 with and without cached features.

Head-only (linear-probe) DP trials of timm's `dm_nfnet_f0` (random weights: pretrained ones
need internet; the compute is the same) on synthetic 3-channel images. Without the cache every
trial runs the frozen backbone on every batch of every epoch and on the evaluation sets; with
it the first trial computes the features once and every later trial trains the head on them.

    python benchmarks/feature_cache.py [--json FILE] [--trials 3] [--image-size 64]

The JSON holds each trial's wall time and `speedup`: the mean uncached trial time over the
mean cached trial time after the first (the goal is ≥ 20×).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time

import torch

from trainers import make_config, train


def _trial(values: dict) -> tuple[float, dict]:
    started = time.monotonic()
    final = train(make_config(values))
    return time.monotonic() - started, final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--trials", type=int, default=3, help="trials per setting")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--examples", type=int, default=512, help="training examples")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as cache_dir:
        base = {
            "dataset": "synthetic", "synthetic_channels": 3, "synthetic_classes": 10,
            "synthetic_image_size": 32, "synthetic_examples": args.examples,
            "validation_fraction": 0.1, "image_size": args.image_size, "model": "dm_nfnet_f0",
            "pretrained": False, "trainable_layers": "head", "batch_size": 128,
            "max_physical_batch_size": 64, "eval_batch_size": 64, "epochs": 2,
            "learning_rate": 1.0, "max_grad_norm": 1.0, "target_epsilon": 8.0, "delta": 1e-4,
            "feature_cache_dir": cache_dir,
        }  # fmt: skip
        uncached, cached, accuracies = [], [], {"uncached": [], "cached": []}
        for i in range(args.trials):
            wall, final = _trial({**base, "feature_cache": False, "learning_rate": 0.5 + i})
            uncached.append(wall)
            accuracies["uncached"].append(final["val_accuracy"])
            print(f"uncached trial {i + 1}: {wall:.2f} s")
        for i in range(args.trials + 1):
            wall, final = _trial({**base, "learning_rate": 0.5 + max(i - 1, 0)})
            assert final["feature_cache"]
            cached.append(wall)
            accuracies["cached"].append(final["val_accuracy"])
            print(f"cached trial {i + 1}{' (computes the features)' if i == 0 else ''}: "
                  f"{wall:.2f} s")  # fmt: skip

    speedup = statistics.mean(uncached) / statistics.mean(cached[1:])
    figures = {
        "benchmark": "feature_cache",
        "model": "dm_nfnet_f0 (random weights)",
        "image_size": args.image_size,
        "train_examples": args.examples,
        "uncached_trial_s": uncached,
        "cached_first_trial_s": cached[0],
        "cached_trial_s": cached[1:],
        "speedup": speedup,
        "val_accuracy": accuracies,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
        "torch": torch.__version__,
    }
    mean_uncached, mean_cached = statistics.mean(uncached), statistics.mean(cached[1:])
    print(f"speedup per trial after the first: {speedup:.1f}× (uncached {mean_uncached:.2f} s, "
          f"cached {mean_cached:.2f} s; the first cached trial {cached[0]:.2f} s)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
