"""The real server: ``python -m service serve`` in a subprocess on a free loopback port,
a request through it, then SIGTERM while a request is in flight (drained, exit 0)."""

import io
import signal
import threading
import time

import httpx
import numpy as np
import soundfile as sf

from tests.serving.harness import LiveServer


def test_real_server_serves_then_drains_on_sigterm(model_store, tmp_path):
    server = LiveServer(model_store, tmp_path / "server.log", log_json="true",
                        models="kws12-diffres", max_queue_delay_ms=1500, max_batch_size=256)
    proc, base = server.proc, server.base
    try:
        server.wait_ready(60)
        buffer = io.BytesIO()
        sf.write(buffer, np.zeros(16000, np.float32), 16000, format="WAV")
        r = httpx.post(f"{base}/classify?top_k=2", content=buffer.getvalue(),
                       headers={"content-type": "audio/wav", "x-request-id": "e2e-1"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "e2e-1"
        assert len(r.json()["top"]) == 2
        assert "diffres_requests_total" in httpx.get(f"{base}/metrics").text

        # A request in flight when SIGTERM arrives still completes: 30 s make 298 windows, of
        # which the last 42 wait 1.5 s for a batch to fill, so the drain must wait for them.
        long = io.BytesIO()
        sf.write(long, np.random.default_rng(0).normal(0, 0.1, 16000 * 30).astype(np.float32),
                 16000, format="WAV")
        answer = {}
        sender = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
            f"{base}/compress", content=long.getvalue(), timeout=60,
            headers={"content-type": "audio/wav"})))
        sender.start()
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.1)
        refused = httpx.post(f"{base}/classify", content=buffer.getvalue(),
                             headers={"content-type": "audio/wav"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "shutting_down"
        assert httpx.get(f"{base}/readyz").status_code == 503
        sender.join(60)
        assert answer["r"].status_code == 200, answer["r"].text
        assert answer["r"].json()["input_frames"] == 1 + 16000 * 30 // 160
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = server.log()
    assert '"request_id":"e2e-1"' in text and "draining" in text, text[-2000:]
    assert "api_key" in text  # settings logged at start
