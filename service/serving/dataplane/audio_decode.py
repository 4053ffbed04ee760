"""Audio bytes -> mono float32 at the model's sample rate (libsndfile + soxr, no torch).

Any format libsndfile reads (WAV, FLAC, OGG/Vorbis, Opus, MP3, ...), sample rates in
``RATE_RANGE``, up to ``MAX_CHANNELS`` channels: channels are averaged, the rate is converted
with soxr (high quality).

Decoding is streamed: blocks of at most ``BLOCK_SAMPLES`` samples are read, mixed to mono and
resampled one by one (soxr's stream gives the same samples as its one-shot call), so memory
stays O(output) whatever the header claims. The duration limit is checked against the header
before decoding and against the frames actually decoded (headers may lie either way).

Plain 16-bit PCM WAV, what most clients send, is read with the standard library's ``wave``
module (about 10x faster than libsndfile's virtual I/O on a 1 s clip: ~12 vs ~120 us); the
samples are the same (int16 / 32768 as float32) and go through the same checks, mixing and
resampling (``_mono_blocks``). Everything else goes to libsndfile.

A cut-off upload is refused (``TruncatedAudio``), not classified as the part that arrived:
libsndfile quietly clamps a WAV/AIFF's length to the bytes present, so the container's own
declared sample-data size is compared with the body (``declared_shortfall``). Lengths that
streaming writers put in place of a size they cannot know (``UNKNOWN_SIZES``) and formats
without a declared size (Ogg, MP3, FLAC without a total) are not checked.

Audio shorter than one analysis frame of the model's front end (``frame_samples``) is refused
(``AudioTooShort``) by ``check_frame_length``, which the data plane runs on every waveform
before the front end (``InferenceService._log_mel``), whatever route brought it.
"""

import io
import struct
import wave
from collections.abc import Iterator

import numpy as np
import soundfile as sf
import soxr

from service.errors import (
    AudioTooShort,
    InvalidInput,
    PayloadTooLarge,
    TruncatedAudio,
    UnsupportedMedia,
)
from service.manifest import FrontendInfo

RATE_RANGE = (1_000, 384_000)  # Hz
MAX_CHANNELS = 8
BLOCK_SAMPLES = 1 << 18  # samples (over all channels) decoded per block
# Data-chunk sizes written by tools that stream to a pipe and cannot seek back to fix them
# (ffmpeg and most: 0xFFFFFFFF; arecord: 0x7FFFFFFF; SoX: 0x7FFFF000): "length unknown".
UNKNOWN_SIZES = frozenset({0xFFFFFFFF, 0x7FFFFFFF, 0x7FFFF000})


