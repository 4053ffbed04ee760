"""One audio stream, protocol-free (the WebSocket route of ``WS /stream`` drives it): the
start message, decoding of raw chunks of any size, a downmix and a streaming resample to the
model's rate, a sliding window, and detections with a refractory period.

    config = parse_start(message, defaults)        # InvalidParameter on a bad message
    session = StreamSession(config, geometry)
    for window in session.feed(chunk, now):        # complete windows, in order
        probs = classify(window.samples)           # [C], the batcher's answer
        for message in detector.update(window, probs): ...

Times are stream seconds: sample index / sample rate of the samples received so far
(resampling keeps time). A window covers ``[start, end)``; its ``arrival`` is the (monotonic)
time the chunk that completed it was received, from which detection latency is measured.
"""

import math
from dataclasses import dataclass, field

import numpy as np
import soxr

from service.errors import InvalidInput, InvalidParameter
from service.serving.dataplane.windowing import background_mask

ENCODINGS = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
MAX_SAMPLE_RATE = 384_000
MAX_CHANNELS = 8


@dataclass(frozen=True)
class StreamConfig:
    """What the client's start message asked for."""

    sample_rate: int
    encoding: str = "pcm_s16le"
    channels: int = 1
    threshold: float = 0.5
    refractory_s: float = 1.0
    scores: bool = False
    api_key: str | None = None  # a key sent in the start message (browsers: no headers)


def parse_start(message: object, threshold: float, refractory_s: float) -> StreamConfig:
    """The start message (decoded JSON) -> ``StreamConfig``; ``threshold`` and
    ``refractory_s`` are the defaults. Raises ``InvalidParameter`` saying what is wrong."""
    if not isinstance(message, dict):
        raise InvalidParameter("the start message must be a JSON object")
    known = {"type", "sample_rate", "encoding", "channels", "threshold", "refractory_seconds",
             "scores", "api_key"}
    unknown = sorted(set(message) - known)
    if unknown:
        raise InvalidParameter(f"unknown field(s) in the start message: {', '.join(unknown)}")
    if message.get("type", "start") != "start":
        raise InvalidParameter(f"the first message must be type 'start', got "
                               f"{message.get('type')!r}")
    rate = message.get("sample_rate")
    if not _is_int(rate) or not 1000 <= rate <= MAX_SAMPLE_RATE:
        raise InvalidParameter(f"sample_rate must be an integer in [1000, {MAX_SAMPLE_RATE}], "
                               f"got {rate!r}")
    encoding = message.get("encoding", "pcm_s16le")
    if encoding not in ENCODINGS:
        raise InvalidParameter(f"encoding must be one of {sorted(ENCODINGS)}, got "
                               f"{encoding!r}", code="unsupported_encoding")
    channels = message.get("channels", 1)
    if not _is_int(channels) or not 1 <= channels <= MAX_CHANNELS:
        raise InvalidParameter(f"channels must be an integer in [1, {MAX_CHANNELS}], got "
                               f"{channels!r}")
    threshold = message.get("threshold", threshold)
    if not _is_number(threshold) or not 0 < threshold <= 1:
        raise InvalidParameter(f"threshold must be in (0, 1], got {threshold!r}")
    refractory = message.get("refractory_seconds", refractory_s)
    if not _is_number(refractory) or not 0 <= refractory <= 3600:
        raise InvalidParameter(f"refractory_seconds must be in [0, 3600], got {refractory!r}")
    scores = message.get("scores", False)
    if not isinstance(scores, bool):
        raise InvalidParameter(f"scores must be true or false, got {scores!r}")
    key = message.get("api_key")
    if key is not None and not isinstance(key, str):
        raise InvalidParameter("api_key must be a string")
    return StreamConfig(rate, encoding, channels, float(threshold), float(refractory), scores,
                        key)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass(frozen=True)
class Geometry:
    """The model's window at its own rate: ``window`` samples (in_t_dim frames at the front
    end's hop), a new window every ``hop`` samples."""

    sample_rate: int
    window: int
    hop: int

    @classmethod
    def of(cls, sample_rate: int, hop_length: int, in_t_dim: int, hop_s: float) -> "Geometry":
        window = (in_t_dim - 1) * hop_length  # 1 + window // hop_length == in_t_dim frames
        hop = min(window, max(1, round(hop_s * sample_rate)))
        return cls(sample_rate, window, hop)


