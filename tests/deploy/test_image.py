"""The CPU image for real: built offline from the Dockerfile on a debootstrap Debian base,
started with ``docker run``, serving /classify, healthy, and draining an in-flight request
before a clean exit 0 on ``docker stop`` (SIGTERM through tini)."""

import io
import json
import re
import threading
import time

import httpx
import numpy as np
import soundfile as sf

from load_tests.server import free_port

STORE_MOUNT = "/app/model_store"


def wav(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(seed).normal(0, 0.1, int(seconds * rate)).astype(np.float32)
    sf.write(buffer, noise, rate, format="WAV")
    return buffer.getvalue()


def test_image_is_built_offline_small_context_non_root_and_torch_free(docker_daemon, cpu_image):
    print(f"\nimage build: {cpu_image.seconds:.1f} s")
    context = re.search(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]B)",
                        cpu_image.log)
    assert context, cpu_image.log[:2000]
    size_mb = float(context[1]) * {"kB": 1e-3, "MB": 1.0, "GB": 1e3}[context[2]]
    assert size_mb < 150, f"build context of {size_mb} MB: .dockerignore lets too much in"
    assert "pip: offline, from the wheelhouse" in cpu_image.log

    config = json.loads(docker_daemon.docker("image", "inspect", cpu_image.tag).stdout)[0]
    size_mb = config["Size"] / 1e6
    print(f"image size: {size_mb:.0f} MB, build context {context[1]} {context[2]}")
    cfg = config["Config"]
    assert cfg["User"] == "10001:10001"
    assert cfg["Entrypoint"][:2] == ["/usr/bin/tini", "--"]
    assert cfg["Cmd"] == ["serve"]
    assert "DIFFRES_HOST=0.0.0.0" in cfg["Env"]
    assert "/app/healthcheck.py" in " ".join(cfg["Healthcheck"]["Test"])
    assert cfg["Labels"]["io.diffres.variant"] == "cpu"

    probe = ("import importlib.util as u, os, onnxruntime, service.serving.app; "
             "print(os.getuid(), u.find_spec('torch') is None, onnxruntime.__version__)")
    out = docker_daemon.docker("run", "--rm", "--network", "none", "--entrypoint", "python",
                               cpu_image.tag, "-c", probe).stdout.split()
    assert out[:2] == ["10001", "True"], out  # non-root, and no torch in the CPU image


def test_container_serves_then_drains_and_exits_0_on_sigterm(docker_daemon, cpu_image,
                                                             deploy_model_store):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    name = f"diffres-test-{port}"
    # Host network on loopback only; the baked-in store replaced by the test store (volume).
    # A 1.5 s batch wait makes the last windows of a long request wait, so the drain has
    # something in flight to finish.
    docker_daemon.docker(
        "run", "-d", "--name", name, "--network", "host",
        "-e", "DIFFRES_HOST=127.0.0.1", "-e", f"DIFFRES_PORT={port}",
        "-e", "DIFFRES_DEVICES=cpu", "-e", "DIFFRES_MODELS=kws12-diffres",
        "-e", "DIFFRES_MAX_QUEUE_DELAY_MS=1500", "-e", "DIFFRES_MAX_BATCH_SIZE=256",
        "-v", f"{deploy_model_store}:{STORE_MOUNT}:ro",
        "--health-interval", "1s", "--health-timeout", "5s", cpu_image.tag)
    started = time.monotonic()
    _wait_ready(docker_daemon, name, base)
    print(f"\ncontainer ready in {time.monotonic() - started:.1f} s")

    r = httpx.post(f"{base}/classify?top_k=3", files={"file": ("one.wav", wav(1.0))},
                   timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model"], body["version"], len(body["labels"])) == ("kws12-diffres", 1, 12)
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-4
    assert [t["probability"] for t in body["top"]] == sorted(
        (t["probability"] for t in body["top"]), reverse=True) and len(body["top"]) == 3
    assert body["input_frames"] == 1 + 16000 // 160
    _wait_healthy(docker_daemon, name)

    answer = {}
    long = wav(30.0, seed=1)
    sender = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
        f"{base}/compress", content=long, headers={"content-type": "audio/wav"}, timeout=60)))
    sender.start()
    time.sleep(0.5)
    stopped = time.monotonic()
    docker_daemon.docker("stop", "-t", "60", name, timeout=90)  # SIGTERM, then waits
    print(f"docker stop took {time.monotonic() - stopped:.1f} s")
    sender.join(60)
    assert answer["r"].status_code == 200, answer["r"].text
    assert answer["r"].json()["input_frames"] == 1 + 16000 * 30 // 160

    state = json.loads(docker_daemon.docker("inspect", name).stdout)[0]["State"]
    text = _logs(docker_daemon, name)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, text[-3000:])
    assert "draining" in text and '"message":"stopped"' in text, text[-3000:]
    docker_daemon.docker("rm", name)


def _wait_ready(daemon, name: str, base: str, timeout: float = 120.0) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        state = daemon.docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip()
        assert state == "running", _logs(daemon, name)[-3000:]
        time.sleep(0.25)
    raise TimeoutError(_logs(daemon, name)[-3000:])


def _logs(daemon, name: str) -> str:
    logs = daemon.docker("logs", name)
    return logs.stdout + logs.stderr


def _wait_healthy(daemon, name: str, timeout: float = 30.0) -> None:
    """Docker's own HEALTHCHECK (deploy/healthcheck.py on /healthz) reports healthy."""
    status = ""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        status = daemon.docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
        if status == "healthy":
            return
        time.sleep(0.5)
    raise AssertionError(f"health status {status!r} after {timeout:.0f} s")
