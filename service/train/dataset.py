"""A synthetic 12-class keyword-spotting dataset on the Speech Commands protocol.

Why synthetic: nothing may be downloaded, yet training needs labelled one-second speech. Words
are spoken by the text-to-speech engines Debian ships (espeak-ng, flite), then placed, reverberated,
mixed with noise and scaled, all from numpy generators seeded per clip, so a seed alone decides
every byte. Splits are speaker-disjoint: a voice heard in test is never heard in training, not
even inside babble noise or unknown words.

    python -m service.train.dataset --out data/kws12 --per-class 500 --seed 0 [--workers K]
"""

import argparse
import csv
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache, partial
from multiprocessing import Pool
from pathlib import Path
from typing import NamedTuple

import numpy as np
import soundfile as sf
import soxr
from tqdm import tqdm

from service.train.acoustics import (
    SAMPLE_RATE,
    babble,
    coloured_noise,
    convolve,
    hum,
    impulse_response,
    pick,
    scale_to_snr,
    set_peak,
)

CLIP_SAMPLES = SAMPLE_RATE  # every clip is exactly 1 s
KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN, SILENCE = "_unknown_", "_silence_"
LABELS = (*KEYWORDS, UNKNOWN, SILENCE)
SPLITS = ("train", "validation", "test")
UNKNOWN_WORDS = (
    "bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin",
    "nine", "one", "seven", "sheila", "six", "three", "tree", "two", "wow", "zero",
    "learn", "follow", "forward", "backward", "visual", "apple", "window", "music", "yellow",
    "table",
)  # fmt: skip
# Babble talks in words that are neither keywords nor unknown words.
BABBLE_WORDS = (
    "morning", "people", "water", "number", "little", "around", "something", "because",
    "together", "picture", "mountain", "garden", "paper", "story", "market", "doctor",
    "family", "question", "evening", "country", "weather", "kitchen", "village", "orange",
)  # fmt: skip
COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power spectrum ~ 1/f^x
SILENCE_NOISES = (*COLOURS, "hum")  # background without speech
NOISES = (*SILENCE_NOISES, "babble")
COLUMNS = ("path", "label", "split", "speaker", "engine", "word", "snr_db", "seed", "noise",
           "rt60_s")
APT_PACKAGES = ("espeak-ng", "flite")

# A speaker is "engine:voice": an espeak-ng accent with a variant, or a built-in flite voice.
ESPEAK_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-gb-x-rp", "en-029", "en-us-nyc")
ESPEAK_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5",
                   "croak", "whisper", "klatt", "klatt2", "klatt3", "grandpa", "steph", "linda")
# Nominal mean F0 (Hz) of each flite voice, measured; pitch shifts scale it (rms ignores it).
FLITE_VOICES = {"kal": 95.0, "kal16": 95.0, "awb": 130.0, "rms": 100.0, "slt": 170.0}
SPEAKERS = (*(f"espeak-ng:{a}+{v}" for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS),
            *(f"flite:{v}" for v in FLITE_VOICES))
ENGINES = ("espeak-ng", "flite")
SAME_PERSON = {"flite:kal16": "flite:kal"}  # one recorded voice at 8 and 16 kHz


class MissingToolError(RuntimeError):
    """A text-to-speech engine the generator needs is not installed."""


class Utterance(NamedTuple):
    """One synthesis request; speed is a rate factor, pitch a shift in semitones."""

    speaker: str
    word: str
    speed: float
    semitones: float


@dataclass(frozen=True)
class Recipe:
    """Every knob of the generator; recipe.json records it whole. Defaults aim at a hard set."""

    per_class: int = 500
    seed: int = 0
    snr_min_db: float = -5.0
    snr_max_db: float = 20.0
    noise_prob: float = 0.9  # speech clips with background noise; the rest are clean
    reverb_prob: float = 0.4
    rt60_min_s: float = 0.2
    rt60_max_s: float = 1.2
    drr_min_db: float = -6.0  # direct-to-reverberant ratio; low is a far, echoing talker
    drr_max_db: float = 12.0
    peak_min_db: float = -30.0  # final peak level in dBFS: the random gain
    peak_max_db: float = -1.0
    silence_min_db: float = -60.0  # RMS of _silence_ clips in dBFS
    silence_max_db: float = -15.0
    flite_share: float = 0.3  # flite has 5 voices against espeak-ng's 160; weight it up
    speed_min: float = 0.8
    speed_max: float = 1.25
    pitch_semitones: float = 4.0  # uniform shift in [-x, x]
    babble_talkers_min: int = 3
    babble_talkers_max: int = 7
    babble_pool: int = 32  # utterances per split that babble is made of
    val_fraction: float = 0.15  # of speakers and of clips
    test_fraction: float = 0.15

    def __post_init__(self) -> None:
        for name in (f.name for f in dataclasses.fields(self) if "_min" in f.name):
            if getattr(self, name) > getattr(self, name.replace("_min", "_max")):
                raise ValueError(f"{name} exceeds {name.replace('_min', '_max')}")
        if not all(0 <= p <= 1 for p in (self.noise_prob, self.reverb_prob, self.flite_share)):
            raise ValueError("probabilities and shares must be in [0, 1]")
        if min(self.rt60_min_s, self.speed_min, self.babble_pool) <= 0:
            raise ValueError("rt60_min_s, speed_min and babble_pool must be positive")
        split_counts(self.per_class, self.val_fraction, self.test_fraction)  # raises if too few


