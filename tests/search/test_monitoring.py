"""Monitoring (docs/monitoring/): the shipped Grafana dashboard asks only for gauges the search
publishes; a real Prometheus with the shipped configuration scrapes them from a search; the
local Ray listens on 127.0.0.1 only."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, TINY, search, search_epsilon

MONITORING = ROOT / "docs" / "monitoring"
METRIC = re.compile(r"\bray_dp_search_\w+")
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SD_FILE = "prom_metrics_service_discovery.json"


def published_metrics() -> set[str]:
    """The Prometheus names of the search's gauges (search/live.py; Ray adds ray_)."""
    from search.live import GAUGES

    return {f"ray_dp_search_{name}" for name, _ in GAUGES}


def test_grafana_dashboard_queries_only_published_gauges():
    published = published_metrics()
    assert {"ray_dp_search_epsilon_spent", "ray_dp_search_epsilon_planned"} <= published
    dashboard = json.loads((MONITORING / "grafana_dashboard.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    experiment = variables["experiment"]
    assert experiment["type"] == "query" and experiment["datasource"] == DATASOURCE
    assert re.fullmatch(r"label_values\((\w+), experiment\)", experiment["query"]["query"])
    assert METRIC.search(experiment["query"]["query"])[0] in published
    used, ids, titles = set(), set(), []
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids and panel["type"] in ("timeseries", "stat")
        ids.add(panel["id"])
        titles.append(panel["title"])
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in "hwxy") and grid["x"] + grid["w"] <= 24
        assert panel["datasource"] == DATASOURCE
        assert panel["targets"] and len({t["refId"] for t in panel["targets"]}) == len(
            panel["targets"]
        )
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE
            names = METRIC.findall(target["expr"])
            assert names and set(names) <= published, target["expr"]
            # Every selector is filtered by the experiment variable.
            assert target["expr"].count('{experiment=~"$experiment"}') == len(names)
            assert target["expr"].count("(") == target["expr"].count(")")
            used.update(names)
    assert used == published
    assert titles == [
        "ε spent vs planned budget", "Budget left", "Trials finished", "Best DP validation score"
    ]  # fmt: skip


def test_prometheus_configuration_reads_rays_service_discovery_file():
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["file_sd_configs"]
    assert discovery["files"] == [f"/tmp/ray/{SD_FILE}"]
    promtool = shutil.which("promtool")  # comes with Debian's prometheus package
    if promtool:
        check = subprocess.run(
            [promtool, "check", "config", str(MONITORING / "prometheus.yml")],
            capture_output=True, text=True,
        )  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr


# --- a real Prometheus, a real search --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def short_ray_tmpdir() -> Path:
    """A Ray root of this test's own (RAY_TMPDIR): its service discovery file lists this
    test's Ray alone, whatever else runs here; short, as Ray's Unix sockets live under it."""
    return Path(tempfile.mkdtemp(prefix="dpmon", dir="/tmp"))


def prometheus_api(port: int, path: str, **params) -> list:
    """`data` (or `data.result`) of one Prometheus HTTP API call that must succeed."""
    query = urllib.parse.urlencode(params, doseq=True)
    url = f"http://127.0.0.1:{port}/api/v1/{path}?{query}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    assert body["status"] == "success", body
    data = body["data"]
    return data["result"] if isinstance(data, dict) else data


def get(url: str, token: str | None = None) -> bytes:
    """The body of a GET, also of an error answer (the dashboard's health checks use 500)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.read()
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            raise
        return error.read()


def start_prometheus(binary: str, workdir: Path, ray_tmpdir: Path) -> tuple[subprocess.Popen, int]:
    """Prometheus with the shipped configuration: only its scrape interval shortened and the
    service discovery file moved under `ray_tmpdir` (Ray's /tmp is RAY_TMPDIR there)."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    discovery = config["scrape_configs"][0]["file_sd_configs"][0]
    discovery["files"] = [f.replace("/tmp", str(ray_tmpdir), 1) for f in discovery["files"]]
    discovery["refresh_interval"] = "1s"
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(workdir / "prometheus.log", "w") as log:  # the process keeps its own copy
        process = subprocess.Popen(
            [binary, f"--config.file={workdir / 'prometheus.yml'}",
             f"--web.listen-address=127.0.0.1:{port}", f"--storage.tsdb.path={workdir / 'tsdb'}"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2):
                return process, port
        except (urllib.error.URLError, ConnectionError):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError((workdir / "prometheus.log").read_text()[-3000:]) from None
            time.sleep(0.3)


def wait_for(check, what: str, timeout: float = 60.0):
    """`check()`'s first truthy answer, asked every half second."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except (OSError, ValueError, KeyError, IndexError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout:.0f} s")
        time.sleep(0.5)


@pytest.mark.slow  # a real Ray search
def test_prometheus_scrapes_the_privacy_gauges_of_a_search(tmp_path, monkeypatch):
    """The search joins a local Ray started as `start_ray` starts it (loopback, 2 s metrics)
    but held by the test: a search's own Ray stops with it, before its last values are
    scraped in most runs (docs/monitoring/README.md). Ray exports the values a driver set
    when it exits and keeps them, so the last ε spent must reach Prometheus exactly."""
    import ray

    from search.cluster import start_ray

    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install -y prometheus (.ci/run installs it)")
    ray_tmpdir = short_ray_tmpdir()
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmpdir))
    # A second driver on this machine joins a loopback node only with this switch (the README).
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    prometheus, port = start_prometheus(binary, tmp_path, ray_tmpdir)
    monkeypatch.setenv("RAY_PROMETHEUS_HOST", f"http://127.0.0.1:{port}")  # for the dashboard
    monkeypatch.setenv("RAY_GRAFANA_HOST", f"http://127.0.0.1:{free_port()}")  # none there
    dashboard = free_port()
    try:
        start_ray(address=None, num_cpus=2, dashboard_host="127.0.0.1", dashboard_port=dashboard)
        result = search(
            *TINY, "--num-samples", "3", "--searcher", "random", "--set", "epochs=3",
            "--storage-path", str(tmp_path), "--name", "mon",
            "--address", ray.get_runtime_context().gcs_address,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        final = search_epsilon(tmp_path / "mon")
        spent = 'ray_dp_search_epsilon_spent{experiment="mon"}'
        # Ray exports the driver's last values as it exits; Prometheus scrapes them.
        scraped = wait_for(
            lambda: [r for r in prometheus_api(port, "query", query=spent)
                     if float(r["value"][1]) == pytest.approx(final.spent)],
            "final ε spent in Prometheus", timeout=30,
        )  # fmt: skip
        history = prometheus_api(port, "query", query=f"{spent}[5m]")
        series = prometheus_api(
            port, "series", **{"match[]": '{__name__=~"ray_dp_search_.+",experiment="mon"}'}
        )
        # The dashboard found Prometheus; its Metrics view still waits for a Grafana.
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        health = {
            name: json.loads(get(f"http://127.0.0.1:{dashboard}/api/{name}_health", token))
            for name in ("prometheus", "grafana")
        }
        panels = {
            target["expr"]: prometheus_api(
                port, "query", query=target["expr"].replace("$experiment", "mon")
            )
            for panel in json.loads((MONITORING / "grafana_dashboard.json").read_text())["panels"]
            for target in panel["targets"]
        }
    finally:
        ray.shutdown()
        prometheus.terminate()
        prometheus.wait(timeout=30)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert health["prometheus"]["result"] and not health["grafana"]["result"], health
    values = [float(v) for r in history for _, v in r["values"]]
    print(f"Prometheus: ε spent {float(scraped[0]['value'][1]):.4f} (the ledger's), the plan's "
          f"{final.epsilon:.4f}; {len(values)} samples")  # fmt: skip
    # Never above what the ledger finally shows, which never exceeds the plan.
    assert 0 < min(values) and max(values) <= final.spent + 1e-9 <= final.epsilon + 1e-9
    assert {s["__name__"] for s in series} == published_metrics()
    for expr, answer in panels.items():  # every panel's PromQL runs and finds the search
        assert len(answer) == 1 and answer[0]["metric"] == {"experiment": "mon"}, expr
    planned = panels[next(e for e in panels if "epsilon_planned" in e)]
    assert float(planned[0]["value"][1]) == pytest.approx(final.epsilon)


@pytest.mark.slow  # a real Ray search
def test_a_local_search_keeps_its_ray_until_prometheus_has_the_final_gauges(tmp_path):
    """The user's path: Prometheus running with the shipped configuration, RAY_PROMETHEUS_HOST
    set, then a plain local search. Its Ray stops with it, but only after one export and one
    scrape (search/cluster.py: linger_for_prometheus), so Prometheus holds the final ε spent."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("no prometheus binary: apt-get install -y prometheus (.ci/run installs it)")
    ray_tmpdir = short_ray_tmpdir()
    prometheus, port = start_prometheus(binary, tmp_path, ray_tmpdir)
    try:
        result = search(
            *TINY, "--num-samples", "2", "--searcher", "random", "--set", "epochs=1",
            "--storage-path", str(tmp_path), "--name", "local",
            env={"RAY_TMPDIR": str(ray_tmpdir), "RAY_PROMETHEUS_HOST": f"http://127.0.0.1:{port}"},
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "for Prometheus to scrape the final privacy gauges" in result.stdout
        query = 'last_over_time(ray_dp_search_epsilon_spent{experiment="local"}[10m])'
        scraped = prometheus_api(port, "query", query=query)
    finally:
        prometheus.terminate()
        prometheus.wait(timeout=30)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    final = search_epsilon(tmp_path / "local")
    assert len(scraped) == 1 and float(scraped[0]["value"][1]) == pytest.approx(final.spent)


# --- the local Ray's sockets -------------------------------------------------------------------


def descendants(pid: int) -> set[int]:
    """Every process under `pid` (Ray's GCS, raylet, dashboard, agents and workers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def listening(pids: set[int]) -> list[tuple[str, str, str]]:
    """(table, local address, process name) of every listening TCP socket and bound UDP
    socket that `pids` hold, from /proc (what `ss -ltunp` shows, without needing iproute2)."""
    owner = {}  # socket inode → process name
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    owner[int(target[8:-1])] = name
        except OSError:
            continue  # ended meanwhile
    rows = []
    for table, bound in (("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == bound and int(fields[9]) in owner:
                rows.append((table, proc_address(fields[1]), owner[int(fields[9])]))
    return rows


def proc_address(field: str) -> str:
    """ "0100007F:1F90" → "127.0.0.1:8080" (IPv6 too: four little-endian 32-bit words)."""
    host, port = field.split(":")
    raw = bytes.fromhex(host)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(raw)
    return f"[{ip}]:{int(port, 16)}" if ip.version == 6 else f"{ip}:{int(port, 16)}"


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
    mapped = getattr(ip, "ipv4_mapped", None)  # [::ffff:127.0.0.1]: gRPC's IPv6 socket
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


@pytest.mark.slow  # a real local Ray
def test_local_ray_listens_on_loopback_only(monkeypatch):
    import ray

    from search.cluster import start_ray

    ray_tmpdir = short_ray_tmpdir()
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmpdir))
    port = free_port()
    start_ray(address=None, num_cpus=1, dashboard_host="127.0.0.1", dashboard_port=port)
    try:

        @ray.remote
        def node_ip():
            return ray.util.get_node_ip_address()

        assert ray.util.get_node_ip_address() == ray.get(node_ip.remote()) == "127.0.0.1"
        # The dashboard answers (with the token) and sees its node through the node's agent.
        token = (Path.home() / ".ray" / "auth_token").read_text().strip()
        nodes = wait_for(
            lambda: json.loads(get(f"http://127.0.0.1:{port}/nodes?view=summary", token))
            ["data"]["summary"], "node in the dashboard",
        )  # fmt: skip
        assert [n["ip"] for n in nodes] == ["127.0.0.1"]
        # Every metrics endpoint Ray lists for Prometheus answers on 127.0.0.1.
        discovery = ray_tmpdir / "ray" / SD_FILE
        targets = wait_for(
            lambda: json.loads(discovery.read_text())[0]["targets"], "service discovery file"
        )
        for target in targets:
            assert target.startswith("127.0.0.1:")
            wait_for(lambda t=target: get(f"http://{t}/metrics"), f"metrics at {target}")
        sockets = listening(descendants(os.getpid()) | {os.getpid()})
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    names = {name for _, _, name in sockets}
    assert {"gcs_server", "raylet", "ray::DashboardA", "ray::RuntimeEnv"} <= names, sockets
    print(f"{len(sockets)} sockets, all on loopback:", sorted(sockets))
    assert [s for s in sockets if not is_loopback(s[1])] == [], sockets
