"""Serving fixtures: a small model store built once per session with the real exporter
(layout: ``tests/model_store_builder.build_serving_store``)."""

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings
from tests.model_store_builder import (  # noqa: F401  (re-exported for the serving tests)
    HOP,
    IN_T_DIM,
    LABELS,
    N_MELS,
    RATE,
    SAMPLE_RATE,
    build_serving_store,
)


@pytest.fixture(scope="session", autouse=True)
def _no_service_settings_from_this_machine():
    """Settings read ``DIFFRES_*`` variables: one exported on this machine (an API key, a
    model store, devices) must not change what the tests see, here or in the servers they
    start. Tests that want one set it themselves (monkeypatch)."""
    with pytest.MonkeyPatch.context() as patch:
        for name in Settings.model_fields:
            patch.delenv(f"DIFFRES_{name.upper()}", raising=False)
        yield


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    return build_serving_store(tmp_path_factory.mktemp("model_store"))


def make_settings(store: Path, **overrides) -> Settings:
    base = {"model_store": store, "models": ["kws12-diffres", "kws12-avgpool"],
            "devices": ["cpu"], "max_batch_size": 8, "max_queue_delay_ms": 2.0,
            "feature_threads": 2, "intra_op_threads": 1,
            "gc_freeze": False}  # frozen, the test process's old apps would never be collected
    return Settings(**(base | overrides))


def wait_ready(client, timeout: float = 60.0) -> None:
    give_up = time.monotonic() + timeout
    while time.monotonic() < give_up:
        if client.get("/readyz").status_code == 200:
            return
        if client.app.state.loader.done() and client.app.state.loader.exception():
            raise client.app.state.loader.exception()
        time.sleep(0.05)
    raise TimeoutError(client.get("/readyz").json())


@pytest.fixture(scope="module")
def onnx_client(model_store):
    from fastapi.testclient import TestClient

    from service.serving.http.app import create_app

    with TestClient(create_app(make_settings(model_store))) as client:
        wait_ready(client)
        yield client


def sine(seconds: float, rate: int = SAMPLE_RATE, freq: float = 440.0,
         channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(
        t.shape)
    wave = wave.astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def run(coro):
    return asyncio.run(coro)
