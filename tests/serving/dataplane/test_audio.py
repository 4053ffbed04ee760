"""dataplane/audio_decode.py: truncated uploads and audio shorter than one analysis frame,
at the decode level, through the served front end, and through /classify and v2."""

import io
import struct

import numpy as np
import pytest
import soundfile as sf

from service import errors
from service.manifest import FrontendInfo, FrontendSpec
from service.serving.dataplane import audio_decode as audio
from service.serving.http.error_mapping import status_of
from tests.serving.conftest import sine
from tests.serving.harness import wav_bytes, wav_header

LOG_MEL = FrontendInfo.from_log_mel(FrontendSpec())  # n_fft = win_length = 400, hop 160


def mel_spectrogram(**params) -> FrontendInfo:
    return FrontendInfo(type="MelSpectrogram", sample_rate=16000, hop_length=128, n_mels=40,
                        silence=[0.0] * 40, params=params)


def test_frame_samples_is_the_front_ends_window_else_one_hop():
    assert audio.frame_samples(LOG_MEL) == 400
    assert audio.frame_samples(mel_spectrogram(n_fft=512, win_length=256)) == 512
    assert audio.frame_samples(mel_spectrogram(n_fft=512, win_length=None)) == 512
    assert audio.frame_samples(mel_spectrogram(win_length=300)) == 300
    assert audio.frame_samples(mel_spectrogram()) == 128  # no window in params: one hop
    assert audio.frame_samples(mel_spectrogram(n_fft="400", win_length=True)) == 128


def test_check_frame_length_refuses_less_than_one_frame():
    audio.check_frame_length(400, LOG_MEL)
    with pytest.raises(errors.AudioTooShort) as caught:
        audio.check_frame_length(1, LOG_MEL)
    exc = caught.value
    assert exc.code == "audio_too_short" and status_of(exc) == 422
    assert exc.message == ("audio of 1 sample(s) at 16000 Hz is shorter than one analysis "
                           "frame of this model's front end (400 samples, 25 ms)")
    with pytest.raises(errors.AudioTooShort):
        audio.check_frame_length(399, LOG_MEL)


def _raises_truncated(data: bytes) -> errors.DiffresError:
    with pytest.raises(errors.TruncatedAudio) as caught:
        audio.decode_audio(data, 16000, 30.0)
    assert caught.value.code == "truncated_audio" and status_of(caught.value) == 422
    return caught.value


@pytest.mark.parametrize("cut", [1, 2, 16000])  # half a frame, one frame, half the file
def test_a_wav_cut_short_of_its_header_is_truncated(cut):
    good = wav_bytes(sine(1.0))
    assert len(audio.decode_audio(good, 16000, 30.0)) == 16000
    exc = _raises_truncated(good[:-cut])
    assert "declares 32000 bytes" in exc.message and f"holds {32000 - cut}" in exc.message


def test_a_header_claiming_far_more_than_the_body_is_truncated():
    _raises_truncated(wav_header(data=b"\1\0" * 4000, data_size=0xFFFFFFF0))
    _raises_truncated(wav_header(data=b"\1\0" * 4000, data_size=4000 * 2 + 2))


@pytest.mark.parametrize("fmt", ["RF64", "AIFF", "WAVEX"])
def test_other_sized_containers_cut_short_are_truncated(fmt):
    good = wav_bytes(sine(1.0), fmt=fmt)
    assert len(audio.decode_audio(good, 16000, 30.0)) == 16000
    _raises_truncated(good[:-2])


@pytest.mark.parametrize("size", [0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000])
def test_streamed_wavs_of_unknown_length_are_not_refused(size):
    """ffmpeg, arecord and SoX writing to a pipe put these in place of the data size."""
    data = (0.1 * sine(0.5) * 32767).astype("<i2").tobytes()
    body = wav_header(data=data, data_size=size)
    riff = body[:4] + struct.pack("<I", 0xFFFFFFFF) + body[8:]  # the RIFF size as well
    for raw in (body, riff):
        wave = audio.decode_audio(raw, 16000, 30.0)
        assert len(wave) == 8000