def decode_audio(data: bytes, target_rate: int, max_seconds: float) -> np.ndarray:
    """[N] float32 mono at ``target_rate``, N >= 1. Refuses audio longer than ``max_seconds``
    (413), out-of-range rates or channel counts, NaN/Inf samples and a body shorter than its
    header declares (422), and anything libsndfile cannot decode (415)."""
    if not data:
        raise InvalidInput("empty audio body")
    if shortfall := declared_shortfall(data):
        declared, present = shortfall
        raise TruncatedAudio(f"audio is truncated: its header declares {declared} bytes of "
                             f"samples but the body holds {present}; send the whole file")
    pcm = _pcm16_wav(data)
    try:
        if pcm is not None:
            samples, rate = pcm
            _check_header(rate, samples.shape[1], len(samples), max_seconds)
            block = max(1, BLOCK_SAMPLES // samples.shape[1])
            blocks = (samples[i:i + block] for i in range(0, len(samples), block))
            wave_ = _mono_blocks(blocks, rate, samples.shape[1], target_rate, max_seconds)
        else:
            with sf.SoundFile(io.BytesIO(data)) as f:
                _check_header(f.samplerate, f.channels, f.frames, max_seconds)
                wave_ = _mono_blocks(_file_blocks(f), f.samplerate, f.channels, target_rate,
                                     max_seconds)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise UnsupportedMedia(f"cannot decode audio: {exc}") from exc
    if len(wave_) == 0:
        raise InvalidInput(f"audio contains no samples at {target_rate} Hz")
    return wave_


def _pcm16_wav(data: bytes) -> tuple[np.ndarray, int] | None:
    """([frames, channels] float32, rate) of a RIFF WAV of 16-bit integer PCM whose rate and
    channels are in range; None for any other file, or one the ``wave`` module cannot read:
    libsndfile then decodes or refuses it, with the errors it always gave."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    try:
        with wave.open(io.BytesIO(data)) as w:
            channels, rate = w.getnchannels(), w.getframerate()
            if (w.getsampwidth() != 2 or w.getcomptype() != "NONE"
                    or not 1 <= channels <= MAX_CHANNELS
                    or not RATE_RANGE[0] <= rate <= RATE_RANGE[1]):
                return None
            raw = w.readframes(w.getnframes())
    except Exception:  # wave raises Error, EOFError, struct.error, RuntimeError, ...
        return None
    usable = len(raw) // (2 * channels) * channels
    ints = np.frombuffer(raw, "<i2", count=usable)
    return (ints.astype(np.float32) / np.float32(32768)).reshape(-1, channels), rate


def resample(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """[N] mono samples at ``rate`` -> float32 at ``target_rate``, as ``decode_audio`` does."""
    if rate == target_rate:
        return np.ascontiguousarray(wave, dtype=np.float32)
    return np.ascontiguousarray(soxr.resample(wave, rate, target_rate, quality="HQ"),
                                dtype=np.float32)


def frame_samples(frontend: FrontendInfo) -> int:
    """Samples in one analysis frame of ``frontend``: its FFT size or window (``n_fft``,
    ``win_length`` in ``params``, the larger), else one hop."""
    sizes = [v for k in ("n_fft", "win_length")
             if isinstance(v := frontend.params.get(k), int) and not isinstance(v, bool)
             and v > 0]
    return max(sizes) if sizes else frontend.hop_length


def check_frame_length(samples: int, frontend: FrontendInfo) -> None:
    """``AudioTooShort`` if ``samples`` (at the front end's rate) do not fill one frame."""
    frame = frame_samples(frontend)
    if samples < frame:
        raise AudioTooShort(
            f"audio of {samples} sample(s) at {frontend.sample_rate} Hz is shorter than one "
            f"analysis frame of this model's front end ({frame} samples, "
            f"{1000 * frame / frontend.sample_rate:g} ms)")


def declared_shortfall(data: bytes) -> tuple[int, int] | None:
    """(bytes of sample data the container declares, bytes of it present) when a RIFF/RIFX/
    RF64 WAV's ``data`` chunk or an AIFF/AIFC's ``SSND`` chunk runs past the end of ``data``;
    None when it fits, its size is one of ``UNKNOWN_SIZES``, or the container is another."""
    magic, kind = data[:4], data[8:12]
    if magic in (b"RIFF", b"RF64") and kind == b"WAVE":
        order, target = "<", b"data"
    elif magic == b"RIFX" and kind == b"WAVE":
        order, target = ">", b"data"
    elif magic == b"FORM" and kind in (b"AIFF", b"AIFC"):
        order, target = ">", b"SSND"
    else:
        return None
    long_size = None  # RF64: the data size is in the ds64 chunk (its 32-bit one is -1)
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = data[pos:pos + 4], struct.unpack(order + "I", data[pos + 4:pos + 8])[0]
        if chunk == b"ds64" and magic == b"RF64" and pos + 24 <= len(data):
            long_size = struct.unpack("<Q", data[pos + 16:pos + 24])[0]
        if chunk == target:
            if magic == b"RF64" and size == 0xFFFFFFFF:
                if long_size is None:
                    return None
                size = long_size
            elif size in UNKNOWN_SIZES:
                return None
            present = len(data) - (pos + 8)
            return (size, present) if size > present else None
        pos += 8 + size + (size & 1)
    return None


def _check_header(rate: int, channels: int, frames: int, max_seconds: float) -> None:
    low, high = RATE_RANGE
    if not low <= rate <= high:
        raise InvalidInput(f"sample rate {rate} Hz is outside {low}..{high} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise InvalidInput(f"{channels} channels; at most {MAX_CHANNELS} are accepted")
    if frames > 0 and frames / rate > max_seconds:
        raise PayloadTooLarge(f"audio is {frames / rate:.1f} s long; the limit is "
                              f"{max_seconds:g} s")


def _file_blocks(f: sf.SoundFile) -> Iterator[np.ndarray]:
    """[frames, channels] float32 blocks of at most ``BLOCK_SAMPLES`` samples, decoded as read."""
    block = max(1, BLOCK_SAMPLES // f.channels)
    while len(chunk := f.read(block, dtype="float32", always_2d=True)):
        yield chunk


def _mono_blocks(blocks: Iterator[np.ndarray], rate: int, channels: int, target_rate: int,
                 max_seconds: float) -> np.ndarray:
    """Blocks of [frames, channels] float32 samples -> mono float32 at ``target_rate``,
    streamed through soxr block by block (memory O(output))."""
    stream = (None if rate == target_rate else
              soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ"))
    parts: list[np.ndarray] = []
    frames = 0
    for chunk in blocks:
        frames += len(chunk)
        if frames > max_seconds * rate:
            raise PayloadTooLarge(f"audio is longer than the limit of {max_seconds:g} s")
        mono = chunk.mean(axis=1) if channels > 1 else chunk[:, 0]
        if not np.all(np.isfinite(mono)):
            raise InvalidInput("audio contains NaN or Inf samples")
        parts.append(mono if stream is None else stream.resample_chunk(mono))
    if stream is not None:
        parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    wave_ = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return np.ascontiguousarray(wave_, dtype=np.float32)
