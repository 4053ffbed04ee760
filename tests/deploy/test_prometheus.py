"""A real Prometheus server (Debian's package) scrapes a running service with the scrape job
and alert rules of deploy/prometheus/, and answers the latency quantile query and every
query of the Grafana dashboard with data."""

import io
import math
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf

from load_tests.server import LocalServer, listening_ports
from tests.conftest import require_tool
from tests.deploy.conftest import dashboard_queries

ROOT = Path(__file__).resolve().parents[2]
P95 = ("histogram_quantile(0.95, sum(rate(diffres_request_duration_seconds_bucket[1m])) "
       "by (le))")


def prometheus_config(deploy_dir: Path, target: str, out_dir: Path) -> Path:
    """deploy/prometheus/prometheus.yml with the target replaced and 1 s intervals."""
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load((deploy_dir / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    (job,) = config["scrape_configs"]
    job["scrape_timeout"] = "1s"
    job["static_configs"][0]["targets"] = [target]
    for rules in config.get("rule_files", []):
        shutil.copy(deploy_dir / rules, out_dir / rules)
    path = out_dir / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def traffic(base: str, stop: threading.Event, limit_s: float = 600.0) -> None:
    """Requests until ``stop`` (or ``limit_s``): classify and compress, and a few 404s so
    that the error panels have data."""
    buffer = io.BytesIO()
    sf.write(buffer, np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32), 16000,
             format="WAV")
    audio, give_up, i = buffer.getvalue(), time.monotonic() + limit_s, 0
    with httpx.Client(base_url=base, timeout=10) as client:
        while not stop.is_set() and time.monotonic() < give_up:
            path = ("/compress", "/classify", "/classify?model=nope")[i % 3]
            client.post(path, content=audio, headers={"content-type": "audio/wav"})
            i += 1
            time.sleep(0.02)


def wait_prometheus(proc: subprocess.Popen, log: Path, timeout: float = 120) -> str:
    """Base URL of the Prometheus ``proc`` once it is ready. It listens on port 0 (the
    kernel picks a free port as it binds: no race with other processes for a port chosen
    in advance); the port is read back from /proc."""
    give_up, prom = time.monotonic() + timeout, None
    while time.monotonic() < give_up:
        assert proc.poll() is None, log.read_text()[-3000:]
        if prom is None and (ports := listening_ports(proc.pid)):
            prom = f"http://127.0.0.1:{min(ports)}"
        try:
            if prom and httpx.get(f"{prom}/-/ready", timeout=10).status_code == 200:
                return prom
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(log.read_text()[-3000:])


def query(prom: str, expr: str) -> dict:
    r = httpx.get(f"{prom}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, (expr, r.text)
    return r.json()["data"]


def wait_for_value(prom: str, expr: str, timeout: float = 120.0) -> float:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        result = query(prom, expr)["result"]
        if result and math.isfinite(value := float(result[0]["value"][1])):
            return value
        time.sleep(0.5)
    raise TimeoutError(f"no value for {expr} in {timeout:.0f} s")


def rule_health(prom: str, timeout: float = 120.0) -> list[str]:
    """Health of every alerting rule once all have been evaluated ("unknown" before)."""
    give_up = time.monotonic() + timeout
    while True:
        groups = httpx.get(f"{prom}/api/v1/rules", timeout=10).json()["data"]["groups"]
        health = [rule["health"] for group in groups for rule in group["rules"]]
        if "unknown" not in health or time.monotonic() > give_up:
            return health
        time.sleep(0.5)


def test_prometheus_scrapes_the_service_and_answers_the_dashboard(deploy_model_store,
                                                                   tmp_path):
    prometheus = require_tool("prometheus")
    env = {"DIFFRES_MODEL_STORE": str(deploy_model_store), "DIFFRES_DEVICES": "cpu"}
    with LocalServer(tmp_path / "server.log", env=env) as server:
        target = server.url.removeprefix("http://")
        config = prometheus_config(ROOT / "deploy" / "prometheus", target, tmp_path)
        with open(tmp_path / "prometheus.log", "wb") as log:
            proc = subprocess.Popen(
                [prometheus, f"--config.file={config}",
                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                 "--web.listen-address=127.0.0.1:0"], stdout=log,
                stderr=subprocess.STDOUT)
        stop = threading.Event()
        sender = threading.Thread(target=traffic, args=(server.url, stop), daemon=True)
        try:
            sender.start()
            prom = wait_prometheus(proc, tmp_path / "prometheus.log")
            assert wait_for_value(prom, 'up{job="diffres-serve"}') == 1
            p95 = wait_for_value(prom, P95)
            print(f"\nPromQL p95 latency: {p95 * 1000:.1f} ms")
            assert 0 < p95 < 60
            # Every dashboard query (Grafana's variables filled in) parses and has data: each
            # gets it once enough scrapes are in, so wait for that (a hang fails the wait).
            queries = [(title, expr.replace("$__rate_interval", "1m").replace("$model", ".*"))
                       for title, expr in dashboard_queries()]
            give_up = time.monotonic() + 120
            while empty := [(t, e) for t, e in queries if not query(prom, e)["result"]]:
                if time.monotonic() > give_up:
                    break
                time.sleep(0.5)
            assert not empty, empty
            assert rule_health(prom) == ["ok"] * 4
        finally:
            stop.set()
            sender.join(15)
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
    assert server.returncode == 0
