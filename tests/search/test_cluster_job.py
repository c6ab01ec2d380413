"""README "On a cluster (Ray head, ray job submit)": its commands, run as written.

A head started with `ray start --head`, a second node joined with the README's one-machine
`ray start --address 127.0.0.1:6379 …`, and the quickstart submitted with `ray job submit`: it
must succeed, and its experiment directory must be where the README says, under the absolute
`--storage-path`, not in the job's temporary copy of the repository. HOME is a fresh folder,
so the README's token step runs from scratch and `$HOME/dp-tune-runs` is this test's own.
The test's differences from the README, and why:

- free ports instead of Ray's defaults (6379, 8265, 10001, 52365 and the README's 52366):
  another search or Ray on this machine may hold them (`ray job submit` finds the head's
  dashboard port, as `--address auto` finds the head, through the Ray folder below);
- Ray folders of its own: RAY_TMPDIR for the head (short: Ray's socket paths must fit in 107
  bytes; it also makes this head the only cluster `--address auto` could find) and one inside
  it for the joined node instead of /tmp/ray-node2;
- `--num-cpus 0` on the head: every trial then runs on the joined node, so its success shows
  that the join works;
- tiny synthetic data (`--set` flags, 2 trials of 1 epoch) instead of Fashion-MNIST.

Teardown ends only this cluster's processes (its sessions and whatever runs in its Ray
folders): `ray stop` would end every Ray process on the machine, other people's included.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY

# The README's commands, verbatim (tests/search/test_cluster_job.py::test_readme_shows_them).
EXPORT = "export RAY_AUTH_MODE=token"
TOKEN = ".venv/bin/ray get-auth-token --generate > /dev/null"
HEAD = ".venv/bin/ray start --head --dashboard-host 127.0.0.1 --disable-usage-stats"
JOIN = ".venv/bin/ray start --address HEAD_IP:6379"
JOIN_HERE = (
    ".venv/bin/ray start --address 127.0.0.1:6379 --temp-dir /tmp/ray-node2 "
    "--dashboard-agent-listen-port 52366"
)
SUBMIT = (
    '.venv/bin/ray job submit --working-dir . -- "$PWD/.venv/bin/python" search/run.py '
    '--space fmnist_quick --address auto --storage-path "$HOME/dp-tune-runs"'
)
README_COMMANDS = (EXPORT, TOKEN, HEAD, JOIN, JOIN_HERE, SUBMIT)

# The README's job (fmnist_quick) on tiny synthetic data: TINY without its --space.
TINY_QUICKSTART = [*TINY[2:], "--num-samples", "2", "--set", "epochs=1"]


def test_readme_shows_them():
    """The commands below are the README's, character for character (continuation lines
    joined)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## On a cluster (Ray head, ray job submit)", 1)
    assert len(section) == 2, "README.md has no '## On a cluster (Ray head, ray job submit)'"
    block = re.sub(r"\\\n\s*", "", section[1].split("\n## ", 1)[0])
    lines = {line.split("  #")[0].strip() for line in block.splitlines()}
    for command in README_COMMANDS:
        assert command in lines, command


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _shell(command: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """One README line in bash, from the repository root, in its own session (its daemons
    keep that session id: how teardown finds them)."""
    return subprocess.run(
        ["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=timeout, start_new_session=True,
    )  # fmt: skip


def _processes_of(sessions: set[int], folder: Path) -> list[int]:
    """This test's Ray processes: those of the sessions its `ray start` commands ran in, and
    any running in, or named after, its Ray folder (a job's driver runs in a copy there)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        try:
            if (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0] == "Z":
                continue  # a zombie: already ended (this container's PID 1 may not reap it)
            if os.getsid(pid) in sessions:
                found.append(pid)
                continue
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or not ours to read
            continue
        if str(folder) in cmdline or cwd.startswith(str(folder)):
            found.append(pid)
    return found


def _end(sessions: set[int], folder: Path) -> None:
    """SIGTERM, 3 s, then SIGKILL (gcs_server and raylet may take longer to go on SIGTERM)."""
    for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
        for pid in _processes_of(sessions, folder):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.monotonic() + grace
        while _processes_of(sessions, folder) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def cluster(tmp_path):
    """HOME, environment and teardown of the cluster the README's commands start."""
    home = tmp_path / "home"
    home.mkdir()
    folder = Path(tempfile.mkdtemp(prefix="dpt-ray-", dir="/tmp"))
    port, dashboard, client, agent, join_agent = _free_ports(5)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(
        HOME=str(home),
        RAY_AUTH_MODE="token",  # the README's `export RAY_AUTH_MODE=token`
        RAY_TMPDIR=str(folder),
        PYTHONWARNINGS="ignore",
    )
    state = {
        "env": env,
        "home": home,
        "folder": folder,
        "sessions": set(),
        "head": f"{HEAD} --port {port} --dashboard-port {dashboard} --ray-client-server-port "
        f"{client} --dashboard-agent-listen-port {agent} --num-cpus 0",
        "join": JOIN_HERE.replace("127.0.0.1:6379", f"127.0.0.1:{port}")
        .replace("/tmp/ray-node2", str(folder / "node2"))
        .replace("52366", str(join_agent)),
        "address": f"127.0.0.1:{port}",
    }
    try:
        yield state
    finally:
        _end(state["sessions"], folder)
        subprocess.run(["rm", "-rf", str(folder)], check=False)


def _start(cluster: dict, command: str) -> subprocess.CompletedProcess:
    process = subprocess.Popen(
        ["bash", "-c", command], cwd=ROOT, env=cluster["env"], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    cluster["sessions"].add(process.pid)  # its session id: the daemons it leaves keep it
    try:
        out, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    return subprocess.CompletedProcess(command, process.returncode, out, "")


def _wait_for_nodes(address: str, env: dict, count: int) -> None:
    """`ray status` shows `count` active nodes (a joined node registers a moment after its
    `ray start` returns)."""
    deadline = time.monotonic() + 60
    while True:
        status = _shell(f".venv/bin/ray status --address {address}", env, timeout=60)
        active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
        if status.returncode == 0 and active.count(" node_") == count:
            return
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(1)


def _submit(command: str, env: dict, timeout: float) -> subprocess.CompletedProcess:
    """`ray job submit`, again while the head answers "No available agent to submit job"
    (its dashboard agent registers seconds after `ray start` returns; nothing was submitted,
    so trying again is safe, as the README says)."""
    deadline = time.monotonic() + 60
    while True:
        job = _shell(command, env, timeout=timeout)
        if "No available agent to submit job" not in job.stdout + job.stderr:
            return job
        assert time.monotonic() < deadline, job.stdout[-3000:] + job.stderr[-3000:]
        time.sleep(2)


@pytest.mark.slow  # a real Ray head, a joined node and two Ray jobs
def test_readme_cluster_commands_run_the_quickstart_as_a_ray_job(cluster):
    started = time.monotonic()
    env, home = cluster["env"], cluster["home"]

    token = _shell(TOKEN, env, timeout=60)
    assert token.returncode == 0, token.stderr
    secret = (home / ".ray" / "auth_token").read_text().strip()
    assert len(secret) >= 16 and secret not in token.stdout + token.stderr

    head = _start(cluster, cluster["head"])
    assert head.returncode == 0, head.stdout[-3000:]
    join = _start(cluster, cluster["join"])
    assert join.returncode == 0, join.stdout[-3000:]
    _wait_for_nodes(cluster["address"], env, 2)

    job = _submit(f"{SUBMIT} {' '.join(TINY_QUICKSTART)}", env, timeout=300)
    output = job.stdout + job.stderr
    assert job.returncode == 0, output[-5000:]
    assert "succeeded" in output and secret not in output

    # Where the README says: $HOME/dp-tune-runs/fmnist_quick-TIMESTAMP, nothing in the job's
    # temporary copy of the repository.
    (directory,) = (home / "dp-tune-runs").glob("fmnist_quick-*")
    assert f"Experiment directory: {directory}" in output
    for name in ("search.json", "privacy_ledger.jsonl", "pareto.md", "trials.csv"):
        assert (directory / name).stat().st_size > 0, name
    assert not list(cluster["folder"].rglob("search.json"))
    assert "relative --storage-path" not in output  # no warning for an absolute path
    # The head has no CPU: the joined node ran every trial.
    with open(directory / "trials.csv", newline="") as trials:
        assert len(list(csv.DictReader(trials))) == 2

    # The driver knows it runs as a Ray job (what the relative-path warning relies on).
    probe = _submit(
        '.venv/bin/ray job submit --working-dir . -- "$PWD/.venv/bin/python" -c '
        "\"from search.preflight import submitted_job; print('job:', submitted_job())\"",
        env,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stdout[-3000:] + probe.stderr[-3000:]
    submission = re.search(r"Job '(raysubmit_\w+)' submitted", probe.stdout + probe.stderr)
    assert f"job: {submission.group(1)}" in probe.stdout + probe.stderr
    print(f"README cluster commands: {time.monotonic() - started:.0f} s")


def test_relative_storage_path_under_a_ray_job_warns(tmp_path):
    """A driver started by `ray job submit` (the job supervisor sets RAY_JOB_CONFIG_JSON_ENV_VAR)
    with a relative --storage-path is warned; the unreachable address stops it before Ray
    starts or anything is written."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    job = {"runtime_env": {}, "metadata": {"job_submission_id": "raysubmit_test"}}
    env.update(RAY_JOB_CONFIG_JSON_ENV_VAR=json.dumps(job), RAY_USAGE_STATS_ENABLED="0")
    result = subprocess.run(
        [sys.executable, str(ROOT / "search" / "run.py"), *TINY,
         "--num-samples", "1", "--storage-path", "relative-runs", "--address", "127.0.0.1:1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "raysubmit_test" in result.stderr and "relative --storage-path" in result.stderr
    assert not (tmp_path / "relative-runs").exists()
