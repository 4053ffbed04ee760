"""Offline validation of deploy/k8s (docs/DEPLOY.md#kubernetes): every Kustomize directory
renders, every object validates against the Kubernetes or CRD schema of its kind, and the
manifests agree with the server they run (routes, ports, drain timing, settings, metrics).

Needs ``kubectl`` (skipped without it, failed under DIFFRES_REQUIRE_SYSTEM_TOOLS=1) and the
dev extra's ``kubernetes-validate`` and ``jsonschema``. No cluster, no network."""

import pytest
import yaml

from tests.deploy.conftest import dashboard_queries, require_module
from tests.deploy.k8s_manifests import (
    K8S,
    KUSTOMIZATIONS,
    OVERLAYS,
    ROOT,
    crd_errors,
    is_custom,
    metric_names_in,
    one,
    render,
    sample_names,
    schema_file,
)

ADAPTER_VALUES = K8S / "prometheus-adapter" / "values.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"


def server(objects: list[dict]) -> dict:
    """The serving container of an overlay's Deployment."""
    containers = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "server")


def settings_env(objects: list[dict]) -> dict[str, str]:
    return one(objects, "ConfigMap")["data"]


def autoscaler_texts(objects: list[dict]) -> list[str]:
    """What names metrics in an overlay's autoscaler: HPA metric names, KEDA queries."""
    texts = []
    for obj in objects:
        if obj["kind"] == "HorizontalPodAutoscaler":
            texts += [m["pods"]["metric"]["name"] for m in obj["spec"]["metrics"]]
        elif obj["kind"] == "ScaledObject":
            texts += [t["metadata"]["query"] for t in obj["spec"]["triggers"]]
    return texts


@pytest.fixture(scope="module")
def app_client():
    """The real app, its lifespan not started: routing answers, no model is loaded."""
    from fastapi.testclient import TestClient

    from service.config import Settings
    from service.serving.http.app import create_app

    return TestClient(create_app(Settings()))


@pytest.mark.parametrize("directory", sorted(KUSTOMIZATIONS))
def test_kustomization_renders_its_objects(directory):
    assert {o["kind"] for o in render(directory)} == KUSTOMIZATIONS[directory]


@pytest.mark.parametrize("directory", sorted(KUSTOMIZATIONS))
def test_builtin_objects_validate_against_kubernetes_schemas(directory):
    require_module("kubernetes_validate")
    import kubernetes_validate

    version = kubernetes_validate.latest_version()
    for obj in render(directory) + list(yaml.safe_load_all(SECRET_EXAMPLE.read_text())):
        if not is_custom(obj):  # strict: unknown fields fail too
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("directory", sorted(KUSTOMIZATIONS))
def test_custom_resources_validate_against_crd_schemas(directory):
    require_module("jsonschema")
    custom = [o for o in render(directory) if is_custom(o)]
    for obj in custom:
        assert schema_file(obj).exists(), f"no schema for {obj['apiVersion']} {obj['kind']}"
        assert crd_errors(obj) == [], f"{obj['kind']} {obj['metadata']['name']}"


