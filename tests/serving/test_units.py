"""Pure pieces: settings, CLI, worker plan, windowing, codecs, audio decoding, model store,
the error table and client-disconnect cancellation."""

import asyncio
import io
import json
import math
import shutil

import numpy as np
import pytest
import soundfile as sf

from service import errors
from service.cli import build_parser
from service.config import Settings
from service.serving.dataplane import windowing as W
from service.serving.dataplane.audio_decode import decode_audio
from service.serving.dataplane.spectrogram_codec import (
    spectrogram_from_json,
    spectrogram_from_npy,
    validate_spectrogram,
)
from service.serving.http.error_mapping import STATUS, status_of
from service.serving.http.routes.dependencies import until_disconnect
from service.serving.http.serve_command import settings_from_args
from service.serving.runtime.model_store import scan_store
from service.serving.runtime.workers import plan_workers, resolve_devices
from tests.serving.conftest import sine


def test_settings_env_prefix_lists_and_masking(monkeypatch):
    monkeypatch.setenv("DIFFRES_MODELS", "a, b")
    monkeypatch.setenv("DIFFRES_MAX_BATCH_SIZE", "16")
    monkeypatch.setenv("DIFFRES_API_KEY", "s3cret")
    s = Settings()
    assert s.models == ["a", "b"] and s.max_batch_size == 16 and s.devices == ["auto"]
    dumped = json.dumps(s.masked())
    assert "s3cret" not in dumped and "**********" in dumped
    assert Settings(models="x").models == ["x"]


def test_cli_flags_override_environment(monkeypatch):
    monkeypatch.setenv("DIFFRES_PORT", "9000")
    monkeypatch.setenv("DIFFRES_BACKEND", "torchscript")
    s = settings_from_args(build_parser().parse_args(
        ["serve", "--port", "8123", "--devices", "cpu,cuda:1", "--log-json", "true"]))
    assert s.port == 8123 and s.backend == "torchscript" and s.devices == ["cpu", "cuda:1"]
    assert s.log_json is True
    assert build_parser().parse_args(["serve"]).func.__name__ == "run"
    with pytest.raises(SystemExit):
        build_parser().parse_args([])


def test_worker_plan_is_pure_and_shares_cores():
    assert resolve_devices(["auto"], 0) == ["cpu"]
    assert resolve_devices(["auto"], 2) == ["cuda:0", "cuda:1"]
    assert resolve_devices(["cpu", "cuda:1"], 4) == ["cpu", "cuda:1"]
    plan = plan_workers(["cpu"], 2, cpu_cores=8, models=2)
    assert [(w.device, w.instance, w.threads) for w in plan] == [("cpu", 0, 1), ("cpu", 1, 1)]
    assert plan_workers(["cpu"], 1, cpu_cores=8)[0].threads == 7  # one core left to the loop
    gpu = plan_workers(["cuda:0", "cuda:1"], 2, cpu_cores=8)
    assert [w.label for w in gpu] == ["cuda:0#0", "cuda:0#1", "cuda:1#0", "cuda:1#1"]
    assert {w.threads for w in gpu} == {1}
    assert plan_workers(["cpu"], 4, cpu_cores=2)[0].threads == 1
    assert plan_workers(["cpu"], 1, cpu_cores=2, intra_op_threads=3)[0].threads == 3


def test_split_windows_pads_with_log_floor():
    features = np.arange(250 * 2, dtype=np.float32).reshape(250, 2)
    windows, valid = W.split_windows(features, 101, math.log(1e-6))
    assert windows.shape == (3, 101, 2) and valid.tolist() == [101, 101, 48]
    assert np.all(windows[2, 48:] == np.float32(math.log(1e-6)))
    np.testing.assert_array_equal(windows.reshape(-1, 2)[:250], features)
    assert W.split_windows(features[:1], 101, 0.0)[1].tolist() == [1]


def test_split_windows_pads_each_band_with_its_silence():
    """A normalised front end's silence differs per band: each band pads with its own."""
    silence = np.array([-3.0, 5.0], np.float32)
    windows, _ = W.split_windows(np.zeros((10, 2), np.float32), 8, silence)
    assert np.all(windows[1, 2:] == silence) and np.all(windows[1, :2] == 0)


def test_kept_steps_and_activeness():
    scores = np.full(100, 0.5, np.float32)  # sums to 50 steps
    assert W.kept_steps(scores, 100, 50) == 50
    assert W.kept_steps(scores, 40, 50) == 20  # 40 frames x 0.5 fill exactly 20 steps
    assert W.kept_steps(scores, 41, 50) == 21
    assert W.kept_steps(scores, 1, 50) == 1
    assert W.activeness(np.array([1.0, 3.0, 100.0]), 2) == pytest.approx(math.sqrt(2))
    assert W.activeness(np.array([1.0, 3.0]), 1) == 0.0
    top = W.top_k(np.array([0.1, 0.7, 0.2]), ["a", "b", "c"], 2)
    assert top == [{"label": "b", "probability": 0.7}, {"label": "c", "probability": 0.2}]


