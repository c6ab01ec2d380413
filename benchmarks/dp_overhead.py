"""DP-SGD step time over a non-private step: the project's fast clipping vs Opacus as it ships.

In one process and one run, on the same model, batch and data: a non-private SGD step, the
project's DP step (trainers.fast_clipping, what the trainer uses by default where it applies), and
Opacus's stock engines (per-example gradients by hooks, by functorch, and its ghost clipping).
Each is timed after warm-up steps, as the median of several steps (forward, backward, clip,
noise, optimizer step).

    python benchmarks/dp_overhead.py [--json FILE] [--steps 5] [--models nfnet,cnn]

JSON: {"results": [{"model", "mode", "dp_s", "nonprivate_s", "ratio"}, …], "machine": …}.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import platform
import statistics
import time
import warnings

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from trainers import make_config
from trainers.fast_clipping import FastClipper, forward_with_input_grad, noise_and_average
from trainers.models import build_model

MODELS = {
    # name: (trainer model, channels, image size, batch)
    "nfnet": ("dm_nfnet_f0", 3, 32, 32),
    "cnn": ("tramer_boneh_cnn", 1, 28, 512),
}
OPACUS_MODES = ("hooks", "functorch", "ghost")


def _timed(step, warmup: int, steps: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _nonprivate(model, x, y):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def _fast(model, x, y):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    clipper = FastClipper(model, max_grad_norm=1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator().manual_seed(0)
    buffers: dict = {}

    def step():
        clipper.backward(F.cross_entropy(forward_with_input_grad(model, x), y, reduction="none"), 1)
        noise_and_average(params, clipper.take_sums(), noise_multiplier=1.0, max_grad_norm=1.0,
                          expected_batch_size=len(y), generator=generator,
                          buffers=buffers)  # fmt: skip
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _opacus(model, x, y, mode):
    from opacus import PrivacyEngine

    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = PrivacyEngine()
        kwargs = {"criterion": torch.nn.CrossEntropyLoss()} if mode == "ghost" else {}
        made = engine.make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
            data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False, grad_sample_mode=mode, **kwargs,
        )  # fmt: skip
    private_model, optimizer = made[0], made[1]
    criterion = made[2] if mode == "ghost" else torch.nn.CrossEntropyLoss()

    def step():
        criterion(private_model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--models", default="nfnet,cnn")
    parser.add_argument(
        "--opacus-steps", type=int, default=None,
        help="timed steps for Opacus's engines, slow on NFNets (default: --steps)",
    )  # fmt: skip
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = []
    for key in args.models.split(","):
        name, channels, size, batch = MODELS[key]
        torch.manual_seed(0)
        config = make_config({"model": name, "pretrained": False})
        base = build_model(config, in_channels=channels, num_classes=10, image_size=size)
        x = torch.randn(batch, channels, size, size)
        y = torch.randint(0, 10, (batch,))
        nonprivate = _timed(_nonprivate(copy.deepcopy(base), x, y), args.warmup, args.steps)
        print(f"{name} (batch {batch}, {size}×{size}): non-private step {nonprivate:.3f} s")
        modes = [("fast (this project)", lambda m, x=x, y=y: _fast(m, x, y), args.steps)]
        slow = args.opacus_steps or args.steps
        modes += [
            (f"opacus {mode}", lambda m, mode=mode, x=x, y=y: _opacus(m, x, y, mode), slow)
            for mode in OPACUS_MODES
        ]
        for label, make, steps in modes:
            try:
                warmup = args.warmup if label.startswith("fast") else 1
                dp = _timed(make(copy.deepcopy(base)), warmup, steps)
            except Exception as error:  # noqa: BLE001 - an engine that cannot run is a result
                print(f"  {label}: cannot run ({type(error).__name__}: {str(error)[:120]})")
                reason = f"{type(error).__name__}: {str(error)[:300]}"
                results.append({"model": name, "mode": label, "dp_s": None,
                                "nonprivate_s": nonprivate, "ratio": None,
                                "error": reason})  # fmt: skip
                continue
            ratio = dp / nonprivate
            print(f"  {label}: {dp:.3f} s per DP step = {ratio:.2f}× non-private")
            results.append({"model": name, "mode": label, "dp_s": dp, "nonprivate_s": nonprivate,
                            "ratio": ratio, "batch": batch, "image_size": size})  # fmt: skip
    figures = {
        "benchmark": "dp_overhead",
        "results": results,
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, "
        f"CUDA: {torch.cuda.is_available()}",
        "torch": torch.__version__,
    }
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
