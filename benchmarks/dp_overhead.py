"""DP-SGD step time and peak memory over a non-private step: fast clipping vs Opacus as it ships.

For each model, on the same model, batch and data: a non-private SGD step, the project's DP step
(trainers.fast_clipping, what the trainer uses by default where it applies), and Opacus's stock
engines (per-example gradients by hooks, by functorch, and its ghost clipping). Each mode runs
in a fresh child process (this script with `--one MODEL MODE`), so one mode's allocations never
raise another's peak. A child times its steps after warm-up (the median of several: forward,
backward, clip, noise, optimizer step) and measures memory over warm-up and timed steps:
CPU: the resident set's high-water mark and the RSS just before the first step (so the step's
own increment is reported too); CUDA: torch.cuda.max_memory_allocated and the allocation
before the first step.

    python benchmarks/dp_overhead.py [--models cnn,nfnet,vit] [--device cpu|cuda] [--json FILE]
        [--steps 5] [--warmup 2] [--opacus-steps N] [--batch nfnet=16] [--mode-timeout S] [--jobs 1]
        [--skip-opacus]
    python benchmarks/dp_overhead.py --dry-run    # tiny models, 1 step: the machinery, in seconds

JSON: {"benchmark": "dp_overhead", "results": [{"model", "mode", "device", "batch", "image_size",
"dp_s", "nonprivate_s", "ratio", "peak_mb", "nonprivate_peak_mb", "memory_ratio", "step_mb",
"nonprivate_step_mb", "step_memory_ratio", …}, …], "machine": …, "torch": …}: one row per DP mode;
a mode that cannot run has an "error" and null figures. The file is rewritten after every row,
so a run cut short (a timeout) keeps what it measured.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Workload:
    model: str  # trainers.models.build_model's name
    channels: int
    image_size: int
    batch: int


# Sizes per device. CPU (2 cores in docs/benchmarks.md): realistic 224 px inputs at a small
# batch, so a step takes seconds, not minutes; CUDA: batches people fine-tune with.
WORKLOADS = {
    "cpu": {
        "cnn": Workload("tramer_boneh_cnn", 1, 28, 512),
        "nfnet": Workload("dm_nfnet_f0", 3, 224, 8),
        "vit": Workload("vit_base_patch16_224", 3, 224, 8),
    },
    "cuda": {
        "cnn": Workload("tramer_boneh_cnn", 1, 28, 512),
        "nfnet": Workload("dm_nfnet_f0", 3, 224, 64),
        "vit": Workload("vit_base_patch16_224", 3, 224, 64),
    },
    # timm's tiny test models share the big ones' layer types, so the dry run crosses the same
    # code paths (handlers, Opacus fallbacks) in seconds.
    "dry-run": {
        "cnn": Workload("tramer_boneh_cnn", 1, 28, 2),
        "nfnet": Workload("test_nfnet", 3, 32, 2),
        "vit": Workload("test_vit", 3, 32, 2),
    },
}
NONPRIVATE = "non-private"
FAST = "fast (this project)"
OPACUS_MODES = {"opacus hooks": "hooks", "opacus functorch": "functorch", "opacus ghost": "ghost"}
MODES = (NONPRIVATE, FAST, *OPACUS_MODES)
RESULT_PREFIX = "dp_overhead result: "  # the child's answer, told apart from library chatter
MiB = 2**20


# --- the child: one model, one mode, a fresh process -------------------------------------


def _nonprivate_step(model, x, y):
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step():
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()

    return step


def _fast_step(model, x, y):
    import torch
    import torch.nn.functional as F

    from trainers.fast_clipping import FastClipper, forward_with_input_grad, noise_and_average

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    clipper = FastClipper(model, max_grad_norm=1.0)  # ValueError: a layer it does not support
    params = [p for p in model.parameters() if p.requires_grad]
    generator = torch.Generator(device=x.device).manual_seed(0)
    buffers: dict = {}

    def step():
        clipper.backward(F.cross_entropy(forward_with_input_grad(model, x), y, reduction="none"), 1)
        noise_and_average(params, clipper.take_sums(), noise_multiplier=1.0, max_grad_norm=1.0,
                          expected_batch_size=len(y), generator=generator,
                          buffers=buffers)  # fmt: skip
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _opacus_step(model, x, y, grad_sample_mode):
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(x, y), batch_size=len(y))
    ghost = grad_sample_mode == "ghost"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        made = PrivacyEngine().make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01),
            data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=False, grad_sample_mode=grad_sample_mode,
            **({"criterion": torch.nn.CrossEntropyLoss()} if ghost else {}),
        )  # fmt: skip
    private_model, optimizer = made[0], made[1]
    criterion = made[2] if ghost else torch.nn.CrossEntropyLoss()

    def step():
        criterion(private_model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_peak_bytes() -> int:
    # VmHWM, not getrusage's ru_maxrss: Linux carries the parent's high-water mark across
    # fork + exec into ru_maxrss, so a child of a big driver would report the driver's peak.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class _Memory:
    """Peak memory from the first step on, and the footprint just before it."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device == "cuda"
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated()
            self.how = "torch.cuda.max_memory_allocated"
            return
        try:  # glibc keeps freed heap (the model build's probe pass): return it to the OS so
            # the footprint before the step is the live one and the step's increment is its own
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        self.before = _rss_bytes()
        try:  # Linux ≥ 4.0: the high-water mark restarts here, like reset_peak_memory_stats
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.how = "RSS high-water mark (VmHWM) from the first step"
        except OSError:
            self.how = "RSS high-water mark (VmHWM) of the whole process"

    def figures(self) -> dict:
        import torch

        peak = torch.cuda.max_memory_allocated() if self.cuda else _rss_peak_bytes()
        return {"peak_mb": peak / MiB, "step_mb": (peak - self.before) / MiB, "memory": self.how}


