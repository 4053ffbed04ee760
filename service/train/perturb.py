"""Per-utterance perturbations: pitch shift, vocal-tract-length warp, and the channel
(random equalisation, telephone and cheap-microphone band limits). Pure numpy and soxr at the
dataset's 16 kHz; every random choice comes from the caller's generator.
"""

import numpy as np
import soxr

from service.train.acoustics import SAMPLE_RATE, pick

N_FFT, HOP = 512, 128
CHANNELS = ("eq", "mic", "phone")


def stft(x: np.ndarray) -> np.ndarray:
    """Hann-windowed frames [frames, N_FFT//2+1] of x padded by N_FFT on both sides."""
    padded = np.pad(x, N_FFT)
    count = 1 + (len(padded) - N_FFT) // HOP
    idx = np.arange(N_FFT)[None, :] + HOP * np.arange(count)[:, None]
    return np.fft.rfft(padded[idx] * np.hanning(N_FFT), axis=1)


def istft(frames: np.ndarray, length: int, start: int = N_FFT) -> np.ndarray:
    """Weighted overlap-add inverse of stft: length samples from start (the padding)."""
    window = np.hanning(N_FFT)
    out = np.zeros(max(HOP * (len(frames) - 1) + N_FFT, start + length))
    norm = np.zeros_like(out)
    for i, frame in enumerate(np.fft.irfft(frames, N_FFT, axis=1)):
        out[i * HOP:i * HOP + N_FFT] += frame * window
        norm[i * HOP:i * HOP + N_FFT] += window**2
    out /= np.maximum(norm, 1e-3 * norm.max())
    return out[start:start + length]


