"""Layer selection on Fashion-MNIST: full DP training versus training fewer layers.

The `fmnist_quick` recipe (Tramèr & Boneh's CNN, ε = 3, δ = 1e-5, 2 epochs, lr 4, C = 0.1)
trained from scratch with each `trainable_layers` setting: all layers, the last block (the
hidden fc layer and the head), biases + head (BitFit), and the head alone (on cached features
of the frozen random convolutional backbone). Same σ and steps for all: fewer trainable
parameters means less noise in total, but frozen random layers also learn nothing.

    python benchmarks/fmnist_layers.py [--json FILE] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time

import torch

import spaces
from trainers import make_config, parse_overrides, train

MODES = ("all", "last_k_blocks", "bias_and_head", "head")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="K=V")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        for mode in MODES:
            values = {
                **spaces.get_space("fmnist_quick").default_config(),
                "trainable_layers": mode,
                "feature_cache_dir": cache_dir,
                **parse_overrides(args.overrides),
            }
            started = time.monotonic()
            final = train(make_config(values))
            wall = time.monotonic() - started
            rows.append(
                {
                    "trainable_layers": mode,
                    "trainable_parameters": final["trainable_parameters"],
                    "test_accuracy": final["test_accuracy"],
                    "val_accuracy": final["val_accuracy"],
                    "epsilon": final["epsilon"],
                    "feature_cache": final["feature_cache"],
                    "wall_s": wall,
                }
            )
            accuracy, eps = final["test_accuracy"], final["epsilon"]
            print(f"{mode:>14}: {final['trainable_parameters']:>6} parameters, test accuracy "
                  f"{accuracy:.4f} at ε={eps:.3f}, {wall:.1f} s")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "fmnist_layers", "results": rows,
                       "machine": f"{platform.machine()}, {torch.get_num_threads()} threads"},
                      f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
