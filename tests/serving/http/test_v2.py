"""Open Inference Protocol (KServe v2 / Triton HTTP): the codec alone, then the real
``tritonclient[http]`` against the app under uvicorn on a loopback port (health, metadata,
JSON and binary tensors, waveforms, classification, errors), with results compared to
/classify and /compress on the same server, and the docs' example script run against it."""

import io
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from service.errors import InvalidParameter, Overloaded, PayloadTooLarge, UnsupportedMedia
from service.serving.dataplane import v2_codec as v2
from service.serving.http.app import create_app
from tests.serving.conftest import (
    IN_T_DIM,
    LABELS,
    N_MELS,
    SAMPLE_RATE,
    make_settings,
    sine,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "docs" / "examples" / "tritonclient_example.py"
MODEL = "kws12-diffres"
MAPS = ("avgpool", "maxpool", "resolution_enc")


def windows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-8, 2, (n, IN_T_DIM, N_MELS)).astype(np.float32)


def infer_body(inputs: list[dict], blobs: list[bytes] = (), **extra) -> tuple[bytes, dict]:
    header = orjson.dumps({"inputs": inputs} | extra)
    headers = {"Inference-Header-Content-Length": str(len(header))} if blobs else {}
    return header + b"".join(blobs), headers


# ---- the codec, pure ------------------------------------------------------------------------

def test_decode_json_nested_and_flat_data_and_binary_inputs():
    spec = windows(2)
    nested = {"name": "spectrogram", "datatype": "FP32", "shape": list(spec.shape),
              "data": spec.tolist()}
    request = v2.decode_request(orjson.dumps({"id": "r1", "inputs": [nested]}))
    assert request.id == "r1" and request.outputs is None and not request.binary_output
    np.testing.assert_array_equal(request.inputs[0].data, spec)

    wave = sine(0.01)[np.newaxis]
    body, headers = infer_body(
        [{"name": "spectrogram", "datatype": "FP32", "shape": list(spec.shape),
          "parameters": {"binary_data_size": spec.nbytes}},
         {"name": "waveform", "datatype": "FP32", "shape": list(wave.shape),
          "parameters": {"binary_data_size": wave.nbytes, "sample_rate": 16000}}],
        [spec.tobytes(), wave.tobytes()],
        outputs=[{"name": "probabilities", "parameters": {"binary_data": True,
                                                           "classification": 2}}],
        parameters={"binary_data_output": True})
    request = v2.decode_request(body, headers["Inference-Header-Content-Length"])
    np.testing.assert_array_equal(request.inputs[0].data, spec)
    np.testing.assert_array_equal(request.inputs[1].data, wave)
    assert request.outputs == (v2.RequestedOutput("probabilities", True, 2),)
    assert request.binary_output


@pytest.mark.parametrize("body,tail,message", [
    (b"{", None, "not valid"),
    (b"[]", None, "JSON object"),
    (b'{"inputs": []}', None, "non-empty 'inputs'"),
    (b'{"inputs": [{"name": "x", "datatype": "FP64", "shape": [1], "data": [1]}]}', None,
     "FP64"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [1]}]}', None,
     "has 1 values"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": ["a", "b"]}]}',
     None, "only numbers"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], "data": [[1], [2, 3]]}]}',
     None, "ragged"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [-1], "data": [1]}]}', None,
     "non-negative"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1]}]}', None, "neither"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], '
     b'"parameters": {"binary_data_size": 8}}]}', None, "ends after 0 bytes"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [2], '
     b'"parameters": {"binary_data_size": 4}}]}', b"\0" * 4, "does not match"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}]}', b"\0",
     "no input's binary_data_size"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1], '
     b'"parameters": {"shared_memory_region": "r"}}]}', None, "shared memory"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [1]}], '
     b'"outputs": [{"name": "p", "parameters": {"binary_data": 1}}]}', None, "true or false"),
])
def test_decode_rejects_malformed_requests(body, tail, message):
    """``tail``: binary data after the JSON header (sent with its header length)."""
    header = None if tail is None else str(len(body))
    with pytest.raises(InvalidParameter, match=message):
        v2.decode_request(body + (tail or b""), header)
    with pytest.raises(InvalidParameter, match="not within"):
        v2.decode_request(b"{}", "999")


def test_gzip_body_is_inflated_within_the_limit():
    import gzip
    body = orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                     "data": [1.5]}]})
    assert v2.decode_request(gzip.compress(body), None, "gzip").inputs[0].data[0] == 1.5
    with pytest.raises(PayloadTooLarge):
        v2.decode_request(gzip.compress(body + b" " * 10_000), None, "gzip", max_bytes=1000)
    with pytest.raises(UnsupportedMedia):
        v2.decode_request(body, None, "br")


