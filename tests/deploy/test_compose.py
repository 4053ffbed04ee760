"""docker-compose.yml (and the CPU override) as Compose resolves them, the Prometheus
config as promtool checks it, and the Grafana dashboard against the service's metrics."""

import json
import re
import subprocess
from pathlib import Path

import pytest

from service.serving.metrics import Metrics
from tests.conftest import require_tool
from tests.deploy.conftest import DASHBOARD, dashboard_queries

ROOT = Path(__file__).resolve().parents[2]


def compose_config(*files: str) -> dict:
    yaml = pytest.importorskip("yaml")
    command = [require_tool("docker-compose")]
    for name in files:
        command += ["-f", str(ROOT / name)]
    result = subprocess.run(command + ["config"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def mounts(service: dict) -> dict[str, str]:
    """target -> source of a service's volumes (Compose v1 prints "src:dst:mode", v2 maps)."""
    found = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


def test_compose_stack_reserves_gpus_and_wires_monitoring():
    services = compose_config("docker-compose.yml")["services"]
    assert set(services) == {"api", "prometheus", "grafana", "locust"}
    api = services["api"]
    assert api["build"]["args"]["VARIANT"] == "gpu"
    assert api["deploy"]["resources"]["reservations"]["devices"] == [
        {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "profiles" not in api
    # Published on loopback unless BIND_ADDRESS says otherwise.
    (port,) = api["ports"]
    assert str(port).startswith("127.0.0.1:8000:8000") or (
        port["host_ip"], str(port["published"]), port["target"]) == ("127.0.0.1", "8000", 8000)

    assert Path(mounts(services["prometheus"])["/etc/prometheus"]) == ROOT / "deploy/prometheus"
    grafana = mounts(services["grafana"])
    assert Path(grafana["/etc/grafana/provisioning"]) == ROOT / "deploy/grafana/provisioning"
    assert Path(grafana["/etc/grafana/dashboards"]) == ROOT / "deploy/grafana/dashboards"

    locust = services["locust"]
    assert locust["profiles"] == ["loadtest"]
    command = locust["command"]
    assert "--host http://api:8000" in (" ".join(command) if isinstance(command, list)
                                        else command)


def test_cpu_override_swaps_api_for_a_cpu_service_under_the_same_name():
    services = compose_config("docker-compose.yml", "docker-compose.cpu.yml")["services"]
    assert services["api"]["profiles"] == ["gpu"]  # the GPU service does not start
    cpu = services["api-cpu"]
    assert "profiles" not in cpu and "deploy" not in cpu
    assert cpu["build"]["args"]["VARIANT"] == "cpu"
    assert cpu["environment"]["DIFFRES_DEVICES"] == "cpu"
    assert cpu["networks"]["default"]["aliases"] == ["api"]  # Prometheus scrapes api:8000


def test_promtool_accepts_the_prometheus_config_and_rules():
    promtool = require_tool("promtool")
    config = ROOT / "deploy" / "prometheus" / "prometheus.yml"
    result = subprocess.run([promtool, "check", "config", str(config)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr
    assert "api:8000" in config.read_text()


def test_dashboard_uses_only_metrics_the_service_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "diffres-serve"
    assert all(p["datasource"]["uid"] == "prometheus" for p in dashboard["panels"]
               if "datasource" in p)
    exported = set()
    for family in Metrics().registry.collect():
        exported.add(family.name)
        exported.update(sample.name for sample in family.samples)
        if family.type == "histogram":
            exported.update(f"{family.name}_{s}" for s in ("bucket", "sum", "count"))
        if family.type == "counter":
            exported.add(f"{family.name}_total")
    used = {name for _, expr in dashboard_queries()
            for name in re.findall(r"\b(diffres_[a-z_]+)", expr)}
    assert used <= exported, used - exported
    for required in ("diffres_request_duration_seconds_bucket", "diffres_batch_size_bucket",
                     "diffres_queue_depth", "diffres_requests_total",
                     "diffres_input_frames_total", "diffres_output_frames_total"):
        assert required in used, required
