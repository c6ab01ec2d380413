"""What a search checks before it writes anything: the request as typed (fast: no torch, no
Ray, so a typo is answered in well under a second), then the cluster it joined or started
(can it ever run one trial?). Every failure is a one-sentence SearchError."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import spaces
from search.errors import SearchError
from trainers import parse_overrides, writable_directory


def check_request(args) -> None:
    """Everything that can be checked from the arguments alone, in the order a user would fix
    it: the space, the settings, the resources, the name and the storage path."""
    if not args.space:
        raise SearchError("choose a space with --space NAME (see --list-spaces).")
    spaces.get_space(args.space)
    parse_overrides(args.overrides)
    if args.num_samples < 1:
        raise SearchError(f"--num-samples must be ≥ 1 (got {args.num_samples}).")
    check_resources(args)
    check_name(args.name)
    writable_directory(args.storage_path, "--storage-path")
    parse_budgets(args.budgets)


def check_resources(args) -> None:
    for flag, value in (
        ("--cpus-per-trial", args.cpus_per_trial),
        ("--gpus-per-trial", args.gpus_per_trial),
        ("--max-concurrent", args.max_concurrent),
        ("--max-failures", args.max_failures),
    ):
        if value < 0:
            raise SearchError(f"{flag} must be ≥ 0 (got {value}).")
    if args.cpus_per_trial == 0 and args.gpus_per_trial == 0:
        raise SearchError("a trial needs a CPU or a GPU: give --cpus-per-trial above 0.")
    if args.num_cpus is not None and args.num_cpus < 1:
        raise SearchError(f"--num-cpus must be ≥ 1 (got {args.num_cpus}).")
    if args.dashboard_port is not None:
        from search.cluster import port_is_free

        if not 1 <= args.dashboard_port <= 65535:
            raise SearchError(f"--dashboard-port must be in 1-65535 (got {args.dashboard_port}).")
        if args.address is None and not port_is_free(args.dashboard_host, args.dashboard_port):
            raise SearchError(
                f"--dashboard-port {args.dashboard_port} is taken (another search or Ray?); "
                "pick another, or leave it out to take a free one."
            )


def check_name(name: str | None) -> None:
    """An experiment name is one folder inside --storage-path, never a path out of it."""
    if name is None:
        return
    if not name.strip() or name in (".", "..") or "/" in name or os.sep in name or "\0" in name:
        raise SearchError(
            f"--name must be one folder name (got {name!r}); put the folder's location in "
            "--storage-path."
        )


def parse_budgets(text: str | None) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SearchError(f"--budgets {text!r} is not a comma-separated list of numbers.") from None
    if not values or any(not (v > 0 and v < float("inf")) for v in values):
        raise SearchError(f"--budgets {text!r}: every budget ε must be a positive number.")
    return values


def check_trial_fits(*, cpus: float, gpus: float, joined: str | None) -> None:
    """Refuse a trial no node of the cluster can ever hold (Tune would leave it PENDING
    forever). A local cluster has no autoscaler, so that is final; a joined one may scale up,
    so there it is a warning."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    if any(r.get("CPU", 0) >= cpus and r.get("GPU", 0) >= gpus for r in nodes):
        return
    most_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    most_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    asked = f"{cpus:g} CPU(s) and {gpus:g} GPU(s) per trial"
    has = f"its largest node has {most_cpus:g} CPU(s) and {most_gpus:g} GPU(s)"
    if joined is None:
        ray.shutdown()
        raise SearchError(
            f"no trial can run here: it asks {asked} but this machine's Ray has "
            f"{most_cpus:g} CPU(s) and {most_gpus:g} GPU(s); lower --cpus-per-trial / "
            "--gpus-per-trial, or join a cluster that has them with --address."
        )
    print(
        f"warning: no node of the cluster at {joined} can run a trial yet ({asked}; {has}); "
        "trials wait PENDING until an autoscaler adds such a node.",
        file=sys.stderr,
    )


def submitted_job() -> str | None:
    """The id of the Ray job this driver runs under (`ray job submit`), or None."""
    raw = os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")
    if not raw:
        return None
    try:
        return str(json.loads(raw).get("metadata", {}).get("job_submission_id") or "unknown")
    except (ValueError, AttributeError):
        return "unknown"


def warn_relative_storage(storage_path: Path) -> None:
    """A Ray job runs in a temporary copy of the working directory, deleted with the job's
    runtime environment: a relative --storage-path would put the experiment there."""
    job = submitted_job()
    if job is None or storage_path.is_absolute():
        return
    print(
        f"warning: this search runs as Ray job {job} with a relative --storage-path "
        f"{str(storage_path)!r}, which lands in the job's temporary working directory "
        f"({Path.cwd()}); give an absolute path on a shared file system, e.g. --storage-path "
        "$HOME/dp-tune-runs.",
        file=sys.stderr,
    )