def time_stretch(x: np.ndarray, factor: float) -> np.ndarray:
    """Phase vocoder: about factor * len(x) samples, same pitch."""
    frames = stft(x)
    steps = np.arange(0, len(frames) - 1, 1 / factor)
    bins = 2 * np.pi * HOP * np.arange(N_FFT // 2 + 1) / N_FFT  # expected advance per hop
    phase = np.angle(frames[0])
    out = np.empty((len(steps), frames.shape[1]), complex)
    for i, step in enumerate(steps):
        k, frac = int(step), step - int(step)
        mag = (1 - frac) * np.abs(frames[k]) + frac * np.abs(frames[k + 1])
        out[i] = mag * np.exp(1j * phase)
        delta = np.angle(frames[k + 1]) - np.angle(frames[k]) - bins
        phase = phase + bins + (delta - 2 * np.pi * np.round(delta / (2 * np.pi)))
    return istft(out, round(len(x) * factor), start=round(N_FFT * factor))


def pitch_shift(x: np.ndarray, semitones: float) -> np.ndarray:
    """Shift pitch (and formants) by semitones and keep the duration: stretch, then resample."""
    if abs(semitones) < 1e-6 or len(x) < N_FFT:
        return x
    ratio = 2 ** (semitones / 12)
    y = soxr.resample(time_stretch(x, ratio), SAMPLE_RATE * ratio, SAMPLE_RATE)
    return y[:len(x)] if len(y) >= len(x) else np.pad(y, (0, len(x) - len(y)))


def warp_axis(alpha: float, bins: int, boundary: float = 0.8) -> np.ndarray:
    """Where each output bin reads from: the inverse of the piecewise-linear VTLP warp
    f -> alpha * f (Jaitly & Hinton 2013), bent at boundary * nyquist so nyquist stays put."""
    f = np.arange(bins) / (bins - 1)  # 0..1 of nyquist
    knee = boundary * min(alpha, 1.0) / alpha
    warped_knee = alpha * knee
    forward_src = np.linspace(0, 1, 4 * bins)
    forward = np.where(forward_src <= knee, alpha * forward_src,
                       warped_knee + (1 - warped_knee) * (forward_src - knee) / (1 - knee))
    return np.interp(f, forward, forward_src) * (bins - 1)


def spectral_envelope(log_mag: np.ndarray, lifter: int = 40) -> np.ndarray:
    """Cepstrally smoothed log magnitude, per frame: the formants without the harmonics
    (40 coefficients: 2.5 ms, shorter than the pitch period of voices up to 400 Hz)."""
    ceps = np.fft.irfft(log_mag, axis=1)
    ceps[:, lifter:-lifter] = 0.0
    return np.fft.rfft(ceps, axis=1).real


def warp_formants(x: np.ndarray, alpha: float, max_gain_db: float = 30.0) -> np.ndarray:
    """Vocal-tract-length perturbation: the spectral envelope is warped by alpha (>1 moves
    formants up, a shorter tract), the harmonics and phases stay, so pitch does not move."""
    if abs(alpha - 1.0) < 1e-6:
        return x
    frames = stft(x)
    log_mag = np.log(np.abs(frames) + 1e-9)
    env = spectral_envelope(log_mag)
    src = warp_axis(alpha, frames.shape[1])
    warped = np.stack([np.interp(src, np.arange(len(e)), e) for e in env])
    limit = max_gain_db / 20 * np.log(10)
    return istft(frames * np.exp(np.clip(warped - env, -limit, limit)), len(x))


def filter_fft(x: np.ndarray, gain: callable) -> np.ndarray:
    """Zero-phase filtering by a frequency response gain(freqs_hz), padded against wrap."""
    n = 2 * len(x)
    spectrum = np.fft.rfft(x, n)
    return np.fft.irfft(spectrum * gain(np.fft.rfftfreq(n, 1 / SAMPLE_RATE)), n)[:len(x)]


def band_limit(x: np.ndarray, low_hz: float, high_hz: float, ramp_hz: float = 100.0) -> np.ndarray:
    """Pass low_hz..high_hz; raised-cosine edges of ramp_hz, reaching zero at the band edges."""

    def gain(f: np.ndarray) -> np.ndarray:
        rise = np.clip((f - low_hz) / ramp_hz, 0, 1)
        fall = np.clip((high_hz - f) / ramp_hz, 0, 1)
        return np.sin(np.pi / 2 * rise) ** 2 * np.sin(np.pi / 2 * fall) ** 2

    return filter_fft(x, gain)


def equalise(rng: np.random.Generator, x: np.ndarray, spread_db: float = 6.0) -> np.ndarray:
    """A random smooth EQ curve: gains ~ N(0, spread_db) at 8 log-spaced anchors, 50-8000 Hz."""
    anchors = np.log(np.geomspace(50, 8000, 8))
    gains = np.clip(rng.normal(0, spread_db, anchors.size), -2 * spread_db, 2 * spread_db)
    return filter_fft(x, lambda f: 10 ** (np.interp(np.log(np.maximum(f, 1.0)), anchors,
                                                     gains) / 20))


def mu_law(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
    """G.711-style 8-bit mu-law coding and decoding (x scaled to its peak first)."""
    peak = max(float(np.abs(x).max()), 1e-12)
    y = np.sign(x / peak) * np.log1p(mu * np.abs(x / peak)) / np.log1p(mu)
    y = np.round(y * 127) / 127
    return np.sign(y) * np.expm1(np.abs(y) * np.log1p(mu)) / mu * peak


def telephone(x: np.ndarray) -> np.ndarray:
    """Narrowband telephone: 300-3400 Hz, 8 kHz sampling, mu-law, back at 16 kHz."""
    narrow = soxr.resample(band_limit(x, 300.0, 3400.0), SAMPLE_RATE, 8000)
    wide = soxr.resample(mu_law(narrow), 8000, SAMPLE_RATE)
    wide = wide[:len(x)] if len(wide) >= len(x) else np.pad(wide, (0, len(x) - len(wide)))
    return band_limit(wide, 300.0, 3400.0)


def cheap_mic(rng: np.random.Generator, x: np.ndarray) -> np.ndarray:
    """A small microphone: a random high-pass and low-pass, a bumpy EQ, soft clipping."""
    y = band_limit(x, rng.uniform(80, 400), rng.uniform(3500, 7500))
    y = equalise(rng, y, spread_db=4.0)
    drive = rng.uniform(1.0, 4.0)
    peak = max(float(np.abs(y).max()), 1e-12)
    return np.tanh(drive * y / peak) / np.tanh(drive) * peak


def channel(rng: np.random.Generator, x: np.ndarray) -> tuple[np.ndarray, str]:
    """One of the CHANNELS, equally likely, applied to the whole clip."""
    kind = pick(rng, CHANNELS)
    if kind == "eq":
        return equalise(rng, x), kind
    if kind == "mic":
        return cheap_mic(rng, x), kind
    return telephone(x), kind


def spectral_centroid(x: np.ndarray) -> float:
    power = np.abs(np.fft.rfft(x)) ** 2
    return float(np.sum(np.fft.rfftfreq(len(x), 1 / SAMPLE_RATE) * power) / np.sum(power))
