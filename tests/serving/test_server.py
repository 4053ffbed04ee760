"""The real server: ``python -m service serve`` in a subprocess on a free loopback port,
a request through it, then SIGTERM while a request is in flight (drained, exit 0)."""

import io
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_server_serves_then_drains_on_sigterm(model_store, tmp_path):
    port = free_port()
    env = os.environ | {"DIFFRES_MODEL_STORE": str(model_store), "DIFFRES_LOG_JSON": "true",
                        "DIFFRES_MODELS": "kws12-diffres", "DIFFRES_DEVICES": "cpu"}
    log_path = tmp_path / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "service", "serve", "--host", "127.0.0.1",
                                 "--port", str(port), "--max-queue-delay-ms", "1500",
                                 "--max-batch-size", "256"],
                                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
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
    text = log_path.read_text()
    assert '"request_id":"e2e-1"' in text and "draining" in text, text[-2000:]
    assert "api_key" in text  # settings logged at start


def _wait_ready(base: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        assert proc.poll() is None, "server exited early"
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("server never became ready")