class Clip(NamedTuple):
    index: int
    label: str
    split: str


@dataclass(frozen=True)
class Context:
    """What every worker needs to render any clip."""

    out: Path
    recipe: Recipe
    speakers: dict[str, list[str]]
    babble: dict[str, list[Utterance]]


def engine_of(speaker: str) -> str:
    return speaker.split(":", 1)[0]


def speaker_group(speaker: str) -> str:
    """Speakers that are one person (flite kal and kal16) must share a split."""
    return SAME_PERSON.get(speaker, speaker)


def split_counts(n: int, val_fraction: float, test_fraction: float) -> dict[str, int]:
    """At least one item per split; train takes the rest."""
    val, test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
    if n - val - test < 1:
        raise ValueError(f"cannot split {n} items three ways")
    return {"train": n - val - test, "validation": val, "test": test}


def split_speakers(recipe: Recipe) -> dict[str, list[str]]:
    """Assign speaker groups to splits, per engine, so every split hears both engines."""
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, 1]))
    out: dict[str, list[str]] = {s: [] for s in SPLITS}
    for engine in ENGINES:
        groups = sorted({speaker_group(s) for s in SPEAKERS if engine_of(s) == engine})
        shuffled = [groups[i] for i in rng.permutation(len(groups))]
        start = 0
        counts = split_counts(len(groups), recipe.val_fraction, recipe.test_fraction)
        for split, n in counts.items():
            chosen = set(shuffled[start:start + n])
            out[split] += [s for s in SPEAKERS if speaker_group(s) in chosen]
            start += n
    return out


def clip_seed(seed: int, index: int) -> int:
    """Each clip's own seed, so a clip's bytes do not depend on worker count or order."""
    return int(np.random.SeedSequence([seed, 0, index]).generate_state(1)[0])


def draw_utterance(rng: np.random.Generator, recipe: Recipe, speakers: list[str],
                   word: str) -> Utterance:
    engine = ENGINES[1] if rng.random() < recipe.flite_share else ENGINES[0]
    pool = [s for s in speakers if engine_of(s) == engine]
    speaker = pick(rng, pool)
    speed = round(float(rng.uniform(recipe.speed_min, recipe.speed_max)), 2)
    shift = round(float(rng.uniform(-recipe.pitch_semitones, recipe.pitch_semitones)), 1)
    return Utterance(speaker, word, speed, shift)


def babble_pools(recipe: Recipe, speakers: dict[str, list[str]]) -> dict[str, list[Utterance]]:
    """A small fixed pool per split, drawn from that split's speakers only, so caching pays."""
    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, 2]))
    return {split: [draw_utterance(rng, recipe, speakers[split],
                                   pick(rng, BABBLE_WORDS))
                    for _ in range(recipe.babble_pool)] for split in SPLITS}


def plan(recipe: Recipe) -> list[Clip]:
    counts = split_counts(recipe.per_class, recipe.val_fraction, recipe.test_fraction)
    pairs = [(label, split) for label in LABELS for split in SPLITS for _ in range(counts[split])]
    return [Clip(i, label, split) for i, (label, split) in enumerate(pairs)]


def check_tools() -> dict[str, str]:
    """Versions of the engines; raise MissingToolError naming the apt packages if absent."""
    install = f"install them with: apt-get install -y {' '.join(APT_PACKAGES)}"
    missing = [tool for tool in APT_PACKAGES if shutil.which(tool) is None]
    if missing:
        raise MissingToolError(f"text-to-speech engine(s) not found: {', '.join(missing)}; "
                               f"{install}")
    listed = subprocess.run(["flite", "-lv"], capture_output=True, text=True).stdout.split()
    if absent := [v for v in FLITE_VOICES if v not in listed]:
        raise MissingToolError(f"flite lacks voices {absent}; {install}")
    espeak = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True).stdout
    flite = subprocess.run(["flite", "--version"], capture_output=True, text=True).stdout
    flite_line = next((ln for ln in flite.splitlines() if "version" in ln), flite)
    return {"espeak-ng": espeak.split("Data at")[0].strip(),
            "flite": flite_line.replace("version:", "").strip()}


