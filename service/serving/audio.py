"""Audio bytes -> mono float32 at the model's sample rate (libsndfile + soxr, no torch).

Any format libsndfile reads (WAV, FLAC, OGG/Vorbis, Opus, MP3, ...), sample rates in
``RATE_RANGE``, up to ``MAX_CHANNELS`` channels: channels are averaged, the rate is converted
with soxr (high quality).

Decoding is streamed: blocks of at most ``BLOCK_SAMPLES`` samples are read, mixed to mono and
resampled one by one (soxr's stream gives the same samples as its one-shot call), so memory
stays O(output) whatever the header claims. The duration limit is checked against the header
before decoding and against the frames actually decoded (headers may lie either way).
"""

import io

import numpy as np
import soundfile as sf
import soxr

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia

RATE_RANGE = (1_000, 384_000)  # Hz
MAX_CHANNELS = 8
BLOCK_SAMPLES = 1 << 18  # samples (over all channels) decoded per block


def decode_audio(data: bytes, target_rate: int, max_seconds: float) -> np.ndarray:
    """[N] float32 mono at ``target_rate``, N >= 1. Refuses audio longer than ``max_seconds``
    (413), out-of-range rates or channel counts and NaN/Inf samples (422), and anything
    libsndfile cannot decode (415)."""
    if not data:
        raise InvalidInput("empty audio body")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            _check_header(f, max_seconds)
            wave = _read_mono(f, target_rate, max_seconds)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise UnsupportedMedia(f"cannot decode audio: {exc}") from exc
    if len(wave) == 0:
        raise InvalidInput(f"audio contains no samples at {target_rate} Hz")
    return wave


def resample(wave: np.ndarray, rate: int, target_rate: int) -> np.ndarray:
    """[N] mono samples at ``rate`` -> float32 at ``target_rate``, as ``decode_audio`` does."""
    if rate == target_rate:
        return np.ascontiguousarray(wave, dtype=np.float32)
    return np.ascontiguousarray(soxr.resample(wave, rate, target_rate, quality="HQ"),
                                dtype=np.float32)


def _check_header(f: sf.SoundFile, max_seconds: float) -> None:
    low, high = RATE_RANGE
    if not low <= f.samplerate <= high:
        raise InvalidInput(f"sample rate {f.samplerate} Hz is outside {low}..{high} Hz")
    if not 1 <= f.channels <= MAX_CHANNELS:
        raise InvalidInput(f"{f.channels} channels; at most {MAX_CHANNELS} are accepted")
    if f.frames > 0 and f.frames / f.samplerate > max_seconds:
        raise PayloadTooLarge(f"audio is {f.frames / f.samplerate:.1f} s long; the limit is "
                              f"{max_seconds:g} s")


def _read_mono(f: sf.SoundFile, target_rate: int, max_seconds: float) -> np.ndarray:
    rate, channels = f.samplerate, f.channels
    stream = (None if rate == target_rate else
              soxr.ResampleStream(rate, target_rate, 1, dtype="float32", quality="HQ"))
    block = max(1, BLOCK_SAMPLES // channels)
    parts: list[np.ndarray] = []
    frames = 0
    while len(chunk := f.read(block, dtype="float32", always_2d=True)):
        frames += len(chunk)
        if frames > max_seconds * rate:
            raise PayloadTooLarge(f"audio is longer than the limit of {max_seconds:g} s")
        mono = chunk.mean(axis=1) if channels > 1 else chunk[:, 0]
        if not np.all(np.isfinite(mono)):
            raise InvalidInput("audio contains NaN or Inf samples")
        parts.append(mono if stream is None else stream.resample_chunk(mono))
    if stream is not None:
        parts.append(stream.resample_chunk(np.zeros(0, np.float32), last=True))
    wave = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    return np.ascontiguousarray(wave, dtype=np.float32)
