"""The stream session of WS /stream, protocol-free: start message, chunk decoding, resampling,
sliding windows and the refractory period, driven by a fake classifier."""

import numpy as np
import pytest

from service.errors import InvalidInput, InvalidParameter
from service.serving.dataplane.stream_session import (
    Detector,
    Geometry,
    StreamConfig,
    StreamSession,
    parse_start,
)

LABELS = ["yes", "no", "up", "_silence_", "_unknown_"]
RATE = 16000
GEOMETRY = Geometry.of(RATE, 160, 101, 0.25)  # 1 s windows, 0.25 s hop
KEYWORDS = [(1.3, "yes"), (4.1, "no"), (7.6, "yes"), (8.9, "no"), (12.25, "yes")]
BURST_S = 0.4
FREQ = {"yes": 300.0, "no": 3000.0}


def keyword_audio(seconds: float, rate: int = RATE, keywords=KEYWORDS) -> np.ndarray:
    """Quiet noise with a 0.4 s tone burst per keyword (300 Hz "yes", 3 kHz "no")."""
    wave = 0.001 * np.random.default_rng(0).standard_normal(int(seconds * rate))
    t = np.arange(int(BURST_S * rate)) / rate
    for at, label in keywords:
        i = int(at * rate)
        if i + len(t) > len(wave):
            continue
        wave[i:i + len(t)] += 0.5 * np.sin(2 * np.pi * FREQ[label] * t)
    return wave.astype(np.float32)


def fake_classifier(samples: np.ndarray, rate: int = RATE) -> np.ndarray:
    """A keyword when a whole burst lies inside the window (its first and last 20 ms are
    quiet); the burst's pitch says which."""
    probs = np.zeros(len(LABELS))
    loud = np.abs(samples) > 0.1
    edge = int(0.02 * rate)
    if loud.sum() < 0.3 * rate * BURST_S or loud[:edge].any() or loud[-edge:].any():
        probs[LABELS.index("_silence_")] = 0.95
        return probs
    spectrum = np.abs(np.fft.rfft(samples))
    peak = np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)]
    probs[LABELS.index("yes" if peak < 1000 else "no")] = 0.9
    return probs


def expected_start(at: float, hop: float = 0.25, window: float = 1.0) -> float:
    """The first window on the hop grid that holds the whole burst."""
    return np.ceil((at + BURST_S - window) / hop - 1e-9) * hop


def pcm16(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1) * 32767).astype("<i2").tobytes()


def run_stream(chunks, config: StreamConfig, refractory: float = 1.0):
    session = StreamSession(config, GEOMETRY)
    detector = Detector(LABELS, config.threshold, refractory, scores=True)
    messages, windows = [], []
    for i, chunk in enumerate(chunks):
        for window in session.feed(chunk, now=float(i)):
            windows.append(window)
            messages += detector.update(window, fake_classifier(window.samples))
    return messages, windows, session


