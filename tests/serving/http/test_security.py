"""Who may do what: API key and admin key, open ops endpoints, CORS, model names that never
reach the file system, nothing unpickled from requests or artifacts, artifacts loaded only
when their sha256 matches, and refusals that happen before any body is read."""

import io
import os
import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.config import Settings
from service.serving.http.app import create_app
from service.serving.http.middleware import EdgeMiddleware
from service.serving.http.security import AuthMiddleware, key_matches
from service.serving.metrics import Metrics
from service.serving.runtime.onnx_backend import OnnxBackend
from service.serving.runtime.torchscript_backend import TorchScriptBackend
from tests.serving.conftest import make_settings, wait_ready

ROOT = Path(__file__).resolve().parents[3]
API, ADMIN = "api-key-0123456789", "admin-key-9876543210"
SPEC = {"spectrogram": [[-8.0] * 40] * 3}


@pytest.fixture(scope="module")
def locked(model_store):
    settings = make_settings(model_store, models=["kws12-avgpool"], api_key=API,
                             default_model="kws12-avgpool", admin_key=ADMIN,
                             cors_origins=["https://app.example"])
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def assert_denied(r):
    assert r.status_code == 401, r.text
    assert r.json() == {"error": {"code": "unauthorized", "message": "a valid API key is required"}}
    assert r.headers["www-authenticate"] == 'Bearer realm="diffres-serve"'


@pytest.mark.parametrize("headers", [{}, {"authorization": "Bearer wrong"},
                                     {"x-api-key": "wrong"}, {"authorization": API},
                                     {"authorization": f"Basic {API}"},
                                     {"x-api-key": ADMIN}, {"authorization": "Bearer "}])
def test_inference_needs_the_api_key_and_refusals_say_nothing_more(locked, headers):
    assert_denied(locked.post("/classify?model=kws12-avgpool", json=SPEC, headers=headers))


@pytest.mark.parametrize("headers", [{"authorization": f"Bearer {API}"},
                                     {"authorization": f"bearer   {API}"}, {"x-api-key": API},
                                     {"x-api-key": "wrong", "authorization": f"Bearer {API}"}])
def test_either_header_carries_the_api_key(locked, headers):
    r = locked.post("/classify?model=kws12-avgpool", json=SPEC, headers=headers)
    assert r.status_code == 200, r.text


def test_ops_endpoints_stay_open_everything_else_is_locked(locked):
    for path in ("/healthz", "/readyz", "/metrics"):
        assert locked.get(path).status_code == 200, path
    for path in ("/models", "/models/kws12-avgpool", "/openapi.json", "/docs", "/nowhere",
                 "/admin/nothing/here"):
        assert_denied(locked.get(path))  # unknown paths too: nothing to learn without a key
    assert locked.get("/nowhere", headers={"x-api-key": API}).status_code == 404


def test_v2_routes_are_locked_in_their_own_error_shape(locked):
    r = locked.post("/v2/models/kws12-avgpool/infer", json={"inputs": []})
    assert r.status_code == 401 and r.json() == {"error": "a valid API key is required"}
    assert r.headers["www-authenticate"] == 'Bearer realm="diffres-serve"'
    assert locked.get("/v2/health/ready").status_code == 200  # an ops path
    assert locked.get("/v2/models/kws12-avgpool", headers={"x-api-key": API}).status_code == 200


def test_admin_needs_the_admin_key_not_the_api_key(locked):
    url = "/admin/models/kws12-avgpool/reload"
    assert_denied(locked.post(url))
    assert_denied(locked.post(url, headers={"x-api-key": API}))
    r = locked.post(url, headers={"authorization": f"Bearer {ADMIN}"})
    assert r.status_code == 200 and r.json()["models"]["kws12-avgpool"]["unchanged"] == [1]
    assert_denied(locked.post("/classify", json=SPEC, headers={"x-api-key": ADMIN}))


def test_admin_is_404_without_an_admin_key_and_ops_can_be_protected(model_store):
    settings = make_settings(model_store, models=["kws12-avgpool"], api_key=API,
                             default_model="kws12-avgpool", protect_ops=True)
    with TestClient(create_app(settings)) as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert_denied(client.get(path))
        key = {"x-api-key": API}
        client.headers.update(key)
        wait_ready(client)
        client.headers.pop("x-api-key")
        assert client.get("/healthz", headers=key).status_code == 200
        for url in ("/admin/reload", "/admin/models/kws12-avgpool/reload"):
            r = client.post(url, headers=key)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
            assert_denied(client.post(url, headers={"x-api-key": ADMIN}))