def tts_command(utt: Utterance, path: str) -> list[str]:
    engine, voice = utt.speaker.split(":", 1)
    if engine == "espeak-ng":
        pitch = int(np.clip(round(50 + 6 * utt.semitones), 0, 99))
        return ["espeak-ng", "-v", voice, "-s", str(round(175 * utt.speed)), "-p", str(pitch),
                "-w", path, utt.word]
    f0 = FLITE_VOICES[voice] * 2 ** (utt.semitones / 12)
    return ["flite", "-voice", voice, "--setf", f"duration_stretch={1 / utt.speed:.3f}",
            "--setf", f"int_f0_target_mean={f0:.1f}", "-t", utt.word, "-o", path]


def trim(audio: np.ndarray, floor_db: float = -35.0, pad: int = 160) -> np.ndarray:
    """Drop the engines' leading and trailing silence, keeping 10 ms either side."""
    loud = np.flatnonzero(np.abs(audio) > np.abs(audio).max() * 10 ** (floor_db / 20))
    return audio[max(loud[0] - pad, 0):loud[-1] + pad + 1] if loud.size else audio


@lru_cache(maxsize=512)
def synthesize(utt: Utterance) -> np.ndarray:
    """Trimmed float64 speech at 16 kHz, at most one clip long; cached per worker."""
    with tempfile.TemporaryDirectory(prefix="kws-") as tmp:
        path = os.path.join(tmp, "utt.wav")
        subprocess.run(tts_command(utt, path), check=True, capture_output=True)
        audio, rate = sf.read(path, dtype="float64", always_2d=True)
    audio = trim(soxr.resample(audio[:, 0], rate, SAMPLE_RATE))
    if len(audio) > CLIP_SAMPLES:  # too slow to fit: speed it up until it does
        audio = soxr.resample(audio, len(audio), CLIP_SAMPLES - 1)[:CLIP_SAMPLES]
    return audio


def background(rng: np.random.Generator, kind: str, ctx: Context, split: str) -> np.ndarray:
    if kind == "babble":
        r = ctx.recipe
        talkers = int(rng.integers(r.babble_talkers_min, r.babble_talkers_max + 1))
        return babble(rng, CLIP_SAMPLES, [synthesize(u) for u in ctx.babble[split]], talkers)
    if kind == "hum":
        return hum(rng, CLIP_SAMPLES)
    return coloured_noise(rng, CLIP_SAMPLES, COLOURS[kind])


def render_speech(rng: np.random.Generator, clip: Clip, ctx: Context) -> tuple[np.ndarray, dict]:
    r = ctx.recipe
    word = clip.label if clip.label in KEYWORDS else pick(rng, UNKNOWN_WORDS)
    utt = draw_utterance(rng, r, ctx.speakers[clip.split], word)
    speech = synthesize(utt)
    x = np.zeros(CLIP_SAMPLES)
    start = int(rng.integers(0, CLIP_SAMPLES - len(speech) + 1))
    x[start:start + len(speech)] = speech
    rt60 = float(rng.uniform(r.rt60_min_s, r.rt60_max_s)) if rng.random() < r.reverb_prob else 0.0
    if rt60:
        x = convolve(x, impulse_response(rng, rt60, rng.uniform(r.drr_min_db, r.drr_max_db)))
    noise, snr = "", None
    if rng.random() < r.noise_prob:
        noise, snr = pick(rng, NOISES), rng.uniform(r.snr_min_db, r.snr_max_db)
        x = x + scale_to_snr(x, len(speech), background(rng, noise, ctx, clip.split), snr)
    x = set_peak(x, rng.uniform(r.peak_min_db, r.peak_max_db))
    return x, {"speaker": utt.speaker, "engine": engine_of(utt.speaker), "word": word,
               "snr_db": "" if snr is None else f"{snr:.2f}", "noise": noise,
               "rt60_s": f"{rt60:.2f}" if rt60 else ""}


def render_silence(rng: np.random.Generator, clip: Clip, ctx: Context) -> tuple[np.ndarray, dict]:
    """Background only, never speech: so no babble, and no speaker at all."""
    kind = pick(rng, SILENCE_NOISES)
    level = rng.uniform(ctx.recipe.silence_min_db, ctx.recipe.silence_max_db)
    x = background(rng, kind, ctx, clip.split) * 10 ** (level / 20)
    x = np.clip(x, -1.0, 1.0)
    return x, {"speaker": "", "engine": "", "word": "", "snr_db": "", "noise": kind,
               "rt60_s": ""}


