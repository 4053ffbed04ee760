"""``python -m service predict``: offline classification of audio files of any format/rate."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from service.config import Settings
from service.predict import Predictor, predict_file
from service.serving.dataplane.inference_service import InferenceService, Payload
from service.serving.metrics import Metrics
from service.serving.runtime.model_repository import ModelRepository
from tests.model_store_builder import LABELS, export_test_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return export_test_model("diffres", tmp_path_factory.mktemp("store") / "m" / "1", "m", seed=3)


def tone(seconds: float, rate: int, channels: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.3 * np.sin(2 * np.pi * 440 * t) * np.exp(-3 * t)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.mark.parametrize("fmt,ext,subtype", [("WAV", "wav", "PCM_16"), ("FLAC", "flac", "PCM_16"),
                                             ("OGG", "ogg", "VORBIS")])
@pytest.mark.parametrize("rate", [8000, 22050, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_any_format_rate_and_channel_count(model_dir, tmp_path, fmt, ext, subtype, rate,
                                           channels) -> None:
    path = tmp_path / f"clip.{ext}"
    sf.write(path, tone(1.0, rate, channels), rate, format=fmt, subtype=subtype)
    line = predict_file(Predictor(model_dir), path, top=3, max_seconds=60)
    assert line["label"] in LABELS and line["label"] == line["top"][0]["label"]
    assert [t["probability"] for t in line["top"]] == sorted(
        (t["probability"] for t in line["top"]), reverse=True)
    assert line["windows"] == 1


def test_long_clip_gets_the_servers_answer(model_dir, tmp_path) -> None:
    """Overlapping windows, the aggregate rule and detections, as /classify gives them."""
    path = tmp_path / "long.wav"
    sf.write(path, tone(3.2, 16000, 1), 16000, subtype="FLOAT")
    offline = predict_file(Predictor(model_dir), path, top=len(LABELS), max_seconds=60,
                           threshold=0.05)
    served = asyncio.run(classify_served(model_dir.parent.parent, path.read_bytes()))
    assert offline["windows"] == len(served["windows"]) == 6  # 321 frames, a window every 50
    np.testing.assert_allclose([t["probability"] for t in offline["top"]],
                               [served["probabilities"][t["label"]] for t in offline["top"]],
                               rtol=0, atol=1e-4)
    assert offline["detections"]  # the low threshold makes some
    assert [d["label"] for d in offline["detections"]] == [
        d["label"] for d in served["detections"]]


async def classify_served(store: Path, wav: bytes) -> dict:
    settings = Settings(model_store=store, default_model="m", devices=["cpu"],
                        detection_threshold=0.05)
    metrics = Metrics()
    repo = ModelRepository(settings, metrics)
    service = InferenceService(settings, repo, metrics)
    await repo.start()
    try:
        return await service.classify(None, None, Payload("audio", wav), top_k=len(LABELS))
    finally:
        await repo.stop()
        service.close()


def test_cli_prints_one_json_line_per_file_and_reports_bad_ones(model_dir, tmp_path) -> None:
    good = tmp_path / "good.wav"
    sf.write(good, tone(1.0, 16000, 1), 16000)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    out = subprocess.run([sys.executable, "-m", "service", "predict", "--model", str(model_dir),
                          str(good), str(bad)], capture_output=True, text=True, timeout=120)
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert out.returncode == 1  # one file failed
    assert lines[0]["file"] == str(good) and lines[0]["label"] in LABELS
    assert lines[1]["file"] == str(bad) and "cannot decode" in lines[1]["error"]
    assert "torch" not in out.stderr


def test_corrupt_model_directory_is_refused(model_dir, tmp_path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(model_dir, broken)
    with open(broken / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match="sha256"):
        Predictor(broken)
