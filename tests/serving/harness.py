"""Test tools for the reliability and security suites: a live server in a subprocess, an
in-process app driven by an async client, a fault-injecting backend, request builders, and
waits for a condition (``wait_until``, ``eventually``) whose timeouts only stop a hang: a
test waits for the event it needs, never for a guessed number of seconds.

Fault injection never touches production code: ``install_faults`` monkeypatches the
repository's ``make_backend`` so every model backend is wrapped in ``FaultyBackend``, which
misbehaves only on batches holding a window whose first value is ``POISON``.
"""

import asyncio
import contextlib
import inspect
import io
import os
import shutil
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import psutil
import soundfile as sf

from load_tests.server import LocalServer
from tests.serving.conftest import N_MELS

ROOT = Path(__file__).resolve().parents[2]
POISON = 33.0  # spectrogram[0, 0] that makes a FaultyBackend misbehave (in the valid range)


class LiveServer(LocalServer):
    """``python -m service serve`` on a loopback port the kernel picks, started at
    construction, with a model store and CLI ``flags``; ``wait_ready()`` returns it once
    /readyz is 200 (``base`` and ``port`` are known from then on)."""

    def __init__(self, store: Path, log_path: Path, **flags) -> None:
        args = ["--model-store", str(store), "--devices", "cpu"]
        for name, value in flags.items():
            args += ["--" + name.replace("_", "-"), str(value)]
        super().__init__(log_path, env={"PYTHONUNBUFFERED": "1"}, args=args)
        self.spawn()

    @property
    def base(self) -> str:
        return self.url

    def wait_ready(self, timeout: float = 120.0) -> "LiveServer":
        self.ready_timeout = timeout
        self._wait_ready()
        return self

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_until(condition: Callable[[], bool], timeout: float = 60.0, what: str = "",
               poll_s: float = 0.02) -> None:
    """Return once ``condition()`` holds; ``timeout`` only stops a hang (no speed bound)."""
    give_up = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > give_up:
            raise TimeoutError(f"not within {timeout:.0f} s: {what or condition}")
        time.sleep(poll_s)


async def eventually(condition: Callable[[], bool | Awaitable[bool]], timeout: float = 60.0,
                     what: str = "", poll_s: float = 0.01) -> None:
    """``wait_until`` for a coroutine: ``condition`` may be async; the loop keeps running."""
    give_up = time.monotonic() + timeout
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > give_up:
            raise TimeoutError(f"not within {timeout:.0f} s: {what or condition}")
        await asyncio.sleep(poll_s)


