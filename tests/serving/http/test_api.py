"""End to end through HTTP (ONNX backend): every input form, outputs, errors, limits, models,
health, metrics. Real audio files are written with soundfile (and ffmpeg where present)."""

import asyncio
import io
import re
import subprocess

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from service.serving.dataplane import windowing as W
from service.serving.http.app import create_app
from tests.conftest import require_tool
from tests.serving.conftest import IN_T_DIM, LABELS, N_MELS, make_settings, sine, wait_ready
from tests.serving.harness import asgi_client

FORMATS = [("WAV", "PCM_16", "wav"), ("FLAC", "PCM_16", "flac"), ("OGG", "VORBIS", "ogg"),
           ("OGG", "OPUS", "opus"), ("MP3", "MPEG_LAYER_III", "mp3")]


def encode(wave, rate, fmt="WAV", subtype="PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav_bytes(seconds=1.0, rate=16000, channels=1) -> bytes:
    return encode(sine(seconds, rate, channels=channels), rate)


def spectrogram(frames=150, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(-8, 2, (frames, N_MELS)).astype(np.float32)


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def check_classify(body, frames):
    assert body["model"] == "kws12-diffres" and body["version"] == 2
    assert body["labels"] == LABELS
    assert set(body["probabilities"]) == set(LABELS)
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert len(body["top"]) == 5 and body["top"][0]["probability"] == max(
        body["probabilities"].values())
    assert len(body["frame_scores"]) == frames == body["input_frames"]
    assert body["frame_hop_seconds"] == pytest.approx(0.01)
    hop = IN_T_DIM // 2  # window_hop_fraction 0.5: windows overlap by half
    assert len(body["windows"]) == 1 + -(-max(0, frames - IN_T_DIM) // hop)
    assert body["windows"][-1]["end_seconds"] == pytest.approx(frames * 0.01)


@pytest.mark.parametrize("fmt,subtype,ext", FORMATS)
def test_classify_multipart_every_format(onnx_client, fmt, subtype, ext):
    data = encode(sine(1.0, 24000), 24000, fmt, subtype)  # resampled to 16 kHz by soxr
    upload = (f"a.{ext}", data, "application/octet-stream")
    r = onnx_client.post("/classify", files={"file": upload})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["duration_seconds"] == pytest.approx(1.0, abs=0.08)
    check_classify(body, body["input_frames"])


def test_mp3_written_by_ffmpeg(onnx_client, tmp_path):
    ffmpeg = require_tool("ffmpeg")
    wav, mp3 = tmp_path / "a.wav", tmp_path / "a.mp3"
    sf.write(wav, sine(1.5, 44100, channels=2), 44100)
    subprocess.run([ffmpeg, "-loglevel", "error", "-y", "-i", str(wav), str(mp3)], check=True)
    r = onnx_client.post("/classify", content=mp3.read_bytes(),
                         headers={"content-type": "audio/mpeg"})
    assert r.status_code == 200, r.text
    assert r.json()["duration_seconds"] == pytest.approx(1.5, abs=0.1)


def test_raw_audio_body_stereo_44k_equals_mono(onnx_client):
    stereo = onnx_client.post("/classify", content=wav_bytes(1.0, 44100, channels=2),
                              headers={"content-type": "audio/wav"})
    mono = onnx_client.post("/classify", content=wav_bytes(1.0, 44100),
                            headers={"content-type": "audio/x-wav"})
    assert stereo.status_code == mono.status_code == 200
    check_classify(stereo.json(), 101)
    assert stereo.json()["probabilities"] == pytest.approx(mono.json()["probabilities"], abs=1e-4)


def test_json_and_npy_spectrograms_agree(onnx_client):
    spec = spectrogram(150)
    as_json = onnx_client.post("/classify", json={"spectrogram": spec.tolist()})
    as_npy = onnx_client.post("/classify", content=npy(spec),
                              headers={"content-type": "application/x-npy"})
    assert as_json.status_code == as_npy.status_code == 200
    check_classify(as_json.json(), 150)
    assert as_json.json()["probabilities"] == as_npy.json()["probabilities"]
    assert as_json.json()["duration_seconds"] == pytest.approx(1.5)


def test_long_audio_is_windowed_and_padding_left_out(onnx_client):
    r = onnx_client.post("/classify?top_k=3", files={"file": ("long.flac",
                         encode(sine(30.0), 16000, "FLAC"), "audio/flac")})
    assert r.status_code == 200
    body = r.json()
    check_classify(body | {"top": body["top"] + [body["top"][0]] * 2}, 3001)
    assert len(body["top"]) == 3
    windows = body["windows"]
    assert len(windows) == 59 and windows[1]["start_seconds"] == pytest.approx(0.5)
    probs = np.array([[w["probabilities"][k] for k in LABELS] for w in windows])
    clip = W.aggregate(probs, LABELS)  # keywords: max over windows; background: its min
    assert [body["probabilities"][k] for k in LABELS] == pytest.approx(clip, abs=1e-6)


def test_compress_json_and_npz(onnx_client):
    spec = spectrogram(250)
    r = onnx_client.post("/compress?version=2", json={"spectrogram": spec.tolist()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == 2 and body["input_frames"] == 250
    assert len(body["frame_scores"]) == 250 and len(body["activeness"]) == 3
    w = body["windows"]
    assert [x["input_frames"] for x in w] == [101, 101, 48]
    assert [x["output_frames"] for x in w][:2] == [50, 50] and 1 <= w[2]["output_frames"] <= 50
    assert body["output_frames"] == sum(x["output_frames"] for x in w)
    for x in w:
        for key in ("avgpool", "maxpool", "resolution_enc"):
            assert np.asarray(x[key]).shape == (x["output_frames"], N_MELS)
        scores = np.asarray(body["frame_scores"][int(x["start_seconds"] * 100 + 0.5):][
            :x["input_frames"]])
        assert x["activeness"] == pytest.approx(float(np.std(scores, ddof=1)), abs=1e-6)

    r = onnx_client.post("/compress?version=2", json={"spectrogram": spec.tolist()},
                         headers={"accept": "application/x-npz"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-npz"
    npz = np.load(io.BytesIO(r.content))
    split = np.cumsum(npz["window_output_frames"])[:-1]
    for key in ("avgpool", "maxpool", "resolution_enc"):
        for part, x in zip(np.split(npz[key], split), w, strict=True):
            np.testing.assert_allclose(part, np.asarray(x[key]), rtol=1e-6)
    np.testing.assert_allclose(npz["frame_scores"], body["frame_scores"], rtol=1e-6)


def test_compress_on_model_without_maps_is_400(onnx_client):
    r = onnx_client.post("/compress?model=kws12-avgpool", json={"spectrogram":
                                                                 spectrogram(10).tolist()})
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "compress_unsupported"
    assert "DiffRes" in r.json()["error"]["message"]


def test_other_model_classifies(onnx_client):
    r = onnx_client.post("/classify?model=kws12-avgpool", content=wav_bytes(0.5),
                         headers={"content-type": "audio/wav"})
    assert r.status_code == 200 and r.json()["model"] == "kws12-avgpool"
    assert r.json()["frame_scores"][0] == pytest.approx(50 / 101)


BAD = [
    ("/classify?model=nope", {"json": {"spectrogram": [[0.0] * N_MELS]}}, 404, "model_not_found"),
    ("/classify?version=9", {"json": {"spectrogram": [[0.0] * N_MELS]}}, 404, "model_not_found"),
    ("/classify?top_k=0", {"json": {"spectrogram": [[0.0] * N_MELS]}}, 400, "invalid_parameter"),
    ("/classify?version=x", {"json": {"spectrogram": [[0.0] * N_MELS]}}, 400, "invalid_parameter"),
    ("/classify", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media"),
    ("/classify", {"content": b"not audio at all", "headers": {"content-type": "audio/wav"}},
     415, "unsupported_media"),
    ("/classify", {"content": b"{", "headers": {"content-type": "application/json"}}, 415,
     "unsupported_media"),
    ("/classify", {"content": b"\x93NUMPY garbage", "headers": {"content-type":
                                                                 "application/x-npy"}},
     415, "unsupported_media"),
    ("/classify", {"files": {"other": ("a.wav", b"x", "audio/wav")}}, 400, "invalid_parameter"),
    ("/classify", {"json": {"spectrogram": [[0.0] * 39]}}, 422, "invalid_input"),
    ("/classify", {"json": {"spectrogram": []}}, 422, "invalid_input"),
    ("/classify", {"json": {"spectrogram": [[0.0] * N_MELS, [0.0] * 3]}}, 422, "invalid_input"),
    ("/classify", {"json": {"spectrogram": [["a"] * N_MELS]}}, 422, "invalid_input"),
    ("/classify", {"json": {"wave": []}}, 422, "invalid_input"),
    ("/classify", {"content": npy(np.full((5, N_MELS), np.nan, np.float32)),
                   "headers": {"content-type": "application/x-npy"}}, 422, "invalid_input"),
    ("/classify", {"content": npy(np.zeros((5, N_MELS, 1), np.float32)),
                   "headers": {"content-type": "application/x-npy"}}, 422, "invalid_input"),
    ("/classify", {"content": encode(np.zeros(0, np.float32), 16000),
                   "headers": {"content-type": "audio/wav"}}, 422, "invalid_input"),
    ("/nowhere", {}, 404, "not_found"),
]


@pytest.mark.parametrize("url,kwargs,status,code", BAD)
def test_bad_requests_map_to_documented_errors(onnx_client, url, kwargs, status, code):
    r = onnx_client.post(url, **kwargs)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["message"]


def test_nan_in_json_is_422(onnx_client):
    body = b'{"spectrogram": [[' + b",".join([b"1e999"] * N_MELS) + b"]]}"
    r = onnx_client.post("/classify", content=body, headers={"content-type": "application/json"})
    assert r.status_code in (415, 422)  # orjson refuses 1e999 as JSON; either way not a 500


def test_models_listing_and_detail(onnx_client):
    models = onnx_client.get("/models").json()
    assert models["default_model"] == "kws12-diffres"
    states = {(m["name"], m["version"]): m for m in models["models"]}
    assert set(states) == {("kws12-diffres", 1), ("kws12-diffres", 2), ("kws12-avgpool", 1)}
    m = states[("kws12-diffres", 2)]
    assert m["state"] == "ready" and m["backend"] == "onnx" and m["devices"] == ["cpu"]
    assert m["input"]["window_frames"] == IN_T_DIM and m["input"]["n_mels"] == N_MELS
    assert m["operations"] == ["classify", "compress"] and m["labels"] == LABELS
    detail = onnx_client.get("/models/kws12-diffres").json()
    assert detail["latest"] == 2 and len(detail["versions"]) == 2
    assert onnx_client.get("/models/nope").status_code == 404


def test_health_ready_request_id_and_docs(onnx_client):
    assert onnx_client.get("/healthz").json() == {"status": "ok"}
    assert onnx_client.get("/readyz").status_code == 200
    r = onnx_client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(onnx_client.get("/healthz").headers["x-request-id"]) == 32
    spec = onnx_client.get("/openapi.json").json()
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "audio/*", "application/json", "application/x-npy"} <= set(body)
    assert "example" in spec["paths"]["/classify"]["post"]["responses"]["200"]["content"][
        "application/json"]
    docs = onnx_client.get("/docs")
    assert docs.status_code == 200
    # every script and style sheet of the page comes from this server (air-gapped hosts)
    assets = re.findall(r'(?:src|href)="([^"]+\.(?:js|css))"', docs.text)
    assert assets and all(a.startswith("/") for a in assets)
    assert all(onnx_client.get(a).status_code == 200 for a in assets)


def metric(client, name, **labels) -> float:
    for line in client.get("/metrics").text.splitlines():
        named = line.startswith(name + "{") or line.startswith(name + " ")
        if named and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move(onnx_client):
    before = {
        "ok": metric(onnx_client, "diffres_requests_total", endpoint="/classify",
                     model="kws12-diffres", status="200"),
        "bad": metric(onnx_client, "diffres_requests_total", endpoint="/classify",
                      model="kws12-diffres", status="422"),
        "frames": metric(onnx_client, "diffres_input_frames_total", model="kws12-diffres"),
        "out": metric(onnx_client, "diffres_output_frames_total", model="kws12-diffres"),
        "audio": metric(onnx_client, "diffres_audio_seconds_total", model="kws12-diffres"),
        "batches": metric(onnx_client, "diffres_batch_size_count", model="kws12-diffres"),
        "waits": metric(onnx_client, "diffres_queue_wait_seconds_count", model="kws12-diffres"),
        "infer": metric(onnx_client, "diffres_inference_duration_seconds_count",
                        model="kws12-diffres", backend="onnx", device="cpu"),
        "latency": metric(onnx_client, "diffres_request_duration_seconds_count",
                          endpoint="/classify", model="kws12-diffres"),
    }
    assert onnx_client.post("/classify", content=wav_bytes(2.0),
                            headers={"content-type": "audio/wav"}).status_code == 200
    onnx_client.post("/classify", json={"spectrogram": [[0.0] * 3]})
    after = {key: metric(onnx_client, *args[0], **args[1]) for key, args in {
        "ok": (("diffres_requests_total",), {"endpoint": "/classify", "model": "kws12-diffres",
                                             "status": "200"}),
        "bad": (("diffres_requests_total",), {"endpoint": "/classify", "model": "kws12-diffres",
                                              "status": "422"}),
        "frames": (("diffres_input_frames_total",), {"model": "kws12-diffres"}),
        "out": (("diffres_output_frames_total",), {"model": "kws12-diffres"}),
        "audio": (("diffres_audio_seconds_total",), {"model": "kws12-diffres"}),
        "batches": (("diffres_batch_size_count",), {"model": "kws12-diffres"}),
        "waits": (("diffres_queue_wait_seconds_count",), {"model": "kws12-diffres"}),
        "infer": (("diffres_inference_duration_seconds_count",), {
            "model": "kws12-diffres", "backend": "onnx", "device": "cpu"}),
        "latency": (("diffres_request_duration_seconds_count",), {"endpoint": "/classify",
                                                                   "model": "kws12-diffres"}),
    }.items()}
    assert after["ok"] == before["ok"] + 1 and after["bad"] == before["bad"] + 1
    assert after["frames"] == before["frames"] + 201
    assert after["out"] > before["out"] and after["audio"] == pytest.approx(before["audio"] + 2)
    # 201 frames: 3 windows, starting every half window (window_hop_fraction 0.5)
    assert after["batches"] > before["batches"] and after["waits"] == before["waits"] + 3
    assert after["infer"] > before["infer"] and after["latency"] == before["latency"] + 2
    assert metric(onnx_client, "diffres_model_info", model="kws12-diffres", version="2") == 1
    assert metric(onnx_client, "diffres_queue_depth", model="kws12-diffres") == 0
    assert metric(onnx_client, "diffres_inflight_requests") == 0


def test_promtool_accepts_metrics(onnx_client):
    promtool = require_tool("promtool")
    onnx_client.post("/classify", content=wav_bytes(0.5), headers={"content-type": "audio/wav"})
    text = onnx_client.get("/metrics").text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_upload_limits_content_length_chunked_and_duration(model_store):
    settings = make_settings(model_store, max_upload_bytes=20_000, max_audio_seconds=2.0)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        big = wav_bytes(1.0)  # 32 kB > 20 kB
        r = client.post("/classify", content=big, headers={"content-type": "audio/wav"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"

        def chunks():
            for i in range(0, len(big), 4096):
                yield big[i:i + 4096]

        r = client.post("/classify", content=chunks(), headers={"content-type": "audio/wav"})
        assert r.status_code == 413, r.text  # no Content-Length: counted while streaming
        r = client.post("/classify", files={"file": ("a.wav", big, "audio/wav")})
        assert r.status_code == 413

        long = encode(np.zeros(24000, np.float32), 8000, "FLAC")  # small file, but 3 s > 2 s
        assert len(long) < 20_000
        r = client.post("/classify", content=long, headers={"content-type": "audio/flac"})
        assert r.status_code == 413 and "3.0 s" in r.json()["error"]["message"]
        r = client.post("/classify", content=npy(spectrogram(300)),
                        headers={"content-type": "application/x-npy"})
        assert r.status_code == 413


def test_request_longer_than_the_queue_is_admitted_in_slices(model_store):
    """A request needs queue room for one slice (``max_batch_size`` windows), not for all of
    its windows: 10 windows pass a queue of 4 on an idle server. 503 with Retry-After under
    real overload: tests/serving/http/test_reliability_overload.py."""
    with TestClient(create_app(make_settings(model_store, max_queue_size=4))) as client:
        wait_ready(client)
        r = client.post("/classify", json={"spectrogram": spectrogram(5 * IN_T_DIM).tolist()})
        # 505 frames, a window every half window: 1 + ceil((505 - 101) / 50) = 10 windows
        assert r.status_code == 200 and len(r.json()["windows"]) == 10


def test_deadline_is_504(model_store):
    with TestClient(create_app(make_settings(model_store, request_timeout_s=0.001))) as client:
        wait_ready(client)
        r = client.post("/classify", files={"file": ("a.wav", wav_bytes(20.0), "audio/wav")})
        assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
        assert client.app.state.service.repository.resolve("kws12-diffres", None).batcher.depth == 0


def test_failed_model_is_reported_and_not_served(model_store, caplog):
    settings = make_settings(model_store, models=["kws12-diffres", "broken", "ghost"])
    with TestClient(create_app(settings)) as client:
        while not client.app.state.loader.done():
            client.get("/healthz")
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["broken"]["state"] == "failed"
        assert "model.onnx: sha256" in models["broken"]["reason"]
        assert models["ghost"]["state"] == "failed"
        r = client.post("/classify?model=broken", json={"spectrogram": [[0.0] * N_MELS]})
        assert r.status_code == 503 and "sha256" in r.json()["error"]["message"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "broken/1: failed" in ready.json()["error"]["message"]
        assert client.post("/classify", json={"spectrogram": [[0.0] * N_MELS]}).status_code == 200
    assert "broken/1 is not served" in caplog.text


def test_draining_refuses_new_requests(model_store):
    with TestClient(create_app(make_settings(model_store))) as client:
        wait_ready(client)
        client.app.state.service.begin_drain()
        r = client.post("/classify", json={"spectrogram": [[0.0] * N_MELS]})
        assert r.status_code == 503 and r.json()["error"]["code"] == "shutting_down"
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200


def test_overload_is_refused_before_the_body_is_read(model_store):
    """At ``max_inflight_requests`` a request gets 503 without a byte of its body read: a
    flood of large uploads costs no memory or parsing once the server is full."""
    body, headers = npy(spectrogram(IN_T_DIM)), {"content-type": "application/x-npy"}

    async def scenario():
        async with asgi_client(make_settings(model_store, max_inflight_requests=1)) as (app, c):
            release, pulled = asyncio.Event(), []

            async def stalled():  # admitted, then waits for its body
                await release.wait()
                yield body

            async def counted():
                pulled.append(True)
                yield body

            first = asyncio.create_task(c.post("/classify", content=stalled(), headers=headers))
            async with asyncio.timeout(10):  # the first is in flight before its body arrives
                while app.state.service.inflight < 1:
                    await asyncio.sleep(0.005)
            second = await c.post("/classify", content=counted(), headers=headers)
            release.set()
            return second, await first, pulled

    second, first, pulled = asyncio.run(asyncio.wait_for(scenario(), 60))
    assert second.status_code == 503 and second.json()["error"]["code"] == "overloaded"
    assert second.headers["retry-after"]
    assert pulled == []
    assert first.status_code == 200