def _measure(workload: Workload, mode: str, device: str, steps: int, warmup: int) -> dict:
    import opacus  # noqa: F401 - every mode imports what Opacus's need: equal baselines
    import torch

    from trainers import make_config
    from trainers.models import build_model

    torch.manual_seed(0)
    config = make_config({"model": workload.model, "pretrained": False})
    model = build_model(
        config, in_channels=workload.channels, num_classes=10, image_size=workload.image_size
    ).to(device)
    shape = (workload.batch, workload.channels, workload.image_size, workload.image_size)
    x = torch.randn(shape, device=device)
    y = torch.randint(0, 10, (workload.batch,), device=device)
    if mode == NONPRIVATE:
        step = _nonprivate_step(model, x, y)
    elif mode == FAST:
        step = _fast_step(model, x, y)
    else:
        step = _opacus_step(model, x, y, OPACUS_MODES[mode])
    memory = _Memory(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        sync()
        started = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - started)
    return {"seconds": statistics.median(times), "steps": steps, **memory.figures()}


def _child(args, key: str, mode: str) -> None:
    workload = _workloads(args)[key]
    try:
        figures = _measure(workload, mode, args.device, args.steps, args.warmup)
    except Exception as error:  # noqa: BLE001 - an engine that cannot run is a result
        figures = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
    print(RESULT_PREFIX + json.dumps(figures), flush=True)


# --- the driver: a child per mode, rows, table, JSON ---------------------------------------


def _run_child(args, key: str, mode: str, steps: int, warmup: int) -> dict:
    command = [
        sys.executable, os.path.abspath(__file__), "--one", key, mode, "--device", args.device,
        "--steps", str(steps), "--warmup", str(warmup), *(["--dry-run"] if args.dry_run else []),
        *(f"--batch={k}={n}" for k, n in args.batch.items()),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.mode_timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.mode_timeout} s (--mode-timeout)"}
    answers = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if done.returncode != 0 or not answers:  # killed (out of memory?) or crashed natively
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"child process exited with status {done.returncode}: {last[:300]}"}
    return json.loads(answers[-1][len(RESULT_PREFIX) :])


def _ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def _row(key, workload, device, mode, dp: dict, base: dict) -> dict:
    row = {
        "model": workload.model, "key": key, "mode": mode, "device": device,
        "batch": workload.batch, "image_size": workload.image_size, "steps": dp.get("steps"),
        "dp_s": dp.get("seconds"), "nonprivate_s": base.get("seconds"),
        "ratio": _ratio(dp.get("seconds"), base.get("seconds")),
        "peak_mb": dp.get("peak_mb"), "nonprivate_peak_mb": base.get("peak_mb"),
        "memory_ratio": _ratio(dp.get("peak_mb"), base.get("peak_mb")),
        "step_mb": dp.get("step_mb"), "nonprivate_step_mb": base.get("step_mb"),
        "step_memory_ratio": _ratio(dp.get("step_mb"), base.get("step_mb")),
        "memory": dp.get("memory") or base.get("memory"),
    }  # fmt: skip
    error = dp.get("error") or (base.get("error") and f"non-private step: {base['error']}")
    if error:
        row["error"] = error
    return row


def _number(value, digits: int, suffix: str = "") -> str:
    return "—" if value is None else f"{value:.{digits}f}{suffix}"


def _print_line(label: str, mode: str, figures: dict, row: dict | None) -> None:
    if "error" in figures:
        print(f"{label:32} {mode:21} cannot run: {figures['error'][:100]}", flush=True)
        return
    row = row or {}
    print(f"{label:32} {mode:21} {_number(figures['seconds'], 3):>8} "
          f"{_number(row.get('ratio'), 2, '×'):>8} {_number(figures['peak_mb'], 0):>9} "
          f"{_number(row.get('memory_ratio'), 2, '×'):>7} {_number(figures['step_mb'], 0):>9} "
          f"{_number(row.get('step_memory_ratio'), 2, '×'):>7}", flush=True)  # fmt: skip


