"""Room and noise for the keyword set: pure numpy signal functions, seeded by the caller.

Everything is at the dataset's 16 kHz; noises come back at unit RMS, to be scaled to an SNR.
"""

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

SAMPLE_RATE = 16000
T = TypeVar("T")


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    """One item, as itself (rng.choice would turn strings into numpy scalars)."""
    return items[int(rng.integers(len(items)))]


def unit_rms(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.sqrt(np.mean(x**2))), 1e-12)


def coloured_noise(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Power spectrum ~ 1/f^exponent (0 white, 1 pink, 2 brown); nothing below 20 Hz, which
    no one hears and which would make the SNR a fiction."""
    spectrum = rng.standard_normal(n // 2 + 1) + 1j * rng.standard_normal(n // 2 + 1)
    freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    shape = np.where(freqs >= 20.0, np.maximum(freqs, 20.0) ** (-exponent / 2), 0.0)
    return unit_rms(np.fft.irfft(spectrum * shape, n))


def hum(rng: np.random.Generator, n: int) -> np.ndarray:
    """Mains hum: a 50 or 60 Hz fundamental, odd and even harmonics, a faint hiss."""
    f0 = (50.0 if rng.random() < 0.5 else 60.0) + rng.uniform(-0.5, 0.5)
    k = np.arange(1, int(rng.integers(3, 11)) + 1)
    amps, phases = rng.uniform(0.1, 1.0, k.size) / k, rng.uniform(0, 2 * np.pi, k.size)
    t = np.arange(n) / SAMPLE_RATE
    tone = (amps[:, None] * np.sin(2 * np.pi * f0 * k[:, None] * t + phases[:, None])).sum(0)
    return unit_rms(unit_rms(tone) + 0.03 * rng.standard_normal(n))


def babble(rng: np.random.Generator, n: int, voices: list[np.ndarray], talkers: int) -> np.ndarray:
    """Several talkers, each a stream of random words with short gaps, summed."""
    out = np.zeros(n)
    for _ in range(talkers):
        parts, total = [], 0
        while total < 2 * n:
            word = pick(rng, voices)
            parts += [word, np.zeros(int(rng.integers(0, SAMPLE_RATE // 8)))]
            total += len(word) + len(parts[-1])
        stream = np.concatenate(parts)
        start = int(rng.integers(0, len(stream) - n))
        out += unit_rms(stream[start:start + n]) * rng.uniform(0.5, 1.0)
    return unit_rms(out)


def impulse_response(rng: np.random.Generator, rt60: float, drr_db: float) -> np.ndarray:
    """A direct path plus exponentially decaying noise that falls 60 dB in rt60 seconds."""
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = rng.standard_normal(t.size) * np.exp(-6.908 * t / rt60)
    tail *= 10 ** (-drr_db / 20) / np.sqrt(np.sum(tail**2))
    tail[0] += 1.0
    return tail


def convolve(x: np.ndarray, ir: np.ndarray) -> np.ndarray:
    """Linear convolution cut to len(x): the reverb tail past the clip end is lost."""
    size = 1 << (len(x) + len(ir) - 1).bit_length()
    return np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(ir, size), size)[:len(x)]


def scale_to_snr(speech: np.ndarray, speech_len: int, noise: np.ndarray,
                 snr_db: float) -> np.ndarray:
    """Noise scaled so speech power (over the spoken part only) / noise power = snr_db."""
    speech_power = np.sum(speech**2) / max(speech_len, 1)
    return noise * np.sqrt(speech_power / (np.mean(noise**2) * 10 ** (snr_db / 10)))


def set_peak(x: np.ndarray, peak_db: float) -> np.ndarray:
    return x * (10 ** (peak_db / 20) / max(float(np.abs(x).max()), 1e-12))