def test_encode_is_read_back_by_tritonclient():
    http = pytest.importorskip("tritonclient.http")
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], np.float32)
    scores = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
    outputs = (v2.RequestedOutput("probabilities", True), v2.RequestedOutput("frame_scores",
                                                                             False))
    body, size = v2.encode_response("m", 3, "id-7", outputs,
                                    {"probabilities": probs, "frame_scores": scores},
                                    ["a", "b", "c"])
    result = http.InferResult.from_response_body(body, header_length=size)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probs)
    np.testing.assert_array_equal(result.as_numpy("frame_scores"), scores)
    assert result.get_response()["model_version"] == "3"
    assert result.get_response()["id"] == "id-7"

    top = (v2.RequestedOutput("probabilities", True, 2),)
    body, size = v2.encode_response("m", 1, None, top, {"probabilities": probs}, ["a", "b", "c"])
    strings = http.InferResult.from_response_body(body, header_length=size).as_numpy(
        "probabilities")
    assert strings.shape == (2, 2)
    assert strings[0].tolist() == [b"0.700000:1:b", b"0.200000:2:c"]
    assert len(body) - size == sum(4 + len(s) for s in strings.ravel())
    assert struct.unpack("<I", body[size:size + 4])[0] == len(strings[0, 0])


# ---- a real server, the real client ---------------------------------------------------------