def render_clip(clip: Clip, ctx: Context) -> dict[str, str]:
    """Write one clip's WAV and return its metadata row."""
    seed = clip_seed(ctx.recipe.seed, clip.index)
    rng = np.random.default_rng(seed)
    render = render_silence if clip.label == SILENCE else render_speech
    audio, fields = render(rng, clip, ctx)
    rel = f"{clip.split}/{clip.label}/{clip.label.strip('_')}_{clip.index:06d}.wav"
    sf.write(ctx.out / rel, audio.astype(np.float32), SAMPLE_RATE, subtype="PCM_16")
    return {"path": rel, "label": clip.label, "split": clip.split, **fields, "seed": str(seed)}


def prepare_out(out: Path, overwrite: bool) -> None:
    owned = [out / s for s in SPLITS] + [out / "metadata.csv", out / "recipe.json"]
    if any(p.exists() for p in owned):
        if not overwrite:
            raise FileExistsError(f"{out} already holds a dataset; pass --overwrite to replace it")
        for p in owned:
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    for split in SPLITS:
        for label in LABELS:
            (out / split / label).mkdir(parents=True, exist_ok=True)


def recipe_json(ctx: Context, tools: dict[str, str], rows: list[dict[str, str]]) -> dict:
    counts = {s: {lb: 0 for lb in LABELS} for s in SPLITS}
    for row in rows:
        counts[row["split"]][row["label"]] += 1
    return {"generator": "service.train.dataset", "sample_rate": SAMPLE_RATE,
            "clip_samples": CLIP_SAMPLES, "format": "WAV PCM_16 mono", "labels": list(LABELS),
            "unknown_words": list(UNKNOWN_WORDS), "babble_words": list(BABBLE_WORDS),
            "noises": list(NOISES), "params": dataclasses.asdict(ctx.recipe), "tools": tools,
            "speakers": ctx.speakers,
            "babble_pool": {s: [list(u) for u in us] for s, us in ctx.babble.items()},
            "counts": counts, "total": len(rows)}


def generate(out: Path, recipe: Recipe, workers: int = 1, overwrite: bool = False,
             progress: bool = True) -> list[dict[str, str]]:
    """Render the dataset into out; the same recipe gives the same bytes for any workers."""
    tools = check_tools()
    out = Path(out)
    prepare_out(out, overwrite)
    speakers = split_speakers(recipe)
    ctx = Context(out, recipe, speakers, babble_pools(recipe, speakers))
    clips, render = plan(recipe), partial(render_clip, ctx=ctx)
    bar = partial(tqdm, total=len(clips), unit="clip", disable=not progress)
    if workers <= 1:
        rows = list(bar(map(render, clips)))
    else:
        with Pool(workers) as pool:
            rows = list(bar(pool.imap(render, clips, chunksize=8)))
    with open(out / "metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    text = json.dumps(recipe_json(ctx, tools, rows), indent=2, sort_keys=True)
    (out / "recipe.json").write_text(text + "\n")
    return rows


def load_metadata(root: Path | str) -> list[dict]:
    """metadata.csv rows; path stays relative to root, snr_db/rt60_s are floats or None."""
    with open(Path(root) / "metadata.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["seed"] = int(row["seed"])
        for key in ("snr_db", "rt60_s"):
            row[key] = float(row[key]) if row[key] else None
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service.train.dataset",
                                     description=__doc__.split("\n\n")[0],
                                     epilog="Knobs are documented in docs/DATASET.md.")
    parser.add_argument("--out", type=Path, required=True, help="dataset root to create")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                        help="processes; the output does not depend on it (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing dataset")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    for field in dataclasses.fields(Recipe):
        parser.add_argument("--" + field.name.replace("_", "-"), type=type(field.default),
                            default=field.default, help="default: %(default)s")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    recipe = Recipe(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Recipe)})
    began = time.perf_counter()
    try:
        rows = generate(args.out, recipe, args.workers, args.overwrite, not args.quiet)
    except (MissingToolError, FileExistsError) as err:
        sys.exit(f"error: {err}")
    seconds = time.perf_counter() - began
    print(f"wrote {len(rows)} clips to {args.out} in {seconds:.1f} s "
          f"({len(rows) / seconds:.1f} clips/s, {args.workers} workers)", file=sys.stderr)


if __name__ == "__main__":
    main()
