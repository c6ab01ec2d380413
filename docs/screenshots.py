"""Screenshots of a search's monitoring (docs/monitoring/*.png), with headless Chromium.

    .venv/bin/python docs/screenshots.py

Starts Prometheus with docs/monitoring/prometheus.yml (scraping every second, storage in a
temporary directory), runs a tiny synthetic search with RAY_PROMETHEUS_HOST pointing at it,
and writes
  docs/monitoring/ray_dashboard.png        the Ray dashboard while the search runs
  docs/monitoring/prometheus_epsilon.png   Prometheus's graph of ε spent and ε planned
Needs `prometheus` and Chromium on PATH. Takes under a minute; not a test, never run in CI.

The dashboard asks for the token in ~/.ray/auth_token: a browser keeps it in the cookie
`ray-authentication-token` (Ray 2.60: header `Authorization`, `X-Ray-Authorization` or that
cookie; no query parameter). Chromium cannot be given a cookie on its command line, so it
first opens a page in a private temporary directory that leads to a server on 127.0.0.1
answering only a random path, which sets the cookie and redirects to the dashboard (cookies
ignore ports). The token never appears on a command line; the profile is deleted after.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MONITORING = ROOT / "docs" / "monitoring"
CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
NAME = "shots"
SEARCH = [
    "search/run.py", "--space", "fmnist_quick", "--set", "dataset=synthetic",
    "synthetic_examples=320", "validation_fraction=0.2", "batch_size=64", "delta=1e-4",
    "epochs=4", "--num-samples", "3", "--searcher", "random", "--name", NAME,
]  # fmt: skip
# One line per gauge, labelled by its name alone (Ray adds session, worker and node labels).
EPSILON = (
    "max by (__name__, experiment) "
    f'({{__name__=~"ray_dp_search_epsilon_(spent|planned)",experiment="{NAME}"}})'
)
MAX_BYTES = 300_000


def main() -> int:
    prometheus = shutil.which("prometheus")
    chromium = next(filter(None, map(shutil.which, CHROMIUM)), None)
    missing = [
        name for name, path in (("prometheus", prometheus), ("Chromium", chromium)) if not path
    ]
    if missing:
        print(
            f"error: {' and '.join(missing)} not found on PATH; install them (Debian: "
            "`apt-get install -y prometheus chromium`) and run this again.",
            file=sys.stderr,
        )
        return 1
    started = time.monotonic()
    # Short: Ray's Unix sockets live under RAY_TMPDIR, whose discovery file lists this Ray alone.
    work = Path(tempfile.mkdtemp(prefix="dpshot", dir="/tmp"))
    server = search = None
    try:
        server, port = start_prometheus(prometheus, work)
        env = {
            **os.environ, "RAY_TMPDIR": str(work), "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_PROMETHEUS_HOST": f"http://127.0.0.1:{port}", "PYTHONUNBUFFERED": "1",
        }  # fmt: skip
        search = subprocess.Popen(
            [sys.executable, *SEARCH, "--storage-path", str(work / "runs")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        dashboard, taken = None, False
        for line in search.stdout:
            print(line, end="", flush=True)
            found = re.search(r"Ray dashboard: (http://[\w.:]+)", line)
            dashboard = found[1] if found else dashboard
            running = re.search(r"trials done, (\d+) running", line)
            if dashboard and not taken and running and int(running[1]) > 0:
                shoot_dashboard(chromium, work, dashboard)  # while the trials run
                taken = True
        if search.wait() != 0:
            print(f"error: the search failed (exit {search.returncode})", file=sys.stderr)
            return 1
        if not taken:
            print("warning: no dashboard screenshot (no running trial seen)", file=sys.stderr)
        query = urllib.parse.urlencode({"g0.expr": EPSILON, "g0.tab": "0", **span(port)})
        shoot(chromium, work, f"http://127.0.0.1:{port}/graph?{query}", "prometheus_epsilon.png")
    finally:
        for process in (search, server):  # the search first: it may still be using Prometheus
            if process is not None and process.poll() is None:
                process.terminate()
                process.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)
    print(f"Done in {time.monotonic() - started:.0f} s.")
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_prometheus(binary: str, work: Path) -> tuple[subprocess.Popen, int]:
    """The shipped configuration, reading the discovery file under `work` and scraping every
    second (Ray rewrites that file every 5 s: a new exporter is scraped within ~6 s)."""
    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    discovery = config["scrape_configs"][0]["file_sd_configs"][0]
    files = [f.replace("/tmp", str(work), 1) for f in discovery["files"]]
    discovery.update(files=files, refresh_interval="1s")
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    process = subprocess.Popen(
        [binary, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(60):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=2).close()
            return process, port
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("error: Prometheus did not become ready within 30 s")


def span(port: int) -> dict[str, str]:
    """The graph's range, ending now: the scraped life of the gauges and a little before."""
    selector = f'ray_dp_search_epsilon_planned{{experiment="{NAME}"}}[1h]'
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": selector})
    with urllib.request.urlopen(url, timeout=10) as response:
        result = json.loads(response.read())["data"]["result"]
    if not result:
        raise SystemExit("error: Prometheus scraped no privacy gauge of the search")
    first = min(t for series in result for t, _ in series["values"])
    # The UI takes no seconds in its end time: the range ends when the page loads, soon.
    return {"g0.range_input": f"{int(time.time() - first) + 5}s"}


def shoot_dashboard(chromium: str, work: Path, dashboard: str) -> None:
    """The dashboard's overview, logged in with the token as its login dialog does: a cookie."""
    token = (Path.home() / ".ray" / "auth_token").read_text().strip()
    path = "/" + secrets.token_urlsafe(24)

    class SetCookie(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path != path:
                self.send_error(404)
                return
            self.send_response(302)
            self.send_header(
                "Set-Cookie", f"ray-authentication-token={token}; Path=/; HttpOnly; SameSite=Strict"
            )
            self.send_header("Location", f"{dashboard}/#/overview")
            self.end_headers()

        def log_message(self, *args):
            pass

    helper = http.server.HTTPServer(("127.0.0.1", 0), SetCookie)
    threading.Thread(target=helper.serve_forever, daemon=True).start()
    start = work / "start.html"  # mkdtemp's directory: readable by this user only
    start.write_text(
        f'<script>location.replace("http://127.0.0.1:{helper.server_port}{path}")</script>'
    )
    try:
        shoot(chromium, work, start.as_uri(), "ray_dashboard.png", budget_ms=15000)
    finally:
        helper.shutdown()
        helper.server_close()


def shoot(chromium: str, work: Path, url: str, name: str, budget_ms: int = 10000) -> None:
    target = MONITORING / name
    target.unlink(missing_ok=True)  # never an old picture kept by a failed run
    subprocess.run(
        [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--user-data-dir={work / 'chromium'}", f"--screenshot={target}",
         "--window-size=1400,900", f"--virtual-time-budget={budget_ms}", url],
        check=True, timeout=120, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    if target.stat().st_size > MAX_BYTES:  # a palette PNG: far smaller, same look for a UI
        from PIL import Image

        with Image.open(target) as image:
            image.convert("RGB").quantize(256).save(target, optimize=True)
    print(f"Wrote {target.relative_to(ROOT)} ({target.stat().st_size // 1000} kB).")


if __name__ == "__main__":
    sys.exit(main())
