"""The CPU image for real: built offline from the Dockerfile on a debootstrap Debian base,
started with ``docker run``, serving /classify, healthy, and draining an in-flight request
before a clean exit 0 on ``docker stop`` (SIGTERM through tini)."""

import contextlib
import io
import json
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from tests.serving.harness import gauge, wait_until

ROOT = Path(__file__).resolve().parents[2]
STORE_MOUNT = "/app/model_store"
CONTEXT_LIMIT_MB = 150  # what the repository itself puts in the build context


def wav(seconds: float, rate: int = 16000, seed: int = 0) -> bytes:
    buffer = io.BytesIO()
    noise = np.random.default_rng(seed).normal(0, 0.1, int(seconds * rate)).astype(np.float32)
    sf.write(buffer, noise, rate, format="WAV")
    return buffer.getvalue()


def untracked_in_context_mb() -> float:
    """MB of the files in the allow-listed paths of .dockerignore that git does not track:
    wheelhouses (the one this build uses, stale wheels of older pins, another variant's
    ``make wheelhouse``), models exported into model_store/. The context carries them; what
    they weigh depends on the machine's history, not on the repository. 0 without git."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z", "--others", "--", "pyproject.toml",
             "service", "deploy", "model_store", "wheelhouse", "build"],
            capture_output=True, timeout=60, check=True).stdout.decode()
    except (OSError, subprocess.SubprocessError):
        return 0.0
    total = 0
    for name in listed.split("\0"):
        ignored = "__pycache__/" in name or name.endswith((".pyc", ".DS_Store"))
        outside = name.startswith("build/") and not name.startswith("build/wheelhouse-")
        if name and not ignored and not outside:
            with contextlib.suppress(OSError):
                total += (ROOT / name).stat().st_size
    return total / 1e6


def test_image_is_built_offline_small_context_non_root_and_torch_free(docker_daemon, cpu_image):
    print(f"\nimage build: {cpu_image.seconds:.1f} s")
    context = re.search(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]B)",
                        cpu_image.log)
    assert context, cpu_image.log[:2000]
    size_mb = float(context[1]) * {"kB": 1e-3, "MB": 1.0, "GB": 1e3}[context[2]]
    local_mb = untracked_in_context_mb()
    assert size_mb - local_mb < CONTEXT_LIMIT_MB, (
        f"build context of {size_mb} MB ({local_mb:.0f} MB of it untracked wheelhouses and "
        f"models): .dockerignore lets too much in")
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

    probe = ("import importlib.util as u, os, onnxruntime, service.serving.http.app; "
             "print(os.getuid(), u.find_spec('torch') is None, onnxruntime.__version__)")
    out = docker_daemon.docker("run", "--rm", "--network", "none", "--entrypoint", "python",
                               cpu_image.tag, "-c", probe).stdout.split()
    assert out[:2] == ["10001", "True"], out  # non-root, and no torch in the CPU image


def test_container_serves_then_drains_and_exits_0_on_sigterm(docker_daemon, cpu_image,
                                                             deploy_model_store):
    started = time.monotonic()
    name, base = _start_container(docker_daemon, cpu_image.tag, deploy_model_store)
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

    # In flight at SIGTERM for certain: its body is held half sent until the server has
    # admitted it and seen the signal.
    answer, stop, release, long = {}, {}, threading.Event(), wav(30.0, seed=1)

    def held_body():
        yield long[:len(long) // 2]
        release.wait(300)
        yield long[len(long) // 2:]

    sender = threading.Thread(target=lambda: answer.setdefault("r", httpx.post(
        f"{base}/compress", content=held_body(), headers={"content-type": "audio/wav"},
        timeout=300)))
    stopper = threading.Thread(target=lambda: stop.setdefault("r", docker_daemon.docker(
        "stop", "-t", "300", name, check=False, timeout=330)))  # SIGTERM, then waits
    sender.start()
    try:
        wait_until(lambda: gauge(base, "diffres_inflight_requests") == 1,
                   what="the long request admitted")
        stopped = time.monotonic()
        stopper.start()
        wait_until(lambda: httpx.get(f"{base}/readyz", timeout=30).status_code == 503,
                   what="/readyz turning 503 after docker stop")
    finally:
        release.set()
    sender.join(300)
    stopper.join(330)
    print(f"docker stop took {time.monotonic() - stopped:.1f} s")
    assert stop["r"].returncode == 0, stop["r"].stderr
    assert answer["r"].status_code == 200, answer["r"].text
    assert answer["r"].json()["input_frames"] == 1 + 16000 * 30 // 160

    state = json.loads(docker_daemon.docker("inspect", name).stdout)[0]["State"]
    text = _logs(docker_daemon, name)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], (state, text[-3000:])
    assert "draining" in text and '"message":"stopped"' in text, text[-3000:]
    docker_daemon.docker("rm", name)


def _unused_port() -> int:
    """A loopback port free right now. With host networking the server in the container
    binds it later, and another process may take it first: ``_start_container`` then
    retries with another."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_container(daemon, image: str, store: Path, attempts: int = 5) -> tuple[str, str]:
    """``docker run`` the image (host network on loopback only; the baked-in store replaced
    by ``store``, a volume; a 1.5 s batch wait, so the drain has queued windows to finish);
    (name, base URL) once the server in it is ready. It is ours only after its own "Uvicorn
    running on" line: until then another process could hold the port and answer."""
    for _ in range(attempts):
        port = _unused_port()
        name, base = f"diffres-test-{port}", f"http://127.0.0.1:{port}"
        daemon.docker(
            "run", "-d", "--name", name, "--network", "host",
            "-e", "DIFFRES_HOST=127.0.0.1", "-e", f"DIFFRES_PORT={port}",
            "-e", "DIFFRES_DEVICES=cpu", "-e", "DIFFRES_MODELS=kws12-diffres",
            "-e", "DIFFRES_MAX_QUEUE_DELAY_MS=1500", "-e", "DIFFRES_MAX_BATCH_SIZE=256",
            "-e", "DIFFRES_DRAIN_TIMEOUT_S=300",
            "-v", f"{store}:{STORE_MOUNT}:ro",
            "--health-interval", "1s", "--health-timeout", "5s", image)
        give_up = time.monotonic() + 300
        while f"Uvicorn running on {base}" not in (text := _logs(daemon, name)):
            state = daemon.docker("inspect", "-f", "{{.State.Status}}", name).stdout.strip()
            if state != "running" or time.monotonic() > give_up:
                break
            time.sleep(0.25)
        else:
            _wait_ready(daemon, name, base)
            return name, base
        if "address already in use" not in text.lower():
            raise AssertionError(f"container {name} did not start:\n{text[-3000:]}")
        daemon.docker("rm", "-f", name)  # the port was taken meanwhile: try another
    raise AssertionError(f"no free port in {attempts} attempts")


def _wait_ready(daemon, name: str, base: str, timeout: float = 300.0) -> None:
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


def _wait_healthy(daemon, name: str, timeout: float = 120.0) -> None:
    """Docker's own HEALTHCHECK (deploy/healthcheck.py on /healthz) reports healthy."""
    status = ""
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        status = daemon.docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
        if status == "healthy":
            return
        time.sleep(0.5)
    raise AssertionError(f"health status {status!r} after {timeout:.0f} s")