def test_spectrogram_codecs():
    assert spectrogram_from_json(b'{"spectrogram": [[1, 2], [3, 4]]}').shape == (2, 2)
    with pytest.raises(errors.InvalidInput, match="ragged"):
        spectrogram_from_json(b'{"spectrogram": [[1, 2], [3]]}')
    with pytest.raises(errors.InvalidInput, match="F=2"):
        validate_spectrogram(np.zeros((3, 2), np.float32), 40, 100)
    with pytest.raises(errors.InvalidInput, match="NaN"):
        validate_spectrogram(np.full((3, 40), np.inf, np.float32), 40, 100)
    with pytest.raises(errors.PayloadTooLarge):
        validate_spectrogram(np.zeros((101, 40), np.float32), 40, 100)


@pytest.mark.parametrize(("dtype", "order"), [("<f4", "C"), (">f4", "C"), ("<f8", "F"),
                                              (">i2", "F")])
def test_npy_values_survive_any_byte_order_and_layout(dtype, order):
    values = np.arange(12).reshape(3, 4) - 6
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(values, dtype=dtype, order=order))
    out = spectrogram_from_npy(buffer.getvalue())
    assert out.dtype == np.float32 and out.flags.writeable
    np.testing.assert_array_equal(out, values)


def test_decode_audio_mixes_resamples_and_limits():
    buffer = io.BytesIO()
    left = sine(1.0, 8000)
    sf.write(buffer, np.stack([left, -left], axis=1), 8000, format="FLAC")
    wave = decode_audio(buffer.getvalue(), 16000, 10.0)
    assert wave.dtype == np.float32 and len(wave) == 16000
    assert np.abs(wave).max() < 1e-3  # the channels cancel: they were averaged
    with pytest.raises(errors.PayloadTooLarge):
        decode_audio(buffer.getvalue(), 16000, 0.5)
    with pytest.raises(errors.UnsupportedMedia):
        decode_audio(b"RIFF....WAVEfmt garbage", 16000, 10.0)
    with pytest.raises(errors.InvalidInput):
        decode_audio(b"", 16000, 10.0)


def test_store_scan_verifies_and_explains(model_store, tmp_path):
    entries = {(e.name, e.version): e for e in scan_store(model_store, "onnx")}
    assert entries[("kws12-diffres", 2)].ok and entries[("kws12-avgpool", 1)].ok
    assert not entries[("broken", 1)].ok
    assert "sha256" in entries[("broken", 1)].problems[0]
    root = tmp_path / "store"
    shutil.copytree(model_store / "kws12-diffres" / "1", root / "m" / "3")
    (root / "m" / "0").mkdir()  # not a positive version: ignored
    (root / "m" / "x").mkdir()
    (root / "empty").mkdir()
    found = {(e.name, e.version): e for e in scan_store(root, "onnx")}
    assert set(found) == {("empty", 0), ("m", 3)}
    assert any("manifest says kws12-diffres/1" in p for p in found[("m", 3)].problems)
    assert "no version directory" in found[("empty", 0)].problems[0]


def test_every_domain_error_has_one_status():
    assert status_of(errors.InvalidParameter("x")) == 400
    assert status_of(errors.ModelNotFound("x")) == 404
    assert status_of(errors.PayloadTooLarge("x")) == 413
    assert status_of(errors.UnsupportedMedia("x")) == 415
    assert status_of(errors.InvalidInput("x")) == 422
    assert status_of(errors.Overloaded("x")) == status_of(errors.NotReady("x")) == 503
    assert status_of(errors.DeadlineExceeded("x")) == 504
    assert status_of(errors.InferenceFailed("x")) == 500
    # Export errors belong to the offline exporter (service/export), never to a request.
    domain = [c for c in vars(errors).values() if isinstance(c, type)
              and issubclass(c, errors.DiffresError) and not issubclass(c, errors.ExportError)]
    assert set(domain) == set(STATUS)


class FakeRequest:
    """Just enough of a Starlette request: ``receive`` reports a disconnect when told."""

    def __init__(self):
        self.gone = asyncio.Event()

    async def receive(self):
        await self.gone.wait()
        return {"type": "http.disconnect"}


def test_client_disconnect_cancels_the_work():
    async def main():
        request, running, cancelled = FakeRequest(), asyncio.Event(), asyncio.Event()

        async def work():
            running.set()
            try:
                await asyncio.Event().wait()  # only a cancellation ends it
            except asyncio.CancelledError:
                cancelled.set()
                raise

        task = asyncio.create_task(until_disconnect(request, work()))
        await running.wait()  # the work has started: the disconnect must cancel it
        request.gone.set()
        with pytest.raises(errors.ClientDisconnected):
            await task
        assert cancelled.is_set()
        assert await until_disconnect(FakeRequest(), asyncio.sleep(0, "done")) == "done"

    asyncio.run(asyncio.wait_for(main(), 60))
