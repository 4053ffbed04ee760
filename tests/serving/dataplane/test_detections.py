"""/classify over long inputs: overlapping windows, the clip aggregate and ``detections``
(docs/API.md, "Windowing" and "/classify response"); /compress stays back to back."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.serving.dataplane import windowing as W
from service.serving.http.app import create_app
from tests.serving.conftest import IN_T_DIM, LABELS, N_MELS, make_settings, wait_ready

FRAMES = 420  # 4.2 s: 1 + ceil((420 - 101) / 50) = 8 windows of 101 frames, a hop of 50
HOP_S = 0.01


def spectrogram(frames: int = FRAMES, seed: int = 4) -> list:
    return np.random.default_rng(seed).normal(-8, 2, (frames, N_MELS)).astype(
        np.float32).tolist()


def window_arrays(body: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(probabilities [n, C], start frames [n], real frames [n]) of the response's windows."""
    probs = np.array([[w["probabilities"][k] for k in LABELS] for w in body["windows"]])
    starts = np.array([round(w["start_seconds"] / HOP_S) for w in body["windows"]])
    ends = np.array([round(w["end_seconds"] / HOP_S) for w in body["windows"]])
    return probs, starts, ends - starts


def check_detections(detections: list, duration: float, threshold: float) -> None:
    for d in detections:
        assert set(d) == {"label", "probability", "start", "end"}
        assert d["label"] in LABELS and d["label"] not in W.BACKGROUND_LABELS
        assert threshold <= d["probability"] <= 1
        assert 0 <= d["start"] < d["end"] <= duration + 1e-9
        for t in (d["start"], d["end"]):
            assert t / HOP_S == pytest.approx(round(t / HOP_S), abs=1e-6)
    assert [d["start"] for d in detections] == sorted(d["start"] for d in detections)


def test_long_input_has_overlapping_windows_aggregate_and_detections(onnx_client):
    r = onnx_client.post("/classify", json={"spectrogram": spectrogram()})
    assert r.status_code == 200, r.text
    body = r.json()
    for key in ("model", "version", "labels", "probabilities", "top", "frame_scores",
                "frame_hop_seconds", "input_frames", "duration_seconds", "windows",
                "detections"):
        assert key in body, key
    assert body["input_frames"] == FRAMES == len(body["frame_scores"])
    probs, starts, valid = window_arrays(body)
    assert starts.tolist() == [0, 50, 100, 150, 200, 250, 300, 350]
    assert valid.tolist() == [101] * 7 + [70]  # padding only in the last window
    clip = W.aggregate(probs, LABELS)
    assert [body["probabilities"][k] for k in LABELS] == pytest.approx(clip, abs=1e-6)
    assert body["top"][0]["label"] == LABELS[int(np.argmax(clip))]
    assert isinstance(body["detections"], list)
    check_detections(body["detections"], body["duration_seconds"], 0.5)
    expected = W.detections(probs, LABELS, starts, valid, HOP_S, 0.5)
    assert [(d["label"], d["start"], d["end"]) for d in body["detections"]] == [
        (d["label"], d["start"], d["end"]) for d in expected]


@pytest.fixture(scope="module")
def low_threshold_client(model_store):
    """Every keyword window passes: each keyword is one detection over the whole clip."""
    settings = make_settings(model_store, detection_threshold=1e-9, models=["kws12-diffres"])
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        yield client


def test_detections_of_one_label_merge_across_overlapping_windows(low_threshold_client):
    r = low_threshold_client.post("/classify", json={"spectrogram": spectrogram()})
    assert r.status_code == 200, r.text
    body = r.json()
    detections = body["detections"]
    check_detections(detections, body["duration_seconds"], 1e-9)
    keywords = [k for k in LABELS if k not in W.BACKGROUND_LABELS]
    assert [d["label"] for d in detections] == keywords  # one each, all starting at 0
    probs, _, _ = window_arrays(body)
    for d in detections:
        assert d["start"] == 0.0 and d["end"] == pytest.approx(FRAMES * HOP_S)
        assert d["probability"] == pytest.approx(probs[:, LABELS.index(d["label"])].max())


def test_short_input_is_one_window(onnx_client):
    r = onnx_client.post("/classify", json={"spectrogram": spectrogram(60)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["windows"]) == 1 and len(body["frame_scores"]) == 60
    only = body["windows"][0]["probabilities"]
    assert body["probabilities"] == pytest.approx(only, abs=1e-6)
    check_detections(body["detections"], body["duration_seconds"], 0.5)


def test_compress_windows_stay_back_to_back(onnx_client):
    r = onnx_client.post("/compress", json={"spectrogram": spectrogram()})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [w["input_frames"] for w in body["windows"]] == [101] * 4 + [FRAMES - 4 * IN_T_DIM]
    assert [w["start_seconds"] for w in body["windows"]] == pytest.approx(
        [i * IN_T_DIM * HOP_S for i in range(5)])
    assert len(body["frame_scores"]) == FRAMES
