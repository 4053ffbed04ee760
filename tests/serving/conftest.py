"""Serving fixtures: a small model store built once per session with the real exporter.

Store layout (tmp dir):
  kws12-diffres/1  DiffRes, in_t_dim=101, n_mels=40, rate 0.5, 12 labels
  kws12-diffres/2  the same artifacts re-labelled as version 2 (latest)
  kws12-avgpool/1  AvgPool baseline (no compression outputs)
  broken/1         kws12-diffres/1 with a corrupted model.onnx (checksum mismatch)
"""

import asyncio
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from service.config import Settings

LABELS = ["yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go", "_silence_",
          "_unknown_"]
IN_T_DIM, N_MELS, RATE, SAMPLE_RATE, HOP = 101, 40, 0.5, 16000, 160


def _export(kind: str, out_dir: Path, name: str, seed: int) -> None:
    import torch

    from service.export import export_model_dir
    from service.frontend import LogMel
    from service.pipeline import AudioClassifier

    torch.manual_seed(seed)
    model = AudioClassifier.build(kind, IN_T_DIM, N_MELS, RATE, len(LABELS), width=8).eval()
    frontend = LogMel(sample_rate=SAMPLE_RATE, n_mels=N_MELS, hop_length=HOP)
    export_model_dir(model, frontend, out_dir, name=name, version=int(out_dir.name),
                     labels=LABELS, metrics={"note": "untrained test model"}, dataset={},
                     training={"seed": seed})


def _relabel(src: Path, dst: Path, name: str, version: int) -> None:
    from service.manifest import Manifest

    shutil.copytree(src, dst)
    manifest = Manifest.read(dst)
    manifest.name, manifest.version = name, version
    manifest.write(dst)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("model_store")
    _export("diffres", root / "kws12-diffres" / "1", "kws12-diffres", seed=0)
    _relabel(root / "kws12-diffres" / "1", root / "kws12-diffres" / "2", "kws12-diffres", 2)
    _export("avgpool", root / "kws12-avgpool" / "1", "kws12-avgpool", seed=1)
    _relabel(root / "kws12-diffres" / "1", root / "broken" / "1", "broken", 1)
    with open(root / "broken" / "1" / "model.onnx", "ab") as f:
        f.write(b"\0")
    return root


def make_settings(store: Path, **overrides) -> Settings:
    base = {"model_store": store, "models": ["kws12-diffres", "kws12-avgpool"],
            "devices": ["cpu"], "max_batch_size": 8, "max_queue_delay_ms": 2.0,
            "feature_threads": 2, "intra_op_threads": 1}
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

    from service.serving.app import create_app

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