def test_cors_is_off_by_default(onnx_client):
    r = onnx_client.options("/classify", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert "access-control-allow-origin" not in r.headers
    r = onnx_client.get("/healthz", headers={"origin": "https://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_cors_allows_only_the_configured_origins(locked):
    preflight = {"access-control-request-method": "POST",
                 "access-control-request-headers": "authorization,content-type"}
    ok = locked.options("/classify", headers={"origin": "https://app.example", **preflight})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-credentials" not in ok.headers
    bad = locked.options("/classify", headers={"origin": "https://evil.example", **preflight})
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    denied = locked.post("/classify", json=SPEC, headers={"origin": "https://app.example"})
    assert denied.status_code == 401  # the browser may read the refusal
    assert denied.headers["access-control-allow-origin"] == "https://app.example"


def run_asgi(app, scope, body_chunks=(b"x" * 100,)):
    """Call an ASGI app; fail if it reads the body."""
    import asyncio

    sent = []

    async def receive():
        raise AssertionError("the body was read")

    async def send(message):
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


def scope(path, headers=()):
    return {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
            "query_string": b"", "headers": list(headers), "root_path": "", "scheme": "http",
            "server": ("test", 80), "client": ("test", 1), "http_version": "1.1"}


def test_refusals_happen_before_the_body_is_read():
    async def never(scope, receive, send):
        raise AssertionError("the app was called")

    auth = AuthMiddleware(never, api_key=Settings(api_key=API).api_key, admin_key=None,
                          protect_ops=False)
    assert run_asgi(auth, scope("/classify")) == 401
    assert run_asgi(auth, scope("/classify", [(b"authorization", b"Bearer nope")])) == 401
    edge = EdgeMiddleware(never, metrics=Metrics(), max_upload_bytes=1000)
    assert run_asgi(edge, scope("/classify", [(b"content-length", b"10000000000")])) == 413


def test_key_comparison():
    key = Settings(api_key=API).api_key
    assert key_matches([(b"x-api-key", API.encode())], key)
    assert key_matches([(b"authorization", f"Bearer {API}".encode())], key)
    assert not key_matches([(b"x-api-key", API[:-1].encode())], key)
    assert not key_matches([(b"x-api-key", (API + "x").encode())], key)
    assert not key_matches([], key)
    assert Settings(api_key="  ").api_key is None  # blank never means "the empty key"


def test_model_names_never_become_paths(onnx_client):
    for name in ("%2e%2e", "..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "kws12-diffres%00",
                 "a" * 300, "%252e%252e%252f"):
        r = onnx_client.get(f"/models/{name}")
        if r.url.path != "/":  # "%252e..": a redirect to /models/.., resolved by the client to /
            assert r.status_code == 404, (name, r.text)
            assert r.json()["error"]["code"] in ("model_not_found", "not_found")
        r = onnx_client.post(f"/classify?model={name}", json=SPEC)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


def pickled_npy(marker: Path) -> bytes:
    """A .npy of dtype object whose unpickling would create ``marker``."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    array = np.empty(1, dtype=object)
    array[0] = Evil()
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    assert pickle.dumps(Evil())  # the payload is a real pickle
    return buffer.getvalue()


def test_pickled_npy_is_refused_and_never_unpickled(onnx_client, tmp_path):
    marker = tmp_path / "pwned"
    r = onnx_client.post("/classify", content=pickled_npy(marker),
                         headers={"content-type": "application/x-npy"})
    assert r.status_code == 415 and "pickle" in r.json()["error"]["message"]
    assert not marker.exists()


@pytest.mark.parametrize("cls,file", [(OnnxBackend, "model.onnx"), (TorchScriptBackend,
                                                                    "model.pt")])
def test_artifacts_load_only_when_their_sha256_matches(model_store, cls, file):
    from service.manifest import Manifest

    path = model_store / "kws12-avgpool" / "1" / file
    good = Manifest.read(path.parent).artifacts[file].sha256
    extra = {"providers": ["CPUExecutionProvider"]} if cls is OnnxBackend else {}
    with pytest.raises(ValueError, match="does not match the manifest"):
        cls(path, "spectrogram", None, sha256="0" * 64, **extra).load("cpu")
    backend = cls(path, "spectrogram", ["probabilities", "frame_scores"], sha256=good, **extra)
    backend.load("cpu")
    backend.close()


UNSAFE = [(r"\btorch\.load\(", "torch.load"), (r"\bpickle\.loads?\(", "pickle.load"),
          (r"allow_pickle\s*=\s*True", "allow_pickle=True"), (r"\bjoblib\b", "joblib"),
          (r"\bdill\b", "dill"), (r"\bcloudpickle\b", "cloudpickle")]


def test_nothing_in_the_serving_code_unpickles():
    """Static check of service/ but the offline tools, which are not part of the server:
    service/train (its checkpoint loader, service/train/checkpoint.py, uses torch.load on
    files it wrote itself) and service/export (it loads a user's own state dict with
    torch.load(weights_only=True))."""
    found = []
    for path in (ROOT / "service").rglob("*.py"):
        if {"train", "export"} & set(path.relative_to(ROOT / "service").parts):
            continue
        text = path.read_text()
        found += [f"{path.relative_to(ROOT)}: {what}" for pattern, what in UNSAFE
                  if re.search(pattern, text)]
        for match in re.finditer(r"\bnp\.load\(", text):
            if "allow_pickle=False" not in _call(text, match.end()):
                found.append(f"{path.relative_to(ROOT)}: np.load without allow_pickle=False")
    assert not found, found


def _call(text: str, start: int) -> str:
    """The argument text of the call whose "(" ends at ``start`` (balanced parentheses)."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]
