"""Locust load test of diffres-serve: /classify with WAV uploads (1 s and 10 s) and with a
spectrogram as JSON, and /compress with a WAV upload.

    locust -f load_tests/locustfile.py --host http://127.0.0.1:8000
    python -m load_tests.run --url http://127.0.0.1:8000 --users 8 --duration 60

Environment (all optional):
  LOADTEST_MIX      user class weights, e.g. "wav1=4,wav10=1,spectrogram=2,compress=1"
                    (the default); a weight of 0 leaves that class out
  LOADTEST_MODEL    ?model= of every request (default: the server's default model)
  LOADTEST_WAIT_S   "min,max" seconds each user waits between requests (default "0,0.1")
  LOADTEST_SPECTROGRAM_FRAMES   frames of the JSON spectrogram (default 300, 3 s)
  LOADTEST_READY_TIMEOUT_S      how long to wait for the server's /readyz (default 180)

The test audio is made at start-up (numpy + soundfile, fixed seed), at the model's sample
rate, and the spectrogram has the model's n_mels: both are read from GET /models/{model}.
"""

import io
import json
import os
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import soundfile as sf
from locust import FastHttpUser, between, events, task

DEFAULT_MIX = "wav1=4,wav10=1,spectrogram=2,compress=1"


def parse_mix(text: str, base: dict[str, int] | None = None) -> dict[str, int]:
    """``"wav1=4,compress=0"`` -> weights, starting from ``base`` (names must be known)."""
    weights = dict(base or {})
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if base is not None and name not in weights:
            raise ValueError(f"LOADTEST_MIX: unknown user {name!r}; known: {sorted(weights)}")
        weights[name] = int(value)
    if not any(weights.values()):
        raise ValueError("LOADTEST_MIX: every weight is 0")
    return weights


MIX = parse_mix(os.environ.get("LOADTEST_MIX", ""), parse_mix(DEFAULT_MIX))
MODEL = os.environ.get("LOADTEST_MODEL", "")
WAIT_MIN, WAIT_MAX = (float(x) for x in os.environ.get("LOADTEST_WAIT_S", "0,0.1").split(","))
SPECTROGRAM_FRAMES = int(os.environ.get("LOADTEST_SPECTROGRAM_FRAMES", "300"))
READY_TIMEOUT_S = float(os.environ.get("LOADTEST_READY_TIMEOUT_S", "180"))
QUERY = f"?model={MODEL}" if MODEL else ""


def synth(seconds: float, rate: int, seed: int) -> np.ndarray:
    """Speech-like test audio: tone bursts with noise, separated by near-silence."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    envelope = (np.sin(2 * np.pi * 1.5 * t) > 0.2).astype(np.float32)
    tone = np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.7 * t)) * t)
    wave = 0.3 * envelope * tone + 0.02 * rng.standard_normal(n)
    return wave.astype(np.float32)


def wav_bytes(seconds: float, rate: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, synth(seconds, rate, seed), rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def multipart(field: str, filename: str, content: bytes, content_type: str) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field, and its Content-Type header."""
    boundary = uuid.uuid4().hex
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    return head + content + f"\r\n--{boundary}--\r\n".encode(), \
        f"multipart/form-data; boundary={boundary}"


class Payloads:
    """Request bodies, built once per run by ``on_test_start``."""

    wav: dict[int, tuple[bytes, str]] = {}
    spectrogram: bytes = b""


def wait_ready(host: str) -> None:
    """Poll GET /readyz (once a second, READY_TIMEOUT_S at most) until it answers 200."""
    give_up = time.monotonic() + READY_TIMEOUT_S
    while True:
        try:
            with urllib.request.urlopen(f"{host}/readyz", timeout=5):
                return
        except (urllib.error.URLError, OSError) as error:
            if time.monotonic() > give_up:
                raise RuntimeError(f"{host} not ready after {READY_TIMEOUT_S:.0f} s") from error
        time.sleep(1.0)


def model_input(host: str) -> dict:
    """The served model's input spec (sample_rate, n_mels, ...) from GET /models."""
    host = host.rstrip("/")
    wait_ready(host)
    with urllib.request.urlopen(f"{host}/models", timeout=10) as response:
        listing = json.load(response)
    name = MODEL or listing["default_model"]
    ready = [m for m in listing["models"] if m["name"] == name and m["state"] == "ready"]
    if not ready:
        raise RuntimeError(f"model {name!r} is not ready on {host}: {listing['models']}")
    return max(ready, key=lambda m: m["version"])["input"]


@events.test_start.add_listener
def on_test_start(environment, **_kwargs) -> None:
    spec = model_input(environment.host)
    rate, n_mels = spec["sample_rate"], spec["n_mels"]
    for seconds in (1, 10):
        Payloads.wav[seconds] = multipart("file", f"test_{seconds}s.wav",
                                          wav_bytes(seconds, rate, seed=seconds), "audio/wav")
    rng = np.random.default_rng(0)
    frames = rng.normal(-8.0, 2.0, (SPECTROGRAM_FRAMES, n_mels)).round(3)
    Payloads.spectrogram = json.dumps({"spectrogram": frames.tolist()}).encode()


class DiffresUser(FastHttpUser):
    """Base class: checks every answer is 200 JSON with ``key``."""

    abstract = True
    wait_time = between(WAIT_MIN, WAIT_MAX)

    def post(self, path: str, name: str, body: bytes, content_type: str, key: str) -> None:
        with self.client.post(path + QUERY, data=body, headers={"content-type": content_type},
                              name=name, catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}: {response.text[:200]}")
            elif key not in response.json():
                response.failure(f"no {key!r} in the answer")


class Wav1sClassify(DiffresUser):
    weight = MIX["wav1"]
    abstract = weight == 0

    @task
    def classify(self) -> None:
        self.post("/classify", "/classify wav 1s", *Payloads.wav[1], key="probabilities")


class Wav10sClassify(DiffresUser):
    weight = MIX["wav10"]
    abstract = weight == 0

    @task
    def classify(self) -> None:
        self.post("/classify", "/classify wav 10s", *Payloads.wav[10], key="probabilities")


class SpectrogramClassify(DiffresUser):
    weight = MIX["spectrogram"]
    abstract = weight == 0

    @task
    def classify(self) -> None:
        self.post("/classify", "/classify spectrogram", Payloads.spectrogram,
                  "application/json", key="probabilities")


class Wav1sCompress(DiffresUser):
    weight = MIX["compress"]
    abstract = weight == 0

    @task
    def compress(self) -> None:
        self.post("/compress", "/compress wav 1s", *Payloads.wav[1], key="output_frames")
