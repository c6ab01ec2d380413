"""Where a fast-clipping DP step spends its time, phase by phase, beside a non-private step.

One process, one model (random weights), one batch of random 224 px images: the median over
timed steps of each phase of `FastClipper.backward` run by hand — forward, the autograd
backward (output gradients only), the layers' states, norms and clipped sums, the noise and the
optimizer step. What to optimise next, measured; `benchmarks/dp_overhead.py` gives the ratios.

    python benchmarks/fast_clip_phases.py [--model vit_base_patch16_224] [--batch 8] [--json F]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from trainers import make_config
from trainers.fast_clipping import FastClipper, forward_with_input_grad, noise_and_average
from trainers.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()
    torch.manual_seed(0)
    config = make_config({"model": args.model, "pretrained": False})
    model = build_model(config, in_channels=3, num_classes=10, image_size=args.image_size)
    x = torch.randn(args.batch, 3, args.image_size, args.image_size)
    y = torch.randint(0, 10, (args.batch,))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def nonprivate() -> dict[str, float]:
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        return {"non-private step": time.perf_counter() - started}

    clipper = FastClipper(model, max_grad_norm=1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    generator, buffers = torch.Generator().manual_seed(0), {}

    def private() -> dict[str, float]:
        times, mark = {}, [time.perf_counter()]

        def lap(name: str) -> None:
            now = time.perf_counter()
            times[name] = now - mark[0]
            mark[0] = now

        losses = F.cross_entropy(forward_with_input_grad(model, x), y, reduction="none")
        lap("forward")
        losses.sum().backward()
        lap("autograd backward (output gradients)")
        states, squared = [], 0
        for capture in clipper._captures:  # FastClipper.backward's loop, phase by phase
            handler = capture.handler
            activations, backprops, output = capture.take()
            states.append((handler, handler.prepare(activations, backprops, 1, output)))
        lap("layer states")
        for handler, state in states:
            squared = squared + handler.squared_norms(state)
            handler.compact(state)
        lap("norms")
        factors = clipper._factors(squared.sqrt())
        for handler, state in states:
            clipper._accumulate(handler.clipped_sums(state, factors))
        lap("clipped sums")
        noise_and_average(params, clipper.take_sums(), noise_multiplier=1.0, max_grad_norm=1.0,
                          expected_batch_size=args.batch, generator=generator,
                          buffers=buffers)  # fmt: skip
        lap("noise")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        lap("optimizer step")
        return times

    figures = {}
    for step in (nonprivate, private):
        for _ in range(2):  # warm-up
            step()
        runs = [step() for _ in range(args.steps)]
        figures.update({name: statistics.median(r[name] for r in runs) for name in runs[0]})
    clipper.close()
    private_total = sum(v for k, v in figures.items() if k != "non-private step")
    print(f"{args.model} (batch {args.batch}, {args.image_size} px), median of {args.steps}:")
    for name, seconds in figures.items():
        print(f"  {name:40s} {seconds:7.3f} s")
    print(f"  {'DP step, all phases':40s} {private_total:7.3f} s "
          f"= {private_total / figures['non-private step']:.2f}× non-private")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"benchmark": "fast_clip_phases", "model": args.model,
                       "batch": args.batch, "seconds": figures}, f, indent=2)  # fmt: skip


if __name__ == "__main__":
    main()