@dataclass(frozen=True)
class Window:
    index: int
    start: float  # stream seconds
    end: float
    samples: np.ndarray  # [window] float32 at the model's rate
    arrival: float  # when its last sample arrived (the clock ``feed`` was given)


@dataclass
class StreamSession:
    """Decodes chunks and cuts the sliding windows. Memory is bounded: it keeps less than one
    window plus one chunk of samples."""

    config: StreamConfig
    geometry: Geometry
    received_frames: int = 0  # input sample frames (all channels) received
    _leftover: bytes = b""
    _buffer: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _buffer_start: int = 0  # model-rate sample index of _buffer[0]
    _next_start: int = 0  # model-rate sample index of the next window
    _windows: int = 0
    _resampler: object = None

    def __post_init__(self) -> None:
        if self.config.sample_rate != self.geometry.sample_rate:
            self._resampler = soxr.ResampleStream(self.config.sample_rate,
                                                  self.geometry.sample_rate, 1, dtype="float32")

    @property
    def seconds(self) -> float:
        """Stream seconds received so far."""
        return self.received_frames / self.config.sample_rate

    def decode(self, chunk: bytes) -> np.ndarray:
        """Raw bytes -> mono float32 at the client's rate. A frame split across chunks is
        kept until its remaining bytes arrive."""
        dtype = ENCODINGS[self.config.encoding]
        frame = dtype.itemsize * self.config.channels
        data = self._leftover + chunk
        whole = len(data) - len(data) % frame
        self._leftover = data[whole:]
        samples = np.frombuffer(data[:whole], dtype)
        if self.config.encoding == "pcm_s16le":
            wave = samples.astype(np.float32) / 32768.0
        else:
            wave = samples.astype(np.float32)
            if not np.all(np.isfinite(wave)):
                raise InvalidInput("audio chunk contains NaN or Inf samples")
        if self.config.channels > 1:
            wave = wave.reshape(-1, self.config.channels).mean(axis=1, dtype=np.float32)
        self.received_frames += len(wave)
        return wave

    def feed(self, chunk: bytes, now: float) -> list[Window]:
        """Add a chunk; returns the windows it completed."""
        wave = self.decode(chunk)
        if self._resampler is not None and len(wave):
            wave = self._resampler.resample_chunk(wave)
        if len(wave):
            self._buffer = np.concatenate([self._buffer, wave.astype(np.float32, copy=False)])
        g = self.geometry
        found = []
        while self._next_start + g.window <= self._buffer_start + len(self._buffer):
            offset = self._next_start - self._buffer_start
            samples = self._buffer[offset:offset + g.window].copy()
            found.append(Window(self._windows, self._next_start / g.sample_rate,
                                (self._next_start + g.window) / g.sample_rate, samples, now))
            self._windows += 1
            self._next_start += g.hop
        drop = min(len(self._buffer), self._next_start - self._buffer_start)
        if drop > 0:
            self._buffer = self._buffer[drop:]
            self._buffer_start += drop
        return found


@dataclass
class Detector:
    """Per-window probabilities -> detection messages: a keyword (not a background label) at
    or over ``threshold``, unless the same keyword was detected in a window that ended less
    than ``refractory_s`` before this one ends. Optionally every window's scores too."""

    labels: list[str]
    threshold: float
    refractory_s: float
    scores: bool = False
    _last_end: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._keywords = np.flatnonzero(~background_mask(self.labels))

    def update(self, window: Window, probs: np.ndarray) -> list[dict]:
        """Messages for one window: its scores (if asked) and its detections, by label
        order."""
        messages = []
        if self.scores:
            messages.append({"type": "scores", "index": window.index,
                             "start": round(window.start, 6), "end": round(window.end, 6),
                             "probabilities": dict(zip(self.labels, map(float, probs),
                                                       strict=True))})
        for c in self._keywords:
            p = float(probs[c])
            if p < self.threshold:
                continue
            label = self.labels[c]
            last = self._last_end.get(label)
            if last is not None and window.end - last < self.refractory_s - 1e-9:
                continue
            self._last_end[label] = window.end
            messages.append({"type": "detection", "label": label, "probability": p,
                             "start": round(window.start, 6), "end": round(window.end, 6)})
        return messages
