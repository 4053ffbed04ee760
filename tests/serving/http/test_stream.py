"""WS /stream end to end (in-process ASGI): detections at known times through the real front
end and batcher (the model's probabilities are replaced by a controlled rule: the shipped
weights would recognise nothing in a synthetic signal), and every way a stream ends: bad
start messages, bad encodings, oversized chunks, too fast, too long, too many, no key, a
client that vanishes. Each ends with its documented close code and leaks nothing."""

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.websockets import WebSocketDisconnect

from service.manifest import PROBABILITIES
from tests.serving.conftest import LABELS, make_settings, wait_ready
from tests.serving.dataplane.test_stream_session import (
    BURST_S,
    KEYWORDS,
    expected_start,
    keyword_audio,
    pcm16,
)


class ControlledBackend:
    """The real model's outputs, with ``probabilities`` replaced: a keyword when a whole burst
    (frames louder than 0 in log-mel) lies inside the window, "yes" for a low tone, "no" for a
    high one; else silence."""

    def __init__(self, inner) -> None:
        self.inner = inner

    name = property(lambda self: self.inner.name)
    device = property(lambda self: self.inner.device)

    def load(self, device: str) -> None:
        self.inner.load(device)

    def close(self) -> None:
        self.inner.close()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        outputs = dict(self.inner.run(batch))
        probs = np.zeros((len(batch), len(LABELS)), np.float32)
        for i, window in enumerate(batch):
            loud = window.max(axis=1) > 0
            if loud.sum() >= 20 and not loud[:3].any() and not loud[-3:].any():
                band = int(np.argmax(window[loud].mean(axis=0)))
                probs[i, LABELS.index("yes" if band < 20 else "no")] = 0.9
            else:
                probs[i, LABELS.index("_silence_")] = 0.95
        outputs[PROBABILITIES] = probs
        return outputs


@pytest.fixture(scope="module")
def client(model_store):
    from service.serving.http.app import create_app
    from service.serving.runtime import model_repository

    real = model_repository.make_backend

    def make(kind, path, *args, **kwargs):
        backend = real(kind, path, *args, **kwargs)
        return ControlledBackend(backend) if Path(path).name.startswith("model.") else backend

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_repository, "make_backend", make)
        with TestClient(create_app(make_settings(model_store))) as c:
            wait_ready(c)
            yield c


def until_close(ws) -> tuple[list[dict], int]:
    """Every message until the server closes: (messages, close code)."""
    messages = []
    while True:
        try:
            messages.append(ws.receive_json())
        except WebSocketDisconnect as closed:
            return messages, closed.code


