"""Helpers for tests/deploy/test_k8s.py: render the Kustomize directories of deploy/k8s,
validate objects (Kubernetes OpenAPI schemas through ``kubernetes-validate``, CRDs through
the JSON Schemas in deploy/k8s/schemas), and the service's own metric names."""

import functools
import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.conftest import require_tool

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCHEMAS = K8S / "schemas"
# Every directory `kubectl kustomize` must render, and what it must hold.
KUSTOMIZATIONS = {
    "overlays/gpu": {"ConfigMap", "Service", "PersistentVolumeClaim", "Deployment",
                     "PodDisruptionBudget", "HorizontalPodAutoscaler", "ServiceMonitor"},
    "overlays/cpu": {"ConfigMap", "Service", "Deployment", "PodDisruptionBudget",
                     "ScaledObject", "ServiceMonitor"},
    "kserve": {"ServingRuntime", "InferenceService"},
}
OVERLAYS = ["overlays/gpu", "overlays/cpu"]


@functools.cache
def _render(directory: str) -> str:
    kubectl = require_tool("kubectl")
    result = subprocess.run([kubectl, "kustomize", str(K8S / directory)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return result.stdout


def render(directory: str) -> list[dict]:
    """The objects ``kubectl kustomize deploy/k8s/<directory>`` prints (fresh copies)."""
    return [doc for doc in yaml.safe_load_all(_render(directory)) if doc]


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def schema_file(obj: dict) -> Path:
    group, _, version = obj["apiVersion"].rpartition("/")
    return SCHEMAS / f"{group}_{obj['kind'].lower()}_{version}.json"


def _closed(node):
    """Strict field validation: an object schema with ``properties`` rejects other fields
    unless it says otherwise (``additionalProperties``, preserve-unknown-fields)."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _closed(value) for key, value in node.items()}
    if ("properties" in node and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")):
        node["additionalProperties"] = False
    return node


@functools.cache
def crd_schema(path: Path) -> dict:
    return _closed(json.loads(path.read_text()))


def crd_errors(obj: dict) -> list[str]:
    """Messages of every violation of the object's CRD schema."""
    import jsonschema

    validator = jsonschema.Draft7Validator(crd_schema(schema_file(obj)))
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(obj)]


def is_custom(obj: dict) -> bool:
    return any(obj["apiVersion"].startswith(group) for group in
               ("keda.sh/", "monitoring.coreos.com/", "serving.kserve.io/"))


@functools.cache
def sample_names() -> frozenset[str]:
    """Every series name the service's /metrics can show: each family's TYPE line, plus a
    histogram's _bucket/_sum/_count."""
    from service.serving.metrics import Metrics

    names = set()
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", Metrics().render().decode(), re.M):
        names.add(name)
        if kind == "histogram":
            names.update(f"{name}_{suffix}" for suffix in ("bucket", "sum", "count"))
    return frozenset(names)


def metric_names_in(text: str) -> set[str]:
    """The diffres_* names a PromQL expression (or any text) mentions."""
    return set(re.findall(r"\bdiffres_[a-z0-9_]+", text))