def metric_samples(text: str, name: str) -> list[tuple[str, float]]:
    """(labels, value) of every sample of ``name`` in Prometheus text."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels = line[len(name):].rsplit(" ", 1)[0]
            out.append((labels, float(line.rsplit(" ", 1)[1])))
    return out


@contextlib.asynccontextmanager
async def asgi_client(settings, timeout: float = 60.0):
    """The app with its lifespan running in this loop, models loaded, and an httpx client
    talking ASGI to it."""
    from service.serving.http.app import create_app

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        repo = app.state.service.repository
        async with asyncio.timeout(timeout):
            await repo.loaded.wait()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://asgi") as client:
            yield app, client


def store_copy(src: Path, dst: Path, models: dict[str, list[int]]) -> Path:
    """A private store holding ``models`` (name -> versions) of ``src``."""
    for name, versions in models.items():
        for v in versions:
            shutil.copytree(src / name / str(v), dst / name / str(v))
    return dst


def drop_version(store: Path, name: str, src_version: int, version: int,
                 corrupt: bool = False) -> Path:
    """Add ``name/version`` (a copy of ``src_version``) the way operators should: copy into a
    hidden directory, then rename it into place (atomic). ``corrupt``: append a byte to its
    model.onnx before the rename, so that no scan ever sees it intact."""
    from tests.model_store_builder import relabel

    staging = store / name / f".tmp-{version}"
    relabel(store / name / str(src_version), staging, name, version)
    if corrupt:
        with open(staging / "model.onnx", "ab") as f:
            f.write(b"\0")
    final = store / name / str(version)
    os.rename(staging, final)
    return final


def spec_body(frames: int = 101, ident: float = 0.0, poison: bool = False,
              seed: int = 0) -> dict:
    """A JSON spectrogram body; ``[0, 1]`` holds ``ident`` (within the accepted log-mel
    range, -1000..50) to recognise its windows."""
    spec = np.random.default_rng(seed).normal(-8, 2, (frames, N_MELS)).astype(np.float32)
    spec[0, 1] = ident
    if poison:
        spec[0, 0] = POISON
    return {"spectrogram": spec.tolist()}


def wav_bytes(wave: np.ndarray, rate: int = 16000, subtype: str = "PCM_16",
              fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, wave, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def wav_header(rate: int = 16000, channels: int = 1, bits: int = 16, tag: int = 1,
               data: bytes = b"\0\0" * 100, data_size: int | None = None) -> bytes:
    """A hand-made RIFF/WAVE file whose header fields may lie."""
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", tag, channels & 0xFFFF, rate & 0xFFFFFFFF,
                      (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits & 0xFFFF)
    size = len(data) if data_size is None else data_size
    body = (b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
            + struct.pack("<I", size & 0xFFFFFFFF) + data)
    return b"RIFF" + struct.pack("<I", len(body)) + body


@dataclass
class Faults:
    """Shared by every ``FaultyBackend``: what a poisoned batch does, and what ran."""

    mode: str = "ok"  # ok | raise | hang | die | block
    release: threading.Event = field(default_factory=threading.Event)
    poisoned: threading.Event = field(default_factory=threading.Event)  # a poisoned batch ran
    created: int = 0  # model backends built (a replaced worker builds one more)
    batches: list[list[float]] = field(default_factory=list)  # [0, 1] of every window
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultyBackend:
    """Wraps a real backend; on a batch holding a POISON window (``poisoned`` is then set):
    ``raise`` fails it, ``hang`` blocks until ``release`` (or 60 s), ``die`` fails it and
    every later batch, ``block`` waits for ``release`` and then runs normally."""

    def __init__(self, inner, faults: Faults) -> None:
        self.inner, self.faults, self.dead = inner, faults, False
        with faults.lock:
            faults.created += 1

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def device(self) -> str:
        return self.inner.device

    def load(self, device: str) -> None:
        self.inner.load(device)

    def close(self) -> None:
        self.inner.close()

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        with self.faults.lock:
            self.faults.batches.append([float(x) for x in batch[:, 0, 1]])
        if self.dead:
            raise RuntimeError("device lost")
        if np.any(batch[:, 0, 0] == np.float32(POISON)):
            self.faults.poisoned.set()
            mode = self.faults.mode
            if mode == "raise":
                raise RuntimeError("injected inference failure")
            if mode == "die":
                self.dead = True
                raise RuntimeError("device lost")
            if mode in ("hang", "block"):
                self.faults.release.wait(60)
        return self.inner.run(batch)


def install_faults(monkeypatch, faults: Faults) -> None:
    """Every model backend the repository builds from now on is a ``FaultyBackend``."""
    from service.serving.runtime import model_repository as repository

    real = repository.make_backend

    def make(kind, path, *args, **kwargs):
        backend = real(kind, path, *args, **kwargs)
        return FaultyBackend(backend, faults) if Path(path).name.startswith("model.") \
            else backend

    monkeypatch.setattr(repository, "make_backend", make)


def gauge(base: str, name: str) -> float:
    """The value of the Prometheus gauge ``name`` (summed over its labels) at ``base``."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    return sum(value for _, value in metric_samples(text, name))


def raw_http(port: int, request: bytes, timeout: float = 30.0) -> tuple[int, bytes]:
    """Send ``request`` bytes as-is (no client normalisation); (status, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body
