"""Audio bytes -> mono float32 at the model's sample rate (libsndfile + soxr, no torch).

Any format libsndfile reads (WAV, FLAC, OGG/Vorbis, Opus, MP3, ...), any rate, any channel
count: channels are averaged, the rate is converted with soxr (high quality).
"""

import io

import numpy as np
import soundfile as sf
import soxr

from service.errors import InvalidInput, PayloadTooLarge, UnsupportedMedia


def decode_audio(data: bytes, target_rate: int, max_seconds: float) -> np.ndarray:
    """[N] float32 mono at ``target_rate``. Refuses audio longer than ``max_seconds`` before
    decoding it (the header's frame count), and again after (headers may lie)."""
    if not data:
        raise InvalidInput("empty audio body")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            rate = f.samplerate
            _check_duration(f.frames / rate if f.frames > 0 else 0.0, max_seconds)
            samples = f.read(dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, TypeError, ValueError) as exc:
        raise UnsupportedMedia(f"cannot decode audio: {exc}") from exc
    if samples.shape[0] == 0:
        raise InvalidInput("audio contains no samples")
    _check_duration(samples.shape[0] / rate, max_seconds)
    mono = samples.mean(axis=1) if samples.shape[1] > 1 else samples[:, 0]
    if not np.all(np.isfinite(mono)):
        raise InvalidInput("audio contains NaN or Inf samples")
    if rate != target_rate:
        mono = soxr.resample(mono, rate, target_rate, quality="HQ")
    return np.ascontiguousarray(mono, dtype=np.float32)


def _check_duration(seconds: float, max_seconds: float) -> None:
    if seconds > max_seconds:
        raise PayloadTooLarge(f"audio is {seconds:.1f} s long; the limit is {max_seconds:g} s")
