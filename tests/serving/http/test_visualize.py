"""POST /visualize: a PNG for every model kind of the test store (DiffRes, AvgPool) and a
full-resolution model, the same 4xx as /classify for bad input, and the pure helpers of
``dataplane/result_plots`` (the step each frame lands in, uniform spans)."""

import io
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.serving.dataplane.result_plots import compressed_view, png_size
from service.serving.dataplane.windowing import step_of_frames
from service.serving.http.app import create_app
from tests.model_store_builder import export_test_model
from tests.serving.bad_inputs import AUDIO, SPEC, npy
from tests.serving.conftest import N_MELS, make_settings, sine, wait_ready
from tests.serving.harness import wav_bytes

MODELS = ["kws12-diffres", "kws12-avgpool", "kws12-fullres"]


@pytest.fixture(scope="module")
def client(model_store, tmp_path_factory):
    """The session store plus a full-resolution model (compressor kind "full")."""
    store = tmp_path_factory.mktemp("visualize_store")
    for name in ("kws12-diffres", "kws12-avgpool"):
        shutil.copytree(model_store / name, store / name)
    export_test_model("full", store / "kws12-fullres" / "1", "kws12-fullres", seed=2)
    with TestClient(create_app(make_settings(store, models=MODELS))) as client:
        wait_ready(client)
        yield client


def png_image(body: bytes) -> np.ndarray:
    from matplotlib.image import imread

    assert body[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(body), format="png")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("seconds", [1.0, 3.0])
def test_png_for_every_model_kind(client, model, seconds):
    r = client.post("/visualize", params={"model": model},
                    files={"file": ("clip.wav", wav_bytes(sine(seconds)), "audio/wav")})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png"
    assert png_size(r.content) == (1000, 1100)
    image = png_image(r.content)
    assert image.shape[:2] == (1100, 1000)
    assert image[..., :3].std() > 0.05  # something was drawn


def test_png_from_a_spectrogram_and_a_version(client):
    spec = np.random.default_rng(0).uniform(-12, 2, (150, N_MELS)).astype(np.float32)
    r = client.post("/visualize", params={"model": "kws12-diffres", "version": 2},
                    content=npy(spec), headers={"content-type": "application/x-npy"})
    assert r.status_code == 200, r.text
    assert png_size(r.content) == (1000, 1100)
    r = client.post("/visualize", json={"spectrogram": spec[:40].tolist()})
    assert r.status_code == 200, r.text


BAD = ([(name, body, ctype, expected) for name, body, ctype, expected in AUDIO
        if name in {"empty", "rate 0 Hz", "1 sample", "random bytes", "text/plain",
                    "multipart, no boundary"}]
       + [(name, body, "application/json", expected) for name, body, expected in SPEC
          if name in {"wrong F", "ragged", "empty"}])


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_is_a_json_4xx(client, case):
    name, body, ctype, _ = case
    content = json.dumps(body).encode() if isinstance(body, dict) else body
    headers = {"content-type": ctype} if ctype else {}
    r = client.post("/visualize", content=content, headers=headers)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    same = client.post("/classify", content=content, headers=headers)  # the same answer
    assert (r.status_code, r.json()["error"]["code"]) == (same.status_code,
                                                         same.json()["error"]["code"])


@pytest.mark.parametrize("params, status, code", [
    ({"model": "nope"}, 404, "model_not_found"),
    ({"model": "kws12-diffres", "version": 99}, 404, None),
    ({"top_k": 0}, 400, None),
])
def test_bad_parameters(client, params, status, code):
    r = client.post("/visualize", params=params, content=wav_bytes(sine(0.5)),
                    headers={"content-type": "audio/wav"})
    assert r.status_code == status, r.text
    if code:
        assert r.json()["error"]["code"] == code


def test_openapi_declares_png(client):
    op = client.get("/openapi.json").json()["paths"]["/visualize"]["post"]
    assert "image/png" in op["responses"]["200"]["content"]
    assert "multipart/form-data" in op["requestBody"]["content"]


def test_step_of_frames_follows_the_cumulative_score():
    # frame i lands in step ceil(cumsum[i]) - 1: cumsum 0.5, 1.0, 1.5, 3.0 -> 0, 0, 1, 2
    assert step_of_frames(np.array([0.5, 0.5, 0.5, 1.5]), 3).tolist() == [0, 0, 1, 2]
    assert step_of_frames(np.array([2.0, 1.0]), 2).tolist() == [1, 1]  # clipped to the kept


def test_compressed_view_spans():
    features = np.arange(12, dtype=np.float32).reshape(6, 2)
    compress = {"frame_scores": [0.5, 0.5, 1.0, 0.5, 0.5, 1.0],
                "windows": [{"input_frames": 3, "output_frames": 2,
                             "avgpool": [[10, 10], [20, 20]]},
                            {"input_frames": 3, "output_frames": 2,
                             "avgpool": [[30, 30], [40, 40]]}]}
    image, step = compressed_view(features, compress, "diffres", 3, 2)
    assert step.tolist() == [0, 0, 1, 2, 2, 3]
    assert image[:, 0].tolist() == [10, 10, 20, 30, 30, 40]
    image, step = compressed_view(features, None, "full", 3, 3)  # one step per frame
    assert step.tolist() == list(range(6)) and np.array_equal(image, features)
    image, step = compressed_view(features, None, "avgpool", 4, 2)  # spans of 2 frames
    assert step.tolist() == [0, 0, 1, 1, 2, 2]
    assert image[:, 0].tolist() == [1, 1, 5, 5, 9, 9]