@pytest.mark.parametrize("fmt,subtype", [("OGG", "VORBIS"), ("FLAC", "PCM_16")])
def test_formats_without_a_chunk_size_are_not_refused(fmt, subtype):
    wave = audio.decode_audio(wav_bytes(sine(1.0), fmt=fmt, subtype=subtype), 16000, 30.0)
    assert abs(len(wave) - 16000) < 2000


def test_chunks_after_the_data_are_not_mistaken_for_truncation():
    good = wav_bytes(sine(0.5))
    listed = good + b"LIST" + struct.pack("<I", 5) + b"INFOx\0"  # odd size: one pad byte
    listed = listed[:4] + struct.pack("<I", len(listed) - 8) + listed[8:]
    assert len(audio.decode_audio(listed, 16000, 30.0)) == 8000
    assert audio.declared_shortfall(listed) is None
    assert audio.declared_shortfall(b"RIFF\0\0\0\0WAVE") is None  # no data chunk at all
    assert audio.declared_shortfall(b"OggS" + bytes(40)) is None


def test_short_audio_is_refused_on_classify_and_v2(onnx_client):
    for body in (wav_header(data=b"\1\0"), wav_bytes(sine(0.01, 8000), 8000)):  # 1, 160 samples
        r = onnx_client.post("/classify", content=body, headers={"content-type": "audio/wav"})
        assert r.status_code == 422 and r.json()["error"]["code"] == "audio_too_short", r.text
    ok = onnx_client.post("/classify", content=wav_bytes(np.zeros(400, np.float32)),
                          headers={"content-type": "audio/wav"})
    assert ok.status_code == 200, ok.text
    cut = wav_bytes(sine(0.5))[:-2]
    r = onnx_client.post("/compress", content=cut, headers={"content-type": "audio/wav"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "truncated_audio", r.text
    paths = onnx_client.get("/openapi.json").json()["paths"]
    if "/v2/models/{name}/infer" in paths:
        r = onnx_client.post("/v2/models/kws12-diffres/infer", json={
            "inputs": [{"name": "waveform", "datatype": "FP32", "shape": [2, 100],
                        "data": [0.0] * 200}], "parameters": {"sample_rate": 16000}})
        assert 400 <= r.status_code < 500 and "analysis frame" in r.json()["error"], r.text


def test_an_8_khz_clip_is_measured_after_resampling():
    raw = io.BytesIO()
    sf.write(raw, sine(0.03, 8000), 8000, format="WAV")  # 240 samples -> 480 at 16 kHz
    wave = audio.decode_audio(raw.getvalue(), 16000, 30.0)
    audio.check_frame_length(len(wave), LOG_MEL)


@pytest.mark.parametrize("rate,channels,frames", [(16000, 1, 16000), (44100, 2, 44101),
                                                  (8000, 3, 999), (16000, 1, 300000)])
def test_the_fast_pcm16_wav_path_gives_libsndfiles_samples(monkeypatch, rate, channels, frames):
    rng = np.random.default_rng(frames)
    buffer = io.BytesIO()
    sf.write(buffer, rng.uniform(-1, 1, (frames, channels)), rate, "PCM_16", format="WAV")
    data = buffer.getvalue()
    assert audio._pcm16_wav(data) is not None  # this body takes the fast path
    fast = audio.decode_audio(data, 16000, 60.0)
    monkeypatch.setattr(audio, "_pcm16_wav", lambda data: None)
    np.testing.assert_array_equal(fast, audio.decode_audio(data, 16000, 60.0))


@pytest.mark.parametrize("subtype", ["PCM_24", "FLOAT", "PCM_U8"])
def test_other_wavs_are_left_to_libsndfile(subtype):
    buffer = io.BytesIO()
    sf.write(buffer, np.zeros(100), 16000, subtype, format="WAV")
    assert audio._pcm16_wav(buffer.getvalue()) is None
    assert len(audio.decode_audio(buffer.getvalue(), 16000, 60.0)) == 100