def gauge(client, name: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def assert_nothing_left(client) -> None:
    async def stream_tasks():
        return [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("stream-")]

    give_up = time.monotonic() + 10
    while time.monotonic() < give_up:
        left = client.portal.call(stream_tasks)
        if not left and gauge(client, "diffres_active_streams") == 0:
            break
        time.sleep(0.02)
    assert client.portal.call(stream_tasks) == []
    assert gauge(client, "diffres_active_streams") == 0
    assert getattr(client.app.state, "open_streams", 0) == 0


def paced(ws, data: bytes, chunk: int, ready: dict, bytes_per_sample: int = 2,
          ahead: int = 4) -> list[dict]:
    """Send ``data`` in ``chunk``-byte messages, never more than ``ahead`` windows ahead of
    the scores received (what the ``listen`` client does without --realtime)."""
    window = round(ready["window_seconds"] * ready["sample_rate"])
    hop = round(ready["hop_seconds"] * ready["sample_rate"])
    messages, scored = [], 0
    for at in range(0, len(data), chunk):
        ws.send_bytes(data[at:at + chunk])
        sent = min(len(data), at + chunk) // bytes_per_sample
        done = 0 if sent < window else (sent - window) // hop + 1
        while scored < done - ahead:
            messages.append(ws.receive_json())
            scored += messages[-1]["type"] == "scores"
    ws.send_json({"type": "end"})
    rest, code = until_close(ws)
    assert code == 1000, rest
    return messages + rest


def test_detections_at_known_times(client):
    wave = keyword_audio(14.0)
    with client.websocket_connect("/stream?model=kws12-diffres") as ws:
        ws.send_json({"type": "start", "sample_rate": 16000, "encoding": "pcm_s16le",
                      "scores": True})
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["window_seconds"] == 1.0
        assert ready["hop_seconds"] == 0.25 and ready["labels"] == LABELS
        messages = paced(ws, pcm16(wave), 3200, ready)
    detections = [m for m in messages if m["type"] == "detection"]
    assert [d["label"] for d in detections] == [label for _, label in KEYWORDS]
    for d, (at, _) in zip(detections, KEYWORDS, strict=True):
        assert abs(d["start"] - expected_start(at)) <= 0.25
        assert d["start"] <= at and d["end"] >= at + BURST_S
        assert d["probability"] == pytest.approx(0.9)
    scores = [m for m in messages if m["type"] == "scores"]
    assert len(scores) == 1 + int((14.0 - 1.0) / 0.25)
    end = messages[-1]
    assert end == {"type": "end", "seconds": 14.0, "windows": len(scores),
                   "detections": len(KEYWORDS)}
    metrics = client.get("/metrics").text
    assert 'diffres_stream_audio_seconds_total{model="kws12-diffres"}' in metrics
    assert "diffres_stream_detection_latency_seconds_count" in metrics
    assert_nothing_left(client)


def test_resampled_float_stereo_stream(client):
    rate = 44100
    wave = keyword_audio(4.0, rate, keywords=KEYWORDS[:1])
    data = np.stack([wave, wave], axis=1).astype("<f4").tobytes()
    with client.websocket_connect("/stream") as ws:
        ws.send_json({"sample_rate": rate, "encoding": "f32le", "channels": 2,
                      "scores": True, "threshold": 0.8, "refractory_seconds": 2})
        ready = ws.receive_json()
        assert ready["threshold"] == 0.8 and ready["refractory_seconds"] == 2
        messages = paced(ws, data, 8820, ready | {"sample_rate": rate}, bytes_per_sample=8)
    detections = [m for m in messages if m["type"] == "detection"]
    assert [d["label"] for d in detections] == ["yes"]
    assert abs(detections[0]["start"] - expected_start(KEYWORDS[0][0])) <= 0.25
    assert_nothing_left(client)


@pytest.mark.parametrize("first,close,code", [
    (b"\x00\x01", 1003, "invalid_parameter"),
    ("not json", 1003, "invalid_parameter"),
    ({"sample_rate": 0}, 4400, "invalid_parameter"),
    ({"sample_rate": 16000, "encoding": "mp3"}, 4400, "unsupported_encoding"),
    ({"sample_rate": 16000, "encoding": "pcm_s16le", "channels": 3.5}, 4400,
     "invalid_parameter"),
    ({"type": "end"}, 4400, "invalid_parameter"),
])
def test_bad_start_messages(client, first, close, code):
    with client.websocket_connect("/stream") as ws:
        if isinstance(first, bytes):
            ws.send_bytes(first)
        elif isinstance(first, str):
            ws.send_text(first)
        else:
            ws.send_json(first)
        messages, closed = until_close(ws)
    assert closed == close
    assert messages[-1]["type"] == "error" and messages[-1]["code"] == code
    assert_nothing_left(client)


@pytest.mark.parametrize("query,close,code", [("?model=nope", 4404, "model_not_found"),
                                              ("?version=0", 4400, "invalid_parameter"),
                                              ("?version=x", 4400, "invalid_parameter"),
                                              ("?model=kws12-diffres&version=9", 4404,
                                               "model_not_found")])
def test_bad_model_or_version(client, query, close, code):
    with client.websocket_connect("/stream" + query) as ws:
        messages, closed = until_close(ws)
    assert (closed, messages[-1]["code"]) == (close, code)
    assert_nothing_left(client)


def start(ws, **fields) -> dict:
    ws.send_json({"type": "start", "sample_rate": 16000} | fields)
    ready = ws.receive_json()
    assert ready["type"] == "ready", ready
    return ready


def test_text_after_start_that_is_not_end(client):
    with client.websocket_connect("/stream") as ws:
        start(ws)
        ws.send_text('{"type": "pause"}')
        messages, closed = until_close(ws)
    assert closed == 1003 and messages[-1]["type"] == "error"
    assert_nothing_left(client)


def test_oversized_chunk_is_1009(client):
    limit = client.app.state.settings.max_stream_chunk_bytes
    with client.websocket_connect("/stream") as ws:
        start(ws)
        ws.send_bytes(b"\0" * (limit + 2))
        messages, closed = until_close(ws)
    assert closed == 1009 and messages[-1]["code"] == "payload_too_large"
    assert_nothing_left(client)


def test_faster_than_the_buffer_is_4429(client):
    with client.websocket_connect("/stream") as ws:
        ready = start(ws)
        assert ready["max_buffered_windows"] == 8  # 2 s of 0.25 s hops
        ws.send_bytes(pcm16(np.zeros(3 * 16000, np.float32)))  # 9 windows at once
        messages, closed = until_close(ws)
    assert closed == 4429 and messages[-1]["code"] == "too_fast"
    assert_nothing_left(client)


def test_nan_audio_is_4400(client):
    with client.websocket_connect("/stream") as ws:
        start(ws, encoding="f32le")
        ws.send_bytes(np.array([0.0, np.inf], "<f4").tobytes())
        messages, closed = until_close(ws)
    assert closed == 4400 and messages[-1]["code"] == "invalid_input"
    assert_nothing_left(client)


@pytest.fixture
def settings(client):
    """The app's settings, restored after the test changes them."""
    s = client.app.state.settings
    saved = s.model_dump()
    yield s
    for name in ("max_streams", "max_stream_seconds", "api_key"):
        setattr(s, name, saved[name])


def test_too_long_is_4408(client, settings):
    settings.max_stream_seconds = 1.5
    with client.websocket_connect("/stream") as ws:
        start(ws)
        ws.send_bytes(pcm16(np.zeros(16000, np.float32)))
        ws.send_bytes(pcm16(np.zeros(16000, np.float32)))
        messages, closed = until_close(ws)
    assert closed == 4408 and messages[-1]["code"] == "stream_too_long"
    assert_nothing_left(client)


def test_too_many_streams_is_1013(client, settings):
    settings.max_streams = 1
    with client.websocket_connect("/stream") as first:
        start(first)
        assert gauge(client, "diffres_active_streams") == 1
        with client.websocket_connect("/stream") as second:
            messages, closed = until_close(second)
        assert closed == 1013 and messages[-1]["code"] == "overloaded"
        first.send_json({"type": "end"})
        assert until_close(first)[1] == 1000
    assert_nothing_left(client)


@pytest.mark.parametrize("how", ["none", "wrong", "header", "bearer", "query", "message"])
def test_api_key(client, settings, how):
    settings.api_key = SecretStr("sesame")
    headers = {"header": {"X-API-Key": "sesame"}, "bearer": {"Authorization": "Bearer sesame"},
               "wrong": {"X-API-Key": "nope"}}.get(how, {})
    query = "?api_key=sesame" if how == "query" else ""
    fields = {"api_key": "sesame"} if how == "message" else {}
    with client.websocket_connect("/stream" + query, headers=headers) as ws:
        ws.send_json({"type": "start", "sample_rate": 16000} | fields)
        if how in ("none", "wrong"):
            messages, closed = until_close(ws)
            assert closed == 4401 and messages[-1]["code"] == "unauthorized"
        else:
            assert ws.receive_json()["type"] == "ready"
            ws.send_json({"type": "end"})
            assert until_close(ws)[1] == 1000
    assert_nothing_left(client)


def test_client_that_vanishes_mid_stream(model_store, tmp_path):
    """Over real sockets (the test client cancels the app when a session ends, which no
    server does): the client drops its connection with windows in flight; the stream ends,
    the gauge returns to 0, and the next stream is served."""
    import json
    import socket

    import httpx
    from websockets.sync.client import connect

    from tests.serving.harness import LiveServer, wait_until

    server = LiveServer(model_store, tmp_path / "server.log", models="kws12-diffres").wait_ready()
    try:
        url = server.base.replace("http://", "ws://") + "/stream"
        with connect(url) as ws:
            ws.send(json.dumps({"type": "start", "sample_rate": 16000}))
            assert json.loads(ws.recv(timeout=30))["type"] == "ready"
            ws.send(pcm16(keyword_audio(1.6)))  # 3 windows in flight, then gone:
            ws.socket.shutdown(socket.SHUT_RDWR)  # the TCP connection drops, no close frame

        def no_stream_left() -> bool:
            metrics = httpx.get(server.base + "/metrics", timeout=10).text
            return "diffres_active_streams 0.0" in metrics

        wait_until(no_stream_left, what="the vanished stream closed on the server")
        with connect(url) as again:  # and the server streams on
            again.send(json.dumps({"type": "start", "sample_rate": 16000}))
            assert json.loads(again.recv(timeout=30))["type"] == "ready"
            again.send(json.dumps({"type": "end"}))
            assert json.loads(again.recv(timeout=30)) == {
                "type": "end", "seconds": 0.0, "windows": 0, "detections": 0}
        assert "Traceback" not in server.log()
    finally:
        server.stop()


@pytest.mark.parametrize("realtime", [False, True])
def test_listen_client_against_a_live_server(model_store, tmp_path, realtime):
    """``python -m service listen`` through uvicorn's WebSocket stack, to the end."""
    import io
    import json

    import httpx
    import soundfile as sf

    from service.cli import build_parser
    from service.listen import listen
    from tests.serving.harness import LiveServer

    seconds = 1.75 if realtime else 3.0
    wave = keyword_audio(seconds, 8000, keywords=[])
    sf.write(tmp_path / "clip.wav", np.stack([wave, wave], axis=1), 8000, subtype="PCM_16")
    server = LiveServer(model_store, tmp_path / "server.log", models="kws12-diffres",
                        api_key="sesame").wait_ready()
    try:
        url = server.base.replace("http://", "ws://") + "/stream"
        argv = ["listen", "--url", url, "--api-key", "sesame", "--scores",
                "--chunk-ms", "50", str(tmp_path / "clip.wav")]
        args = build_parser().parse_args(argv + (["--realtime"] if realtime else []))
        out = io.StringIO()
        began = time.monotonic()
        assert asyncio.run(listen(args, out)) == 0, server.log()
        took = time.monotonic() - began
        scores = [json.loads(line) for line in out.getvalue().splitlines()]
        assert len(scores) >= int((seconds - 1.0) / 0.25)  # the resampler holds a few ms
        assert [s["start"] for s in scores] == [i * 0.25 for i in range(len(scores))]
        if realtime:
            assert took >= seconds - 0.1
        metrics = httpx.get(server.base + "/metrics", timeout=10).text
        assert "diffres_active_streams 0.0" in metrics
        assert build_parser().parse_args(["listen", "x.wav"]).func is not None
    finally:
        server.stop()


class FakeMicrophone:
    """``sounddevice.RawInputStream`` as the listen client uses it: a thread that records a
    440 Hz tone, block by block, into the callback."""

    def __init__(self, samplerate, channels, dtype, blocksize, callback):
        assert (channels, dtype) == (1, "int16")
        self.rate, self.block, self.callback = samplerate, blocksize, callback
        self.running = False

    def __enter__(self):
        import threading

        self.running = True
        threading.Thread(target=self._record, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.running = False

    def _record(self):
        at = 0
        while self.running:
            t = (at + np.arange(self.block)) / self.rate
            self.callback((3000 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes(),
                          self.block, None, None)
            at += self.block
            time.sleep(self.block / self.rate / 4)  # faster than real time, in order


def test_listen_client_streams_the_microphone(model_store, tmp_path, monkeypatch):
    """``listen --microphone --seconds 2``: the recorded blocks reach the server as a stream
    and its windows come back scored."""
    import io
    import json
    import sys
    import types

    from service.cli import build_parser
    from service.listen import listen
    from tests.serving.harness import LiveServer

    monkeypatch.setitem(sys.modules, "sounddevice",
                        types.SimpleNamespace(RawInputStream=FakeMicrophone))
    server = LiveServer(model_store, tmp_path / "server.log", models="kws12-diffres").wait_ready()
    try:
        url = server.base.replace("http://", "ws://") + "/stream"
        args = build_parser().parse_args(["listen", "--url", url, "--microphone", "--seconds",
                                          "2", "--scores", "--chunk-ms", "50"])
        out = io.StringIO()
        assert asyncio.run(listen(args, out)) == 0, server.log()
        scores = [json.loads(line) for line in out.getvalue().splitlines()]
        assert len(scores) >= 4  # 2 s: windows at 0, 0.25, ..., 1.0 s at least
        assert [s["start"] for s in scores] == [i * 0.25 for i in range(len(scores))]
    finally:
        server.stop()
