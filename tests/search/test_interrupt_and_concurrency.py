"""A user's Ctrl-C, a second search started while one runs, and a trial the machine can never
hold — each on a real local Ray, with a real SIGINT (issue 17, items 2-5)."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import ROOT, TINY, search

pytestmark = pytest.mark.slow


def start_search(*args: str) -> subprocess.Popen:
    """A search in its own process group, as a terminal runs it (Ctrl-C signals the group)."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen(
        [sys.executable, "search/run.py", *args], cwd=ROOT, env=env, text=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_until(process: subprocess.Popen, pattern: str, timeout: float = 240) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        lines.append(line)
        if re.search(pattern, line):
            return lines
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(lines)[-3000:]}")


def test_ctrl_c_exits_130_releases_nothing_and_resume_finishes(tmp_path):
    args = [*TINY, "--num-samples", "4", "--set", "epochs=6", "--searcher", "random",
            "--storage-path", str(tmp_path), "--name", "stopped"]  # fmt: skip
    process = start_search(*args)
    try:
        before = read_until(process, r"trials done")
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        rest, _ = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    output = "".join(before) + rest
    assert process.returncode == 130, output[-3000:]
    assert "## DP release" not in output and not (tmp_path / "stopped" / "pareto.md").exists()
    assert "nothing is released" in output and "Partial summary (analyst-only)" in output
    resume = f"python search/run.py --name stopped --storage-path {tmp_path} --resume"
    assert resume in output and "Tuner.restore" not in output and "Traceback" not in output
    # The progress line, not Tune's tables.
    assert "Trial status" not in output and "Configuration for experiment" not in output

    resumed = search(*resume.split()[2:])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "## DP release" in resumed.stdout
    assert "4/4 trials done" in resumed.stdout


def test_a_second_local_search_gets_its_own_dashboard_port(tmp_path):
    common = [*TINY, "--num-samples", "2", "--set", "epochs=1", "--num-cpus", "1",
              "--storage-path", str(tmp_path)]  # fmt: skip
    chosen = free_port()
    first = start_search(*common, "--name", "first", "--set", "epochs=4",
                         "--dashboard-port", str(chosen))  # fmt: skip
    try:
        started = read_until(first, r"Ray dashboard: http://127\.0\.0\.1:\d+")
        second = search(*common, "--name", "second", "--verbose")
        rest, _ = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert second.returncode == 0, second.stderr[-3000:]
    assert first.returncode == 0, rest[-3000:]
    ports = [
        re.search(r"Ray dashboard: http://127\.0\.0\.1:(\d+)", text).group(1)
        for text in ("".join(started), second.stdout)
    ]
    assert ports[0] == str(chosen) and ports[1] != ports[0]
    assert "Trial status" in second.stdout  # --verbose: Tune's own tables as well
    assert "Trial status" not in "".join(started) + rest  # by default: our progress line
    assert "trials done" in "".join(started) + rest
    for name in ("first", "second"):
        assert (tmp_path / name / "pareto.md").exists()


def test_a_trial_no_node_can_hold_is_refused_before_anything_is_written(tmp_path):
    storage = tmp_path / "runs"
    result = search(*TINY, "--gpus-per-trial", "0.5", "--storage-path", str(storage), timeout=120)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    last = [line for line in result.stderr.splitlines() if line.strip()][-1]
    assert last.startswith("error: no trial can run here") and "0.5 GPU(s)" in last
    assert "Traceback" not in result.stderr and not storage.exists()


def test_a_dashboard_port_taken_between_probe_and_bind_moves_to_the_next(monkeypatch, capsys):
    # Two searches starting at the same moment can both find 8265 free; the second one's Ray
    # then fails to bind it. Here the "other search" holds the first port offered.
    import ray

    from search import cluster

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    offered = []

    def probe(host):
        port = taken if not offered else cluster.DASHBOARD_PORT + 50 + len(offered)
        offered.append(port)
        return port

    monkeypatch.setattr(cluster, "free_dashboard_port", probe)
    try:
        cluster.start_ray(address=None, num_cpus=1, dashboard_host="127.0.0.1", verbose=False)
        free = offered[-1]
        assert offered[0] == taken and len(offered) == 2
        assert f"Ray dashboard: http://127.0.0.1:{free}" in capsys.readouterr().out
    finally:
        ray.shutdown()
        holder.close()
