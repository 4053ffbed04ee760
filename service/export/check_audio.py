"""The audio the exporter checks front ends on: ``check_audio.wav`` beside this file.

Noise alone does not exercise a front end the way users' audio does (a voice's harmonics,
a tone's single band, digital silence next to speech), so the check also runs a clip of
real content: two TTS voices, a chord, a noise burst, clicks and digital silence, 4 s at
32 kHz. ``python -m service.export.check_audio`` rebuilds it (needs espeak-ng and flite);
the file ships so that exporting needs neither.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

PATH = Path(__file__).with_name("check_audio.wav")
SAMPLE_RATE = 32000


def load(sample_rate: int) -> np.ndarray:
    """The clip as float32 mono at ``sample_rate``."""
    audio, rate = sf.read(PATH, dtype="float32")
    if rate != sample_rate:
        audio = soxr.resample(audio, rate, sample_rate).astype(np.float32)
    return audio


def _speech(engine: list[str], text: str, seconds: float) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "speech.wav"
        subprocess.run(_command(engine, text, path), check=True, capture_output=True)
        audio, rate = sf.read(path, dtype="float32")
    audio = soxr.resample(audio, rate, SAMPLE_RATE)[: int(seconds * SAMPLE_RATE)]
    return 0.5 * audio / max(float(np.abs(audio).max()), 1e-6)


def _command(engine: list[str], text: str, path: Path) -> list[str]:
    if engine[0] == "flite":
        return [*engine, "-t", text, "-o", str(path)]
    return [*engine, "-w", str(path), text]


def build() -> np.ndarray:
    rng = np.random.default_rng(0)
    t = np.arange(int(0.4 * SAMPLE_RATE)) / SAMPLE_RATE
    chord = 0.2 * sum(np.sin(2 * np.pi * f * t) for f in (440.0, 554.4, 659.3))
    burst = 0.1 * rng.standard_normal(int(0.3 * SAMPLE_RATE))
    clicks = np.zeros(int(0.2 * SAMPLE_RATE))
    clicks[:: SAMPLE_RATE // 20] = 0.8
    parts = [np.zeros(int(0.25 * SAMPLE_RATE)),
             _speech(["espeak-ng", "-v", "en-us", "-s", "150"], "Yes, no. Turn the front "
                     "light off.", 1.6),
             chord, burst, clicks,
             _speech(["flite"], "stop, go, seven", 0.9),
             np.zeros(int(0.35 * SAMPLE_RATE))]
    audio = np.concatenate(parts)[: 4 * SAMPLE_RATE]
    return np.pad(audio, (0, 4 * SAMPLE_RATE - len(audio))).astype(np.float32)


if __name__ == "__main__":
    sf.write(PATH, build(), SAMPLE_RATE, subtype="PCM_16")
    print(f"wrote {PATH}", file=sys.stderr)