def chunked(data: bytes, seed: int = 1) -> list[bytes]:
    """``data`` cut at random places (odd sizes split sample frames)."""
    rng = np.random.default_rng(seed)
    cuts = np.sort(rng.choice(np.arange(1, len(data)), size=len(data) // 3000, replace=False))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_detections_at_known_times_once_each():
    wave = keyword_audio(14.0)
    messages, windows, session = run_stream(chunked(pcm16(wave)), StreamConfig(RATE))
    detections = [m for m in messages if m["type"] == "detection"]
    assert [d["label"] for d in detections] == [label for _, label in KEYWORDS]
    for d, (at, _) in zip(detections, KEYWORDS, strict=True):
        assert abs(d["start"] - expected_start(at)) <= 0.25
        assert d["start"] <= at and d["end"] >= at + BURST_S  # the window holds the keyword
        assert d["end"] - d["start"] == pytest.approx(1.0)
    assert len(windows) == 1 + int((14.0 - 1.0) / 0.25)
    assert session.seconds == pytest.approx(14.0)
    # scores: one per window, on the hop grid
    scores = [m for m in messages if m["type"] == "scores"]
    assert [s["start"] for s in scores] == [i * 0.25 for i in range(len(windows))]


def test_refractory_zero_reports_every_window():
    wave = keyword_audio(3.0, keywords=[(1.3, "yes")])
    messages, _, _ = run_stream([pcm16(wave)], StreamConfig(RATE), refractory=0.0)
    starts = [m["start"] for m in messages if m["type"] == "detection"]
    assert len(starts) >= 2 and starts == sorted(starts)


def test_background_labels_are_never_detections():
    wave = keyword_audio(3.0, keywords=[])
    messages, windows, _ = run_stream([pcm16(wave)], StreamConfig(RATE))
    assert windows and not [m for m in messages if m["type"] == "detection"]


@pytest.mark.parametrize("encoding,channels,rate", [("pcm_s16le", 1, 16000), ("f32le", 1, 16000),
                                                   ("pcm_s16le", 2, 16000), ("f32le", 2, 44100),
                                                   ("pcm_s16le", 1, 8000)])
def test_encodings_channels_and_rates_give_the_same_detections(encoding, channels, rate):
    wave = keyword_audio(6.0, rate, keywords=KEYWORDS[:2])
    frames = np.stack([wave] * channels, axis=1) if channels > 1 else wave
    data = pcm16(frames) if encoding == "pcm_s16le" else frames.astype("<f4").tobytes()
    messages, _, session = run_stream(chunked(data), StreamConfig(rate, encoding, channels))
    detections = [m for m in messages if m["type"] == "detection"]
    assert [d["label"] for d in detections] == ["yes", "no"]
    for d, (at, _) in zip(detections, KEYWORDS[:2], strict=True):
        assert abs(d["start"] - expected_start(at)) <= 0.25
    assert session.seconds == pytest.approx(6.0)


def test_split_frames_wait_for_their_bytes():
    session = StreamSession(StreamConfig(RATE, "f32le", 2), GEOMETRY)
    data = np.arange(10, dtype="<f4").tobytes()  # 5 stereo frames of 8 bytes
    assert len(session.decode(data[:11])) == 1
    rest = session.decode(data[11:])
    assert len(rest) == 4 and rest[0] == pytest.approx(2.5)  # (2 + 3) / 2
    assert session.received_frames == 5


def test_memory_stays_under_a_window_and_a_chunk():
    session = StreamSession(StreamConfig(RATE), GEOMETRY)
    chunk = pcm16(np.zeros(1600, np.float32))
    for i in range(400):  # 40 s
        session.feed(chunk, float(i))
        assert len(session._buffer) < GEOMETRY.window + 1600


def test_nan_in_f32_audio_is_refused():
    session = StreamSession(StreamConfig(RATE, "f32le"), GEOMETRY)
    with pytest.raises(InvalidInput):
        session.feed(np.array([0.0, np.nan], "<f4").tobytes(), 0.0)


def test_start_message_defaults_and_overrides():
    config = parse_start({"type": "start", "sample_rate": 44100}, 0.5, 1.0)
    assert config == StreamConfig(44100, "pcm_s16le", 1, 0.5, 1.0, False, None)
    config = parse_start({"sample_rate": 8000, "encoding": "f32le", "channels": 2,
                          "threshold": 0.8, "refractory_seconds": 0, "scores": True,
                          "api_key": "k"}, 0.5, 1.0)
    assert config == StreamConfig(8000, "f32le", 2, 0.8, 0.0, True, "k")


@pytest.mark.parametrize("message,code", [
    ([1, 2], "invalid_parameter"),
    ({"type": "stop", "sample_rate": 16000}, "invalid_parameter"),
    ({}, "invalid_parameter"),
    ({"sample_rate": "16000"}, "invalid_parameter"),
    ({"sample_rate": 16000.0}, "invalid_parameter"),
    ({"sample_rate": 100}, "invalid_parameter"),
    ({"sample_rate": True}, "invalid_parameter"),
    ({"sample_rate": 16000, "encoding": "mp3"}, "unsupported_encoding"),
    ({"sample_rate": 16000, "encoding": "pcm_s24le"}, "unsupported_encoding"),
    ({"sample_rate": 16000, "channels": 0}, "invalid_parameter"),
    ({"sample_rate": 16000, "threshold": 0}, "invalid_parameter"),
    ({"sample_rate": 16000, "threshold": float("nan")}, "invalid_parameter"),
    ({"sample_rate": 16000, "refractory_seconds": -1}, "invalid_parameter"),
    ({"sample_rate": 16000, "scores": "yes"}, "invalid_parameter"),
    ({"sample_rate": 16000, "api_key": 5}, "invalid_parameter"),
    ({"sample_rate": 16000, "bogus": 1}, "invalid_parameter"),
])
def test_bad_start_messages(message, code):
    with pytest.raises(InvalidParameter) as info:
        parse_start(message, 0.5, 1.0)
    assert info.value.code == code


def test_geometry_of_kws12():
    assert Geometry(16000, 16000, 4000) == GEOMETRY
    assert Geometry.of(16000, 160, 101, 5.0).hop == 16000  # at most one window