@pytest.fixture(scope="module")
def server(model_store):
    """The app under uvicorn on a free loopback port, in a thread: ``host:port``."""
    import uvicorn

    app = create_app(make_settings(model_store, version_policy="all"))  # versions 1 and 2
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                                        access_log=False))
    thread = threading.Thread(target=srv.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        give_up = time.monotonic() + 60
        while not srv.started:
            assert thread.is_alive() and time.monotonic() < give_up, "uvicorn did not start"
            time.sleep(0.02)
        url = f"127.0.0.1:{srv.servers[0].sockets[0].getsockname()[1]}"
        while httpx.get(f"http://{url}/v2/health/ready").status_code != 200:
            assert time.monotonic() < give_up, "models did not load"
            time.sleep(0.05)
        yield url
    finally:
        srv.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def http(server):
    return pytest.importorskip("tritonclient.http", reason="pip install 'tritonclient[http]'")


@pytest.fixture(scope="module")
def client(server, http):
    with http.InferenceServerClient(url=server) as c:
        yield c


def classify(server: str, **kwargs) -> dict:
    r = httpx.post(f"http://{server}/classify", timeout=30, **kwargs)
    assert r.status_code == 200, r.text
    return r.json()


def test_health_and_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert server["name"] == "diffres-serve" and "binary_tensor_data" in server["extensions"]
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL and meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [
        {"name": "spectrogram", "datatype": "FP32", "shape": [-1, IN_T_DIM, N_MELS]},
        {"name": "waveform", "datatype": "FP32", "shape": [-1, -1]}]
    shapes = {o["name"]: o["shape"] for o in meta["outputs"]}
    assert shapes["probabilities"] == [-1, len(LABELS)] and shapes["frame_scores"] == [-1, -1]
    assert shapes["avgpool"] == [-1, 50, N_MELS] and set(MAPS) <= set(shapes)
    assert client.get_model_metadata(MODEL, "1")["name"] == MODEL
    baseline = {o["name"] for o in client.get_model_metadata("kws12-avgpool")["outputs"]}
    assert baseline == {"probabilities", "frame_scores"}


@pytest.mark.parametrize("binary_in,binary_out", [(True, True), (False, False),
                                                  (True, False), (False, True)])
def test_spectrogram_windows_equal_classify_and_compress(server, client, http, binary_in,
                                                         binary_out):
    spec = windows(3)
    tensor = http.InferInput("spectrogram", list(spec.shape), "FP32")
    tensor.set_data_from_numpy(spec, binary_data=binary_in)
    names = ("probabilities", "frame_scores", *MAPS)
    result = client.infer(MODEL, [tensor], outputs=[
        http.InferRequestedOutput(n, binary_data=binary_out) for n in names])
    out = {n: result.as_numpy(n) for n in names}
    assert out["probabilities"].shape == (3, len(LABELS))
    assert out["frame_scores"].shape == (3, IN_T_DIM) and out["avgpool"].shape == (3, 50, N_MELS)
    assert result.get_response()["model_version"] == "2"
    for row, window in enumerate(spec):
        body = {"json": {"spectrogram": window.tolist()}}
        ref = classify(server, **body)
        expected = np.array([ref["probabilities"][label] for label in LABELS], np.float32)
        np.testing.assert_allclose(out["probabilities"][row], expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out["frame_scores"][row], ref["frame_scores"], atol=1e-6)
        maps = httpx.post(f"http://{server}/compress", timeout=30, **body).json()["windows"][0]
        for name in MAPS:
            np.testing.assert_allclose(out[name][row], maps[name], atol=1e-6)


def test_waveforms_are_clips_equal_to_classify(server, client, http):
    rate = 24000  # resampled to 16 kHz on the server, as /classify resamples audio files
    clips = np.stack([sine(1.5, rate, freq) for freq in (440.0, 1200.0)])
    tensor = http.InferInput("waveform", list(clips.shape), "FP32")
    tensor.set_data_from_numpy(clips)
    result = client.infer(MODEL, [tensor], parameters={"sample_rate": rate})  # every output
    names = [o["name"] for o in result.get_response()["outputs"]]
    assert names == ["probabilities", "frame_scores"]  # a waveform gives clip-level outputs
    frames = 1 + int(1.5 * SAMPLE_RATE) // 160
    assert result.as_numpy("frame_scores").shape == (2, frames)
    for row, clip in enumerate(clips):
        wav = io.BytesIO()
        sf.write(wav, clip, rate, format="WAV", subtype="FLOAT")
        ref = classify(server, content=wav.getvalue(), headers={"content-type": "audio/wav"})
        assert ref["input_frames"] == frames and len(ref["windows"]) == 2
        expected = [ref["probabilities"][label] for label in LABELS]
        np.testing.assert_allclose(result.as_numpy("probabilities")[row], expected, atol=1e-6)
        np.testing.assert_allclose(result.as_numpy("frame_scores")[row], ref["frame_scores"],
                                   atol=1e-6)


def test_input_level_sample_rate_json_only_response_and_request_id(server):
    clip = sine(0.5)[np.newaxis]
    body = {"id": "abc", "inputs": [{"name": "waveform", "datatype": "FP32",
                                     "shape": list(clip.shape), "data": clip.ravel().tolist(),
                                     "parameters": {"sample_rate": SAMPLE_RATE}}],
            "outputs": [{"name": "probabilities"}]}
    r = httpx.post(f"http://{server}/v2/models/{MODEL}/versions/1/infer", json=body)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert "inference-header-content-length" not in r.headers
    doc = r.json()
    assert doc["id"] == "abc" and doc["model_version"] == "1"
    assert doc["outputs"][0]["shape"] == [1, len(LABELS)]
    assert abs(sum(doc["outputs"][0]["data"]) - 1) < 1e-4


def test_classification_extension_gives_top_labels(server, client, http):
    spec = windows(1, seed=3)
    tensor = http.InferInput("spectrogram", list(spec.shape), "FP32")
    tensor.set_data_from_numpy(spec)
    for binary in (True, False):
        result = client.infer(MODEL, [tensor], outputs=[
            http.InferRequestedOutput("probabilities", binary_data=binary, class_count=3)])
        entries = result.as_numpy("probabilities")[0]  # bytes when binary, str from JSON
        assert all(isinstance(e, bytes if binary else str) for e in entries)
        top = [(e.decode() if binary else e).split(":") for e in entries]
        ref = classify(server, json={"spectrogram": spec[0].tolist()})["top"][:3]
        assert [label for _, _, label in top] == [t["label"] for t in ref]
        assert [LABELS[int(i)] for _, i, _ in top] == [t["label"] for t in ref]
        np.testing.assert_allclose([float(p) for p, _, _ in top],
                                   [t["probability"] for t in ref], atol=1e-6)


def test_gzip_request_and_metrics(server, client, http):
    def metric(text: str, prefix: str) -> float:
        return sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith(prefix))

    before = httpx.get(f"http://{server}/metrics").text
    spec = windows(4)
    tensor = http.InferInput("spectrogram", list(spec.shape), "FP32")
    tensor.set_data_from_numpy(spec)
    result = client.infer(MODEL, [tensor], request_compression_algorithm="gzip")
    assert result.as_numpy("probabilities").shape == (4, len(LABELS))
    after = httpx.get(f"http://{server}/metrics").text
    frames = f'diffres_input_frames_total{{model="{MODEL}"}}'
    assert metric(after, frames) - metric(before, frames) == 4 * IN_T_DIM
    batches = f'diffres_batch_size_sum{{model="{MODEL}"}}'
    assert metric(after, batches) - metric(before, batches) == 4
    ok = [line for line in after.splitlines() if line.startswith("diffres_requests_total")
          and 'status="200"' in line and f'model="{MODEL}"' in line
          and 'endpoint="v2_infer"' in line]
    assert ok, "v2 infer requests are counted under endpoint v2_infer with their model"


