"""Noises and non-speech sounds for the keyword set: pure numpy, seeded by the caller.

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


def note_frequency(midi: np.ndarray | float) -> np.ndarray | float:
    return 440.0 * 2 ** ((np.asarray(midi) - 69) / 12)


def tone(rng: np.random.Generator, n: int, freq: float, harmonics: int = 1) -> np.ndarray:
    """A steady tone at freq Hz with harmonics (1/k amplitudes) under nyquist, random phases."""
    t = np.arange(n) / SAMPLE_RATE
    out = np.zeros(n)
    for k in range(1, harmonics + 1):
        if k * freq < SAMPLE_RATE / 2 - 200:
            out += np.sin(2 * np.pi * k * freq * t + rng.uniform(0, 2 * np.pi)) / k
    return out


def music(rng: np.random.Generator, n: int, percussion: bool = True) -> np.ndarray:
    """Music-like sound: chords of 1-4 harmonic notes from one scale, each held 0.12-0.6 s
    with a plucked or sustained envelope, and optionally hi-hat-like noise ticks on a beat."""
    root = int(rng.integers(40, 64))
    scale = root + np.array([0, 2, 4, 5, 7, 9, 11, 12, 14, 16, 19, 24])
    out, pos = np.zeros(n), 0
    while pos < n:
        length = min(int(rng.uniform(0.12, 0.6) * SAMPLE_RATE), n - pos)
        decay = rng.uniform(2.0, 15.0) if rng.random() < 0.6 else 0.5  # plucked or held
        env = np.exp(-decay * np.arange(length) / SAMPLE_RATE)
        env[:80] *= np.linspace(0, 1, 80)[:length]  # 5 ms attack, no click
        for note in rng.choice(scale, size=int(rng.integers(1, 5)), replace=False):
            out[pos:pos + length] += env * tone(rng, length, float(note_frequency(note)),
                                                int(rng.integers(1, 7)))
        pos += length
    if percussion and rng.random() < 0.5:
        beat = int(rng.uniform(0.15, 0.5) * SAMPLE_RATE)
        tick = rng.standard_normal(480) * np.exp(-np.arange(480) / 60)
        tick = np.diff(tick, prepend=0.0)  # high-passed: a hi-hat more than a thump
        for start in range(int(rng.integers(0, beat)), n - tick.size, beat):
            out[start:start + tick.size] += tick * rng.uniform(0.5, 2.0)
    return unit_rms(out)


def beeps(rng: np.random.Generator, n: int) -> np.ndarray:
    """Tone bursts of 40-400 ms with gaps: single tones or two-tone (DTMF-like) pairs."""
    out, pos = np.zeros(n), int(rng.integers(0, SAMPLE_RATE // 5))
    while pos < n:
        length = min(int(rng.uniform(0.04, 0.4) * SAMPLE_RATE), n - pos)
        freqs = rng.uniform(300, 4000, size=int(rng.integers(1, 3)))
        burst = sum(tone(rng, length, float(f)) for f in freqs)
        ramp = min(80, length // 2)
        burst[:ramp] *= np.linspace(0, 1, ramp)
        burst[length - ramp:] *= np.linspace(1, 0, ramp)
        out[pos:pos + length] = burst
        pos += length + int(rng.uniform(0.03, 0.4) * SAMPLE_RATE)
    return unit_rms(out)


def clicks(rng: np.random.Generator, n: int) -> np.ndarray:
    """1-30 clicks and ticks (decaying 1-8 ms noise or ringing bursts) over a faint floor."""
    out = 0.001 * rng.standard_normal(n)
    for _ in range(int(rng.integers(1, 31))):
        length = int(rng.uniform(0.001, 0.008) * SAMPLE_RATE) + 1
        start = int(rng.integers(0, n - length))
        decay = np.exp(-5 * np.arange(length) / length)
        if rng.random() < 0.5:
            burst = rng.standard_normal(length)
        else:
            burst = np.sin(2 * np.pi * rng.uniform(500, 6000) * np.arange(length) / SAMPLE_RATE)
        out[start:start + length] += burst * decay * rng.uniform(0.1, 1.0)
    return unit_rms(out)


COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1/f^x


def non_speech(rng: np.random.Generator, kind: str, n: int) -> np.ndarray:
    """A unit-RMS background or _silence_ source by name; "silence" is plain white noise, for
    the caller to scale far down."""
    if kind == "hum":
        return hum(rng, n)
    if kind in ("music", "chord"):
        return music(rng, n, percussion=kind == "music")
    if kind == "tone":
        freq = float(np.exp(rng.uniform(np.log(50), np.log(7000))))
        return unit_rms(tone(rng, n, freq, int(rng.integers(1, 4))))
    if kind == "beeps":
        return beeps(rng, n)
    if kind == "clicks":
        return clicks(rng, n)
    if kind == "silence":
        return rng.standard_normal(n)
    return coloured_noise(rng, n, COLOURS[kind])