def _machine(device: str) -> str:
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    text = f"{name}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    if device == "cuda":
        text += f", {torch.cuda.get_device_name()}"
    return text


def _drive(args) -> int:
    import torch

    figures = {"benchmark": "dp_overhead", "device": args.device, "dry_run": args.dry_run,
               "results": [], "machine": _machine(args.device),
               "torch": torch.__version__}  # fmt: skip
    # Opacus's engines are slow on big models: their own step count, one warm-up at most.
    opacus = (args.opacus_steps or args.steps, min(args.warmup, 1))
    modes = (NONPRIVATE, FAST) if args.skip_opacus else MODES
    runs = [(key, mode, *((args.steps, args.warmup) if mode in (NONPRIVATE, FAST) else opacus))
            for key in args.models for mode in modes]  # fmt: skip
    print(f"{'model (batch, input)':32} {'mode':21} {'s/step':>8} {'× time':>8} "
          f"{'peak MiB':>9} {'× peak':>7} {'step MiB':>9} {'× step':>7}")  # fmt: skip
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        answers = pool.map(lambda run: _run_child(args, *run), runs)  # in order, as they finish
        for (key, mode, *_), answer in zip(runs, answers, strict=True):
            workload = _workloads(args)[key]
            if mode == NONPRIVATE:
                base = answer
                _print_line(f"{workload.model} ({workload.batch}, {workload.image_size}²)",
                            mode, base, None)  # fmt: skip
                continue
            row = _row(key, workload, args.device, mode, answer, base)
            _print_line("", mode, answer, row)
            figures["results"].append(row)
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(figures, f, indent=2)
    return 0


# --- the command line ----------------------------------------------------------------------


def _workloads(args) -> dict[str, Workload]:
    sizes = WORKLOADS["dry-run" if args.dry_run else args.device]
    return {k: replace(w, batch=args.batch.get(k, w.batch)) for k, w in sizes.items()}


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,nfnet,vit", help="comma list of cnn, nfnet, vit")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: cuda if available")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--steps", type=int, help="timed steps per mode (default 5; dry run 1)")
    parser.add_argument("--warmup", type=int, help="warm-up steps (default 2; dry run 0)")
    parser.add_argument("--opacus-steps", type=int, help="for Opacus's engines (default: --steps)")
    parser.add_argument("--batch", action="append", default=[], help="MODEL=N, e.g. nfnet=16")
    parser.add_argument("--mode-timeout", type=float, help="seconds a mode may take (or: error)")
    parser.add_argument("--jobs", type=int, default=1, help="modes at once (times mean: only 1)")
    parser.add_argument("--dry-run", action="store_true", help="tiny models, 1 step: the machinery")
    parser.add_argument("--skip-opacus", action="store_true",
                        help="only the non-private and fast steps")  # fmt: skip
    parser.add_argument("--one", nargs=2, metavar=("MODEL", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    known = ", ".join(WORKLOADS["cpu"])
    args.models = list(dict.fromkeys(m.strip() for m in args.models.split(",")))
    for name in args.models:
        if name not in WORKLOADS["cpu"]:
            _fail(f"unknown model {name!r} in --models; choose from {known}.")
    batches = {}
    for item in args.batch:
        key, _, number = item.partition("=")
        if key not in WORKLOADS["cpu"] or not number.isdigit() or int(number) < 1:
            _fail(f"--batch takes MODEL=N with MODEL one of {known} and N ≥ 1 (got {item!r}).")
        batches[key] = int(number)
    args.batch = batches
    for name in ("steps", "warmup", "opacus_steps", "jobs"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            _fail(f"--{name.replace('_', '-')} must be ≥ {0 if name == 'warmup' else 1}.")
    args.steps = args.steps or (1 if args.dry_run else 5)
    args.warmup = args.warmup if args.warmup is not None else (0 if args.dry_run else 2)
    return args


def main() -> int:
    args = _parse()
    if args.device is None or args.device == "cuda":
        import torch

        if args.device is None:
            args.device = "cuda" if torch.cuda.is_available() else "cpu"
        elif not torch.cuda.is_available():
            _fail("--device cuda needs a CUDA GPU that PyTorch can see; use --device cpu.")
    if args.one:
        key, mode = args.one
        if key not in WORKLOADS["cpu"] or mode not in MODES:
            _fail(f"--one takes a model of {', '.join(WORKLOADS['cpu'])} and a mode of {MODES}.")
        _child(args, key, mode)
        return 0
    return _drive(args)


if __name__ == "__main__":
    sys.exit(main())
