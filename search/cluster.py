"""The Ray cluster a search runs on: join one (`--address`), or start the embedded local one
with its dashboard (bound to 127.0.0.1 unless asked otherwise) and every other Ray endpoint on
127.0.0.1 (docs/monitoring/README.md: what each endpoint is, how to scrape its metrics)."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from search.errors import SearchError

DASHBOARD_PORT = 8265
"""Ray's usual dashboard port; a second local search on this machine takes the next free one."""

METRICS_REPORT_INTERVAL_MS = 2000
"""How often a local Ray's processes hand their metrics to the exporter Prometheus scrapes
(Ray's default: 10 s): a gauge the search sets is scrapeable within ~2 s, so even a short
search is seen. The last values would be lost when the search stops its Ray at once: with
Prometheus in use, `linger_for_prometheus` waits for one export and one scrape first."""

PROMETHEUS_SCRAPE_S = 5.0
"""The scrape interval of docs/monitoring/prometheus.yml."""

EXPORTER_LISTED_S = 10.0
"""How long after `ray.init` the exporter carrying the search's gauges appears in Ray's
service discovery file (rewritten every 5 s; measured ~10 s): Prometheus cannot scrape it
before."""

_local_ray_started: float | None = None


def linger_for_prometheus(address: str | None) -> None:
    """Before a local search stops its Ray: when the user runs Prometheus for it
    (RAY_PROMETHEUS_HOST set, as docs/monitoring/README.md says), keep the exporter up for one
    export and one scrape, and at least until Prometheus can have found it, so the final
    privacy gauges are recorded even for a search of a few seconds."""
    if address is not None or _local_ray_started is None:
        return  # a joined cluster outlives the search
    if not os.environ.get("RAY_PROMETHEUS_HOST"):
        return  # without Prometheus nobody scrapes
    one_scrape = METRICS_REPORT_INTERVAL_MS / 1000 + PROMETHEUS_SCRAPE_S
    up = time.monotonic() - _local_ray_started
    wait = max(one_scrape, EXPORTER_LISTED_S + one_scrape - up)
    print(f"Keeping the local Ray {wait:.0f} s for Prometheus to scrape the final privacy gauges.")
    time.sleep(wait)


LOOPBACK_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch for a single-machine node (its default off Linux): "0" makes the node's IP
127.0.0.1, and Ray then binds GCS, raylet, workers, agents and metrics exporters to it."""


def start_ray(
    *,
    address: str | None,
    num_cpus: int | None,
    dashboard_host: str,
    dashboard_port: int | None = None,
    verbose: bool = True,
) -> None:
    """Join the cluster at `address`, or start a local one with `num_cpus` and the dashboard
    on `dashboard_port` (None: 8265, or the next free port when another search holds it)."""
    global _local_ray_started  # when the local Ray started (for linger_for_prometheus)
    import ray  # slow to import: only a search that runs trials pays for it

    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **_logging(verbose))
        except (ConnectionError, ValueError, RuntimeError) as error:
            reason = (str(error).strip() or type(error).__name__).splitlines()[0][:160]
            raise no_cluster(address, reason) from None
        print(f"Joined the Ray cluster at {address}.")
        return
    if dashboard_host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: the Ray dashboard listens on {dashboard_host}, reachable from other "
            "machines; its API still requires the token in ~/.ray/auth_token.",
            file=sys.stderr,
        )
    for attempt in range(DASHBOARD_ATTEMPTS):
        port = free_dashboard_port(dashboard_host) if dashboard_port is None else dashboard_port
        try:
            with loopback_node():
                context = ray.init(
                    num_cpus=num_cpus,
                    include_dashboard=True,
                    dashboard_host=dashboard_host,
                    dashboard_port=port,
                    _system_config={"metrics_report_interval_ms": METRICS_REPORT_INTERVAL_MS},
                    **_logging(verbose),
                )
            _local_ray_started = time.monotonic()
            break
        except Exception as error:  # Ray raises a bare Exception when its dashboard fails
            # Another search took the port between our probe and Ray's bind: take the next.
            taken = any(words in str(error) for words in PORT_TAKEN)
            ray.shutdown()
            if not taken:
                raise SearchError(
                    f"could not start the local Ray ({_first_line(error)}); its logs are in "
                    "/tmp/ray/session_latest/logs."
                ) from None
            if dashboard_port is not None or attempt + 1 == DASHBOARD_ATTEMPTS:
                raise SearchError(
                    f"the dashboard port {port} was taken as the local Ray started (another "
                    "search starting?); pick a free one with --dashboard-port."
                ) from None
    url = context.dashboard_url
    if url:
        print(
            f"Ray dashboard: http://{url} (token auth: send 'Authorization: Bearer "
            "$(cat ~/.ray/auth_token)', or open the URL and paste the token)"
        )


@contextmanager
def loopback_node() -> Iterator[None]:
    """Start the local node on 127.0.0.1 rather than on this machine's network address.

    On Linux Ray resolves even `_node_ip_address="127.0.0.1"` to the network address and binds
    its gRPC servers to every interface; it keeps the node on loopback only when multi-node
    clusters are off. The switch is read once, at import: the driver's copy is set here, the
    processes `ray.init` starts (GCS, raylet and its workers, dashboard, agents) read it from
    their environment. Both go back once they run; this process's later `ray.init(address=…)`
    joins real clusters as before. tests/search/test_monitoring.py checks the sockets."""
    from ray._private import ray_constants

    before_env = os.environ.get(LOOPBACK_NODE_ENV)
    before = ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOOPBACK_NODE_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before
        if before_env is None:
            os.environ.pop(LOOPBACK_NODE_ENV, None)
        else:
            os.environ[LOOPBACK_NODE_ENV] = before_env


DASHBOARD_ATTEMPTS = 5
PORT_TAKEN = ("already occupied", "address already in use", "valid port for dashboard")


def _first_line(error: Exception) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return (lines[-1] if lines else type(error).__name__)[:160]


def _logging(verbose: bool) -> dict:
    """Quiet unless --verbose: no trial log lines forwarded (their errors reach the driver
    anyway) and only Ray's errors; the search prints its own dashboard URL and progress."""
    return {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}


def free_dashboard_port(host: str) -> int:
    """8265 when it is free, else the first free port after it: each local search starts its
    own Ray, and a second one on this machine must not die on the first one's port."""
    for port in range(DASHBOARD_PORT, DASHBOARD_PORT + 100):
        if port_is_free(host, port):
            return port
    raise SearchError(
        f"no free port for the Ray dashboard in {DASHBOARD_PORT}-{DASHBOARD_PORT + 99}; "
        "give one with --dashboard-port."
    )


def port_is_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def check_reachable(address: str) -> None:
    """Ray retries an unreachable head for minutes: try its port once, briefly, first."""
    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not port.isdigit():
        return  # "auto" reads the local cluster's address file; clients have their own timeout
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=10).close()
    except OSError as error:
        raise no_cluster(address, error.strerror or str(error)) from None


def no_cluster(address: str, reason: str) -> SearchError:
    return SearchError(
        f"cannot reach a Ray cluster at {address} ({reason}); start it with `ray start "
        "--head`, check the address, or drop --address to run locally."
    )