def test_errors_reach_tritonclient_with_status_and_message(client, http):
    from tritonclient.utils import InferenceServerException

    spec = windows(1)

    def infer(model=MODEL, version="", name="spectrogram", array=spec, outputs=None, **kw):
        tensor = http.InferInput(name, list(array.shape), "FP32")
        tensor.set_data_from_numpy(array)
        with pytest.raises(InferenceServerException) as caught:
            client.infer(model, [tensor], model_version=version, outputs=outputs, **kw)
        return caught.value.status(), caught.value.message()

    status, message = infer(model="nope")
    assert status == "404" and "unknown model 'nope'" in message
    assert infer(version="9")[0] == "404"
    assert infer(version="x") == ("400", "model version must be a positive integer, got 'x'")
    status, message = infer(array=spec[:, :50])
    assert status == "400" and f"[-1, {IN_T_DIM}, {N_MELS}]" in message
    status, message = infer(model="kws12-avgpool", outputs=[http.InferRequestedOutput("maxpool")])
    assert status == "400" and "DiffRes" in message
    assert infer(name="audio")[0] == "400"
    nan = spec.copy()
    nan[0, 0, 0] = np.nan
    status, message = infer(array=nan)
    assert status == "400" and "NaN" in message
    clip = sine(0.2)[np.newaxis]
    status, message = infer(name="waveform", array=clip)
    assert status == "400" and "sample_rate" in message
    status, message = infer(name="waveform", array=clip, parameters={"sample_rate": 16000},
                            outputs=[http.InferRequestedOutput("avgpool")])
    assert status == "400" and "needs spectrogram windows" in message
    with pytest.raises(InferenceServerException) as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "404"


def test_protocol_error_bodies_are_plain_strings(server):
    base = f"http://{server}/v2"
    for method, path, status in [("GET", "/models/nope/ready", 404),
                                 ("GET", "/models/broken", 404),
                                 ("POST", f"/models/{MODEL}/versions/0/infer", 400),
                                 ("GET", "/repository/index", 404)]:
        r = httpx.request(method, base + path)
        assert r.status_code == status and isinstance(r.json()["error"], str), r.text
    r = httpx.post(f"{base}/models/{MODEL}/infer", content=b"{nope")
    assert r.status_code == 400 and "not valid" in r.json()["error"]


def test_limits_overload_and_readiness_in_protocol_shape(model_store, monkeypatch):
    settings = make_settings(model_store, max_audio_seconds=3.5)
    with TestClient(create_app(settings)) as tc:
        wait_ready(tc)
        clip = sine(2.0)[np.newaxis].repeat(2, axis=0)  # 4 s in all: over the limit
        body = {"inputs": [{"name": "waveform", "datatype": "FP32", "shape": list(clip.shape),
                            "data": clip.ravel().tolist()}],
                "parameters": {"sample_rate": SAMPLE_RATE}}
        r = tc.post(f"/v2/models/{MODEL}/infer", json=body)
        assert r.status_code == 413 and "limit" in r.json()["error"]
        served = tc.app.state.service.repository.resolve(MODEL, None)

        async def full(windows, deadline):  # the batcher's own admission: its own tests
            raise Overloaded("queue full", retry_after_s=2.0)

        monkeypatch.setattr(served.batcher, "submit", full)
        spec = windows(1)
        body, headers = infer_body([{"name": "spectrogram", "datatype": "FP32",
                                     "shape": list(spec.shape),
                                     "parameters": {"binary_data_size": spec.nbytes}}],
                                   [spec.tobytes()])
        r = tc.post(f"/v2/models/{MODEL}/infer", content=body, headers=headers)
        assert r.status_code == 503 and r.headers["retry-after"] == "2"
        assert r.json() == {"error": "queue full"}
        tc.app.state.service.begin_drain()
        for path in ("/v2/health/ready", f"/v2/models/{MODEL}/ready"):
            r = tc.get(path)
            assert r.status_code == 503 and r.json() == {"error": "server is shutting down"}
        assert tc.get("/v2/health/live").status_code == 200


def test_example_script_runs_against_the_server(server, http):
    env = os.environ | {"PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, str(EXAMPLE), "--url", server, "--model", MODEL],
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"{MODEL} versions ['1', '2'] on onnxruntime_onnx"
    assert lines[1].startswith("window 0: ") and f"frame scores {IN_T_DIM}" in lines[1]
    assert lines[3].startswith(f"waveform: {len(LABELS)} class probabilities")