def test_crd_validation_rejects_a_misspelt_field():
    require_module("jsonschema")
    monitor = one(render("overlays/gpu"), "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    assert any("intervall" in error for error in crd_errors(monitor))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probe_paths_are_routes_of_the_app(overlay, app_client):
    container = server(render(overlay))
    probes = {kind: container[kind]["httpGet"]["path"]
              for kind in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert probes["readinessProbe"] == "/readyz"  # the one that turns 503 while draining
    for kind, path in probes.items():
        assert app_client.get(path).status_code != 404, f"{kind} {path} is not a route"


def test_kserve_probe_paths_are_routes_of_the_app(app_client):
    container = one(render("kserve"), "ServingRuntime")["spec"]["containers"][0]
    for kind in ("readinessProbe", "livenessProbe"):
        path = container[kind]["httpGet"]["path"]
        assert app_client.get(path).status_code != 404, f"{kind} {path} is not a route"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_grace_period_covers_prestop_and_drain(overlay):
    objects = render(overlay)
    env = settings_env(objects)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    command = server(objects)["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    needed = (float(command[1]) + float(env["DIFFRES_DRAIN_GRACE_S"])
              + float(env["DIFFRES_DRAIN_TIMEOUT_S"]))
    assert pod["terminationGracePeriodSeconds"] > needed


def test_kserve_grace_period_covers_drain():
    from service.config import Settings

    objects = render("kserve")
    env = {e["name"]: e["value"]
           for e in one(objects, "ServingRuntime")["spec"]["containers"][0]["env"]}
    defaults = Settings()
    needed = (float(env.get("DIFFRES_DRAIN_GRACE_S", defaults.drain_grace_s))
              + float(env.get("DIFFRES_DRAIN_TIMEOUT_S", defaults.drain_timeout_s)))
    predictor = one(objects, "InferenceService")["spec"]["predictor"]
    assert predictor["terminationGracePeriodSeconds"] > needed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ports_match_from_settings_to_service_monitor(overlay):
    objects = render(overlay)
    (port,) = server(objects)["ports"]
    assert int(settings_env(objects)["DIFFRES_PORT"]) == port["containerPort"]
    assert settings_env(objects)["DIFFRES_HOST"] == "0.0.0.0"
    (service_port,) = one(objects, "Service")["spec"]["ports"]
    assert service_port["targetPort"] in (port["name"], port["containerPort"])
    endpoints = one(objects, "ServiceMonitor")["spec"]["endpoints"]
    assert [e["port"] for e in endpoints] == [service_port["name"]]


def test_kserve_container_listens_where_kserve_expects():
    container = one(render("kserve"), "ServingRuntime")["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["DIFFRES_PORT"]) == 8080 == container["ports"][0]["containerPort"]
    assert env["DIFFRES_MODEL_STORE"] == "/mnt/models"
    assert {container[p]["httpGet"]["port"] for p in ("readinessProbe", "livenessProbe")} == {8080}


def test_service_monitor_scrapes_the_metrics_route(app_client):
    (endpoint,) = one(render("overlays/gpu"), "ServiceMonitor")["spec"]["endpoints"]
    response = app_client.get(endpoint["path"])
    assert response.status_code == 200 and b"diffres_queue_depth" in response.content


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_map_holds_valid_settings(overlay, monkeypatch):
    from service.config import Settings

    env = settings_env(render(overlay))
    known = {f"DIFFRES_{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known - {"DIFFRES_API_KEY", "DIFFRES_ADMIN_KEY"}, set(env) - known
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    Settings()  # raises on a value the server would refuse


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keys_come_from_the_secret(overlay):
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in server(render(overlay))["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    (secret,) = yaml.safe_load_all(SECRET_EXAMPLE.read_text())
    assert set(refs) == {"DIFFRES_API_KEY", "DIFFRES_ADMIN_KEY"}
    assert all(ref["name"] == secret["metadata"]["name"] for ref in refs.values())
    assert set(refs) == set(secret["stringData"])
    assert not refs["DIFFRES_API_KEY"].get("optional", False)  # no key: no pod, never open


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_runs_unprivileged_on_a_read_only_root(overlay):
    objects = render(overlay)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m for m in server(objects)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]  # multiprocess metrics files
    store = mounts[settings_env(objects)["DIFFRES_MODEL_STORE"]]
    assert store["readOnly"] is True


def test_only_the_gpu_overlay_asks_for_a_gpu():
    def gpus(overlay):
        return server(render(overlay))["resources"].get("limits", {}).get("nvidia.com/gpu")

    assert (gpus("overlays/gpu"), gpus("overlays/cpu")) == (1, None)


@pytest.mark.parametrize("variant", ["gpu", "cpu"])
def test_overlay_runs_the_compose_image(variant):
    compose = ROOT / ("docker-compose.yml" if variant == "gpu" else "docker-compose.cpu.yml")
    service = "api" if variant == "gpu" else "api-cpu"
    image = yaml.safe_load(compose.read_text())["services"][service]["image"]
    objects = render(f"overlays/{variant}")
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert {c["image"] for c in pod["containers"] + pod.get("initContainers", [])} == {image}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_targets_the_deployment_alone(overlay):
    objects = render(overlay)
    scalers = [o for o in objects if o["kind"] in ("HorizontalPodAutoscaler", "ScaledObject")]
    assert len(scalers) == 1, "an HPA and a ScaledObject would fight over the replicas"
    assert "replicas" not in one(objects, "Deployment")["spec"]
    assert scalers[0]["spec"]["scaleTargetRef"]["name"] == one(objects, "Deployment")[
        "metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_queue_depth_target_is_below_one_batch(overlay):
    objects = render(overlay)
    targets = []
    for obj in objects:
        if obj["kind"] == "HorizontalPodAutoscaler":
            targets += [float(m["pods"]["target"]["averageValue"]) for m in obj["spec"][
                "metrics"] if m["pods"]["metric"]["name"] == "diffres_queue_depth"]
        elif obj["kind"] == "ScaledObject":
            targets += [float(t["metadata"]["threshold"]) for t in obj["spec"]["triggers"]
                        if "diffres_queue_depth" in t["metadata"]["query"]]
    assert targets, "no autoscaling on diffres_queue_depth"
    assert all(0 < t < int(settings_env(objects)["DIFFRES_MAX_BATCH_SIZE"]) for t in targets)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_metrics_are_exported_by_the_service(overlay):
    names = set().union(*map(metric_names_in, autoscaler_texts(render(overlay))))
    assert names and names <= sample_names(), names - sample_names()


def test_hpa_metrics_are_served_by_the_adapter_rules():
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {rule["name"]["as"] for rule in rules}
    queried = set().union(*(metric_names_in(rule["seriesQuery"]) for rule in rules))
    assert queried <= sample_names(), queried - sample_names()
    hpa = one(render("overlays/gpu"), "HorizontalPodAutoscaler")
    assert {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]} <= served


def test_dashboard_metrics_are_exported_by_the_service():
    used = set().union(*(metric_names_in(expr) for _, expr in dashboard_queries()))
    assert used and used <= sample_names(), used - sample_names()

