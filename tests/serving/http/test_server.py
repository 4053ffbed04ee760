"""The real server: ``python -m service serve`` in a subprocess on a loopback port of its
own, a request through it, then SIGTERM while a request is in flight (drained, exit 0).

"In flight" is made certain rather than hoped for: that request's body is held half sent
until the server has admitted it and has seen the signal."""

import io
import signal
import threading

import httpx
import numpy as np
import soundfile as sf

from tests.serving.harness import LiveServer, gauge, wait_until


def test_real_server_serves_then_drains_on_sigterm(model_store, tmp_path):
    server = LiveServer(model_store, tmp_path / "server.log", log_json="true",
                        models="kws12-diffres", max_queue_delay_ms=1500, max_batch_size=256,
                        drain_timeout_s=300)
    proc = server.proc
    try:
        base = server.wait_ready().base
        buffer = io.BytesIO()
        sf.write(buffer, np.zeros(16000, np.float32), 16000, format="WAV")
        r = httpx.post(f"{base}/classify?top_k=2", content=buffer.getvalue(), timeout=60,
                       headers={"content-type": "audio/wav", "x-request-id": "e2e-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-1"
        assert len(r.json()["top"]) == 2
        assert "diffres_requests_total" in httpx.get(f"{base}/metrics").text

        # A request in flight when SIGTERM arrives still completes: 30 s make 298 windows, of
        # which the last 42 wait 1.5 s for a batch to fill, so the drain waits for them too.
        long = io.BytesIO()
        sf.write(long, np.random.default_rng(0).normal(0, 0.1, 16000 * 30).astype(np.float32),
                 16000, format="WAV")
        data, release, answer = long.getvalue(), threading.Event(), {}

        def held_body():
            yield data[:len(data) // 2]
            release.wait(300)
            yield data[len(data) // 2:]

        sender = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
            f"{base}/compress", content=held_body(), timeout=300,
            headers={"content-type": "audio/wav"})))
        sender.start()
        try:
            wait_until(lambda: gauge(base, "diffres_inflight_requests") == 1,
                       what="the long request admitted")
            proc.send_signal(signal.SIGTERM)
            wait_until(lambda: httpx.get(f"{base}/readyz").status_code == 503,
                       what="/readyz turning 503 after SIGTERM")
            refused = httpx.post(f"{base}/classify", content=buffer.getvalue(),
                                 headers={"content-type": "audio/wav"})
        finally:
            release.set()
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        sender.join(300)
        assert answer["r"].status_code == 200, answer["r"].text
        assert answer["r"].json()["input_frames"] == 1 + 16000 * 30 // 160
        assert proc.wait(timeout=300) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = server.log()
    assert '"request_id":"e2e-1"' in text and "draining" in text, text[-2000:]
    assert "api_key" in text  # settings logged at start
